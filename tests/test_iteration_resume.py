"""`make iteration N=2` killed with SIGKILL in the middle of each stage and rerun gives what an
uninterrupted run gives; a corrupted stage output is reported, not used.

For iteration 2 to build pairs, M1 must judge: its replies have to end in "Score: X" with X varying.
A random model never writes that, so M1 here is conftest.py's score_writer, a bigram model built by hand
whose every reply is "score: X".
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model import load

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SETTINGS = ["self_instruct.n_prompts=6", "self_instruct.batch_size=2", "generate.samples=4", "generate.batch_size=2",
            "judge.samples=3", "judge.batch_size=2", "dpo.set.save_every=1", "dpo.set.epochs=2"]


def make(runs: Path, base: Path, *args, n: int = 2, goal: str = "iteration", settings: tuple = (), **popen):
    cmd = ["make", "-C", str(ROOT), goal, f"N={n}", f"RUNS={runs}", "RUN=r", "CONFIG=configs/tiny.yaml",
           f"SET=base_model={base} self_instruct.model={base} " + " ".join(SETTINGS + list(settings)),
           f"PY={sys.executable}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(cmd, text=True, env=env, **{"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **popen})
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def kill_when(runs: Path, base: Path, ready, what: str):
    """Start `make iteration N=2`, SIGKILL make and everything under it once ready() holds."""
    proc = make(runs, base, start_new_session=True)
    deadline = time.monotonic() + 300
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"make finished before the kill {what}:\n{proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting to kill {what}"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint, score_writer):
    """Two runs of iteration 2 from the same M1: one uninterrupted, one killed twice."""
    root = tmp_path_factory.mktemp("runs")
    for name in ("whole", "killed"):
        shutil.copytree(score_writer, root / name / "r" / "iter1" / "model")
    # the uninterrupted run goes on beside the killed ones (each stage is one thread: OMP_NUM_THREADS=1)
    log = open(root / "whole.log", "w+")
    whole = make(root / "whole", tiny_checkpoint, stdout=log, start_new_session=True)

    it = root / "killed" / "r" / "iter2"
    try:
        _kill_and_finish(root, tiny_checkpoint, it)
    finally:  # the uninterrupted run does not outlive a failure of the killed one
        if whole.poll() is None:
            os.killpg(whole.pid, signal.SIGKILL)
        whole.wait()
    log.seek(0)
    assert whole.returncode == 0, log.read()[-3000:]
    log.close()
    return root / "whole" / "r", root / "killed" / "r"


def _kill_and_finish(root: Path, tiny_checkpoint: Path, it: Path) -> None:
    # (what, the condition met just before the kill, the stage output that must not exist yet): a sampling stage
    # and the trainer, each resumed inside the stage (the other sampling stages resume the same way, through
    # sample/stage.py: tests/test_generate.py and tests/test_self_instruct.py kill them on their own)
    points = [
        ("while judging", lambda: lines(it / "judged.jsonl.part0") >= 6, "judged.jsonl"),
        ("during DPO, after a saved state", lambda: (it / "model.train/state/meta.json").is_file(), "model"),
    ]
    for what, ready, output in points:
        kill_when(root / "killed", tiny_checkpoint, ready, what)
        assert not (it / output).exists(), f"the kill {what} came after the stage had finished"
    finish = make(root / "killed", tiny_checkpoint)
    assert finish.returncode == 0, finish.stdout[-3000:] + finish.stderr[-3000:]


def test_judge_writes_scores(runs):
    whole, _ = runs
    judged = [json.loads(line) for line in (whole / "iter2/judged.jsonl").read_text().splitlines()]
    assert judged and all(r["n_parsed"] == 3 for r in judged)
    assert len({r["score"] for r in judged}) > 1
    summary = json.loads((whole / "iter2/summary.json").read_text())
    assert summary["pairs"] > 0 and summary["pairs"] == lines(whole / "iter2/pairs.jsonl")
    assert summary["candidates"] == lines(whole / "iter2/candidates.jsonl") and "head_to_head" in summary
    assert "dpo_reward_accuracy" in summary and "\n| 2 | M2 vs M1 |" in (whole / "report.md").read_text()


def test_killed_run_ends_as_uninterrupted(runs):
    whole, killed = runs
    for name in ("prompts.jsonl", "candidates.jsonl", "judged.jsonl", "pairs.jsonl"):
        assert (killed / "iter2" / name).read_bytes() == (whole / "iter2" / name).read_bytes(), name
    a, _ = load(whole / "iter2/model")
    b, _ = load(killed / "iter2/model")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=name)
    # the DPO run was resumed, not restarted: its metrics have one line per step, none doubled
    steps = [json.loads(line)["step"] for line in (killed / "iter2/model.train/metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))
    assert not list((killed / "iter2").glob("*.part*")) and not list((killed / "iter2").glob(".*tmp*"))


def test_torn_stage_output_is_reported(runs, tiny_checkpoint):
    _, killed = runs
    candidates = killed / "iter2/candidates.jsonl"
    data, stat = candidates.read_bytes(), candidates.stat()
    candidates.write_bytes(data[:-10])  # a torn last line: now newer than judged.jsonl, so judging reruns
    proc = make(killed.parent, tiny_checkpoint)
    assert proc.returncode != 0
    n = data.count(b"\n")
    assert f"{candidates}:{n}" in proc.stdout + proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "judged.jsonl" not in [p.name for p in (killed / "iter2").glob("*.tmp*")]
    candidates.write_bytes(data)
    os.utime(candidates, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as it was: nothing downstream is stale


def test_half_written_checkpoint_is_reported(runs, tiny_checkpoint):
    _, killed = runs
    weights = killed / "iter2/model/model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    proc = make(killed.parent, tiny_checkpoint)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert str(weights) in out and "not a readable safetensors file" in out, out[-2000:]
    weights.write_bytes(data)
    again = make(killed.parent, tiny_checkpoint)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]


def test_checkpoint_selection(runs, tiny_checkpoint, tmp_path):
    """SELECT=1 as the paper's config does it: DPO into iter2/dpo with a snapshot each step, each compared with
    the one saved before it by a separately named judge (not a contestant) with the AlpacaEval prompt, M2 = the
    one selection.json names; then M2 against M1 and against the SFT baseline (made here), judged alike, with
    the paper's tie rule and intervals in the summary."""
    whole, _ = runs
    run = tmp_path / "r"
    shutil.copytree(whole / "iter1", run / "iter1")
    (run / "iter2").mkdir()
    for name in ("prompts.jsonl", "candidates.jsonl", "judged.jsonl", "pairs.jsonl", "pairs.summary.json"):
        shutil.copy2(whole / "iter2" / name, run / "iter2" / name)
    judge = tmp_path / "judge"
    shutil.copytree(tiny_checkpoint, judge)
    paper = ("sft.set.max_steps=2", "select.against=previous-checkpoint", f"select.judge={judge}",
             "select.pairwise_prompt=alpacaeval", f"head_to_head.judge={judge}", "head_to_head.pairwise_prompt=alpacaeval",
             "head_to_head.opponents=both")
    proc = make(tmp_path, tiny_checkpoint, "SELECT=1", settings=paper)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sample/generate.py" not in proc.stdout and "judge/score.py" not in proc.stdout
    it = run / "iter2"
    sel = json.loads((it / "selection.json").read_text())
    steps = lines(it / "dpo.train/metrics.jsonl")
    names = [f"step-{k:06d}" for k in range(1, steps + 1)] + ["final"]
    assert steps >= 2 and [c["name"] for c in sel["candidates"]] == names
    assert [c["baseline"] for c in sel["candidates"]] == ["previous"] + names[:-1]   # each against the one before
    assert sel["against"] == "previous-checkpoint" and sel["judge"] == str(judge) and sel["self_judged"] is None
    assert sel["pairwise_prompt"] == "alpacaeval" and sel["tie_rule"] == "both-orders"
    promoted = next(c for c in sel["candidates"] if c["name"] == sel["promoted"]["name"])
    assert sel["chosen"] is None or sel["chosen"]["name"] == promoted["name"]
    for f in Path(promoted["path"]).iterdir():
        assert (it / "model" / f.name).read_bytes() == f.read_bytes(), f.name
    summary = json.loads((it / "summary.json").read_text())
    assert summary["selected"] == promoted["name"] and "dpo_reward_accuracy" in summary
    heldout = [json.loads(line)["id"] for line in (ROOT / "data/seed/heldout.jsonl").read_text().splitlines()]
    assert sel["last"] == 3 and sel["prompt_ids"] == heldout[-3:]  # the last select.limit held-out prompts
    # the head to head against both opponents, by the named judge, with intervals over its prompts
    assert (run / "baseline" / "model" / "params.json").is_file()
    for key, opponent in (("head_to_head", run / "iter1" / "model"), ("head_to_head_baseline", run / "baseline" / "model")):
        h = summary[key]
        assert (h["b"], h["judge"], h["self_judged"], h["pairwise_prompt"], h["tie_rule"]) == (
            str(opponent), str(judge), None, "alpacaeval", "both-orders")
        assert set(h["intervals"]) == {"win", "tie", "loss"} and h["n_compared"] == 3
    assert set(summary["reward_metrics"]["intervals"]) >= {"pairwise_accuracy", "spearman", "kendall_tau"}
    report = (run / "report.md").read_text()
    assert "M2 vs SFT baseline" in report and "M2 vs M1" in report and "Self-judged" not in report


def test_third_iteration(runs, tiny_checkpoint, tmp_path):
    """N=3 starts from M2 (itself a DPO model) and uses it as writer, answerer, judge and reference, and redoes
    nothing of N <= 2 (a dry run: the stages themselves are the ones N=2 ran)."""
    whole, _ = runs
    shutil.copytree(whole, tmp_path / "r")
    run = tmp_path / "r"
    proc = make(tmp_path, tiny_checkpoint, "-n", n=3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout.replace("\\\n", " ")
    assert f"--model {run}/iter2/model --prompts {run}/iter3/prompts.jsonl" in out      # M2 answers
    assert f"--model {run}/iter2/model --candidates {run}/iter3/candidates.jsonl" in out  # M2 judges
    assert f"train/dpo.py --config configs/dpo-tiny.yaml --model {run}/iter2/model" in out  # from M2, M2 as reference
    assert f"--a {run}/iter3/model --b {run}/iter2/model" in out and f"--run {run}" in out  # M3 vs M2, reported
    assert "train/sft.py" not in out and "iter2/candidates" not in out and "iter1" not in out  # nothing redone


def test_a_changed_setting_redoes_what_it_affects(runs, tiny_checkpoint, tmp_path):
    """judge.samples=2: judging and everything after it is out of date, nothing before it; judging is redone
    afresh, not mixed with the old judgements. Back to 3: the same judgements as the first time."""
    whole, _ = runs
    shutil.copytree(whole, tmp_path / "r")
    it = tmp_path / "r/iter2"
    before = (it / "judged.jsonl").read_bytes()
    two = ["SET=base_model={0} self_instruct.model={0} {1} judge.samples=2".format(tiny_checkpoint, " ".join(SETTINGS))]
    stages = ("self_instruct.py", "generate.py", "score.py", "pairs.py", "dpo.py", "reward_metrics.py", "head_to_head.py")

    def planned(*args):
        proc = make(tmp_path, tiny_checkpoint, "-n", *args)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return [script for script in stages if script in proc.stdout]
    assert planned() == []  # the copy is up to date
    assert planned(*two) == ["score.py", "pairs.py", "dpo.py", "reward_metrics.py", "head_to_head.py"]

    judged = make(tmp_path, tiny_checkpoint, *two, goal="judged")  # the stage by name: judging alone
    assert judged.returncode == 0, judged.stdout[-3000:] + judged.stderr[-3000:]
    assert "discarding it and starting over" in judged.stderr and "pairs.py" not in judged.stdout
    assert all(len(json.loads(line)["scores"]) == 2 for line in (it / "judged.jsonl").read_text().splitlines())

    three = make(tmp_path, tiny_checkpoint, goal="judged")
    assert three.returncode == 0, three.stdout[-3000:] + three.stderr[-3000:]
    assert (it / "judged.jsonl").read_bytes() == before


def test_an_edit_of_the_method_redoes_what_it_affects(runs, tiny_checkpoint, tmp_path):
    """A copy of the project's files runs the finished run's make (dry, -n): unchanged, nothing is redone; an
    edit of the judge template redoes judging and what follows it, not the prompts or the candidates; an edit
    of the losses redoes DPO and what follows, not the judging; a new micro_batch_size redoes nothing."""
    whole, _ = runs
    repo = tmp_path / "repo"
    for folder in ("model", "kernels", "sample", "judge", "train", "eval", "configs", "data"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "Makefile", repo / "Makefile")
    shutil.copytree(whole, tmp_path / "runs" / "r")

    def dry_run(*settings):
        cmd = ["make", "-n", "-C", str(repo), "iteration", "N=2", f"RUNS={tmp_path / 'runs'}", "RUN=r",
               "CONFIG=configs/tiny.yaml", f"PY={sys.executable}",
               f"SET=base_model={tiny_checkpoint} self_instruct.model={tiny_checkpoint} " + " ".join(SETTINGS + list(settings))]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return [s for s in ("self_instruct.py", "generate.py", "score.py", "pairs.py", "dpo.py", "reward_metrics.py",
                            "head_to_head.py", "summary.py") if f"/{s} " in done.stdout]

    assert dry_run() == []
    assert dry_run("dpo.set.micro_batch_size=1") == []  # memory and speed only
    with open(repo / "train/losses.py", "a") as f:
        f.write("\n# an edit of the losses\n")
    assert dry_run() == ["dpo.py", "reward_metrics.py", "head_to_head.py", "summary.py"]
    with open(repo / "judge/prompt.py", "a") as f:
        f.write("\n# an edit of the judge\n")
    assert dry_run() == ["score.py", "pairs.py", "dpo.py", "reward_metrics.py", "head_to_head.py", "summary.py"]
