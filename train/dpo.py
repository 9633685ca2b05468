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
def reference_logps(net, pairs, lengths, session, average: bool) -> torch.Tensor:
    """(n_pairs, 2) chosen and rejected log-probs under net in eval mode, computed over all ranks."""
    group, mbs = session.group, session.cfg.micro_batch_size
    order = sorted(range(len(pairs)), key=lambda i: lengths[i])
    chunks = [order[i:i + mbs] for i in range(0, len(order), mbs)]
    out = torch.zeros(len(pairs), 2, dtype=torch.float32, device=group.device)
    net.eval()
    for r in tqdm(range(math.ceil(len(chunks) / group.world)), desc="reference log-probs", disable=group.rank != 0,
                  dynamic_ncols=True):
        j = r * group.world + group.rank
        chunk = chunks[j] if j < len(chunks) else chunks[0]  # a spare forward keeps the ranks' collectives in step
        logps = pair_logps(net, pair_batch(pairs, chunk, session.tokenizer.pad_id, group.device), average)
        if j < len(chunks):
            out[chunk] = logps.view(2, -1).T
    net.train()
    reshard(net)
    if dist.is_initialized():
        dist.all_reduce(out)
    return out


def cached_reference(path, net, pairs, lengths, session, key: dict) -> torch.Tensor:
    """The reference log-probs from `path` if it was computed for `key`, else computed and saved."""
    group = session.group
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached["key"] == key:
            return cached["logps"].to(group.device)
        if group.rank == 0:
            print(f"dpo: {path} was computed for other pairs, model or settings; recomputing", file=sys.stderr)
    logps = reference_logps(net, pairs, lengths, session, key["average"])
    if group.rank == 0:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save({"key": key, "logps": logps.cpu()}, tmp)
        os.replace(tmp, path)
    return logps


def reference_scorer(session, net, pairs, lengths, model_dir, build_args: dict, key: dict):
    """reference(micro, batch) -> (2B,) the reference log-probs of a micro-batch's pairs: read from the cache
    (reference: cached, computed before any training, while the policy still is the reference), or from a
    frozen second copy of the model (reference: live)."""
    group, average = session.group, key["average"]
    if session.cfg.reference == "cached":
        ref_logps = cached_reference(session.run.train / "ref_logps.pt", net, pairs, lengths, session, key)

        def reference(micro, batch):
            rows = to_device(torch.tensor(micro), group.device)  # no wait for the GPU
            return ref_logps[rows].T.flatten()                   # (2B,) chosen, rejected
    else:
        frozen = build(model_dir, group, dropout=0.0, trainable=False, **build_args).eval()

        @torch.no_grad()
        def reference(micro, batch):
            logps = pair_logps(frozen, batch, average)
            reshard(frozen)
            return logps
    return reference


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser, "configs/dpo.yaml")
    parser.add_argument("--pairs", required=True, metavar="JSONL", help="preference pairs (judge/pairs.py)")
    args = parser.parse_args(argv)
    group = setup()
    try:
        # 1. the config, the checkpoint and the pairs, checked before anything is written
        session = start(args, DPOConfig, group)
        cfg, run = session.cfg, session.run
        pairs, report = read_pairs(args.pairs, session.tokenizer, session.max_len)
        lengths = [max(len(c.tokens), len(r.tokens)) for c, r in pairs]
        if group.rank == 0:
            print(f"dpo: pairs: {report}", file=sys.stderr)
        batches, plan = plan_steps(lengths, cfg, group, args.pairs)
        open_run_dir(session)
        if group.rank == 0:
            print(f"dpo: {len(plan)} steps of {cfg.batch_size} pairs on {group.world} rank(s); output {run.out}, "
                  f"training files in {run.train}", file=sys.stderr)
        # 2. the policy, and the reference: the same checkpoint (the paper's M_t is both)
        average = LOSSES[cfg.loss_type].average  # IPO compares mean token log-probs, DPO sums
        build_args = dict(param_dtype=cfg.param_dtype, activation_checkpointing=cfg.activation_checkpointing)
        net = build(args.model, group, dropout=cfg.dropout, **build_args)
        check_weights(net, group, args.model)  # before the reference log-probs come from it
        model_key, data_key = checkpoint_fingerprint(args.model), tokens_fingerprint(pairs)
        code = code_digest("train/dpo.py")
        key = {"pairs": data_key, "model": model_key, "average": average, "code": code,
               "dtype": f"{group.device.type} {dtype_name(net.compute_dtype)}"}  # CPU autocast != CUDA's bf16 weights
        reference = reference_scorer(session, net, pairs, lengths, args.model, build_args, key)
        # 3. the optimizer, and the training state to resume from
        optimizer = make_optimizer(net, cfg)
        meta = {"model": model_key, "data": data_key, "steps": len(plan), "code": code}  # see train/sft.py
        done = load_state(run, net, optimizer, group, meta) if args.resume else 0

        # 4. train: one micro-batch of pairs through the policy, the reference and the loss
        def micro_step(step, micro):
            batch = pair_batch(pairs, micro, session.tokenizer.pad_id, group.device)
            policy = pair_logps(net, batch, average)                                # (2B,)
            loss, metrics = preference_loss(policy, reference(micro, batch), cfg.beta, cfg.loss_type,
                                            cfg.loss_options)
            share = len(micro) / cfg.batch_size  # the step's loss is the mean over all its pairs
            (loss * share * group.world).backward()  # FSDP averages gradients over ranks
            return {"loss": loss.detach() * share, "tokens": batch.n_tokens,  # device tensors, read once a step
                    **{k: v.detach().sum() / cfg.batch_size for k, v in metrics.items()}}

        train_and_save(session, net, optimizer, plan, micro_step, done, meta, "dpo",
                       lambda last: f", last loss {last['loss']:.4f}, reward accuracy {last['accuracy']:.2f}, "
                                    f"margin {last['margins']:.4f}")
    except (FormatError, NonFiniteLoss) as e:
        fail(str(e), group)
    teardown(group)


if __name__ == "__main__":
    main()
