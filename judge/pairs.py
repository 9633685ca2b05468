"""Preference pairs for DPO from judged candidates: per prompt, the best- and the worst-scored answer.

  python judge/pairs.py --judged runs/R/iter2/judged.jsonl --out runs/R/iter2/pairs.jsonl [--min-gap 0.5]

Input, judged.jsonl (written by judge/score.py; its format in judge/__init__.py), one line per candidate.
Only id, sample, prompt, response and score are needed here (neutralised is counted
when present), so a judged.jsonl from any other judge works as long as it has those,
with scores on the judge prompt's scale, 0 to judge/parse.py's MAX_SCORE. A file with no lines is an error.

Per prompt id:
  - candidates whose score is null are left out;
  - fewer than two scored candidates: no pair ("fewer than 2 scored");
  - the rule (--rule, RULES below) picks chosen and rejected; the paper's, best_vs_worst: the
    highest score against the lowest, between equal scores the lowest sample index, a rule blind
    to the text and its length;
  - chosen and rejected scored the same: no pair ("tie"); scores closer than
    --min-gap: no pair ("gap below min"). A pair always has a positive gap;
  - with --max-pairs K, the pairs after the first K, in prompt order, are left out ("over max_pairs"):
    a data set of the paper's size (3,964 pairs for M2, 6,942 for M3) from enough prompts.
Output, pairs.jsonl (TRL's DPO field names plus ids; judge/__init__.py), one line per pair, in prompt
order, written atomically. The summary says how many prompts gave pairs and why the
others did not, and compares chosen and rejected lengths (in characters):
self-rewarding is known to drift towards longer answers.
"""
import argparse
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import judge
from judge import parse
from model.errors import FormatError
from model.jsonl import check_id, check_output, iter_jsonl, write_jsonl_atomic

REQUIRED = ("id", "sample", "prompt", "response", "score")


@dataclass
class PairSettings:
    """The pair stage's settings, each the flag of the same name; these defaults are the only ones."""
    rule: str = "best_vs_worst"     # a name in RULES (below): the paper's best against worst
    min_gap: float = 0.0            # drop pairs whose scores are closer than this (0: only ties)
    max_pairs: int = 0              # keep the first max_pairs pairs, in prompt order (0: all; the paper's sizes)


DROP_REASONS = ("fewer than 2 scored", "tie", "gap below min", "over max_pairs")


def _check_row(row: dict) -> str | None:
    """What is wrong with one judged line, or None (its id is checked apart)."""
    if not isinstance(row["sample"], int) or isinstance(row["sample"], bool):
        return f"'sample' must be an integer, got {json.dumps(row['sample'])}"
    for key in ("prompt", "response"):
        if not isinstance(row[key], str):
            return f"'{key}' must be a string, got {type(row[key]).__name__}"
    score = row["score"]
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                              or not math.isfinite(score) or not 0 <= score <= parse.MAX_SCORE):
        return f"'score' must be a number from 0 to {parse.MAX_SCORE} or null, got {json.dumps(score)}"
    if "neutralised" in row and not isinstance(row["neutralised"], bool):
        return f"'neutralised' must be true or false, got {json.dumps(row['neutralised'])}"
    return None


def read_judged(path) -> list[dict]:
    """The lines of a judged.jsonl, checked: FormatError("FILE:LINE: ...") on a bad line, a candidate
    (id, sample) that appears twice, or a prompt id whose prompt text differs between lines."""
    rows, first_line, prompt_of = [], {}, {}
    for lineno, row in iter_jsonl(path, REQUIRED, allow_empty=False):
        check_id(row, "id", f"{path}:{lineno}")
        problem = _check_row(row)
        if problem is None and (row["id"], row["sample"]) in first_line:
            problem = (f"candidate (id {row['id']!r}, sample {row['sample']}) already appeared on line "
                       f"{first_line[row['id'], row['sample']]}")
        if problem is None and prompt_of.setdefault(row["id"], row["prompt"]) != row["prompt"]:
            problem = f"prompt id {row['id']!r} has a different prompt text than on an earlier line"
        if problem:
            raise FormatError(f"{path}:{lineno}: {problem}")
        first_line[row["id"], row["sample"]] = lineno
        rows.append(row)
    return rows


# Pair-selection rules: the scored candidates of one prompt (at least two, in sample order) -> (chosen,
# rejected), or the reason this prompt gives no pair. `--rule NAME` (pairs.rule in a loop config) picks one;
# adding a rule is a function here and its decorator.
RULES: dict[str, Callable[[list[dict]], tuple[dict, dict] | str]] = {}


def rule(name: str):
    def add(fn):
        if name in RULES:
            raise ValueError(f"a pair-selection rule named {name!r} is already registered")
        RULES[name] = fn
        return fn
    return add


@rule("best_vs_worst")
def best_vs_worst(scored: list[dict]) -> tuple[dict, dict] | str:
    """The paper's: the highest score against the lowest; between equal scores the lowest sample index wins
    (max and min keep the first of equals), a rule blind to the text and its length. (Equal ends are a
    tie, as for every rule: select_pair drops them.)"""
    return max(scored, key=lambda c: c["score"]), min(scored, key=lambda c: c["score"])


def select_pair(candidates: list[dict], min_gap: float = PairSettings.min_gap,
                rule: str = PairSettings.rule) -> tuple[dict | None, str | None]:
    """(pair, None) or (None, drop reason) for the candidates of one prompt (see the module doc)."""
    scored = sorted((c for c in candidates if c["score"] is not None), key=lambda c: c["sample"])
    if len(scored) < 2:
        return None, "fewer than 2 scored"
    picked = RULES[rule](scored)
    if isinstance(picked, str):
        return None, picked
    chosen, rejected = picked
    gap = chosen["score"] - rejected["score"]
    if gap < 0:
        raise ValueError(f"pair rule {rule!r} chose a candidate scored below the one it rejected "
                         f"(prompt id {chosen['id']!r}: {chosen['score']:g} < {rejected['score']:g})")
    if gap == 0:
        return None, "tie"
    if gap < min_gap - 1e-9:                              # means of a few scores: allow rounding error
        return None, "gap below min"
    conversation = {"messages": chosen["messages"]} if "messages" in chosen else {}  # a multi-turn prompt, whole
    return {"id": chosen["id"], "prompt": chosen["prompt"], **conversation, "chosen": chosen["response"],
            "rejected": rejected["response"], "score_chosen": chosen["score"],
            "score_rejected": rejected["score"], "chosen_sample": chosen["sample"],
            "rejected_sample": rejected["sample"]}, None


def build_pairs(rows: list[dict], min_gap: float = PairSettings.min_gap, rule: str = PairSettings.rule,
                max_pairs: int = PairSettings.max_pairs) -> tuple[list[dict], dict]:
    """Pairs from judged rows (one per prompt id that gives one, in first-appearance order, at most max_pairs
    when it is not 0) and statistics."""
    by_prompt: dict = {}
    for row in rows:
        by_prompt.setdefault(row["id"], []).append(row)
    pairs, dropped = [], Counter()
    for candidates in by_prompt.values():
        pair, reason = select_pair(candidates, min_gap, rule)
        if pair is not None and max_pairs and len(pairs) == max_pairs:
            pair, reason = None, "over max_pairs"
        if pair is None:
            dropped[reason] += 1
        else:
            pairs.append(pair)
    neutralised = {(r["id"], r["sample"]) for r in rows if r.get("neutralised")}
    stats = {
        "prompts": len(by_prompt),
        "candidates": len(rows),
        "scored": sum(r["score"] is not None for r in rows),
        "pairs": len(pairs),
        # the yield, max_pairs aside: how many prompts an iteration needs for the pairs it wants
        "pairs_per_prompt": (len(pairs) + dropped["over max_pairs"]) / len(by_prompt) if by_prompt else None,
        "dropped": {**{reason: 0 for reason in DROP_REASONS}, **dropped},
        "rule": rule,
        "min_gap": min_gap,
        "max_pairs": max_pairs,
        "neutralised": len(neutralised),
        "neutralised_chosen": sum((p["id"], p["chosen_sample"]) in neutralised for p in pairs),
        **length_balance(pairs),
    }
    return pairs, stats


def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def length_balance(pairs: list[dict]) -> dict:
    """Scores and lengths (characters) of chosen vs rejected answers; None where there are no pairs."""
    return {
        "mean_score_chosen": _mean(p["score_chosen"] for p in pairs),
        "mean_score_rejected": _mean(p["score_rejected"] for p in pairs),
        "mean_chars_chosen": _mean(len(p["chosen"]) for p in pairs),
        "mean_chars_rejected": _mean(len(p["rejected"]) for p in pairs),
        "chosen_longer": sum(len(p["chosen"]) > len(p["rejected"]) for p in pairs),
    }


def summary_lines(stats: dict) -> list[str]:
    s = stats
    lines = [f"{s['candidates']} candidates for {s['prompts']} prompts, {s['scored']} with a score",
             f"{s['pairs']} pairs from {s['prompts']} prompts (a yield of {s['pairs_per_prompt'] or 0:.2f} pairs a "
             "prompt); no pair: " +
             ", ".join(f"{n} {reason}" for reason, n in s["dropped"].items())
             + (f" (min gap {s['min_gap']:g})" if s["min_gap"] else "")]
    if s["pairs"]:
        lines.append(f"mean score: chosen {s['mean_score_chosen']:.2f}, rejected {s['mean_score_rejected']:.2f}")
        lines.append(f"mean length (chars): chosen {s['mean_chars_chosen']:.0f}, rejected "
                     f"{s['mean_chars_rejected']:.0f}; chosen longer in {s['chosen_longer']} of {s['pairs']} "
                     f"pairs ({100 * s['chosen_longer'] / s['pairs']:.0f}%)")
    lines.append(f"{s['neutralised']} candidates had score-like text or response tags neutralised; "
                 f"{s['neutralised_chosen']} of them chosen")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, epilog=judge.formats("judged.jsonl", "pairs.jsonl"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judged", required=True, help="judged candidates, JSONL (from judge/score.py)")
    parser.add_argument("--out", required=True, help="pairs JSONL to write (replaced atomically)")
    parser.add_argument("--min-gap", type=float, default=PairSettings.min_gap,
                        help="drop pairs whose score_chosen - score_rejected is below this (default 0: only ties)")
    parser.add_argument("--rule", default=PairSettings.rule, choices=sorted(RULES),
                        help="how a prompt's chosen and rejected answers are picked (default %(default)s, the paper's)")
    parser.add_argument("--max-pairs", type=int, default=PairSettings.max_pairs,
                        help="keep the first this many pairs, in prompt order (default 0: all)")
    parser.add_argument("--summary", help="also write the statistics as JSON to this file")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (math.isfinite(args.min_gap) and args.min_gap >= 0):
        parser.error(f"--min-gap must be a number >= 0, got {args.min_gap}")
    if args.max_pairs < 0:
        parser.error(f"--max-pairs must be 0 or more, got {args.max_pairs}")
    try:
        check_output(args.out, {"--judged": args.judged})
        if args.summary:
            check_output(args.summary, {"--judged": args.judged, "--out": args.out}, flag="--summary")
        pairs, stats = build_pairs(read_judged(args.judged), args.min_gap, args.rule, args.max_pairs)
        write_jsonl_atomic(args.out, pairs)
        if args.summary:
            with open(args.summary, "w") as f:
                json.dump(stats, f, indent=1)
    except (FormatError, OSError) as e:
        sys.exit(f"error: {e}")
    print("\n".join(summary_lines(stats)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
