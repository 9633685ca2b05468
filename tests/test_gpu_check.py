"""bench/gpu_check.py where there is no GPU: it says so in one line and runs nothing; with the hidden --cpu-smoke
flag it runs every check at tiny sizes on the CPU, which catches API mistakes before a GPU is lent; and its SDPA
kernel detector names the kernel that ran."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
NO_GPU = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, "CUDA_VISIBLE_DEVICES": ""}


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_in_one_line_and_runs_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "report.json")], cwd=tmp_path,
                          env=NO_GPU, capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device here (torch ") and \
        lines[0].endswith("nothing was run"), lines
    assert not (tmp_path / "report.json").exists()


@pytest.mark.slow  # about 25 s on 2 cores, most of it the trainer's four child processes
def test_cpu_smoke_runs_every_check(tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], cwd=tmp_path, env=NO_GPU,
                          capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    names = [check.__name__.removeprefix("check_") for check in gpu_check().CHECKS]
    statuses = {name: result["status"] for name, result in report["checks"].items()}
    assert list(statuses) == names and len(names) == 9
    assert {name for name, status in statuses.items() if status == "FAIL"} == set(), done.stdout
    assert {name for name, status in statuses.items() if status == "NOT RUN"} == {"flash_attn"}  # CUDA only
    assert done.returncode == 0

    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [f"{statuses[name]} {name}" for name in names]
    assert lines[-1].startswith(f"gpu_check: {len(names) - 1} passed, 0 failed, 1 not run")
    assert report["counts"] == {"PASS": len(names) - 1, "FAIL": 0, "NOT RUN": 1}
    assert report["mode"] == "cpu-smoke" and report["environment"]["torch"] == torch.__version__
    assert all(status.startswith("ok") for status in report["environment"]["ours"].values())

    numbers = {name: result["numbers"] for name, result in report["checks"].items()}
    assert numbers["kernel_tests"]["passed"] == 1
    assert numbers["logprob_int64"]["logp_max_error"] == 0  # on the CPU logprob is its reference
    assert [numbers["sampler"][f"tiny batch {B}"]["tokens"] for B in (1, 2)] == [8, 16]  # every row ran to the end
    trainer = numbers["trainer"]
    assert len(trainer["losses"]) == 6 and trainer["resumed_losses"] == trainer["losses"]  # fp32 CPU: exact
    assert 2 <= trainer["killed_at_step"] < 6


def test_our_packages_import_without_sentencepiece():
    """The GPU machine may have torch, Triton and transformers' dependencies but not sentencepiece: the packages
    the script checks still import (sentencepiece is loaded only for a Llama-2 tokenizer)."""
    script = "import sys; sys.modules['sentencepiece'] = None\nimport model, kernels, sample.sampler, train.dpo\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=SCRIPT.parents[1], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]


def test_sdpa_backends_names_the_kernel_that_ran():
    script = gpu_check()
    sdpa_backends, known = script.sdpa_backends, set(script.SDPA_OPS.values())
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    with sdpa_kernel([SDPBackend.MATH]):
        assert sdpa_backends(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)) == ["math"]
    default = sdpa_backends(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert len(default) == 1 and default[0] in known - {"math"}, default  # the CPU's fused kernel
    assert sdpa_backends(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v) == []


def test_a_spent_budget_stops_the_run_and_keeps_the_report(tmp_path):
    """--minutes bounds the run: checks that would start after it are reported as not run, and the report
    (rewritten after every check) is there."""
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--minutes", "0", "--out", str(out)],
                          cwd=tmp_path, env=NO_GPU, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {r["status"] for r in report["checks"].values()} == {"NOT RUN"} and len(report["checks"]) == 9
    assert "time budget" in report["checks"]["trainer"]["line"]
    assert not list(tmp_path.glob(".*.tmp"))
