"""eval/outside.py: AlpacaEval's leaderboard.csv and FastChat's MT-Bench judgements, written here in the tools'
formats, read into a run (hand-computed means, the model's row picked out, bad files refused in one line), and
shown by the report beside the paper's numbers."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.outside import read_alpacaeval, read_mt_bench
from eval.report import report
from model.errors import FormatError

ROOT = Path(__file__).resolve().parents[1]

# alpaca_eval's own header (the first cell is the model names' column, left unnamed), two models
LEADERBOARD = (",win_rate,standard_error,n_wins,n_wins_base,n_draws,n_total,discrete_win_rate,mode,avg_length,"
               "length_controlled_winrate,lc_standard_error\n"
               "R-M3,20.44,1.21,160,640,5,805,20.19,community,2552,18.5,0.7\n"
               "gpt4_1106_preview,50.0,0.0,0,0,805,805,50.0,minimal,2049,50.0,\n")


def judgements(path: Path, rows: list[tuple]) -> Path:
    path.write_text("".join(json.dumps({"question_id": q, "model": m, "judge": ["gpt-4", "single-v1"],
                                        "judgment": "Rating: [[x]]", "score": s, "turn": t}) + "\n"
                            for q, m, s, t in rows))
    return path


MT_ROWS = [(81, "M3", 8, 1), (81, "M3", 6, 2), (82, "M3", 9, 1), (82, "M3", -1, 2),   # -1: unreadable, left out
           (81, "M2", 5, 1)]


def test_alpacaeval_row_of_a_model(tmp_path):
    (tmp_path / "leaderboard.csv").write_text(LEADERBOARD)
    a = read_alpacaeval(tmp_path / "leaderboard.csv", "R-M3")
    assert (a["model"], a["win_rate"], a["standard_error"], a["length_controlled_winrate"], a["n_total"],
            a["avg_length"]) == ("R-M3", 20.44, 1.21, 18.5, 805, 2552)
    assert read_alpacaeval(tmp_path / "leaderboard.csv", "gpt4_1106_preview")["lc_standard_error"] is None
    with pytest.raises(FormatError, match="2 models in the file; name one with --alpacaeval-model"):
        read_alpacaeval(tmp_path / "leaderboard.csv")
    # an older leaderboard, before length control: no such column
    (tmp_path / "old.csv").write_text(",win_rate,standard_error,n_total,avg_length\nR-M1,9.94,0.9,805,1092\n")
    old = read_alpacaeval(tmp_path / "old.csv")
    assert old["win_rate"] == 9.94 and old["length_controlled_winrate"] is None


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("model,win_rate,n_total\nx,1,2\n", "not an AlpacaEval leaderboard"),
    (",win_rate,n_total\nR-M3,high,805\n", r":2: win_rate: expected a number, got 'high'"),
    (",win_rate,n_total\nR-M3,nan,805\n", r":2: win_rate: expected a finite number"),
    (",win_rate,n_total\nR-M3,20.4\n", r":2: 2 cells for 3 columns"),
    (",win_rate,n_total\nR-M3,,805\n", r":2: no win_rate"),
])
def test_bad_leaderboards_are_refused(tmp_path, text, message):
    (tmp_path / "lb.csv").write_text(text)
    with pytest.raises(FormatError, match=message):
        read_alpacaeval(tmp_path / "lb.csv")


def test_mt_bench_means_as_fastchat_takes_them(tmp_path):
    path = judgements(tmp_path / "gpt-4_single.jsonl", MT_ROWS)
    m = read_mt_bench(path, "M3")
    assert m["score"] == pytest.approx((8 + 6 + 9) / 3) and m["turn_1"] == pytest.approx(8.5) and m["turn_2"] == 6
    assert (m["n_judgements"], m["n_unreadable"]) == (4, 1)
    with pytest.raises(FormatError, match="judgements of 2 models; name one with --mt-bench-model"):
        read_mt_bench(path)
    with pytest.raises(FormatError, match="no judgements of model 'M9'"):
        read_mt_bench(path, "M9")
    with pytest.raises(FormatError, match=r":1: 'score' must be a number, got '8'"):
        read_mt_bench(judgements(tmp_path / "bad.jsonl", [(81, "M3", "8", 1)]))
    with pytest.raises(FormatError, match="every score is -1"):
        read_mt_bench(judgements(tmp_path / "none.jsonl", [(81, "M3", -1, 1)]))


def test_cli_and_report(tmp_path):
    run = tmp_path / "runs" / "r"
    (run / "iter3").mkdir(parents=True)
    (tmp_path / "leaderboard.csv").write_text(LEADERBOARD)
    judged = judgements(tmp_path / "gpt-4_single.jsonl", MT_ROWS)
    cli = [sys.executable, str(ROOT / "eval/outside.py"), "--iter", str(run / "iter3")]
    first = subprocess.run(cli + ["--alpacaeval", str(tmp_path / "leaderboard.csv"), "--alpacaeval-model", "R-M3"],
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "AlpacaEval 2.0, R-M3: win rate 20.44% over 805 instructions, length-controlled 18.50%" in first.stderr
    second = subprocess.run(cli + ["--mt-bench", str(judged), "--mt-bench-model", "M3"], capture_output=True, text=True)
    assert second.returncode == 0 and "MT-Bench, M3: 7.67 of 10 over 3 judgements (1 unreadable)" in second.stderr
    saved = json.loads((run / "iter3" / "eval" / "outside.json").read_text())
    assert set(saved) == {"alpacaeval", "mt_bench"}            # the second run kept what the first read
    text, _ = report(run, plots=False)
    row = next(line for line in text.split("## Outside benchmarks")[1].splitlines() if line.startswith("| 3 "))
    assert row == "| 3 | 20.44% ± 1.21 | 18.50 | 2552 | 20.44% | 7.67 | 7.25 |"
    bad = subprocess.run(cli + ["--mt-bench", str(tmp_path / "missing.jsonl")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
