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
      tokens' hidden states for the fused log-prob (a d) and their log-probs (8), and one chunk of
      logits (C x vocab, in a + 4 bytes; C as kernels.linear_logprob picks it).
Not counted: the CUDA context and allocator slack (budget a few GB), the activation gradients in
flight during the backward (about one block's worth), and with DPO's `reference: live` the second
model's fp32 shards (4 P / G) and its gathered weights.
"""
import argparse
import json
from dataclasses import dataclass
from pathlib import Path

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


def apply_config(a) -> None:
    """Take --micro-batch, --seq-len, --fp32 and --no-dropout from the trainer YAML a.config (an SFT config, or
    with --dpo a DPO one; adding a.checkpointing), and check that its batch_size splits over a.gpus ranks as the trainers require."""
    cfg = load_config(DPOConfig if a.dpo else SFTConfig, a.config)
    a.micro_batch, a.seq_len, a.fp32 = cfg.micro_batch_size, cfg.max_seq_len, cfg.param_dtype == "float32"
    a.no_dropout, a.checkpointing = cfg.dropout == 0, cfg.activation_checkpointing
    if cfg.batch_size % (cfg.micro_batch_size * a.gpus):
        raise ValueError(f"{a.config}: batch_size {cfg.batch_size} is not a multiple of micro_batch_size "
                         f"{cfg.micro_batch_size} x {a.gpus} GPUs: the trainer would refuse to start")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a preset (llama2-70b, ...) or a checkpoint directory")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs the model is sharded over")
    parser.add_argument("--config", help="a trainer YAML (configs/sft-70b.yaml; with --dpo configs/dpo-70b.yaml, ...): "
                        "micro-batch, sequence length, dtype, dropout and checkpointing are its values, and its "
                        "batch_size is checked against --gpus")
    parser.add_argument("--micro-batch", type=int, default=1, help="examples (SFT) or pairs (DPO) per forward")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--dpo", action="store_true", help="a pair is two sequences (chosen and rejected)")
    parser.add_argument("--fp32", action="store_true", help="compute in fp32 (param_dtype: float32)")
    parser.add_argument("--no-dropout", action="store_true", help="dropout 0: no masks kept")
    parser.add_argument("--json", action="store_true", help="print the numbers (bytes) as JSON")
    a = parser.parse_args(argv)
    try:
        args = load_args(a.model)
        if a.config:
            apply_config(a)
    except (FormatError, ValueError) as e:
        parser.exit(1, f"error: {e}\n")
    sequences = a.micro_batch * (2 if a.dpo else 1)
    p = plan(args, a.gpus, sequences, a.seq_len, 4 if a.fp32 else 2, not a.no_dropout)
    checkpointing = getattr(a, "checkpointing", None)  # known with --config
    if a.json:
        print(json.dumps({**vars(p), "total": p.total, "total_checkpointed": p.total_checkpointed,
                          **({"activation_checkpointing": checkpointing} if a.config else {})}))
        return
    with torch.device("meta"):
        n = model.Transformer(args).num_params()
    print(f"{a.model}: {n / 1e9:.2f}B parameters on {a.gpus} GPUs, full sharding; micro-batch of {sequences} "
          f"sequence(s) x {a.seq_len} tokens, {'fp32' if a.fp32 else 'bf16'} compute")
    rows = [("parameters (fp32 shards)", p.parameters), ("gradients (fp32 shards)", p.gradients),
            ("optimizer state (AdamW, fp32)", p.optimizer), ("gathered weights (transient)", p.gathered_weights),
            ("gathered gradients (transient)", p.gathered_grads),
            ("activations", p.activations), ("activations, checkpointing per block", p.activations_checkpointed),
            ("total", p.total), ("total with activation checkpointing", p.total_checkpointed)]
    for label, value in rows:
        print(f"  {label:<40} {value / GiB:9.2f} GiB")
    print("  (plus the CUDA context and allocator slack: budget a few GiB)")
    if a.config:
        total = p.total_checkpointed if checkpointing else p.total
        print(f"{a.config}: activation checkpointing {'on' if checkpointing else 'off'}: {total / GiB:.1f} GiB per GPU")


if __name__ == "__main__":
    main()
