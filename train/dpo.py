"""DPO on preference pairs: M_{t+1} from M_t, which is also the reference model.

    python train/dpo.py --config configs/dpo.yaml --model runs/R/iter1/model \\
        --pairs runs/R/iter2/pairs.jsonl --out runs/R/iter2/model
    torchrun --nproc_per_node=8 train/dpo.py ...                      # FSDP over 8 GPUs
    python train/dpo.py ... --set beta=0.2 reference=live             # override config keys
    python train/dpo.py ... --resume                                  # continue after a crash

Input lines (judge/pairs.py writes them): {"prompt": str (a user message), "chosen": str,
"rejected": str, ...}, with "messages" (a whole conversation, which is then the prompt side) for a
multi-turn prompt. Pairs with an empty chosen or rejected answer, or with chosen == rejected,
are skipped and counted; long ones are cut as train/data.py says.

A step takes batch_size pairs. Each micro-batch's chosen and rejected answers go through one
forward as 2B right-padded rows (chosen 0..B-1, rejected B..2B-1); a sequence's log-prob is the sum
of its response tokens' log-probs (the mean for losses that ask for it, IPO), computed from the final
hidden states by kernels.linear_logprob, and the loss named by `loss_type` (train/losses.py: sigmoid
DPO, IPO, robust DPO, hinge, or one you register) turns those into the loss and its metrics. The
reference log-probs are computed once before training by the same model in eval mode (no dropout)
and cached in OUT.train/ref_logps.pt, keyed by the tokenised pairs, the checkpoint and the dtype,
so the reference model is never held while the policy trains; `reference: live` keeps a frozen
copy instead, for experiments. Output: as train/sft.py (OUT/, OUT.train/). Settings: configs/dpo.yaml.
"""
import argparse
import math
import os
import sys

import torch
import torch.distributed as dist
from tqdm import tqdm

import kernels
from model.checkpoint import fingerprint as checkpoint_fingerprint
from model.dtypes import dtype_name
from model.errors import FormatError
from model.sources import code_digest
from train.config import DPOConfig
from train.data import collate, read_pairs, to_device, tokens_fingerprint
from train.distributed import build, reshard, setup, teardown
from train.loop import (NonFiniteLoss, add_args, check_weights, fail, load_state, make_optimizer, open_run_dir,
                        plan_steps, start, train_and_save)
from train.losses import LOSSES, preference_loss


def pair_batch(pairs, indices, pad_id, device):
    """One forward's rows for these pairs: their chosen answers, then their rejected ones."""
    return collate([pairs[i][0] for i in indices] + [pairs[i][1] for i in indices], pad_id, device)


def pair_logps(net, batch, average: bool) -> torch.Tensor:
    """(2B,) log-probs of a pair batch's sequences under net."""
    token_logps = net(batch.inputs, batch.index, batch.labels)
    return kernels.sequence_logps(token_logps, batch.seq_ids, batch.inputs.shape[0], average)


@torch.no_grad()
def reference_logps(net, pairs, lengths, s, average: bool) -> torch.Tensor:
    """(n_pairs, 2) chosen and rejected log-probs under net in eval mode, computed over all ranks."""
    d, mbs = s.d, s.cfg.micro_batch_size
    order = sorted(range(len(pairs)), key=lambda i: lengths[i])
    chunks = [order[i:i + mbs] for i in range(0, len(order), mbs)]
    out = torch.zeros(len(pairs), 2, dtype=torch.float32, device=d.device)
    net.eval()
    for r in tqdm(range(math.ceil(len(chunks) / d.world)), desc="reference log-probs", disable=d.rank != 0,
                  dynamic_ncols=True):
        j = r * d.world + d.rank
        chunk = chunks[j] if j < len(chunks) else chunks[0]  # a spare forward keeps the ranks' collectives in step
        logps = pair_logps(net, pair_batch(pairs, chunk, s.tokenizer.pad_id, d.device), average)
        if j < len(chunks):
            out[chunk] = logps.view(2, -1).T
    net.train()
    reshard(net)
    if dist.is_initialized():
        dist.all_reduce(out)
    return out


def cached_reference(path, net, pairs, lengths, s, key: dict) -> torch.Tensor:
    """The reference log-probs from `path` if it was computed for `key`, else computed and saved."""
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached["key"] == key:
            return cached["logps"].to(s.d.device)
        if s.d.rank == 0:
            print(f"dpo: {path} was computed for other pairs, model or settings; recomputing", file=sys.stderr)
    logps = reference_logps(net, pairs, lengths, s, key["average"])
    if s.d.rank == 0:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save({"key": key, "logps": logps.cpu()}, tmp)
        os.replace(tmp, path)
    return logps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser, "configs/dpo.yaml")
    parser.add_argument("--pairs", required=True, metavar="JSONL", help="preference pairs (judge/pairs.py)")
    a = parser.parse_args(argv)
    d = setup()
    try:
        s = start(a, DPOConfig, d)
        cfg, run = s.cfg, s.run
        pairs, report = read_pairs(a.pairs, s.tokenizer, s.max_len)
        lengths = [max(len(c.tokens), len(r.tokens)) for c, r in pairs]
        if d.rank == 0:
            print(f"dpo: pairs: {report}", file=sys.stderr)
        batches, plan = plan_steps(lengths, cfg, d, a.pairs)
        open_run_dir(s)
        if d.rank == 0:
            print(f"dpo: {len(plan)} steps of {cfg.batch_size} pairs on {d.world} rank(s); output {run.out}, "
                  f"training files in {run.train}", file=sys.stderr)
        average = LOSSES[cfg.loss_type].average  # IPO compares mean token log-probs, DPO sums
        build_args = dict(param_dtype=cfg.param_dtype, activation_checkpointing=cfg.activation_checkpointing)
        net = build(a.model, d, dropout=cfg.dropout, **build_args)
        check_weights(net, d, a.model)  # before the reference log-probs come from it
        model_key, data_key = checkpoint_fingerprint(a.model), tokens_fingerprint(pairs)
        code = code_digest("train/dpo.py")
        if cfg.reference == "cached":  # before any training: the policy is still the reference
            key = {"pairs": data_key, "model": model_key, "average": average, "code": code,
                   "dtype": f"{d.device.type} {dtype_name(net.compute_dtype)}"}  # CPU autocast != CUDA's bf16 weights
            ref_logps = cached_reference(run.train / "ref_logps.pt", net, pairs, lengths, s, key)
        else:
            reference = build(a.model, d, dropout=0.0, trainable=False, **build_args).eval()
        optimizer = make_optimizer(net, cfg)
        meta = {"model": model_key, "data": data_key, "steps": len(plan), "code": code}  # see train/sft.py
        done = load_state(run, net, optimizer, d, meta) if a.resume else 0

        def micro_step(step, micro):
            batch = pair_batch(pairs, micro, s.tokenizer.pad_id, d.device)
            policy = pair_logps(net, batch, average)                                  # (2B,)
            if cfg.reference == "cached":
                rows = to_device(torch.tensor(micro), d.device)                             # no wait for the GPU
                ref = ref_logps[rows].T.flatten()                                           # (2B,) chosen, rejected
            else:
                with torch.no_grad():
                    ref = pair_logps(reference, batch, average)
                reshard(reference)
            loss, metrics = preference_loss(policy, ref, cfg.beta, cfg.loss_type, cfg.loss_options)
            share = len(micro) / cfg.batch_size  # the step's loss is the mean over all its pairs
            (loss * share * d.world).backward()  # FSDP averages gradients over ranks
            return {"loss": loss.detach() * share, "tokens": batch.n_tokens,  # device tensors, read once a step
                    **{k: v.detach().sum() / cfg.batch_size for k, v in metrics.items()}}

        train_and_save(s, net, optimizer, plan, micro_step, done, meta, "dpo",
                       lambda last: f", last loss {last['loss']:.4f}, reward accuracy {last['accuracy']:.2f}, "
                                    f"margin {last['margins']:.4f}")
    except (FormatError, NonFiniteLoss) as e:
        fail(str(e), d)
    teardown(d)


if __name__ == "__main__":
    main()
