"""sample/generate.py end to end: output rows, resuming after a real kill, bad input, and data- and
tensor-parallel runs under torchrun against the single-process output."""
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import model
from sample.generate import chat_ids, main as generate_main
from model.dtypes import resolve_dtype
from sample.stage import row_seed
from sample.sampler import Sampler, SamplingParams

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the model judges its own answers and learns from pairs of chosen rejected responses".split()


def write_prompts(path, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    with open(path, "w") as f:
        for i in range(n):
            k = 1 + int(torch.randint(12, (1,), generator=g))
            words = [WORDS[j] for j in torch.randint(len(WORDS), (k,), generator=g).tolist()]
            f.write(json.dumps({"id": f"p{i}", "prompt": " ".join(words), "topic": i % 3}) + "\n")


def generate(*args, env=None, check=True):
    """sample/generate.py with these flags, as a CompletedProcess: in this process (no interpreter start-up
    to wait for), or with `env` in a child process."""
    if env is None:
        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                generate_main([str(a) for a in args])
            except SystemExit as e:  # what the interpreter would print and return for it
                code = e.code if isinstance(e.code, int) else 1
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
        proc = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    else:
        cmd = [sys.executable, str(ROOT / "sample/generate.py"), *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_rows_match_the_sampler(tmp_path, tiny_checkpoint):
    write_prompts(tmp_path / "p.jsonl", 5)
    generate("--model", tiny_checkpoint, "--prompts", tmp_path / "p.jsonl", "--out", tmp_path / "o.jsonl",
             "--samples", 3, "--max-new-tokens", 8, "--temperature", 0.9, "--top-p", 0.9, "--seed", 7)
    rows = read(tmp_path / "o.jsonl")
    assert [(r["id"], r["sample"]) for r in rows] == [(f"p{i}", s) for i in range(5) for s in range(3)]
    net, tok = model.load(tiny_checkpoint, dtype=resolve_dtype("auto", torch.device("cpu")))  # what --dtype auto ran
    prompts = read(tmp_path / "p.jsonl")
    outs = Sampler(net, tok).generate([chat_ids(tok, p) for p in prompts],
                                      SamplingParams(0.9, 0.9, 0, 8), n=3,
                                      seeds=[[row_seed(7, p["id"], s) for s in range(3)] for p in prompts])
    for r in rows:
        c = outs[int(r["id"][1:])][r["sample"]]
        assert (r["response"], r["finish_reason"], r["n_tokens"]) == (c.text, c.finish_reason, c.n_tokens)
        assert r["topic"] == int(r["id"][1:]) % 3  # input fields are carried over
    assert not list(tmp_path.glob("o.jsonl.part*"))


@pytest.mark.slow
def test_resume_after_kill_writes_every_row_once(tmp_path, tiny_checkpoint):
    write_prompts(tmp_path / "p.jsonl", 60)
    # fp32: the resumed rows share their steps with other rows than the uninterrupted ones did, which in bf16
    # could round a near-tie otherwise (see sample/sampler.py)
    args = ["--model", tiny_checkpoint, "--prompts", tmp_path / "p.jsonl", "--samples", 2, "--batch-size", 4,
            "--max-new-tokens", 32, "--temperature", 1.0, "--top-p", 0.95, "--dtype", "float32"]
    generate(*args, "--out", tmp_path / "whole.jsonl")

    out = tmp_path / "o.jsonl"
    part = tmp_path / "o.jsonl.part0"
    cmd = [sys.executable, str(ROOT / "sample/generate.py"), *map(str, args), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not part.exists() or part.read_text().count("\n") < 10):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = part.read_text().count("\n")
    assert 10 <= written < 120 and not out.exists(), "the kill should land part way"
    with open(part, "a") as f:  # as if the kill had torn a line in half
        f.write('{"id": "p999", "sample": 0, "resp')
    generate(*args, "--out", out)
    rows = read(out)
    assert sorted((r["id"], r["sample"]) for r in rows) == sorted({(r["id"], r["sample"]) for r in rows})
    assert rows == read(tmp_path / "whole.jsonl")
    assert not part.exists()


@pytest.mark.parametrize("content,message", [
    ('{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": "b"\n', r"p.jsonl:2: not valid JSON"),
    ('{"id": 1, "prompt": "a"}\n{"id": 2, "prom', r"p.jsonl:2: the last line is cut off"),
    ('{"id": 1, "prompt": "a"}\n{"prompt": "b"}\n', r"p.jsonl:2: missing field 'id'"),
    ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', r"p.jsonl:2: duplicate id 1 \(first on line 1\)"),
    ('{"id": 1}\n', r"p.jsonl:1: give exactly one of \"prompt\""),
    ('{"id": 1, "messages": [{"role": "assistant", "content": "x"}]}\n', r"p.jsonl:1: \"messages\" must be"),
])
def test_bad_input_is_reported_with_file_and_line(tmp_path, tiny_checkpoint, content, message):
    (tmp_path / "p.jsonl").write_text(content)
    proc = generate("--model", tiny_checkpoint, "--prompts", tmp_path / "p.jsonl", "--out", tmp_path / "o.jsonl",
                    check=False)
    assert proc.returncode != 0
    assert re.search("error: .*" + message, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.jsonl").exists()


def test_empty_and_overlong_prompts_are_skipped_and_counted(tmp_path, tiny_checkpoint):
    lines = [{"id": 1, "prompt": "score"}, {"id": 2, "prompt": "  "}, {"id": 3, "prompt": "the model " * 3000}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = generate("--model", tiny_checkpoint, "--prompts", tmp_path / "p.jsonl", "--out", tmp_path / "o.jsonl",
                    "--samples", 1, "--max-new-tokens", 4)
    assert [r["id"] for r in read(tmp_path / "o.jsonl")] == [1]
    assert "1 empty prompt, 1 too long for the context" in proc.stderr


def torchrun(nproc, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "sample/generate.py"), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["data", "tensor"])
def test_parallel_runs_equal_one_process(tmp_path, tiny_checkpoint, mode):
    write_prompts(tmp_path / "p.jsonl", 9)
    # Tensor parallel in fp32: its all-reduced partial sums round otherwise than one process's full ones, which
    # bf16 (--dtype auto on a CPU with native bf16) makes large enough to change greedy tokens.
    common = ["--model", tiny_checkpoint, "--prompts", tmp_path / "p.jsonl", "--samples", 2, "--batch-size", 4,
              "--max-new-tokens", 12, "--temperature", 0 if mode == "tensor" else 0.8,
              "--dtype", "float32" if mode == "tensor" else "auto"]
    generate(*common, "--out", tmp_path / "one.jsonl")
    torchrun(2, *common, "--out", tmp_path / "two.jsonl", *(["--tp"] if mode == "tensor" else []))
    assert read(tmp_path / "two.jsonl") == read(tmp_path / "one.jsonl")


def test_rows_made_with_other_settings_are_not_reused(tmp_path, tiny_checkpoint):
    """OUT.settings.json: a rerun with another temperature, other prompts or a rewritten checkpoint starts
    over (also from the part files of a killed run); the same settings with another batch size resume."""
    write_prompts(tmp_path / "p.jsonl", 4)
    base = ["--model", tiny_checkpoint, "--prompts", tmp_path / "p.jsonl", "--samples", 2, "--max-new-tokens", 6]
    generate(*base, "--temperature", 0.9, "--out", tmp_path / "fresh.jsonl")
    generate(*base, "--temperature", 0.5, "--out", tmp_path / "o.jsonl")
    (tmp_path / "o.jsonl").rename(tmp_path / "o.jsonl.part0")  # as if killed before the merge
    again = generate(*base, "--temperature", 0.9, "--out", tmp_path / "o.jsonl")
    assert "written with another sampling; discarding it and starting over" in again.stderr
    assert read(tmp_path / "o.jsonl") == read(tmp_path / "fresh.jsonl")
    # same settings, another batch size: everything is reused (nothing sampled)
    same = generate(*base, "--temperature", 0.9, "--batch-size", 3, "--out", tmp_path / "o.jsonl")
    assert "this run sampled 0" in same.stderr and "discarding" not in same.stderr
    # other prompts: discarded
    write_prompts(tmp_path / "p.jsonl", 5)
    changed = generate(*base, "--temperature", 0.9, "--out", tmp_path / "o.jsonl")
    assert "written with another requests; discarding" in changed.stderr and len(read(tmp_path / "o.jsonl")) == 10


def test_dtype_auto_is_bf16_where_the_cpu_multiplies_it_natively(monkeypatch):
    """--dtype auto: bf16 on CUDA and on CPUs whose flags (/proc/cpuinfo, read independently of torch) include
    AVX512-BF16 or AMX-BF16; fp32 elsewhere."""
    from model.dtypes import cpu_has_fast_bf16
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
        assert cpu_has_fast_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    for fast in (True, False):
        monkeypatch.setattr("model.dtypes.cpu_has_fast_bf16", lambda: fast)
        assert resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if fast else torch.float32)
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32
