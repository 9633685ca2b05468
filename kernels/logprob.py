"""Fused token log-prob: log softmax(logits)[label] for each row, without an fp32 copy of the logits.

The usual `log_softmax(logits.float(), -1).gather(-1, labels)` writes an fp32 [N, V] tensor to read
one number per row, and its backward writes two more. Here the forward reads each row once (an online
softmax over vocabulary blocks keeps a running max and sum) and writes two fp32 numbers per row: the
log-prob and the log-sum-exp. The backward reads each row once more and writes
grad * (onehot(label) - softmax) straight into a gradient of the logits' own dtype.

Rows whose label is `ignore_index` give 0 and get a zero gradient. Accumulation is fp32 for fp32, bf16
and fp16 logits. Labels of the other rows must lie in [0, V): the Triton path does not check (that would
cost a device sync), the reference raises. The Triton kernels are in kernels/logprob_triton.py,
imported only when they run (Triton has no wheels outside Linux; the reference needs none).
"""
import torch

from kernels.backend import at_least_fp32, use_triton


def logprob_reference(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """What the kernels compute, in plain PyTorch: (N, V), (N,) -> (N,) fp32, 0 where ignored."""
    valid = labels != ignore_index
    logits = at_least_fp32(logits)                                             # (N, V) fp32
    picked = logits.gather(1, labels.where(valid, 0)[:, None]).squeeze(1)      # (N,)
    return (picked - torch.logsumexp(logits, dim=1)).where(valid, 0.0)


def logprob_forward_torch(logits, labels, ignore_index, logp_out, lse_out):
    """The forward kernel's work in PyTorch, same arguments (the chunked CPU path of linear_logprob)."""
    valid = labels != ignore_index
    logits = at_least_fp32(logits)                                             # (N, V)
    torch.logsumexp(logits, dim=1, out=lse_out)
    picked = logits.gather(1, labels.where(valid, 0)[:, None]).squeeze(1)      # (N,)
    logp_out.copy_((picked - lse_out).where(valid, 0.0))


def logprob_backward_torch(grad_logp, logits, labels, lse, ignore_index, grad_logits_out):
    """The backward kernel's work in PyTorch, same arguments; one fp32 (N, V) temporary."""
    valid = labels != ignore_index
    grad = grad_logp.where(valid, 0.0)                                                  # (N,)
    d = (at_least_fp32(logits) - lse[:, None]).exp_().mul_(-grad[:, None])              # -grad * softmax
    d[torch.arange(len(labels), device=d.device), labels.where(valid, 0)] += grad       # + grad * onehot
    grad_logits_out.copy_(d)


def check_labels(labels: torch.Tensor, n_rows: int, device: torch.device):
    if labels.shape != (n_rows,) or labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"labels must be an int32/int64 tensor of shape ({n_rows},), "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"labels are on {labels.device}, the other inputs on {device}")


def logprob(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
            backend: str = "auto") -> torch.Tensor:
    """log softmax(logits)[label] per row: logits (N, V) fp32/bf16/fp16, labels (N,) -> (N,) fp32.

    Rows labelled `ignore_index` give 0 and no gradient. backend: "auto" (Triton on CUDA or under
    TRITON_INTERPRET=1, else the reference), "triton" or "torch".
    """
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point (N, V) tensor, got {logits.dtype} {tuple(logits.shape)}")
    check_labels(labels, logits.shape[0], logits.device)
    if use_triton(logits, backend):
        from kernels.logprob_triton import LogProb
        return LogProb.apply(logits, labels, ignore_index)
    return logprob_reference(logits, labels, ignore_index)
