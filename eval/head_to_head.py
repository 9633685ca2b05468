"""Head to head: two models answer the same prompts and a judge model says which answer is better.

    python eval/head_to_head.py --a runs/R/iter3/model --b runs/R/iter2/model --prompts heldout.jsonl \\
        --judge checkpoints/judge --out runs/R/iter3/eval/head_to_head.json

1. A and B answer every prompt ({"id", "prompt"} or {"id", "messages"} lines, as sample/generate.py
   reads them), greedily by default (--temperature 0; the result file states the settings).
2. The judge (any checkpoint: a stronger model, or A or B itself, which the output says loudly)
   compares the two answers with a pairwise prompt of eval/pairwise.py (--pairwise-prompt: the project's,
   or alpacaeval, the form the paper's evaluations used; a conversation's judge sees its earlier turns
   too, as the loop's judge does), twice: once with A's answer shown first, once
   with B's, to cancel the judge's position bias.
3. Each order's verdict names a winner (A, B or tie). A prompt's outcome (--tie-rule, TIE_RULES):
   both-orders (the default, the paper's): A (or B) wins only when both orders name it, and an
   inconsistent pair of verdicts is a tie, so a judge that always prefers the first answer gives
   ties; points: +1 for A and -1 for B per order, so A winning one order and tying the other is a
   win for A. A prompt where either order gave no readable verdict has no outcome and is left out of
   the percentages (counted as "no verdict"); so is a prompt too long for either model's context
   ("too long").
Win / tie / loss are A's, in % of the prompts with an outcome, as in the paper's head-to-head tables.
The answers' mean lengths are reported too: judges favour longer answers.

Output: --out, the summary as JSON: {"a", "b", "judge", "self_judged", "prompts", "answer_sampling",
"judge_sampling", "pairwise_prompt", "tie_rule", "n_prompts", "n_too_long", "n_compared", "wins", "ties",
"losses", "no_verdict", "win", "tie", "loss" (fractions of the prompts with an outcome), "intervals" ({"win",
"tie", "loss"}: 95% bootstrap intervals over the compared prompts, seeded by --seed; eval/metrics.py),
"verdict_parse_rate",
"position_1_rate" (of the decisive verdicts, the share for the answer shown first), "mean_chars_a", "mean_chars_b",
"mean_tokens_a", "mean_tokens_b" (each in its own tokenizer), "length_limited_a", "length_limited_b"};
and in OUT's work folder (eval/stages.py) answers_a.jsonl, answers_b.jsonl, judgements.jsonl (one line
per prompt and order, sample 0 = A shown first) and outcomes.jsonl (one line per prompt).
Under torchrun every stage runs data parallel, or with --tp each model split over all ranks
(eval/stages.py); rank 0 writes the results.
"""
import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from eval.metrics import bootstrap_intervals
from eval.pairwise import pairwise_messages, parse_verdict
from eval.stages import (TIE_RULES, ContestSettings, add_answer_args, add_limit_args, answer, contest_configs, limited,
                         number, percent, prepare_work_dir, sampling_settings, with_interval, write_json)
from model.errors import FormatError
from model.jsonl import check_output, write_jsonl_atomic
from sample.generate import read_prompts
from sample.stage import Request, StageConfig, is_rank_zero, run_stage


# A judge takes items {"id", "sample", "prompt", "response_1", "response_2", ...} and returns its raw
# output for each, in order (None for an item it could not judge).
Judge = Callable[[list[dict]], list[str | None]]
POINTS = {"a": 1, "b": -1, "tie": 0}


@dataclass
class HeadToHeadSettings(ContestSettings):
    limit: int = 0                  # only the first `limit` prompts (0: all)


def judge_items(prompts: list[dict], answers_a: dict, answers_b: dict) -> list[dict]:
    """Two items per prompt: sample 0 shows A's answer first, sample 1 shows B's."""
    items = []
    for p in prompts:
        a, b = answers_a[p["id"]], answers_b[p["id"]]
        for sample, (first, one, two) in enumerate((("a", a, b), ("b", b, a))):
            items.append({"id": p["id"], "sample": sample, "first": first, "prompt": a["prompt"],
                          **({"messages": p["messages"]} if "messages" in p else {}),
                          "response_1": one["response"], "response_2": two["response"]})
    return items


def winner(item: dict, verdict: str | None) -> str | None:
    """Which contestant ("a", "b", "tie") a verdict on an item ("1", "2", "tie" or None) picks."""
    if verdict in (None, "tie"):
        return verdict
    second = "b" if item["first"] == "a" else "a"
    return item["first"] if verdict == "1" else second


def outcome(winners: list[str | None], rule: str = "both-orders") -> str | None:
    """A prompt's outcome from its two orders' winners under a TIE_RULES rule (see the module doc): "a",
    "b", "tie" or None."""
    if None in winners:
        return None
    if rule == "both-orders":
        return winners[0] if len(set(winners)) == 1 else "tie"
    assert rule == "points", rule
    points = sum(POINTS[w] for w in winners)
    return "a" if points > 0 else "b" if points < 0 else "tie"


def compare(prompts: list[dict], answers_a: dict, answers_b: dict, judge: Judge,
            tie_rule: str = "both-orders", seed: int = 0,
            pairwise_prompt: str = ContestSettings.pairwise_prompt) -> tuple[list[dict], dict]:
    """Judge A's answers against B's (both dicts id -> answer row) in both orders, reading the verdicts as the
    judge's prompt asks for them: (one row per prompt, tally, its intervals drawn with `seed`). Prompts that
    either model found too long are not judged."""
    compared = [p for p in prompts if "too long" not in (answers_a[p["id"]]["finish_reason"],
                                                         answers_b[p["id"]]["finish_reason"])]
    items = judge_items(compared, answers_a, answers_b)
    texts = judge(items)
    assert len(texts) == len(items), f"the judge returned {len(texts)} outputs for {len(items)} items"
    rows = []
    for p, pair, judgements in zip(compared, zip(items[::2], items[1::2]), zip(texts[::2], texts[1::2])):
        parsed = [parse_verdict(t, pairwise_prompt) if t is not None else None for t in judgements]
        winners = [winner(item, v.verdict if v else None) for item, v in zip(pair, parsed)]
        rows.append({"id": p["id"], "prompt": pair[0]["prompt"], "response_a": answers_a[p["id"]]["response"],
                     "response_b": answers_b[p["id"]]["response"], "judgements": list(judgements),
                     "verdicts": [v.verdict if v else None for v in parsed],
                     "parse_errors": [v.reason if v else "not judged: too long" for v in parsed],
                     "winners": winners, "outcome": outcome(winners, tie_rule)})
    return rows, tally(rows, [answers_a[p["id"]] for p in compared], [answers_b[p["id"]] for p in compared],
                       n_too_long=len(prompts) - len(compared), seed=seed)


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def rates(outcomes: list[str | None]) -> dict[str, float | None]:
    """A's win, tie and loss: fractions of the outcomes that are not None."""
    decided = [o for o in outcomes if o is not None]
    return {name: (sum(o == key for o in decided) / len(decided) if decided else None)
            for name, key in (("win", "a"), ("tie", "tie"), ("loss", "b"))}


def tally(rows: list[dict], answers_a: list[dict], answers_b: list[dict], n_too_long: int = 0, seed: int = 0) -> dict:
    """Win / tie / loss of A (fractions of the prompts with an outcome) with 95% bootstrap intervals over the
    prompts (eval/metrics.py), counts, and the answers' lengths."""
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("a", "tie", "b")}
    decided = sum(counts.values())
    outcomes = [r["outcome"] for r in rows]
    verdicts = [v for r in rows for v in r["verdicts"]]
    decisive = [v for v in verdicts if v in ("1", "2")]
    return {
        "n_prompts": len(rows) + n_too_long, "n_too_long": n_too_long, "n_compared": len(rows),
        "wins": counts["a"], "ties": counts["tie"], "losses": counts["b"], "no_verdict": len(rows) - decided,
        **rates(outcomes),
        "intervals": bootstrap_intervals(len(rows), lambda drawn: rates([outcomes[i] for i in drawn]), seed),
        "verdict_parse_rate": _mean([v is not None for v in verdicts]),
        "position_1_rate": _mean([v == "1" for v in decisive]),
        "mean_chars_a": _mean([len(x["response"]) for x in answers_a]),
        "mean_chars_b": _mean([len(x["response"]) for x in answers_b]),
        "mean_tokens_a": _mean([x["n_tokens"] for x in answers_a]),
        "mean_tokens_b": _mean([x["n_tokens"] for x in answers_b]),
        "length_limited_a": sum(x["finish_reason"] == "length" for x in answers_a),
        "length_limited_b": sum(x["finish_reason"] == "length" for x in answers_b),
    }


def model_judge(config: StageConfig, judge_model, out, pairwise_prompt: str = ContestSettings.pairwise_prompt) -> Judge:
    """A Judge that samples checkpoint `judge_model` as `config` says, with the pairwise prompt `pairwise_prompt`,
    resumably into `out`."""
    def judged(request: Request, completions) -> list[dict]:
        c = completions[0]
        return [{**request.fields, "judgement": c.text, "finish_reason": c.finish_reason, "n_tokens": c.n_tokens}]

    def judge(items: list[dict]) -> list[str | None]:
        def requests(tokenizer):
            return [Request([it["id"], it["sample"]], it, tokenizer.encode_chat(
                pairwise_messages(it.get("messages") or it["prompt"], it["response_1"], it["response_2"],
                                  pairwise_prompt)),
                [(it["id"], it["sample"])])
                for it in items]

        rows, _, _ = run_stage(replace(config, model=str(judge_model), out=str(out)), "eval/head_to_head.py judgements",
                               requests, judged, 1, desc="judging",
                               on_too_long=lambda r: {**r.fields, "judgement": None, "finish_reason": "too long"})
        return [r["judgement"] for r in rows]
    return judge


def same_checkpoint(path, other) -> bool:
    return Path(path).resolve() == Path(other).resolve()


def self_judged(judge, a, b) -> str | None:
    """"a", "b" or "a and b" when the judge checkpoint is a contestant (the same directory), else None."""
    return " and ".join(name for name, path in (("a", a), ("b", b)) if same_checkpoint(judge, path)) or None


def summary_lines(s: dict) -> list[str]:
    lines = []
    if s.get("self_judged"):
        who = {"a": "A", "b": "B", "a and b": "both A and B"}[s["self_judged"]]
        lines += ["!" * 78, f"!!! SELF-JUDGED: the judge is {who} itself. A model judging its own answers is "
                  "biased towards them;", "!!! read these numbers as the model's opinion, not as an "
                  "independent evaluation.", "!" * 78]
    lines += [f"A = {s['a']}", f"B = {s['b']}", f"judge = {s['judge']}",
              f"answers: {'greedy' if s['answer_sampling']['greedy'] else 'sampled'}; "
              f"judge: {'greedy' if s['judge_sampling']['greedy'] else 'sampled'}, the "
              f"{s.get('pairwise_prompt', ContestSettings.pairwise_prompt)} prompt; both orders judged",
              f"A vs B over {s['n_compared']} prompts: win {percent(s['win'])} / tie {percent(s['tie'])} / loss "
              f"{percent(s['loss'])} ({s['wins']} / {s['ties']} / {s['losses']}); {s['no_verdict']} without a verdict, "
              f"{s['n_too_long']} too long for a model's context",
              "95% intervals (bootstrap over the prompts): " + ", ".join(
                  f"{k} {with_interval(s[k], s.get('intervals', {}).get(k))}" for k in ("win", "tie", "loss")),
              f"verdicts parsed: {percent(s['verdict_parse_rate'])}; the judge preferred the answer shown first in "
              f"{percent(s['position_1_rate'])} of its decisive verdicts",
              f"mean answer length: A {number(s['mean_chars_a'])} chars ({number(s['mean_tokens_a'])} tokens), "
              f"B {number(s['mean_chars_b'])} chars ({number(s['mean_tokens_b'])} tokens); hit the length limit: "
              f"A {s['length_limited_a']}, B {s['length_limited_b']}"]
    return lines


def judge_answers(judging: StageConfig, judge_model, prompts: list[dict], answers_a: list[dict],
                  answers_b: list[dict], model_a, model_b, work: Path, tie_rule: str = "both-orders",
                  seed: int = 0, pairwise_prompt: str = ContestSettings.pairwise_prompt) -> dict:
    """Judge two models' answers with checkpoint `judge_model` sampled as `judging` says, with the pairwise
    prompt `pairwise_prompt` (judgements into `work`), write the outcomes there (rank 0), and return the tally with
    who played and who judged."""
    by_id = [{r["id"]: r for r in rows} for rows in (answers_a, answers_b)]
    judge = model_judge(judging, judge_model, work / "judgements.jsonl", pairwise_prompt)
    rows, tallied = compare(prompts, *by_id, judge, tie_rule, seed, pairwise_prompt)
    if is_rank_zero():
        write_jsonl_atomic(work / "outcomes.jsonl", rows)
    return {"a": str(model_a), "b": str(model_b), "judge": str(judge_model),
            "self_judged": self_judged(judge_model, model_a, model_b), "judge_sampling": sampling_settings(judging),
            "pairwise_prompt": pairwise_prompt, "tie_rule": tie_rule, **tallied}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="checkpoint A (its wins are the reported wins)")
    parser.add_argument("--b", required=True, help="checkpoint B")
    parser.add_argument("--judge", required=True, help="checkpoint of the judge (may be A or B: said loudly)")
    parser.add_argument("--prompts", required=True, help="held-out prompts, JSONL {\"id\", \"prompt\"}")
    parser.add_argument("--out", required=True, help="summary JSON to write; stage files go to its .work folder")
    add_limit_args(parser, limit=HeadToHeadSettings.limit)
    add_answer_args(parser, HeadToHeadSettings())
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    answering, judging = contest_configs(args)
    try:
        check_output(args.out, {"--prompts": args.prompts})
        prompts = limited(read_prompts(args.prompts)[0], args.limit, args.last)
    except FormatError as e:
        sys.exit(f"error: {e}")
    work = prepare_work_dir(args.out, "eval/head_to_head.py",
                            {"a": Path(args.a), "b": Path(args.b), "judge": Path(args.judge),
                             "prompts": Path(args.prompts), "limit": args.limit, "last": args.last,
                             "answer_sampling": sampling_settings(answering),
                             "judge_sampling": sampling_settings(judging), "tie_rule": args.tie_rule,
                             "pairwise_prompt": args.pairwise_prompt})
    answers_a = answer(answering, args.a, prompts, work / "answers_a.jsonl", desc="answering (A)")
    answers_b = answer(answering, args.b, prompts, work / "answers_b.jsonl", desc="answering (B)")
    summary = judge_answers(judging, args.judge, prompts, answers_a, answers_b, args.a, args.b, work, args.tie_rule,
                            args.seed, args.pairwise_prompt)
    if not is_rank_zero():
        return
    summary = {**summary, "prompts": str(args.prompts), "answer_sampling": sampling_settings(answering)}
    write_json(args.out, summary)
    print("\n".join(summary_lines(summary)) + f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
