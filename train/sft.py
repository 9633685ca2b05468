"""Supervised fine-tuning on chat data, the loss on response tokens only (M1 and the SFT baseline).

    python train/sft.py --config configs/sft.yaml --model checkpoints/llama2-70b \\
        --data data/seed/ift.jsonl runs/R/eft.jsonl --out runs/R/iter1/model
    torchrun --nproc_per_node=8 train/sft.py ...                      # FSDP over 8 GPUs
    python train/sft.py ... --set lr=1e-5 max_steps=100               # override config keys
    python train/sft.py ... --resume                                  # continue after a crash

Input lines: {"prompt": str, "response": str} or {"messages": [...], "response": str} (IFT, and EFT
already written as prompt/response), several files in one run. The loss is the mean negative
log-likelihood of the response tokens of a step's batch, the end-of-turn token included (see
train/data.py for which tokens those are and how long examples are cut).
Output: OUT/ the fine-tuned checkpoint; OUT.train/ metrics.jsonl, config.yaml, state/ and
snapshots/step-NNNNNN/ every save_every steps (see train/loop.py). Settings: configs/sft.yaml.
"""
import argparse
import sys

from model.checkpoint import fingerprint as checkpoint_fingerprint
from model.errors import FormatError
from model.sources import code_digest
from train.config import SFTConfig
from train.data import collate, read_sft, tokens_fingerprint
from train.distributed import build, setup, teardown
from train.loop import (NonFiniteLoss, add_args, check_weights, fail, load_state, make_optimizer, open_run_dir,
                        plan_steps, start, train_and_save)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser, "configs/sft.yaml")
    parser.add_argument("--data", nargs="+", required=True, metavar="JSONL", help="training data, one or more files")
    args = parser.parse_args(argv)
    group = setup()
    try:
        session = start(args, SFTConfig, group)
        cfg, run = session.cfg, session.run
        examples, report = read_sft(args.data, session.tokenizer, session.max_len)
        if group.rank == 0:
            print(f"sft: data: {report}", file=sys.stderr)
        batches, plan = plan_steps([len(e.tokens) for e in examples], cfg, group, ", ".join(map(str, args.data)))
        open_run_dir(session)
        if group.rank == 0:
            print(f"sft: {len(plan)} steps of {cfg.batch_size} examples on {group.world} rank(s); output {run.out}, "
                  f"training files in {run.train}", file=sys.stderr)
        # the step's loss is a mean over all its response tokens, on every rank and micro-batch
        loss_tokens = [sum(len(examples[i].tokens) - examples[i].n_prompt for i in b) for b in batches]
        net = build(args.model, group, dropout=cfg.dropout, param_dtype=cfg.param_dtype,
                    activation_checkpointing=cfg.activation_checkpointing)
        check_weights(net, group, args.model)
        optimizer = make_optimizer(net, cfg)
        # the code too (model/sources.py): a run interrupted before an edit of the method is not resumed after it
        meta = {"model": checkpoint_fingerprint(args.model), "data": tokens_fingerprint(examples), "steps": len(plan),
                "code": code_digest("train/sft.py")}
        done = load_state(run, net, optimizer, group, meta) if args.resume else 0

        def micro_step(step, micro):
            batch = collate([examples[i] for i in micro], session.tokenizer.pad_id, group.device)
            loss = -net(batch.inputs, batch.index, batch.labels).sum() / loss_tokens[step]
            (loss * group.world).backward()  # FSDP averages gradients over ranks; the loss is already global
            return {"loss": loss.detach(), "tokens": batch.n_tokens}  # a device tensor, read once a step

        train_and_save(session, net, optimizer, plan, micro_step, done, meta, "sft",
                       lambda last: f", last loss {last['loss']:.4f}")
    except (FormatError, NonFiniteLoss) as e:
        fail(str(e), group)
    teardown(group)


if __name__ == "__main__":
    main()
