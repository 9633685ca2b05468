"""The Triton kernels of kernels/dpo_loss.py (which says what they compute) and their autograd.Function.

Imported only when a Triton kernel is about to run: kernels/ must import where Triton does not.
"""
import torch
import triton
import triton.language as tl

from kernels.dpo_loss import METRICS


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
