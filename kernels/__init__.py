"""Triton kernels for the trainers, each beside the plain PyTorch reference that defines it.

    logprob(logits, labels)               (N, V), (N,) -> (N,) fp32 log-probs, one pass, no fp32 copy
    linear_logprob(hidden, weight, labels) (N, D), (V, D), (N,) -> (N,) fp32, never holding (N, V) logits
    dpo_loss(token_logps, seq_ids, ref_logps, ...) -> (loss, metrics): DPO / cDPO / IPO from token log-probs
    sequence_logps(token_logps, seq_ids, n_sequences, average) -> (n_sequences,) per-sequence sums or means

Each takes backend="auto" | "triton" | "torch": auto runs Triton on CUDA tensors, and on CPU tensors when
TRITON_INTERPRET=1 was set before this package was imported (Triton's interpreter: slow, for tests);
otherwise the PyTorch reference. The Triton kernels live in logprob_triton.py and dpo_loss_triton.py,
imported on first use, so this package imports (and runs its references) without Triton installed.
"""
from kernels.dpo_loss import dpo_loss, sequence_logps
from kernels.linear_logprob import linear_logprob
from kernels.logprob import logprob

__all__ = ["dpo_loss", "linear_logprob", "logprob", "sequence_logps"]
