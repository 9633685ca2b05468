"""Per-GPU memory of a training run under full sharding (FSDP2), to size a cluster before renting it.

    python train/plan.py --model llama2-70b --gpus 32 --config configs/dpo-70b.yaml --dpo
    python train/plan.py --model llama2-70b --gpus 64 --micro-batch 1 --seq-len 2048
    python train/plan.py --model checkpoints/M1 --gpus 8 --micro-batch 2 --seq-len 2048 --dpo

With --config (a trainer YAML) the micro-batch, sequence length, dropout, compute dtype and activation
checkpointing are the config's, and the plan says whether its batch_size can be split over the GPUs
(every rank takes micro_batch_size whole examples or pairs per forward) -- what the trainer checks first.

What is counted, in bytes, for P parameters over G GPUs, as train/distributed.py sets FSDP up:
  parameters        4 P / G   fp32 master shards
  gradients         4 P / G   fp32 shards (reduced in fp32)
  optimizer state   8 P / G   AdamW's two fp32 moments
  gathered weights  a (R + 2 Bk)      the root unit (embeddings, output, final norm: R parameters) stays
                                      gathered through forward and backward, blocks (Bk each) one at a
                                      time plus the one being prefetched, in the compute dtype (a bytes)
  gathered grads    a R + (a + 4) Bk  the root's full gradients, and one block's before its fp32
                                      reduce-scatter
  activations       what autograd keeps for the backward, per token of the micro-batch:
    per block: 4 * 2d   (the two RMSNorm inputs, upcast to fp32)
             + a * (6d + 2 kv + 4 f)   (normed inputs, q, k, v, attention output, FFN w1/w3/silu/product)
             + a * 2d if dropout       (the two residual dropout masks)
             + 4 * (2 + n_heads)       (RMSNorm scales, attention log-sum-exp: flash attention, no T x T)
      with d = dim, kv = n_kv_heads * head_dim, f = the FFN width; measured against autograd's saved
      tensors in tests/test_train_plan.py.
    without checkpointing: n_layers blocks. With checkpointing: each block keeps only its input
      (a * d), and one block is recomputed at a time in the backward (+ one block's worth).
    outside the blocks: the rotary tables (4 * head_dim), the final norm (4d + a d), the response
      tokens' hidden states for the fused log-prob (a d) and their log-probs (8), one chunk of
      logits (C x vocab, in a + 4 bytes; C as kernels.linear_logprob picks it), and with bf16 compute
      the fp32 buffer in which linear_logprob sums the output weight's gradient (4 x vocab x d).
Not counted: the CUDA context and allocator slack (budget a few GB), the activation gradients in
flight during the backward (about one block's worth), and with DPO's `reference: live` the second
model's fp32 shards (4 P / G) and its gathered weights.
"""
import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

import model
from kernels.linear_logprob import default_chunk_size
from model.checkpoint import read_params
from model.errors import FormatError
from train.config import DPOConfig, SFTConfig, load_config

GiB = 2 ** 30


@dataclass
class Plan:
    parameters: float
    gradients: float
    optimizer: float
    gathered_weights: float
    gathered_grads: float
    activations: float
    activations_checkpointed: float

    @property
    def states(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.gathered_weights + self.gathered_grads

    @property
    def total(self) -> float:
        return self.states + self.activations

    @property
    def total_checkpointed(self) -> float:
        return self.states + self.activations_checkpointed


def block_activation_bytes(args: model.ModelArgs, a: int, dropout: bool) -> int:
    """Bytes autograd keeps per token for one transformer block (see the module doc)."""
    d, kv, f = args.dim, args.n_kv_heads * args.head_dim, args.hidden_dim
    return 4 * 2 * d + a * (6 * d + 2 * kv + 4 * f) + (a * 2 * d if dropout else 0) + 4 * (2 + args.n_heads)


def plan(args: model.ModelArgs, gpus: int, micro_batch: int, seq_len: int, compute_bytes: int = 2,
         dropout: bool = True) -> Plan:
    """Per-GPU bytes for training `args` on `gpus` GPUs, micro_batch sequences of seq_len tokens."""
    with torch.device("meta"):
        net = model.Transformer(args)
    P = net.num_params()
    block = sum(p.numel() for p in net.layers[0].parameters())
    root = P - args.n_layers * block
    a, d, tokens = compute_bytes, args.dim, micro_batch * seq_len
    per_block = block_activation_bytes(args, a, dropout) * tokens
    chunk = default_chunk_size(tokens, args.vocab_size, d)
    outside = tokens * (4 * args.head_dim + 4 * d + a * d + a * d + 8) + min(chunk, tokens) * args.vocab_size * (a + 4)
    outside += 4 * args.vocab_size * d if a < 4 else 0  # linear_logprob's fp32 sum of the output weight's gradient
    return Plan(
        parameters=4 * P / gpus, gradients=4 * P / gpus, optimizer=8 * P / gpus,
        gathered_weights=a * (root + 2 * block), gathered_grads=a * root + (a + 4) * block,
        activations=args.n_layers * per_block + outside,
        activations_checkpointed=args.n_layers * a * d * tokens + per_block + outside)


def load_args(name: str) -> model.ModelArgs:
    if name in model.PRESETS:
        return model.PRESETS[name]
    if Path(name).is_dir():
        return read_params(name)
    raise FormatError(f"{name}: neither a preset ({', '.join(model.PRESETS)}) nor a checkpoint directory")


@dataclass
class Run:
    """What the plan needs to know of a training run, from the flags or from a trainer config."""
    micro_batch: int                # examples (SFT) or pairs (DPO) per forward
    seq_len: int
    fp32: bool
    dropout: bool
    checkpointing: Optional[bool]   # what the config says; None: not known (the plan shows both)


def run_from_config(path: str, dpo: bool, gpus: int) -> Run:
    """The run a trainer YAML (an SFT one, or with dpo a DPO one) describes, after checking that its batch_size
    splits over `gpus` ranks as the trainers require."""
    cfg = load_config(DPOConfig if dpo else SFTConfig, path)
    if cfg.batch_size % (cfg.micro_batch_size * gpus):
        raise ValueError(f"{path}: batch_size {cfg.batch_size} is not a multiple of micro_batch_size "
                         f"{cfg.micro_batch_size} x {gpus} GPUs: the trainer would refuse to start")
    return Run(cfg.micro_batch_size, cfg.max_seq_len, cfg.param_dtype == "float32", cfg.dropout > 0,
               cfg.activation_checkpointing)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a preset (llama2-70b, ...) or a checkpoint directory")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs the model is sharded over")
    parser.add_argument("--config", help="a trainer YAML (configs/sft-70b.yaml; with --dpo configs/dpo-70b.yaml, ...): "
                        "micro-batch, sequence length, dtype, dropout and checkpointing are its values, and its "
                        "batch_size is checked against --gpus")
    parser.add_argument("--micro-batch", type=int, help="examples (SFT) or pairs (DPO) per forward (default 1)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 2048)")
    parser.add_argument("--dpo", action="store_true", help="a pair is two sequences (chosen and rejected)")
    parser.add_argument("--fp32", action="store_true", help="compute in fp32 (param_dtype: float32)")
    parser.add_argument("--no-dropout", action="store_true", help="dropout 0: no masks kept")
    parser.add_argument("--json", action="store_true", help="print the numbers (bytes) as JSON")
    args = parser.parse_args(argv)
    given = [flag for flag, value in (("--micro-batch", args.micro_batch), ("--seq-len", args.seq_len), ("--fp32", args.fp32),
                                      ("--no-dropout", args.no_dropout)) if value]
    if args.config and given:
        parser.exit(1, f"error: {', '.join(given)}: --config gives these; leave them out, or leave out --config\n")
    try:
        model_args = load_args(args.model)
        run = (run_from_config(args.config, args.dpo, args.gpus) if args.config else
               Run(args.micro_batch or 1, args.seq_len or 2048, args.fp32, not args.no_dropout, checkpointing=None))
    except (FormatError, ValueError) as e:
        parser.exit(1, f"error: {e}\n")
    sequences = run.micro_batch * (2 if args.dpo else 1)
    p = plan(model_args, args.gpus, sequences, run.seq_len, 4 if run.fp32 else 2, run.dropout)
    if args.json:
        print(json.dumps({**vars(p), "total": p.total, "total_checkpointed": p.total_checkpointed,
                          **({"activation_checkpointing": run.checkpointing} if args.config else {})}))
        return
    with torch.device("meta"):
        n = model.Transformer(model_args).num_params()
    print(f"{args.model}: {n / 1e9:.2f}B parameters on {args.gpus} GPUs, full sharding; micro-batch of {sequences} "
          f"sequence(s) x {run.seq_len} tokens, {'fp32' if run.fp32 else 'bf16'} compute")
    rows = [("parameters (fp32 shards)", p.parameters), ("gradients (fp32 shards)", p.gradients),
            ("optimizer state (AdamW, fp32)", p.optimizer), ("gathered weights (transient)", p.gathered_weights),
            ("gathered gradients (transient)", p.gathered_grads),
            ("activations", p.activations), ("activations, checkpointing per block", p.activations_checkpointed),
            ("total", p.total), ("total with activation checkpointing", p.total_checkpointed)]
    for label, value in rows:
        print(f"  {label:<40} {value / GiB:9.2f} GiB")
    print("  (plus the CUDA context and allocator slack: budget a few GiB)")
    if args.config:
        total = p.total_checkpointed if run.checkpointing else p.total
        print(f"{args.config}: activation checkpointing {'on' if run.checkpointing else 'off'}: "
              f"{total / GiB:.1f} GiB per GPU")


if __name__ == "__main__":
    main()
