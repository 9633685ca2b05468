"""The model as a reward model: judge a human-ranked set and compare with the human ranks (the paper's Table 4).

    python eval/reward_metrics.py --model runs/R/iter2/model --ranked data/seed/ranked.trees.jsonl \\
        --samples 3 --out runs/R/iter2/eval/reward_metrics.json

The ranked set (--ranked) is either
  an Open Assistant export (trees or messages, .jsonl or .jsonl.gz), read with judge/oasst.py: every
    usable prompt (--lang) with two or more ranked replies, skipped messages counted as oasst.py does;
  or a JSONL of prompts with ranked replies, one a line, in either of two forms:
    {"id", "prompt", "replies": ["text", ...], "ranks": [0, 2, 1, ...]}
    {"id", "prompt", "replies": [{"text", "rank", ...}, ...]}     (judge/oasst.py's ranked.jsonl)
  with at least two replies per prompt; rank 0 = best, equal ranks are ties.
The model judges every reply --samples times with the paper's judge prompt (judge/prompt.py), sampled
as judge/score.py samples in the loop (--temperature 0.7 --top-p 0.9 by default), and a reply's score
is the mean of its parsed judgements. The metrics (eval/metrics.py says exactly how ties and missing
scores count) are printed next to the paper's numbers and written to --out as JSON: {"model",
"ranked", "samples", "sampling", the metrics of eval.metrics.reward_model_metrics, "parse_rate",
"n_judgements", "n_parsed", "n_not_judged" (replies whose judge prompt did not fit the context), "intervals"
({metric: [low, high]}: 95% bootstrap intervals over the prompts, seeded by --seed; eval/metrics.py)}.
The judgements are kept, resumably, in OUT's work folder (eval/stages.py) as judgements.jsonl: one
line per reply in judge/score.py's judged format (id = prompt id, sample = the reply's index) plus
its "rank". Runs under torchrun like judge/score.py (data or tensor parallel).
"""
import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from eval.metrics import parse_rate, reward_model_intervals, reward_model_metrics
from eval.stages import add_limit_args, limited, number, percent, prepare_work_dir, with_interval, write_json
from judge.expected import SCORE_MODES
from judge.oasst import ranked_prompts, read_messages
from judge.prompt import judge_messages
from judge.score import JudgeSettings, judge_rows, unjudged_row
from model.errors import FormatError
from model.jsonl import check_id, check_output, iter_jsonl
from sample.generate import add_sampling_args, positive_int, stage_config
from sample.stage import Request, is_rank_zero, run_stage, throughput

@dataclass
class RewardMetricsSettings(JudgeSettings):
    """Judged as judge/score.py judges in the loop, by default."""
    limit: int = 0                  # judge only the first `limit` ranked prompts (0: all)


# The paper's Table 4 (Llama-2-70B; SFT baseline, then iterations 1-3), for comparison.
PAPER = {"SFT baseline": {"pairwise_accuracy": 0.651, "five_best": 0.396, "exact_match": 0.101,
                          "spearman": 0.253, "kendall_tau": 0.233},
         "M1": {"pairwise_accuracy": 0.787, "five_best": 0.415, "exact_match": 0.131,
                "spearman": 0.279, "kendall_tau": 0.253},
         "M2": {"pairwise_accuracy": 0.804, "five_best": 0.443, "exact_match": 0.143,
                "spearman": 0.331, "kendall_tau": 0.315},
         "M3": {"pairwise_accuracy": 0.817, "five_best": 0.432, "exact_match": 0.143,
                "spearman": 0.349, "kendall_tau": 0.324}}
# where `make iteration` writes a model's metrics on the config's external ranked set, beside reward_metrics.json
EXTERNAL_FILE = "reward_metrics_external.json"
CORRELATIONS = ("spearman", "kendall_tau", "spearman_constant_zero", "kendall_tau_constant_zero")
COLUMNS = [("pairwise_accuracy", "pairwise acc"), ("five_best", "5-best"), ("exact_match", "exact match"),
           ("spearman", "Spearman"), ("kendall_tau", "Kendall tau")]


def _is_oasst(row: dict) -> bool:
    return "message_id" in row or "message_tree_id" in row or isinstance(row.get("prompt"), dict)


def _ranked_row(row: dict, where: str) -> dict:
    """One line of a ranked JSONL, checked, as {"id", "prompt", "replies": [text], "ranks": [int]}."""
    replies = row["replies"]
    if not isinstance(row["prompt"], str):
        raise FormatError(f"{where}: 'prompt' must be a string")
    if not isinstance(replies, list) or len(replies) < 2:
        raise FormatError(f"{where}: 'replies' must be a list of at least two replies")
    if all(isinstance(r, dict) for r in replies):
        if any("text" not in r or "rank" not in r for r in replies):
            raise FormatError(f"{where}: every reply needs 'text' and 'rank'")
        texts, ranks = [r["text"] for r in replies], [r["rank"] for r in replies]
    elif "ranks" in row:
        texts, ranks = replies, row["ranks"]
    else:
        raise FormatError(f"{where}: replies as strings need a 'ranks' list "
                          "(or give replies as {\"text\", \"rank\"})")
    if not isinstance(ranks, list) or len(ranks) != len(texts):
        raise FormatError(f"{where}: 'ranks' must be a list with one rank per reply")
    if not all(isinstance(t, str) for t in texts):
        raise FormatError(f"{where}: reply texts must be strings")
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in ranks):
        raise FormatError(f"{where}: ranks must be non-negative integers (0 = best)")
    return {"id": row["id"], "prompt": row["prompt"], "replies": texts, "ranks": ranks}


def read_ranked(path, lang: str = "en") -> tuple[list[dict], Counter]:
    """The ranked prompts of `path` ({"id", "prompt", "replies": [text], "ranks": [int]}, see the module
    doc) and, for an Open Assistant export, what judge/oasst.py did with each message."""
    first = next((row for _, row in iter_jsonl(path)), None)
    if first is None:
        raise FormatError(f"{path}: no ranked prompts in the file")
    if _is_oasst(first):
        messages, _ = read_messages([path])
        ranked, counts = ranked_prompts(messages, lang=lang)
        rows = [{"id": r["id"], "prompt": r["prompt"], "replies": [x["text"] for x in r["replies"]],
                 "ranks": [x["rank"] for x in r["replies"]]} for r in ranked]
        if not rows:
            raise FormatError(f"{path}: no prompt with two or more usable ranked replies (language {lang!r})")
        return rows, counts
    rows, seen = [], {}
    for lineno, row in iter_jsonl(path, required_fields=("id", "prompt", "replies")):
        check_id(row, "id", f"{path}:{lineno}")
        if row["id"] in seen:
            raise FormatError(f"{path}:{lineno}: id {row['id']!r} already on line {seen[row['id']]}")
        seen[row["id"]] = lineno
        rows.append(_ranked_row(row, f"{path}:{lineno}"))
    return rows, Counter()


def metrics_from_judgements(prompts: list[dict], judged: list[dict], seed: int = 0) -> dict:
    """The metrics of judged rows (one per reply: id, sample = reply index, score, judgements, n_parsed), with
    their 95% bootstrap intervals over the prompts (drawn with `seed`)."""
    by_key = {(r["id"], r["sample"]): r for r in judged}
    scores = [[by_key[p["id"], i]["score"] for i in range(len(p["replies"]))] for p in prompts]
    ranks = [p["ranks"] for p in prompts]
    n_judgements = sum(len(r["judgements"]) for r in judged)
    n_parsed = sum(r["n_parsed"] for r in judged)
    return {**reward_model_metrics(scores, ranks), "intervals": reward_model_intervals(scores, ranks, seed),
            "parse_rate": parse_rate(n_parsed, n_judgements), "n_judgements": n_judgements, "n_parsed": n_parsed,
            "n_not_judged": sum(not r["judgements"] for r in judged),
            "score_tokens": sum(r.get("score_tokens", 0) for r in judged)}


def table(metrics: dict) -> str:
    """The metrics under the paper's, as a plain-text table, with this model's 95% intervals below it."""
    rows = [("this model", metrics)] + [(f"paper {name}", m) for name, m in PAPER.items()]
    lines = [f"{'':<20}" + "".join(f"{title:>13}" for _, title in COLUMNS)]
    for name, m in rows:
        cells = [number(m.get(k), ".3f") if k in ("spearman", "kendall_tau") else percent(m.get(k)) for k, _ in COLUMNS]
        lines.append(f"{name:<20}" + "".join(f"{c:>13}" for c in cells))
    intervals = metrics.get("intervals") or {}
    shown = [f"{title} {with_interval(metrics.get(k), intervals.get(k), as_percent=k not in CORRELATIONS)}"
             for k, title in COLUMNS]
    return "\n".join(lines + ["(the paper's rows: Llama-2-70B on Open Assistant, Table 4)",
                              f"this model, 95% intervals over its {metrics.get('n_prompts')} prompts (bootstrap): "
                              + "; ".join(shown)])


def summary_lines(m: dict) -> list[str]:
    excluded = ", ".join(f"{v} {k}" for k, v in m["n_correlation_excluded"].items() if v) or "none"
    return [f"{m['n_prompts']} prompts, {m['n_replies']} replies, {m['n_pairs']} ordered pairs; "
            f"{m['n_judgements']} judgements, {m['n_parsed']} parsed ({percent(m['parse_rate'])}), "
            f"{m['n_not_judged']} replies not judged (too long)",
            f"pairwise: tied scores in {percent(m['pairwise_tie_rate'])} of the pairs (counted as wrong), a "
            f"missing score in {percent(m['pairwise_missing_rate'])}; {m['n_scored_5']} replies scored 5",
            f"correlations over {m['n_correlated']} prompts; left out: {excluded}; with the constant-score prompts "
            f"counted as 0: Spearman {number(m['spearman_constant_zero'], '.3f')}, Kendall tau "
            f"{number(m['kendall_tau_constant_zero'], '.3f')}",
            table(m)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = RewardMetricsSettings()
    add_sampling_args(parser, defaults)
    parser.add_argument("--ranked", required=True, help="human-ranked set: an Open Assistant export or a ranked JSONL")
    parser.add_argument("--samples", type=positive_int, default=defaults.samples,
                        help="judgements per reply (default %(default)s)")
    parser.add_argument("--score", choices=SCORE_MODES, default=defaults.score,
                        help="parsed (the paper) or expected (judge/expected.py), as judge/score.py --score")
    add_limit_args(parser, "ranked prompts", defaults.limit)
    parser.add_argument("--lang", default="en", help="Open Assistant exports: the language to keep (default en)")
    parser.add_argument("--out", required=True, help="metrics JSON to write; judgements go to its .work folder")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    try:
        check_output(args.out, {"--ranked": args.ranked})
        prompts, counts = read_ranked(args.ranked, args.lang)
        prompts = limited(prompts, args.limit, args.last)
    except FormatError as e:
        sys.exit(f"error: {e}")
    work = prepare_work_dir(args.out, "eval/reward_metrics.py",
                            {"model": Path(args.model), "ranked": Path(args.ranked), "limit": args.limit,
                             "last": args.last, "samples": args.samples, "lang": args.lang, "sampling": sampling,
                             **({"score": args.score} if args.score != "parsed" else {})})

    def requests(tokenizer):
        return [Request([p["id"], i], {"id": p["id"], "sample": i, "prompt": p["prompt"], "response": text,
                                       "rank": rank},
                        tokenizer.encode_chat(judge_messages(p["prompt"], text)), [(p["id"], i)])
                for p in prompts for i, (text, rank) in enumerate(zip(p["replies"], p["ranks"]))]

    judged, stats, _ = run_stage(stage_config(args, out=str(work / "judgements.jsonl")), "eval/reward_metrics.py",
                                 requests, n=args.samples, desc="judging", on_too_long=unjudged_row,
                                 **judge_rows(args.score))
    if not is_rank_zero():
        return  # a torchrun rank other than 0: rank 0 writes the result
    metrics = {"model": args.model, "ranked": args.ranked, "samples": args.samples, "score": args.score,
               "sampling": sampling,
               **metrics_from_judgements(prompts, judged, args.seed)}
    write_json(args.out, metrics)
    skipped = sum(v for k, v in counts.items() if "skipped" in k)
    print("\n".join(([f"{args.ranked}: {skipped} Open Assistant messages skipped"] if skipped else [])
                    + summary_lines(metrics) + [throughput(stats), f"wrote {args.out}"]), file=sys.stderr)


if __name__ == "__main__":
    main()
