"""The outside benchmarks' results, read into the run: AlpacaEval 2.0 and MT-Bench, as their own tools scored them.

    python eval/outside.py --iter runs/R/iter3 --alpacaeval exports/M3/alpaca_eval_gpt4_turbo_fn/leaderboard.csv \\
        --alpacaeval-model R-M3 --mt-bench FastChat/fastchat/llm_judge/data/mt_bench/model_judgment/gpt-4_single.jsonl \\
        --mt-bench-model M3

eval/export.py writes a model's answers in each benchmark's format; their tools score them (the README has the
commands); this script reads what the tools wrote and keeps it beside the iteration's other results, in
runs/R/iterN/eval/outside.json, for eval/report.py to show next to the paper's numbers. Either benchmark may be
given alone, and a rerun with one keeps what was read before for the other.
  --alpacaeval    the leaderboard.csv that `alpaca_eval --model_outputs ...` writes beside its annotations: a
                  header row whose first cell is empty (the model names' column), then one row per model with
                  at least "win_rate" and "n_total" ("standard_error", "length_controlled_winrate",
                  "lc_standard_error", "avg_length" when there). Rates are percentages, as the tool writes
                  them. --alpacaeval-model names the row (needed when the file has more than one).
  --mt-bench      FastChat llm_judge's single-answer judgements (model_judgment/gpt-4_single.jsonl), one
                  {"question_id", "model", "score", "turn", ...} a line; a score of -1 is a judgement the
                  judge's reply could not be read from, left out as FastChat's show_result.py leaves it out.
                  The score is the mean over both turns, and each turn's mean is kept too. --mt-bench-model
                  names the model (needed when the file judges more than one).
Output: {"alpacaeval": {"file", "model", "win_rate", "standard_error", "length_controlled_winrate",
"lc_standard_error", "n_total", "avg_length"}, "mt_bench": {"file", "model", "score", "turn_1", "turn_2",
"n_judgements", "n_unreadable"}}, each number as the tool gave it (None where the file has no such column).
Bad input is one line naming the file and line: these are files from elsewhere, read as data.
"""
import argparse
import csv
import json
import math
import sys
from pathlib import Path

from eval.stages import write_json
from model.errors import FormatError
from model.jsonl import iter_jsonl

# The paper's results: AlpacaEval 2.0 win rate (%) against GPT-4 Turbo, and MT-Bench's overall score (of 10).
PAPER_ALPACAEVAL = {"M1": 9.94, "M2": 15.38, "M3": 20.44}
PAPER_MT_BENCH = {"SFT baseline": 6.85, "M3": 7.25}
ALPACAEVAL_COLUMNS = ("win_rate", "standard_error", "length_controlled_winrate", "lc_standard_error", "n_total",
                      "avg_length")


def _number(text: str, where: str) -> float | None:
    """A CSV cell as a number (None when empty); anything else is an error naming the cell."""
    if text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise FormatError(f"{where}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise FormatError(f"{where}: expected a finite number, got {text!r}")
    return value


def read_alpacaeval(path, model: str | None = None) -> dict:
    """The row of `model` (or the only row) of an AlpacaEval leaderboard.csv, its numbers as written."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise FormatError(f"{path}: empty; expected AlpacaEval's leaderboard.csv")
    header = rows[0]
    if not header or header[0] != "" or "win_rate" not in header or "n_total" not in header:
        raise FormatError(f"{path}:1: not an AlpacaEval leaderboard (expected a header with an empty first cell, "
                          f"win_rate and n_total), got {header[:4]}")
    body = [(lineno, row) for lineno, row in enumerate(rows[1:], start=2) if row]
    for lineno, row in body:
        if len(row) != len(header):
            raise FormatError(f"{path}:{lineno}: {len(row)} cells for {len(header)} columns")
    names = [row[0] for _, row in body]
    if model is None:
        if len(body) != 1:
            raise FormatError(f"{path}: {len(body)} models in the file; name one with --alpacaeval-model "
                              f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
        lineno, row = body[0]
    else:
        found = [(lineno, row) for lineno, row in body if row[0] == model]
        if not found:
            raise FormatError(f"{path}: no row for model {model!r}")
        lineno, row = found[0]
    cells = dict(zip(header, row))
    values = {key: _number(cells[key], f"{path}:{lineno}: {key}") if key in cells else None
              for key in ALPACAEVAL_COLUMNS}
    for key in ("win_rate", "n_total"):
        if values[key] is None:
            raise FormatError(f"{path}:{lineno}: no {key} for model {row[0]!r}")
    return {"file": str(path), "model": row[0], **values}


def read_mt_bench(path, model: str | None = None) -> dict:
    """MT-Bench's score for `model` (or the only model) from FastChat's single-answer judgement file."""
    by_model: dict[str, list[tuple[int, float]]] = {}
    for lineno, row in iter_jsonl(path, required_fields=("model", "score", "turn")):
        score, turn = row["score"], row["turn"]
        if not isinstance(row["model"], str):
            raise FormatError(f"{path}:{lineno}: 'model' must be a string")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise FormatError(f"{path}:{lineno}: 'score' must be a number, got {score!r}")
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
            raise FormatError(f"{path}:{lineno}: 'turn' must be a positive integer, got {turn!r}")
        by_model.setdefault(row["model"], []).append((turn, float(score)))
    if model is None:
        if len(by_model) != 1:
            raise FormatError(f"{path}: judgements of {len(by_model)} models; name one with --mt-bench-model "
                              f"({', '.join(sorted(by_model)[:5])})")
        [model] = by_model
    if model not in by_model:
        raise FormatError(f"{path}: no judgements of model {model!r}")
    judged = by_model[model]
    readable = [(turn, score) for turn, score in judged if score != -1]
    if not readable:
        raise FormatError(f"{path}: no readable judgement of model {model!r} (every score is -1)")

    def mean(turn=None):
        scores = [s for t, s in readable if turn is None or t == turn]
        return sum(scores) / len(scores) if scores else None
    return {"file": str(path), "model": model, "score": mean(), "turn_1": mean(1), "turn_2": mean(2),
            "n_judgements": len(judged), "n_unreadable": len(judged) - len(readable)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iter", required=True, help="the iteration directory, runs/RUN/iterN (or runs/RUN/baseline)")
    parser.add_argument("--alpacaeval", help="AlpacaEval's leaderboard.csv for this model's answers")
    parser.add_argument("--alpacaeval-model", help="the model's row in it (the --generator of eval/export.py)")
    parser.add_argument("--mt-bench", help="FastChat llm_judge's model_judgment/<judge>_single.jsonl")
    parser.add_argument("--mt-bench-model", help="the model's name in it (the answer file's name)")
    args = parser.parse_args(argv)
    if not (args.alpacaeval or args.mt_bench):
        parser.error("give --alpacaeval, --mt-bench or both")
    out = Path(args.iter) / "eval" / "outside.json"
    try:
        if not Path(args.iter).is_dir():
            raise FormatError(f"{args.iter}: no such iteration directory")
        results = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
        if not isinstance(results, dict):
            raise FormatError(f"{out}: expected a JSON object (a file this script wrote)")
        if args.alpacaeval:
            results["alpacaeval"] = read_alpacaeval(args.alpacaeval, args.alpacaeval_model)
        if args.mt_bench:
            results["mt_bench"] = read_mt_bench(args.mt_bench, args.mt_bench_model)
    except (FormatError, OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, results)
    if "alpacaeval" in results:
        a = results["alpacaeval"]
        print(f"AlpacaEval 2.0, {a['model']}: win rate {a['win_rate']:.2f}% over {a['n_total']:.0f} instructions"
              + (f", length-controlled {a['length_controlled_winrate']:.2f}%" if a["length_controlled_winrate"]
                 is not None else ""), file=sys.stderr)
    if "mt_bench" in results:
        m = results["mt_bench"]
        print(f"MT-Bench, {m['model']}: {m['score']:.2f} of 10 over {m['n_judgements'] - m['n_unreadable']} "
              f"judgements ({m['n_unreadable']} unreadable)", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
