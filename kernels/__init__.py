"""Triton kernels for the trainers, each beside the plain PyTorch reference that defines it.

    logprob(logits, labels)               (N, V), (N,) -> (N,) fp32 log-probs, one pass, no fp32 copy
    linear_logprob(hidden, weight, labels) (N, D), (V, D), (N,) -> (N,) fp32, never holding (N, V) logits
    sequence_logps(token_logps, seq_ids, n_sequences, average) -> (n_sequences,) per-sequence sums or means
                                          (plain PyTorch: one index_add; the preference losses on top of it
                                          are train/losses.py's)

logprob and linear_logprob take backend="auto" | "triton" | "torch": auto runs Triton on CUDA tensors,
and on CPU tensors when TRITON_INTERPRET=1 was set before this package was imported (Triton's
interpreter: slow, for tests); otherwise the PyTorch reference. The Triton kernels live in
logprob_triton.py, imported on first use, so this package imports (and runs its references) without
Triton installed.
"""
from kernels.linear_logprob import linear_logprob
from kernels.logprob import logprob
from kernels.sequence_logps import sequence_logps

__all__ = ["linear_logprob", "logprob", "sequence_logps"]
