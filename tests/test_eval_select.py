"""eval/select_checkpoint.py: finding the DPO snapshots, the choice rule, and the CLI end to end on a fake run
directory of tiny-model checkpoints (verdicts are noise: the counts must add up)."""
import json
import subprocess
import sys
from pathlib import Path

from eval.select_checkpoint import choose, find_candidates

ROOT = Path(__file__).resolve().parents[1]


def fake_run(tmp_path, checkpoint) -> Path:
    """runs/R with iter1/model and iter2/model, and iter2's snapshots at steps 2 and 4 (all the tiny model)."""
    run = tmp_path / "runs" / "R"
    snapshots = run / "iter2" / "model.train" / "snapshots"
    snapshots.mkdir(parents=True)
    (run / "iter1").mkdir()
    (run / "iter1" / "model").symlink_to(checkpoint)
    (run / "iter2" / "model").symlink_to(checkpoint)
    for step in (4, 2):
        (snapshots / f"step-{step:06d}").symlink_to(checkpoint)
    (snapshots / "step-000006").mkdir()      # being written: no params.json yet
    (snapshots / "step-final").mkdir()       # not a step
    return run


def test_candidates_in_training_order(tmp_path):
    run = tmp_path / "R"
    for name in ("step-000400", "step-000200", "step-001000"):
        (run / "iter3" / "model.train" / "snapshots" / name).mkdir(parents=True)
        (run / "iter3" / "model.train" / "snapshots" / name / "params.json").write_text("{}")
    assert [(c["name"], c["step"]) for c in find_candidates(run / "iter3" / "model")] == [
        ("step-000200", 200), ("step-000400", 400), ("step-001000", 1000)]
    (run / "iter3" / "model").mkdir()
    (run / "iter3" / "model" / "params.json").write_text("{}")
    assert find_candidates(run / "iter3" / "model")[-1] == {"name": "final", "step": None,
                                                            "path": str(run / "iter3" / "model")}


def test_the_choice_rule():
    def c(name, win, loss):
        return {"name": name, "win": win, "loss": loss}
    assert choose([c("s200", 0.4, 0.2), c("s400", 0.6, 0.3), c("final", 0.5, 0.1)])["name"] == "s400"
    # equal wins: the lower loss, then the earlier checkpoint
    assert choose([c("s200", 0.5, 0.3), c("s400", 0.5, 0.1), c("final", 0.5, 0.1)])["name"] == "s400"
    assert choose([c("s200", None, None), c("s400", 0.0, 1.0)])["name"] == "s400"
    assert choose([c("s200", None, None)]) is None


def test_cli_end_to_end_on_a_fake_run(tmp_path, tiny_checkpoint):
    run = fake_run(tmp_path, tiny_checkpoint)
    (tmp_path / "valid.jsonl").write_text('{"id": "v1", "prompt": "the model"}\n{"id": "v2", "prompt": "pairs"}\n')
    proc = subprocess.run([sys.executable, str(ROOT / "eval/select_checkpoint.py"), "--run", str(run), "--iter", "2",
                           "--prompts", str(tmp_path / "valid.jsonl"), "--judge", str(tiny_checkpoint),
                           "--max-new-tokens", "4", "--judge-max-new-tokens", "6", "--against", "previous-checkpoint",
                           "--promote", str(tmp_path / "promoted")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    sel = json.loads((run / "iter2" / "selection.json").read_text())
    assert [(c["name"], c["step"], c["baseline"]) for c in sel["candidates"]] == [
        ("step-000002", 2, "previous"), ("step-000004", 4, "step-000002"), ("final", None, "step-000004")]
    for c in sel["candidates"]:
        assert c["wins"] + c["ties"] + c["losses"] + c["no_verdict"] == c["n_compared"] == 2
    assert sel["self_judged"] == ["previous", "step-000002", "step-000004", "final"] and "SELF-JUDGED" in proc.stderr
    assert sel["chosen"] is None or sel["chosen"]["name"] in {"step-000002", "step-000004", "final"}
    work = run / "iter2" / "selection.work"
    assert sorted(p.name for p in (work / "answers").glob("*.jsonl")) == [
        "final.jsonl", "previous.jsonl", "step-000002.jsonl", "step-000004.jsonl"]   # each model answered once
    assert (work / "step-000004-vs-step-000002" / "judgements.jsonl").is_file()
    promoted = sel["chosen"] or {"name": "final", "path": str(run / "iter2" / "model")}
    assert sel["promoted"] == {"name": promoted["name"], "path": str(tmp_path / "promoted")}
    source = Path(promoted["path"])
    assert sorted(p.name for p in (tmp_path / "promoted").iterdir()) == sorted(p.name for p in source.iterdir())
    for f in source.iterdir():
        assert (tmp_path / "promoted" / f.name).read_bytes() == f.read_bytes()
    assert sorted(p.name for p in (run / "iter2" / "model.train" / "snapshots").iterdir()) == [
        "step-000002", "step-000004", "step-000006", "step-final"]                     # nothing moved


def test_cli_without_a_previous_model(tmp_path, tiny_checkpoint):
    run = fake_run(tmp_path, tiny_checkpoint)
    (tmp_path / "valid.jsonl").write_text('{"id": "v1", "prompt": "the model"}\n')
    proc = subprocess.run([sys.executable, str(ROOT / "eval/select_checkpoint.py"), "--run", str(run), "--iter", "1",
                           "--prompts", str(tmp_path / "valid.jsonl"), "--judge", str(tiny_checkpoint)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "iter0/model: no checkpoint there" in proc.stderr
