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
"""
import torch
import triton
import triton.language as tl

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


@triton.jit
def _logsigmoid(x):
    # log(1 / (1 + exp(-x))), without overflow for either sign of x.
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _forward_kernel(token_logps_ptr, seq_ids_ptr, M, ref_ptr, losses_ptr, metrics_ptr, coef_ptr, B,
                    beta, label_smoothing, HAS_REF: tl.constexpr, AVERAGE: tl.constexpr, IPO: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    pairs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)                # (BLOCK_P,)
    in_batch = pairs < B  # lanes past B sum garbage (their ids may be rejected ids), never stored

    # Sum each pair's chosen (id = pair) and rejected (id = B + pair) tokens, over all M tokens.
    chosen_sum = tl.zeros((BLOCK_P,), tl.float32)
    rejected_sum = tl.zeros((BLOCK_P,), tl.float32)
    chosen_len = tl.zeros((BLOCK_P,), tl.float32)
    rejected_len = tl.zeros((BLOCK_P,), tl.float32)
    for start in range(0, M, BLOCK_M):
        offs = start + tl.arange(0, BLOCK_M)                                   # (BLOCK_M,)
        logp = tl.load(token_logps_ptr + offs, mask=offs < M, other=0.0).to(tl.float32)
        seq = tl.load(seq_ids_ptr + offs, mask=offs < M, other=-1)
        in_chosen = seq[:, None] == pairs[None, :]                             # (BLOCK_M, BLOCK_P)
        in_rejected = seq[:, None] == (pairs + B)[None, :]
        chosen_sum += tl.sum(tl.where(in_chosen, logp[:, None], 0.0), axis=0)
        rejected_sum += tl.sum(tl.where(in_rejected, logp[:, None], 0.0), axis=0)
        chosen_len += tl.sum(in_chosen.to(tl.float32), axis=0)
        rejected_len += tl.sum(in_rejected.to(tl.float32), axis=0)

    # d sequence log-prob / d token log-prob: 1, or 1 / length when averaging.
    if AVERAGE:
        chosen_scale = 1.0 / tl.maximum(chosen_len, 1.0)
        rejected_scale = 1.0 / tl.maximum(rejected_len, 1.0)
    else:
        chosen_scale = tl.full((BLOCK_P,), 1.0, tl.float32)
        rejected_scale = tl.full((BLOCK_P,), 1.0, tl.float32)
    chosen = chosen_sum * chosen_scale
    rejected = rejected_sum * rejected_scale
    if HAS_REF:
        ref_chosen = tl.load(ref_ptr + pairs, mask=in_batch, other=0.0).to(tl.float32)
        ref_rejected = tl.load(ref_ptr + B + pairs, mask=in_batch, other=0.0).to(tl.float32)
    else:
        ref_chosen = tl.zeros((BLOCK_P,), tl.float32)
        ref_rejected = tl.zeros((BLOCK_P,), tl.float32)

    z = (chosen - rejected) - (ref_chosen - ref_rejected)                      # (BLOCK_P,)
    if IPO:
        gap = z - 0.5 / beta
        loss = gap * gap
        dloss_dz = 2.0 * gap
    else:
        # d/dx logsigmoid(x) = sigmoid(-x) = exp(logsigmoid(-x))
        loss = -(1.0 - label_smoothing) * _logsigmoid(beta * z) - label_smoothing * _logsigmoid(-beta * z)
        dloss_dz = beta * (label_smoothing * tl.exp(_logsigmoid(beta * z))
                           - (1.0 - label_smoothing) * tl.exp(_logsigmoid(-beta * z)))

    rewards_chosen = beta * (chosen - ref_chosen)
    rewards_rejected = beta * (rejected - ref_rejected)
    tl.store(losses_ptr + pairs, loss, mask=in_batch)
    tl.store(metrics_ptr + 0 * B + pairs, chosen, mask=in_batch)              # rows in METRICS order
    tl.store(metrics_ptr + 1 * B + pairs, rejected, mask=in_batch)
    tl.store(metrics_ptr + 2 * B + pairs, rewards_chosen, mask=in_batch)
    tl.store(metrics_ptr + 3 * B + pairs, rewards_rejected, mask=in_batch)
    tl.store(metrics_ptr + 4 * B + pairs, rewards_chosen - rewards_rejected, mask=in_batch)
    tl.store(metrics_ptr + 5 * B + pairs, tl.where(rewards_chosen > rewards_rejected, 1.0, 0.0), mask=in_batch)
    # d loss_i / d token log-prob, for the tokens of pair i's chosen and rejected sequences.
    tl.store(coef_ptr + pairs, dloss_dz * chosen_scale, mask=in_batch)
    tl.store(coef_ptr + B + pairs, -dloss_dz * rejected_scale, mask=in_batch)


@triton.jit
def _backward_kernel(grad_losses_ptr, coef_ptr, seq_ids_ptr, grad_tokens_ptr, M, B, BLOCK_M: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)                  # (BLOCK_M,)
    seq = tl.load(seq_ids_ptr + offs, mask=offs < M, other=-1)
    valid = seq >= 0
    pair = tl.where(seq >= B, seq - B, seq)
    grad = (tl.load(grad_losses_ptr + pair, mask=valid, other=0.0)
            * tl.load(coef_ptr + seq, mask=valid, other=0.0))
    tl.store(grad_tokens_ptr + offs, grad.to(grad_tokens_ptr.dtype.element_ty), mask=offs < M)


def dpo_forward_triton(token_logps, seq_ids, ref_logps, beta, label_smoothing, ipo, average,
                       losses_out, metrics_out, coef_out):
    """Launch the forward kernel. token_logps and seq_ids (M,), ref_logps (2B,) or None; writes
    losses_out (B,), metrics_out (len(METRICS), B) and coef_out (2B,), all fp32 and contiguous."""
    M, B = token_logps.shape[0], losses_out.shape[0]
    block_p = max(2, min(16, triton.next_power_of_2(B)))
    _forward_kernel[(triton.cdiv(B, block_p),)](
        token_logps, seq_ids, M, token_logps if ref_logps is None else ref_logps, losses_out, metrics_out,
        coef_out, B, beta, label_smoothing, HAS_REF=ref_logps is not None, AVERAGE=average, IPO=ipo,
        BLOCK_M=4096 // block_p, BLOCK_P=block_p)


def dpo_backward_triton(grad_losses, coef, seq_ids, grad_tokens_out):
    """Launch the backward kernel: grad_tokens_out[m] = grad_losses[pair of m] * coef[seq_ids[m]]."""
    M, B = seq_ids.shape[0], grad_losses.shape[0]
    if M:
        _backward_kernel[(triton.cdiv(M, 1024),)](grad_losses, coef, seq_ids, grad_tokens_out, M, B, BLOCK_M=1024)


class DPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token_logps, seq_ids, ref_logps, n_sequences, beta, label_smoothing, loss_type, average):
        token_logps, seq_ids = token_logps.contiguous(), seq_ids.contiguous()
        ref_logps = None if ref_logps is None else ref_logps.contiguous()
        B, device = n_sequences // 2, token_logps.device
        losses = torch.empty(B, dtype=torch.float32, device=device)                        # (B,)
        metrics = torch.empty(len(METRICS), B, dtype=torch.float32, device=device)         # (6, B)
        coef = torch.empty(n_sequences, dtype=torch.float32, device=device)                # (2B,)
        dpo_forward_triton(token_logps, seq_ids, ref_logps, beta, label_smoothing, loss_type == "ipo", average,
                           losses, metrics, coef)
        ctx.mark_non_differentiable(metrics)
        ctx.save_for_backward(seq_ids, coef)
        ctx.token_dtype = token_logps.dtype
        return losses, metrics

    @staticmethod
    def backward(ctx, grad_losses, grad_metrics):
        seq_ids, coef = ctx.saved_tensors
        grad_tokens = torch.empty(seq_ids.shape[0], dtype=ctx.token_dtype, device=seq_ids.device)  # (M,)
        dpo_backward_triton(grad_losses.contiguous(), coef, seq_ids, grad_tokens)
        return grad_tokens, None, None, None, None, None, None, None


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
        losses, metrics = DPOLoss.apply(token_logps, seq_ids, ref_logps, n_sequences, beta, label_smoothing,
                                        loss_type, average)
    else:
        losses, metrics = dpo_loss_reference(token_logps, seq_ids, ref_logps, n_sequences, beta, label_smoothing,
                                             loss_type, average)
    return losses.mean(), dict(zip(METRICS, metrics))
