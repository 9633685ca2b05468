"""How well a model judges, read every way its judgements allow: parsed or expected scores, from 1 to n samples.

    python bench/judge_levers.py --ranked data/external/humaneval.ranked.jsonl \\
        runs/lev/M1/ext.work/judgements.jsonl [more judgements.jsonl ...]
    python bench/judge_levers.py --judged runs/demo/iter2/judged.jsonl     # agreement of the two readings

Each judgements.jsonl is what `eval/reward_metrics.py --score expected` keeps in its work folder: per reply the
parsed digits ("scores") and, with --score expected, the expected scores ("expected_scores") of the same
judgements. So one evaluation gives every reading: the paper's (the mean of the digits of k samples), the
expected score of one judgement (judge/expected.py), or the mean of k of those. For each file and reading it
prints the pairwise accuracy with its 95% bootstrap interval over prompts (eval/metrics.py, seed 0), the tie
rate and the number of prompts, as a markdown table for bench/RESULTS.md.

--judged: an iteration's judged.jsonl made with `judge/score.py --score expected --samples 3`: how often the
expected score of the first judgement orders two candidates of a prompt as the paper's 3-sample mean does
(over the pairs the mean does not tie), its Pearson correlation with the mean, and how many prompts each
reading would turn into a DPO pair (best and worst not tied).
"""
import argparse
import itertools
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval.metrics import reward_model_intervals, reward_model_metrics  # noqa: E402
from eval.reward_metrics import read_ranked  # noqa: E402
from eval.stages import with_interval  # noqa: E402
from model.jsonl import read_jsonl  # noqa: E402


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def readings(row: dict, n: int) -> dict[str, float | None]:
    """Every score of one reply: parsed and expected, means of the first k judgements, k = 1..n."""
    out = {}
    for k in range(1, n + 1):
        out[f"parsed, mean of {k}"] = mean(row["scores"][:k])
        if row.get("expected_scores") is not None:
            out[f"expected, mean of {k}"] = mean(row["expected_scores"][:k])
    return out


def reply_kinds(ranked_path: str) -> dict[str, list[str]]:
    """Per prompt id, the "kind" of each reply where the file gives one (data/external's sets: reference,
    mismatched, truncated); empty for a set without kinds."""
    rows = read_jsonl(ranked_path)
    if not all(isinstance(r.get("replies"), list) and all(isinstance(x, dict) and "kind" in x for x in r["replies"])
               for r in rows):
        return {}
    return {r["id"]: [x["kind"] for x in r["replies"]] for r in rows}


def table(ranked_path: str, paths: list[str]) -> list[str]:
    """One row per file and reading; for a set whose replies have kinds, also one row per kind of worse reply
    (the accuracy over the pairs of the best reply with a reply of that kind)."""
    prompts, _ = read_ranked(ranked_path)
    kinds = reply_kinds(ranked_path)
    worse = sorted({k for ks in kinds.values() for k in ks} - {"reference"})
    lines = ["| judgements | reading | pairs | prompts | pairwise accuracy [95% interval] | ties |",
             "|---|---|---|---|---|---|"]
    for path in paths:
        rows = {(r["id"], r["sample"]): r for r in read_jsonl(path)}
        kept = [p for p in prompts if all((p["id"], i) in rows for i in range(len(p["replies"])))]
        n = min(len(r["scores"]) for r in rows.values() if r["scores"]) if rows else 0
        scored = {key: readings(row, n) for key, row in rows.items()}     # every reading of every reply, once
        names = next(iter(scored.values()), {})
        for name, subset in itertools.product(names, ["all"] + worse):
            keep = {p["id"]: [i for i, k in enumerate(kinds.get(p["id"], []))
                              if subset == "all" or k in (subset, "reference")] or range(len(p["replies"]))
                    for p in kept}
            scores = [[scored[p["id"], i][name] for i in keep[p["id"]]] for p in kept]
            ranks = [[p["ranks"][i] for i in keep[p["id"]]] for p in kept]
            m = reward_model_metrics(scores, ranks)
            iv = reward_model_intervals(scores, ranks, seed=0)
            lines.append(f"| {path} | {name} | {subset} | {len(kept)} | "
                         f"{with_interval(m['pairwise_accuracy'], iv['pairwise_accuracy'], as_percent=True)} | "
                         f"{100 * m['pairwise_tie_rate']:.1f}% |")
    return lines


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


def agreement(path: str) -> list[str]:
    rows = read_jsonl(path)
    by_prompt: dict = {}
    for r in rows:
        if r.get("expected_scores") and r["expected_scores"][0] is not None and r["score"] is not None:
            by_prompt.setdefault(r["id"], []).append((mean(r["scores"]), r["expected_scores"][0]))
    same = compared = 0
    xs, ys = [], []
    pairs = {"paper (mean of 3 parsed)": 0, "expected, 1 judgement": 0}
    for replies in by_prompt.values():
        replies = [(a, b) for a, b in replies if a is not None]
        xs += [a for a, _ in replies]
        ys += [b for _, b in replies]
        for (a1, b1), (a2, b2) in itertools.combinations(replies, 2):
            if a1 != a2:
                compared += 1
                same += sign(a1 - a2) == sign(b1 - b2)
        if len(replies) >= 2:
            pairs["paper (mean of 3 parsed)"] += max(a for a, _ in replies) > min(a for a, _ in replies)
            pairs["expected, 1 judgement"] += max(b for _, b in replies) > min(b for _, b in replies)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    r = cov / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    return [f"{path}: {len(by_prompt)} prompts, {len(xs)} candidates",
            f"the expected score of the first judgement orders {same} of {compared} candidate pairs as the paper's "
            f"3-sample mean does ({100 * same / max(compared, 1):.1f}%; pairs the mean ties left out)",
            f"Pearson correlation with the mean: {r:.3f}",
            "prompts with a DPO pair (best and worst not tied): " + ", ".join(f"{k} {v}" for k, v in pairs.items())]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranked", help="the ranked set the judgements are of")
    parser.add_argument("judgements", nargs="*", help="eval/reward_metrics.py work folders' judgements.jsonl")
    parser.add_argument("--judged", help="an iteration's judged.jsonl made with --score expected --samples 3")
    args = parser.parse_args(argv)
    if args.judgements:
        print("\n".join(table(args.ranked, args.judgements)))
    if args.judged:
        print("\n".join(agreement(args.judged)))


if __name__ == "__main__":
    main()
