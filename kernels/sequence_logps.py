"""Per-sequence log-probs from per-token ones: the reduction every preference loss starts from.

A batch of B preference pairs is 2B sequences: 0..B-1 the chosen responses, B..2B-1 the rejected ones
(sequence B + i is pair i's rejected response). `token_logps` (M,) holds the log-probs of all their
tokens, flattened, and `seq_ids` (M,) says which sequence each token belongs to, -1 for none (prompt,
padding); tokens need not be sorted. The losses themselves are plain PyTorch on the (2B,) result
(train/losses.py): a few element-wise operations on 2B numbers, which no fused kernel would speed up.
"""
import torch

from kernels.backend import at_least_fp32


def sequence_logps(token_logps: torch.Tensor, seq_ids: torch.Tensor, n_sequences: int,
                   average: bool = False) -> torch.Tensor:
    """Per-sequence sum (or mean) of token log-probs: (M,), (M,) -> (n_sequences,) fp32, differentiable.
    Tokens with seq_id -1 are left out; an empty sequence gives 0."""
    if token_logps.dim() != 1 or seq_ids.shape != token_logps.shape or seq_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"token_logps must be (M,) and seq_ids (M,) int32/int64, got {tuple(token_logps.shape)} "
                         f"and {seq_ids.dtype} {tuple(seq_ids.shape)}")
    valid = seq_ids >= 0
    slot = seq_ids.where(valid, n_sequences).long()         # ignored tokens go to a spare last slot
    token_logps = at_least_fp32(token_logps)
    sums = token_logps.new_zeros(n_sequences + 1).index_add(0, slot, token_logps)[:n_sequences]
    if not average:
        return sums
    lengths = torch.bincount(slot, minlength=n_sequences + 1)[:n_sequences]
    return sums / lengths.clamp(min=1)
