"""eval/report.py on a fake run directory: a row per iteration in every table, "-" for what is missing, the
intervals, the paper's numbers beside external judges only, self-judged numbers apart, and the PNG plots
(matplotlib comes with make setup)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.report import error_bars, judge_trend, read_run, report

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def fake_run(tmp_path) -> Path:
    run = tmp_path / "runs" / "demo"
    # the base model M0 as a judge, and the IFT-only SFT baseline
    write(run / "iter0" / "eval" / "reward_metrics.json", {"pairwise_accuracy": 0.3, "parse_rate": 0.05})
    write(run / "baseline" / "eval" / "reward_metrics.json", {"pairwise_accuracy": 0.5, "parse_rate": 0.6})
    # iteration 1: the SFT model, only reward-model metrics
    write(run / "iter1" / "eval" / "reward_metrics.json",
          {"pairwise_accuracy": 0.6, "pairwise_tie_rate": 0.2, "five_best": None, "exact_match": 0.1,
           "spearman": 0.2, "kendall_tau": 0.15, "parse_rate": 0.9, "n_prompts": 59})
    # M0 and M1 on the external set too (iteration 2 has none: its row is left out of that table)
    write(run / "iter0" / "eval" / "reward_metrics_external.json",
          {"ranked": "data/external/humaneval.ranked.jsonl", "score": "expected", "pairwise_accuracy": 0.45,
           "n_prompts": 40, "intervals": {"pairwise_accuracy": [0.35, 0.55]}})
    write(run / "iter1" / "eval" / "reward_metrics_external.json",
          {"ranked": "data/external/humaneval.ranked.jsonl", "score": "expected", "pairwise_accuracy": 0.625,
           "pairwise_tie_rate": 0.0, "parse_rate": 0.95, "n_prompts": 40,
           "intervals": {"pairwise_accuracy": [0.55, 0.7]}})
    # iteration 2: everything
    write(run / "iter2" / "summary.json",
          {"prompts": 100, "finish_reasons": {"stop": 360, "length": 40}, "pairs": 40, "pairs_per_prompt": 0.4,
           "judge_parse_rate": 0.95,
           "score_histogram": {"0": 0, "1": 10, "2": 10, "3": 20, "4": 50, "5": 10}, "mean_chars_chosen": 900.0,
           "mean_chars_rejected": 600.0, "dpo_reward_accuracy": 0.8})
    write(run / "iter2" / "eval" / "reward_metrics.json",
          {"pairwise_accuracy": 0.7, "pairwise_tie_rate": 0.1, "five_best": 0.5, "exact_match": 0.12,
           "spearman": 0.3, "kendall_tau": 0.25, "parse_rate": 0.97, "n_prompts": 59,
           "intervals": {"pairwise_accuracy": [0.6, 0.8], "spearman": [0.1, 0.45], "five_best": None}})
    # the comparisons: their files, and the summary's copies, which say which are current
    h2h = {"a": "runs/demo/iter2/model", "b": "runs/demo/iter1/model", "judge": "checkpoints/big-judge",
           "self_judged": None, "win": 0.5, "tie": 0.3, "loss": 0.2, "no_verdict": 3, "n_compared": 50,
           "intervals": {"win": [0.36, 0.64], "tie": [0.18, 0.44], "loss": [0.1, 0.32]},
           "mean_chars_a": 1000.0, "mean_chars_b": 800.0, "position_1_rate": 0.55}
    h2h_baseline = {"judge": "checkpoints/big-judge", "self_judged": None, "win": 0.6, "tie": 0.3, "loss": 0.1,
                    "n_compared": 50, "intervals": {"win": [0.46, 0.74]}}
    write(run / "iter2" / "eval" / "head_to_head.json", h2h)
    write(run / "iter2" / "eval" / "head_to_head_baseline.json", h2h_baseline)
    summary2 = json.loads((run / "iter2" / "summary.json").read_text())
    write(run / "iter2" / "summary.json", {**summary2, "head_to_head": h2h, "head_to_head_baseline": h2h_baseline})
    # M2 was selected from a DPO run: its steps are in dpo.train/ (the last line cut short by a crash)
    (run / "iter2" / "dpo.train").mkdir()
    (run / "iter2" / "dpo.train" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": k, "loss": 0.69 - 0.1 * k, "margins": 0.2 * k, "accuracy": 0.5 + 0.1 * k}) + "\n"
                for k in (1, 2, 3)) + '{"step": 4, "lo')
    write(run / "iter2" / "selection.json",
          {"against": "previous-model", "promoted": {"name": "step-000400", "path": "x"},
           "chosen": {"name": "step-000400", "step": 400, "path": "x"},
           "candidates": [{"name": "step-000200", "win": 0.4}, {"name": "step-000400", "win": 0.55},
                          {"name": "final", "win": None}]})
    # iteration 10 (sorted after 2): a summary with keys missing or of the wrong type, and a self-judged
    # head to head only in the summary's copy
    write(run / "iter10" / "summary.json", {"pairs": 12, "judge_parse_rate": "n/a", "score_histogram": {"4": 3},
                                            "head_to_head": {"judge": "runs/demo/iter10/model", "self_judged": "a",
                                                             "win": 0.6, "tie": 0.3, "loss": 0.1}})
    # a comparison left from other settings (head_to_head.opponents changed): its summary does not hold it
    write(run / "iter10" / "eval" / "head_to_head_baseline.json", h2h_baseline)
    (run / "iter3").mkdir()            # an iteration still running: nothing yet
    (run / "iterations.txt").write_text("not an iteration")
    return run


def section(text: str, title: str) -> list[str]:
    """The table rows under a '## title' heading."""
    part = text.split(f"## {title}")[1].split("\n## ")[0]
    return [line for line in part.splitlines() if line.startswith("| ") and not line.startswith("| iter")]


def test_report_rows_per_iteration(tmp_path):
    run = fake_run(tmp_path)
    iters, baseline = read_run(run)
    assert [it["iter"] for it in iters] == [0, 1, 2, 3, 10] and baseline["reward"]["pairwise_accuracy"] == 0.5
    text, _ = report(run, plots=False)
    assert "4 iterations" in text
    loop = section(text, "The self-rewarding loop")                                     # no row for M0
    assert loop[0] == "| 1 | - | - | - | - | - | - | - | - / - | - |"
    assert loop[1] == ("| 2 | 100 | 10% | 40 | 0.40 | 95.0% | 0 / 10 / 10 / 20 / 50 / 10 | 80.0% | 900 / 600 | "
                       "1.50 |")
    assert loop[3].startswith("| 10 | - | - | 12 | - | - | 0 / 0 / 0 / 0 / 100 / 0 |")  # wrong types shown as "-"
    rm = section(text, "The model as a reward model")
    assert rm[0].startswith("| SFT baseline | 50.0% | - |") and rm[1].startswith("| 0 (M0, base) | 30.0% |")
    assert rm[2] == "| 1 | 60.0% | - | 10.0% | 0.200 | 0.150 | 20.0% | 90.0% | 59 |"      # no intervals: values
    assert rm[3] == "| 2 | 70.0% [60.0, 80.0] | 50.0% | 12.0% | 0.300 [0.100, 0.450] | 0.250 | 10.0% | 97.0% | 59 |"
    assert rm[4].startswith("| 3 | - | - |")
    assert "| *paper M3* | 81.7% | 43.2% | 14.3% | 0.349 | 0.324 |" in text
    external = text.split("### On the external set")[1].split("\n## ")[0]
    assert "`data/external/humaneval.ranked.jsonl`" in external and "scores expected" in external
    rows = [line for line in external.splitlines() if line.startswith("| ") and not line.startswith("| iter")]
    assert rows == ["| 0 (M0, base) | 45.0% [35.0, 55.0] | - | - | - | - | - | - | 40 |",
                    "| 1 | 62.5% [55.0, 70.0] | - | - | - | - | 0.0% | 95.0% | 40 |"]    # no paper rows here
    assert "| *paper SFT baseline* | 65.1% | 39.6% | 10.1% | 0.253 | 0.233 |" in text
    assert ("Pairwise accuracy: M0 -> M1 30.0% -> 60.0% (higher, no intervals to compare); M1 -> M2 60.0% -> 70.0% "
            "(higher, no intervals to compare).") in text
    assert "Pairwise accuracy: M0 -> M1 45.0% -> 62.5% (higher, within the intervals: chance alone" in text
    assert "not a better judge" not in text
    external = text.split("### Judged by a model that is not a contestant")[1].split("###")[0]
    rows = [line for line in external.splitlines() if line.startswith("| ") and not line.startswith("| iter")]
    assert rows == ["| 2 | M2 vs M1 | 50.0% [36.0, 64.0] | 30.0% [18.0, 44.0] | 20.0% [10.0, 32.0] | 3 | 50 | "
                    "1000 / 800 | 1.25 | 55.0% | checkpoints/big-judge |",
                    "| 2 | M2 vs SFT baseline | 60.0% [46.0, 74.0] | 30.0% | 10.0% | - | 50 | - / - | - | - | "
                    "checkpoints/big-judge |",
                    "| *paper M2 vs M1* |  | 55.5% | 32.8% | 11.7% |  | 256 |  |  |  | GPT-4 |"]
    own = text.split("### Self-judged: not comparable with the paper's numbers")[1].split("\n## ")[0]
    rows = [line for line in own.splitlines() if line.startswith("| ") and not line.startswith("| iter")]
    # the self-judged row alone: no paper row beside it
    assert rows == ["| 10 | M10 vs M9 | 60.0% | 30.0% | 10.0% | - | - | - / - | - | - | iter10/model (self-judged) |"]
    sel = section(text, "Checkpoint selection")
    assert sel == ["| 2 | step-000400 | previous-model | step-000200: 40%, **step-000400: 55%**, final: - |"]


def test_the_report_says_when_the_loop_did_not_make_a_better_judge():
    def it(n, acc, low, high):
        return {"iter": n, "reward": {"pairwise_accuracy": acc, "intervals": {"pairwise_accuracy": [low, high]}}}
    # M1 -> M2 falls; M2 -> M3 rises but its interval overlaps M2's; M3 -> M4 rises clear of it
    lines = judge_trend([it(1, 0.6, 0.5, 0.7), it(2, 0.55, 0.45, 0.65), it(3, 0.6, 0.5, 0.7), it(4, 0.9, 0.85, 0.95)])
    assert lines[0] == ("Pairwise accuracy: M1 -> M2 60.0% -> 55.0% (lower, within the intervals: chance alone could "
                        "do it); M2 -> M3 55.0% -> 60.0% (higher, within the intervals: chance alone could do it); "
                        "M3 -> M4 60.0% -> 90.0% (higher, the intervals apart).")
    assert lines[2].startswith("M2 is not a better judge than M1, M3 is not a better judge than M2 on this set.")
    assert judge_trend([it(0, 0.3, 0.2, 0.4), it(1, 0.2, 0.1, 0.3)])[1:] == []   # M0 -> M1 is EFT: no verdict


def test_cli_writes_the_report_and_plots_when_matplotlib_is_installed(tmp_path):
    run = fake_run(tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "eval/report.py"), "--run", str(run)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    text = (run / "report.md").read_text()
    assert text.startswith("# Run `demo`")
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert pngs == ["dpo_training.png", "head_to_head.png", "lengths.png", "reward_model.png",
                    "reward_model_external.png", "scores.png"]
    for name in pngs:
        assert (run / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](plots/{name})" in text


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "eval/report.py"), "--run", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip() == f"error: {tmp_path / 'nope'}: no such run directory"
    (tmp_path / "r" / "iter1").mkdir(parents=True)
    (tmp_path / "r" / "iter1" / "summary.json").write_text("[1, 2]")
    proc = subprocess.run([sys.executable, str(ROOT / "eval/report.py"), "--run", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip().endswith("summary.json: expected a JSON object")


def test_dpo_steps_and_error_bars(tmp_path):
    iters, _ = read_run(fake_run(tmp_path))
    steps = {it["iter"]: it["training"] for it in iters}
    assert [r["step"] for r in steps[2]] == [1, 2, 3] and steps[1] == [] and steps[10] == []  # cut line skipped
    below, above = error_bars([(1, 0.5, [0.4, 0.7]), (2, 0.3, None), (3, 0.2, [0.25, 0.5])])
    assert below == pytest.approx([0.1, 0, 0]) and above == pytest.approx([0.2, 0, 0.3])
