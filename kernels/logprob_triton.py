"""The Triton kernels of kernels/logprob.py (which says what they compute) and their autograd.Function.

Imported only when a Triton kernel is about to run: kernels/ must import where Triton does not.
"""
import torch
import triton
import triton.language as tl

# Vocabulary elements one program handles per step: 4096 bf16 values are 16 per thread at 8 warps.
MAX_BLOCK_V = 4096


@triton.jit
def _forward_kernel(logits_ptr, row_stride, labels_ptr, logp_ptr, lse_ptr, V, ignore_index,
                    BLOCK_V: tl.constexpr):
    # One program per row. int64 offsets: N * V passes 2**31 at training sizes.
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index

    # Online softmax: after each block, running_sum = sum(exp(x - running_max)) over the columns seen.
    running_max = tl.full((), float("-inf"), tl.float32)
    running_sum = tl.zeros((), tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)  # (BLOCK_V,)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)

    # An ignored row's label may be any number (-100): read column 0 instead, then discard it.
    picked = tl.load(row_ptr + tl.where(valid, label, 0)).to(tl.float32)
    tl.store(logp_ptr + row, tl.where(valid, picked - lse, 0.0))
    tl.store(lse_ptr + row, lse)


@triton.jit
def _backward_kernel(grad_logp_ptr, logits_ptr, row_stride, labels_ptr, lse_ptr, grad_logits_ptr,
                     grad_row_stride, V, ignore_index, BLOCK_V: tl.constexpr):
    # d logp / d logits = onehot(label) - softmax(logits); the softmax comes back from the saved lse.
    # grad_logits_ptr may equal logits_ptr: each element is read before it is overwritten, by the same
    # program (linear_logprob uses this to turn a chunk's logits into its gradient in place).
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row)
    grad = tl.where(label != ignore_index, tl.load(grad_logp_ptr + row), 0.0)
    lse = tl.load(lse_ptr + row)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        x = tl.load(logits_ptr + row * row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        d = grad * (tl.where(cols == label, 1.0, 0.0) - tl.exp(x - lse))      # (BLOCK_V,)
        tl.store(grad_logits_ptr + row * grad_row_stride + cols,
                 d.to(grad_logits_ptr.dtype.element_ty), mask=mask)


def _block_v(V: int) -> int:
    return min(MAX_BLOCK_V, triton.next_power_of_2(V))


def logprob_forward_triton(logits, labels, ignore_index, logp_out, lse_out):
    """Launch the forward kernel: logits (N, V) with unit column stride, labels (N,);
    writes logp_out and lse_out, both (N,) fp32."""
    N, V = logits.shape
    assert logits.stride(1) == 1 and logp_out.is_contiguous() and lse_out.is_contiguous()
    if N:
        _forward_kernel[(N,)](logits, logits.stride(0), labels, logp_out, lse_out, V, ignore_index,
                              BLOCK_V=_block_v(V), num_warps=8)


def logprob_backward_triton(grad_logp, logits, labels, lse, ignore_index, grad_logits_out):
    """Launch the backward kernel: writes grad_logp[:, None] * (onehot - softmax) into
    grad_logits_out (N, V), which may be `logits` itself."""
    N, V = logits.shape
    assert logits.stride(1) == 1 and grad_logits_out.stride(1) == 1 and grad_logp.is_contiguous()
    if N:
        _backward_kernel[(N,)](grad_logp, logits, logits.stride(0), labels, lse, grad_logits_out,
                               grad_logits_out.stride(0), V, ignore_index, BLOCK_V=_block_v(V), num_warps=8)


class LogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, ignore_index):
        if logits.stride(1) != 1:
            logits = logits.contiguous()
        labels = labels.contiguous()
        logp = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)  # (N,)
        lse = torch.empty_like(logp)                                                      # (N,)
        logprob_forward_triton(logits, labels, ignore_index, logp, lse)
        ctx.save_for_backward(logits, labels, lse)
        ctx.ignore_index = ignore_index
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        logits, labels, lse = ctx.saved_tensors
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # (N, V)
        logprob_backward_triton(grad_logp.contiguous(), logits, labels, lse, ctx.ignore_index,
                                grad_logits)
        return grad_logits, None, None
