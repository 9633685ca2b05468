"""Fused DPO loss: per-token policy log-probs in, loss, metrics and per-token gradients out.

Layout. A batch of B preference pairs is 2B sequences, concatenated: sequences 0..B-1 are the chosen
responses and B..2B-1 the rejected ones, sequence B + i being pair i's rejected response. The tokens of
all of them are flattened into one vector `token_logps` (M,), and `seq_ids` (M,) says which sequence
each token belongs to, -1 for tokens that belong to none (prompt, padding). Tokens need not be sorted.

Loss, for pair i with policy sequence log-probs pi_c, pi_r and reference log-probs ref_c, ref_r:
    z      = (pi_c - pi_r) - (ref_c - ref_r)
    sigmoid: -(1 - eps) * logsigmoid(beta * z) - eps * logsigmoid(-beta * z)
             (DPO, Rafailov et al. 2023; eps = label_smoothing > 0 is conservative DPO, cDPO)
    ipo:     (z - 1 / (2 * beta))**2
             (IPO, Azar et al. 2023, eq. 17 with tau = beta, as TRL writes it)
and the returned loss is the mean over pairs. A sequence's log-prob is the sum of its tokens' log-probs
(the DPO paper) or, with average_log_prob, their mean. By default IPO uses the mean, as TRL does (IPO's
regulariser is scaled for per-token log-likelihoods) and DPO the sum; pass average_log_prob to choose.
The reference log-probs must be reduced the same way: `sequence_logps` does it for the reference model.
Reference-free (ref_logps None) sets ref_c = ref_r = 0.

Metrics, one value per pair, no gradient: the policy's chosen and rejected log-probs, the implicit
rewards beta * (pi - ref) of both, their margin, and the reward accuracy (1 where the chosen reward is
strictly the larger).

The Triton forward is one kernel: each program takes a block of pairs, scans all tokens once to sum
its chosen and rejected sequences, then writes the pairs' losses, metrics, and d loss / d sequence
log-prob (already divided by the length when averaging). The backward kernel gathers that per token.
Both are in kernels/dpo_loss_triton.py, imported only when they run.
"""
import torch

from kernels.backend import at_least_fp32, use_triton

LOSS_TYPES = ("sigmoid", "ipo")
METRICS = ("policy_chosen_logps", "policy_rejected_logps", "rewards_chosen", "rewards_rejected",
           "margins", "accuracy")


def sequence_logps(token_logps: torch.Tensor, seq_ids: torch.Tensor, n_sequences: int,
                   average: bool = False) -> torch.Tensor:
    """Per-sequence sum (or mean) of token log-probs: (M,), (M,) -> (n_sequences,) fp32.
    Tokens with seq_id -1 are left out; an empty sequence gives 0."""
    valid = seq_ids >= 0
    slot = seq_ids.where(valid, n_sequences)               # ignored tokens go to a spare last slot
    token_logps = at_least_fp32(token_logps)
    sums = token_logps.new_zeros(n_sequences + 1).index_add(0, slot, token_logps)[:n_sequences]
    if not average:
        return sums
    lengths = torch.bincount(slot, minlength=n_sequences + 1)[:n_sequences]
    return sums / lengths.clamp(min=1)


def dpo_loss_reference(token_logps, seq_ids, ref_logps, n_sequences, beta, label_smoothing, loss_type, average):
    """What the kernels compute, in plain PyTorch: per-pair losses (B,) and metrics (len(METRICS), B)."""
    policy = sequence_logps(token_logps, seq_ids, n_sequences, average)        # (2B,)
    ref = torch.zeros_like(policy) if ref_logps is None else at_least_fp32(ref_logps)
    B = n_sequences // 2
    chosen, rejected = policy[:B], policy[B:]
    z = (chosen - rejected) - (ref[:B] - ref[B:])                              # (B,)
    if loss_type == "ipo":
        losses = (z - 1 / (2 * beta)) ** 2
    else:
        logsigmoid = torch.nn.functional.logsigmoid
        losses = -(1 - label_smoothing) * logsigmoid(beta * z) - label_smoothing * logsigmoid(-beta * z)
    rewards_chosen, rewards_rejected = beta * (chosen - ref[:B]), beta * (rejected - ref[B:])
    metrics = torch.stack([chosen, rejected, rewards_chosen, rewards_rejected, rewards_chosen - rewards_rejected,
                           (rewards_chosen > rewards_rejected).float()])
    return losses, metrics.detach()


def dpo_loss(token_logps: torch.Tensor, seq_ids: torch.Tensor, ref_logps: torch.Tensor | None = None,
             beta: float = 0.1, label_smoothing: float = 0.0, loss_type: str = "sigmoid",
             average_log_prob: bool | None = None, n_sequences: int | None = None,
             backend: str = "auto") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (or IPO) loss of B pairs from per-token policy log-probs; see the module docstring.

    token_logps (M,) float, seq_ids (M,) int in [-1, 2B): the sequence of each token, -1 for none;
    ref_logps (2B,) the reference model's sequence log-probs, reduced like the policy's, or None for
    reference-free (then n_sequences = 2B must be given). average_log_prob: None takes the loss's usual
    choice (sum for "sigmoid", mean for "ipo"). Returns the mean loss over pairs, a scalar with gradient
    to token_logps, and the metrics in METRICS, each (B,) per pair without gradient.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0 <= label_smoothing < 0.5 or (loss_type == "ipo" and label_smoothing):
        raise ValueError(f"label_smoothing must be in [0, 0.5), and 0 for ipo; got {label_smoothing} with {loss_type}")
    if token_logps.dim() != 1 or seq_ids.shape != token_logps.shape or seq_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"token_logps must be (M,) and seq_ids (M,) int32/int64, got {tuple(token_logps.shape)} "
                         f"and {seq_ids.dtype} {tuple(seq_ids.shape)}")
    if ref_logps is not None:
        if ref_logps.dim() != 1 or (n_sequences is not None and ref_logps.shape[0] != n_sequences):
            raise ValueError(f"ref_logps must be (2B,) = ({n_sequences},), got {tuple(ref_logps.shape)}")
        n_sequences = ref_logps.shape[0]
    if n_sequences is None or n_sequences < 2 or n_sequences % 2:
        raise ValueError(f"need an even number of sequences, at least 2 (n_sequences, or ref_logps' length); "
                         f"got {n_sequences}")
    if seq_ids.device != token_logps.device or (ref_logps is not None and ref_logps.device != token_logps.device):
        raise ValueError("token_logps, seq_ids and ref_logps must be on one device")
    average = loss_type == "ipo" if average_log_prob is None else average_log_prob
    if use_triton(token_logps, backend):
        from kernels.dpo_loss_triton import DPOLoss
        losses, metrics = DPOLoss.apply(token_logps, seq_ids, ref_logps, n_sequences, beta, label_smoothing,
                                        loss_type, average)
    else:
        losses, metrics = dpo_loss_reference(token_logps, seq_ids, ref_logps, n_sequences, beta, label_smoothing,
                                             loss_type, average)
    return losses.mean(), dict(zip(METRICS, metrics))
