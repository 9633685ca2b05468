"""Fused linear log-prob: log softmax(hidden @ weight.T)[label] per token, never holding [N, V] logits.

This is what the trainers call with the model's final hidden states and output weight. Tokens are taken
a chunk at a time; a chunk's logits (C, V) are computed with one matmul, read by the log-prob kernel
(kernels/logprob.py), and dropped. The backward needs the same logits again and recomputes them chunk by
chunk; the backward kernel overwrites each chunk's logits with their gradient, in place, which feeds the
two gradient matmuls (hidden and weight). On CPU the same loop runs with the kernels' PyTorch versions.

Why recompute rather than compute the gradients during the forward (as Liger-Kernel's fused linear
cross-entropy does, so that its backward only rescales): that trick needs the upstream gradient to be
one number for all tokens, as for a mean cross-entropy. Our output is one log-prob per token, and DPO's
upstream gradient differs per sequence and is only known once all sequences' log-probs are summed. The
hidden-state gradient could be kept per token and rescaled, but the weight gradient sums over tokens
with those per-token factors inside it, so it needs the logits again. The cost is one extra matmul:
four (C, V, D) matmuls per chunk over forward and backward against three for the unfused path.

Memory: one chunk's logits in the input dtype (and on CPU an fp32 temporary of the same shape), the
per-token log-probs and log-sum-exps, and the gradients themselves. The weight gradient is summed over
chunks in fp32 and cast to the weight's dtype once: a bf16 accumulator (Liger's choice) rounds the
running sum once per chunk, so its error grows with the number of chunks (bench/RESULTS.md: relative
error 2.9e-3 with one chunk, 8.6e-3 with 64; now 3.3e-3). With bf16 weights that costs an fp32 (V, D)
buffer; on CUDA, where torch has addmm with an fp32 output for bf16 inputs (2.8 on), each chunk's
matmul adds into it directly, elsewhere through a bf16 (V, D) temporary per chunk.
"""
import torch

from kernels.backend import use_triton
from kernels.logprob import check_labels, logprob_backward_torch, logprob_forward_torch, logprob_reference


# addmm(fp32, bf16, bf16) -> fp32 in one cuBLAS call (CUDA only; torch 2.8 on)
_ADDMM_FP32_OUT = "dtype_out" in torch.ops.aten.addmm.overloads()


def _ops(triton_kernels: bool):
    """(forward, backward) for one chunk: the Triton kernels, or their PyTorch versions."""
    if triton_kernels:
        from kernels.logprob_triton import logprob_backward_triton, logprob_forward_triton
        return logprob_forward_triton, logprob_backward_triton
    return logprob_forward_torch, logprob_backward_torch


def default_chunk_size(n_tokens: int, vocab_size: int, dim: int) -> int:
    """Tokens per chunk, after Liger-Kernel's rule: a chunk's logits have about as many elements as all
    the hidden states (N * D), so chunking never costs much more than the input's own size; rounded up
    to a power of two, and at least 256 rows, below which the matmuls lose speed (on CPU too)."""
    rows = -(-n_tokens // -(-vocab_size // dim))        # ceil(N / ceil(V / D))
    return max(256, 1 << (rows - 1).bit_length())      # the next power of two


def linear_logprob_reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                             ignore_index: int = -100) -> torch.Tensor:
    """What the chunked paths compute, the plain unfused way: all (N, V) logits at once."""
    return logprob_reference(hidden @ weight.T, labels, ignore_index)


class LinearLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_size, triton_kernels):
        forward_op, _ = _ops(triton_kernels)
        hidden, labels = hidden.contiguous(), labels.contiguous()
        N = hidden.shape[0]
        # fp32 (float64 for float64 inputs, so that gradcheck can check the CPU path)
        logp = torch.empty(N, dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)  # (N,)
        lse = torch.empty_like(logp)                                                                        # (N,)
        for start in range(0, N, chunk_size):
            rows = slice(start, start + chunk_size)
            logits = hidden[rows] @ weight.T                                               # (C, V)
            forward_op(logits, labels[rows], ignore_index, logp[rows], lse[rows])
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.ignore_index, ctx.chunk_size, ctx.triton_kernels = ignore_index, chunk_size, triton_kernels
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        _, backward_op = _ops(ctx.triton_kernels)
        hidden, weight, labels, lse = ctx.saved_tensors
        grad_logp = grad_logp.contiguous()                                                 # (N,)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None        # (N, D)
        # (V, D), summed over chunks in fp32 and cast once at the end: a bf16 accumulator would add one
        # rounding per chunk, an error that grows with the number of chunks (64 for a SmolLM2 DPO step)
        grad_weight = (torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32),
                                   device=weight.device) if ctx.needs_input_grad[1] else None)
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            logits = hidden[rows] @ weight.T                               # (C, V), the forward's logits again
            backward_op(grad_logp[rows], logits, labels[rows], lse[rows], ctx.ignore_index,
                        logits)                                            # now d loss / d logits, in place
            if grad_hidden is not None:
                torch.mm(logits, weight, out=grad_hidden[rows])            # (C, V) @ (V, D)
            if grad_weight is None:
                continue
            if grad_weight.dtype == weight.dtype:                          # fp32 (fp64) weights: in place
                grad_weight.addmm_(logits.T, hidden[rows])                 # (V, C) @ (C, D)
            elif weight.is_cuda and _ADDMM_FP32_OUT:                       # bf16 / fp16 into fp32, one call
                torch.ops.aten.addmm.dtype_out(grad_weight, logits.T, hidden[rows], torch.float32, out=grad_weight)
            else:                                                          # this chunk's share, rounded once,
                grad_weight += logits.T @ hidden[rows]                     # added in fp32
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def linear_logprob(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                   chunk_size: int | None = None, backend: str = "auto") -> torch.Tensor:
    """log softmax(hidden @ weight.T)[label] per token: hidden (N, D), weight (V, D) of the same dtype,
    labels (N,) -> (N,) fp32. Tokens labelled `ignore_index` give 0 and no gradient.

    chunk_size: tokens per chunk (default `default_chunk_size`). backend: "auto" (Triton on CUDA or under
    TRITON_INTERPRET=1, else the same chunked loop in PyTorch), "triton" or "torch".
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be (N, D) and weight (V, D), "
                         f"got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if not hidden.is_floating_point() or hidden.dtype != weight.dtype or hidden.device != weight.device:
        raise ValueError(f"hidden and weight must be floating point, of one dtype and on one device, got "
                         f"{hidden.dtype} on {hidden.device} and {weight.dtype} on {weight.device}")
    check_labels(labels, hidden.shape[0], hidden.device)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    chunk_size = chunk_size or default_chunk_size(hidden.shape[0], weight.shape[0], weight.shape[1])
    return LinearLogProb.apply(hidden, weight, labels, ignore_index, chunk_size, use_triton(hidden, backend))
