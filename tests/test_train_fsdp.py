"""The sharded path: FSDP2 over 2 gloo ranks under torchrun gives the losses and final weights of one
plain process on the same global batches, for SFT and DPO."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model
from train import dpo, sft
from train.distributed import checkpoint_dtype

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the model judges its own answers and learns from pairs of chosen rejected responses".split()


def write_data(path, kind, n=8):
    g = torch.Generator().manual_seed(0)

    def text(k):
        return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (k,), generator=g).tolist())
    rows = [{"id": i, "prompt": text(3 + i % 4), "response": text(2 + i % 5)} if kind == "sft" else
            {"id": i, "prompt": text(3 + i % 4), "chosen": text(2 + i % 5), "rejected": text(4)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["sft", "dpo"])
def test_two_ranks_match_one_process(tmp_path, tiny_checkpoint, trainer):
    data = write_data(tmp_path / "data.jsonl", trainer)
    common = ["--config", f"configs/{trainer}-tiny.yaml", "--model", str(tiny_checkpoint),
              "--data" if trainer == "sft" else "--pairs", str(data)]
    # Adam moves a weight whose gradient is float noise by up to lr (the update is lr * m / sqrt(v)), so two
    # correct runs can differ there by 2 lr; a larger eps makes such updates proportional to the noise.
    # Saved in bf16: each rank casts its shard before the gather (train/distributed.py's full_tensors).
    settings = ["max_steps=3", "dropout=0", "lr=1e-3", "adam_eps=1e-6", "save_every=2", "save_dtype=bfloat16"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one plain process: micro-batches of 2, accumulated twice
        (sft if trainer == "sft" else dpo).main(common + ["--out", str(tmp_path / "one"), "--set", *settings])
    finally:
        torch.set_num_threads(threads)
    # two ranks: micro-batches of 1, each rank accumulating two; blocks recomputed in the backward
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / f"train/{trainer}.py"), *common, "--out", str(tmp_path / "two"),
           "--set", *settings, "micro_batch_size=1", "activation_checkpointing=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(name):
        path = tmp_path / f"{name}.train" / "metrics.jsonl"
        return [json.loads(line)["loss"] for line in path.read_text().splitlines()]
    assert len(losses("one")) == 3
    assert losses("two") == pytest.approx(losses("one"), abs=1e-5)
    one, _ = model.load(tmp_path / "one")
    two, _ = model.load(tmp_path / "two")
    assert checkpoint_dtype(tmp_path / "one") == checkpoint_dtype(tmp_path / "two") == torch.bfloat16
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        # the fp32 weights agree within 1e-5; rounded to bf16 they may land one bf16 step apart
        assert ((a.float() - b.float()).abs() <= 2 ** -7 * a.float().abs() + 1e-5).all(), name
    assert sorted(p.name for p in (tmp_path / "two.train" / "state").glob("*.distcp")) == ["__0_0.distcp",
                                                                                         "__1_0.distcp"]
    assert (tmp_path / "two.train" / "snapshots" / "step-000002" / "model.safetensors").is_file()
