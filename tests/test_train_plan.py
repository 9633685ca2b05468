"""train/plan.py: hand-computed numbers for a small model, and its per-block activation count against the
tensors autograd actually keeps for the backward."""
import json

import pytest
import torch

import model
from model.llama import rotary_cos_sin, rotary_frequencies
from train import plan

SMALL = model.ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=400, multiple_of=16)


def test_small_model_by_hand():
    # block: wq 64x64 + wk, wv 32x64 + wo 64x64 + w1, w2, w3 176x64 + two norms of 64 = 46208
    # root: embeddings 400x64 + output 400x64 + final norm 64 = 51264; total 2 * 46208 + 51264 = 143680
    p = plan.plan(SMALL, gpus=2, micro_batch=2, seq_len=8, compute_bytes=2, dropout=True)
    assert (p.parameters, p.gradients, p.optimizer) == (4 * 143680 / 2, 4 * 143680 / 2, 8 * 143680 / 2)
    assert p.gathered_weights == 2 * (51264 + 2 * 46208)
    assert p.gathered_grads == 2 * 51264 + 6 * 46208
    # per token and block: 4 * 2 * 64 + 2 * (6 * 64 + 2 * 32 + 4 * 176) + 2 * 2 * 64 + 4 * (2 + 4) = 3096
    # outside the blocks, 16 tokens: 16 * (4 * 16 + 4 * 64 + 2 * 64 + 2 * 64 + 8) + 16 logits rows * 400 * 6
    # ... and the fp32 sum of the output weight's gradient, 4 * 400 * 64
    outside = 16 * 584 + 16 * 400 * 6 + 4 * 400 * 64
    assert p.activations == 2 * 3096 * 16 + outside
    assert p.activations_checkpointed == 2 * 2 * 64 * 16 + 3096 * 16 + outside
    assert p.total == p.states + p.activations


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_block_activations_are_what_autograd_keeps(dtype, dropout):
    args = model.ModelArgs(**{**vars(SMALL), "dropout": dropout})
    net = model.Transformer(args).init_weights(seed=0).to(dtype).train()
    B, T = 2, 32
    x = torch.randn(B, T, args.dim, dtype=dtype, requires_grad=True)
    cos, sin = rotary_cos_sin(torch.arange(T).expand(B, T), rotary_frequencies(args))
    shared = {p.untyped_storage().data_ptr() for p in net.parameters()} | {cos.data_ptr(), sin.data_ptr()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in shared:
            kept[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net.layers[0](x, cos, sin)
    a = torch.finfo(dtype).bits // 8
    assert sum(kept.values()) == plan.block_activation_bytes(args, a, dropout > 0) * B * T


def test_cli_prints_the_table_and_json(capsys):
    plan.main(["--model", "llama2-70b", "--gpus", "64", "--micro-batch", "1", "--seq-len", "2048"])
    out = capsys.readouterr().out
    assert "llama2-70b: 68.98B parameters on 64 GPUs" in out and "total with activation checkpointing" in out
    plan.main(["--model", "llama2-70b", "--gpus", "64", "--json"])
    numbers = json.loads(capsys.readouterr().out)
    assert numbers["parameters"] == pytest.approx(4 * 68.98e9 / 64, rel=1e-3)
    assert numbers["total_checkpointed"] < numbers["total"]


@pytest.mark.parametrize("config", ["configs/sft-70b.yaml", "configs/dpo-70b.yaml"])
def test_the_shipped_70b_settings_fit_80_gb_gpus(config, capsys):
    """The 70B trainer configs, on the 32 GPUs they name: a batch every rank can take a share of, activation
    checkpointing on, and under 80 GB a GPU with room for the CUDA context and the allocator."""
    from train.config import DPOConfig, SFTConfig, load_config
    cfg = load_config(DPOConfig if "dpo" in config else SFTConfig, config)
    assert cfg.activation_checkpointing and cfg.batch_size % (cfg.micro_batch_size * 32) == 0
    assert "32 GPUs" in open(config).read()
    plan.main(["--model", "llama2-70b", "--gpus", "32", "--config", config, "--json", *["--dpo"] * ("dpo" in config)])
    numbers = json.loads(capsys.readouterr().out)
    assert numbers["activation_checkpointing"] is True
    assert numbers["total_checkpointed"] < 70 * 2 ** 30 < numbers["total"]


def test_a_batch_the_gpus_cannot_share_is_refused(capsys):
    """The paper's 16 pairs a step on 64 GPUs: the trainers refuse it, and so does the plan, saying why."""
    with pytest.raises(SystemExit) as stop:
        plan.main(["--model", "llama2-70b", "--gpus", "64", "--config", "configs/dpo.yaml", "--dpo"])
    assert stop.value.code == 1
    assert "batch_size 16 is not a multiple of micro_batch_size 1 x 64 GPUs" in capsys.readouterr().err
