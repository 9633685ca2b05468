"""One iteration's summary: what every stage of `make iteration` produced, in runs/RUN/iterN/summary.json.

    python eval/summary.py --iter runs/demo/iter2 --out runs/demo/iter2/summary.json

Reads whatever stage outputs the iteration directory holds (a missing one is left out of the
summary) and writes, with the keys eval/report.py reads:
  "prompts", "self_instruct" ({reason: count} over every request),
  "candidates", "finish_reasons" ({"stop": n, "length": n}),
  "judgements", "judge_parse_rate", "score_histogram" ({"0".."5": count}, each parsed judgement rounded),
  "neutralised", "pairs", "pairs_per_prompt" (the yield: pairs / prompts judged), "pairs_dropped"
  ({reason: count}), "mean_chars_chosen", "mean_chars_rejected",
  "chosen_longer", "train" (the trainer's last metrics line), "dpo_reward_accuracy", "final_loss",
  "reward_metrics", "head_to_head" and "head_to_head_baseline" (M_N against the SFT baseline, with
  head_to_head.opponents: baseline or both) (copied from eval/, each with its "intervals": 95% bootstrap
  intervals over the prompts, and its number of prompts), and, for iteration 1, "base_reward_metrics"
  (M0 as a judge, from runs/RUN/iter0/eval): the parse rate before and after EFT training;
  "external_reward_metrics" (and for iteration 1 "base_external_reward_metrics", M0's): the same metrics on
  the config's external ranked set (eval/reward_metrics_external.json), when it has one; with
  checkpoint selection (SELECT=1), "selected" (the snapshot promoted to M_N) and "selection" (each
  snapshot's win/tie/loss against M_{N-1}).
The summary is also printed, a line per stage.
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from eval.reward_metrics import EXTERNAL_FILE
from eval.stages import number, percent, with_interval, write_json
from judge import parse
from model.jsonl import read_jsonl


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def last_line(path: Path) -> dict | None:
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1]) if lines else None


# the head-to-head result files an iteration may hold, and their keys in the summary
HEAD_TO_HEAD = {"head_to_head.json": "head_to_head", "head_to_head_baseline.json": "head_to_head_baseline"}


def summarise(it: Path, head_to_head: list[str] | None = None, external: bool = True) -> dict:
    """The summary of iteration directory `it` (see the module doc); `head_to_head` names the comparisons to
    take from eval/ (file names of HEAD_TO_HEAD; None: every one there); external=False leaves out the external
    set's metrics (a config without one: a file left from other settings is not current)."""
    s: dict = {}
    if (it / "prompts.jsonl").is_file():
        s["prompts"] = len(read_jsonl(it / "prompts.jsonl"))
        attempts = it / "prompts.attempts.jsonl"
        if attempts.is_file():
            s["self_instruct"] = dict(Counter(r["dropped"] or "kept" for r in read_jsonl(attempts)))
    if (it / "candidates.jsonl").is_file():
        rows = read_jsonl(it / "candidates.jsonl")
        s["candidates"] = len(rows)
        s["finish_reasons"] = dict(Counter(r["finish_reason"] for r in rows))
    if (it / "judged.jsonl").is_file():
        rows = read_jsonl(it / "judged.jsonl")
        scores = [x for r in rows for x in r["scores"]]
        parsed = [x for x in scores if x is not None]
        s["judgements"] = len(scores)
        s["judge_parse_rate"] = len(parsed) / len(scores) if scores else None
        s["score_histogram"] = {str(k): sum(round(x) == k for x in parsed) for k in range(parse.MAX_SCORE + 1)}
        s["neutralised"] = sum(bool(r.get("neutralised")) for r in rows)
    pairs = read_json(it / "pairs.summary.json")
    if pairs:
        s.update(pairs=pairs["pairs"], pairs_per_prompt=pairs.get("pairs_per_prompt"), pairs_dropped=pairs["dropped"],
                 mean_chars_chosen=pairs["mean_chars_chosen"],
                 mean_chars_rejected=pairs["mean_chars_rejected"], chosen_longer=pairs["chosen_longer"])
    # the trainer's files: beside M_N, or beside the DPO run M_N was selected from (SELECT=1)
    selection = read_json(it / "selection.json")
    selected = selection and selection.get("promoted")
    train = last_line(it / ("dpo.train" if selected else "model.train") / "metrics.jsonl")
    if selected:
        s["selected"] = selected["name"]
        s["selection"] = {c["name"]: {k: c.get(k) for k in ("win", "tie", "loss")} for c in selection["candidates"]}
    if train:
        s["train"] = train
        s["final_loss"] = train.get("loss")
        if "accuracy" in train:  # DPO's reward accuracy: the implicit reward prefers the chosen answer
            s["dpo_reward_accuracy"] = train["accuracy"]
    compared = [(HEAD_TO_HEAD[name], it / "eval" / name) for name in (HEAD_TO_HEAD if head_to_head is None
                                                                       else head_to_head)]
    for key, path in (("reward_metrics", it / "eval/reward_metrics.json"), *compared,
                      ("base_reward_metrics", it.parent / "iter0/eval/reward_metrics.json"),
                      ("external_reward_metrics", it / "eval" / EXTERNAL_FILE),
                      ("base_external_reward_metrics", it.parent / "iter0/eval" / EXTERNAL_FILE)):
        if key.startswith("base_") and it.name != "iter1" or "external" in key and not external:
            continue
        if path.is_file():
            s[key] = read_json(path)
    return s


def describe(s: dict) -> list[str]:
    lines = []
    if "prompts" in s:
        lines.append(f"prompts: {s['prompts']} kept; requests: {s.get('self_instruct', {})}")
    if "candidates" in s:
        lines.append(f"candidates: {s['candidates']} ({s['finish_reasons']})")
    if "judgements" in s:
        rate = s["judge_parse_rate"]
        lines.append(f"judgements: {s['judgements']}, parse rate {'-' if rate is None else f'{100 * rate:.1f}%'}, "
                     f"scores {s['score_histogram']}, neutralised {s['neutralised']}")
    if "pairs" in s:
        lines.append(f"pairs: {s['pairs']}, {number(s['pairs_per_prompt'], '.2f')} a prompt (dropped "
                     f"{s['pairs_dropped']}); mean chars chosen "
                     f"{number(s['mean_chars_chosen'])} vs rejected {number(s['mean_chars_rejected'])}")
    if "train" in s:
        lines.append("training, last step: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                         for k, v in s["train"].items()))
    if "base_reward_metrics" in s and "reward_metrics" in s:  # the first visible effect of EFT training
        before, after = s["base_reward_metrics"]["parse_rate"], s["reward_metrics"]["parse_rate"]
        lines.append(f"judge parse rate (\"Score: X\" found): M0 {percent(before)} -> M1 {percent(after)}")
    if "selected" in s:
        lines.append(f"selected as M_N: {s['selected']} of {json.dumps(s['selection'])[:300]}")
    for key, shown in (("base_reward_metrics", ("pairwise_accuracy", "spearman")),
                       ("reward_metrics", ("pairwise_accuracy", "spearman")),
                       ("base_external_reward_metrics", ("pairwise_accuracy", "spearman")),
                       ("external_reward_metrics", ("pairwise_accuracy", "spearman")),
                       ("head_to_head", ("win", "tie", "loss")),
                       ("head_to_head_baseline", ("win", "tie", "loss"))):
        if key in s:
            short = {k: v for k, v in s[key].items() if not isinstance(v, (dict, list))}
            lines.append(f"{key.replace('_', ' ')}: {json.dumps(short)[:400]}")
            intervals = s[key].get("intervals") or {}
            n = s[key].get("n_compared" if key.startswith("head_to_head") else "n_prompts")
            lines.append(f"  95% intervals over {n} prompts: " + ", ".join(
                f"{k} {with_interval(s[key].get(k), intervals.get(k), as_percent=k != 'spearman')}" for k in shown))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iter", required=True, help="the iteration directory, runs/RUN/iterN")
    parser.add_argument("--out", required=True, help="summary JSON to write (atomically)")
    parser.add_argument("--head-to-head", nargs="*", choices=sorted(HEAD_TO_HEAD), metavar="FILE",
                        help="the head-to-head results of eval/ to include, by file name (make passes the ones "
                             "head_to_head.opponents asks for; default: every one there)")
    parser.add_argument("--no-external", action="store_true",
                        help="leave out eval/" + EXTERNAL_FILE + " (make passes it when the config has no external set)")
    args = parser.parse_args(argv)
    summary = summarise(Path(args.iter), args.head_to_head, external=not args.no_external)
    write_json(args.out, summary)
    print("\n".join([f"{args.iter}:"] + ["  " + line for line in describe(summary)]), file=sys.stderr)


if __name__ == "__main__":
    main()
