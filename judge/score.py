"""Judge candidate answers with the model itself: the paper's LLM-as-a-Judge step.

    python judge/score.py --model runs/R/iter1/model --candidates candidates.jsonl --out judged.jsonl \\
        --samples 3 --temperature 0.7 --top-p 0.9

Every candidate (a line of sample/generate.py's output: id, sample, prompt, response) is put into
the additive 5-point judge prompt (judge/prompt.py) and judged --samples times. The judge prompts
of a batch share the template's opening, and a candidate's samples share its whole prompt, so the
sampler prefills each of those once; a multi-turn prompt's judge sees its whole conversation.
Output, one line per candidate: judged.jsonl, as judge/__init__.py describes it.
Resumable like sample/generate.py: rerun the same command after a crash.

--score expected (beyond the paper; judge/expected.py): after each justification, read the model's
distribution over the score and use its expectation; a candidate's score is then the mean of those. Ties all
but vanish, and one judgement (--samples 1) gives a usable score where the paper samples three; how far it
agrees with their mean is measured in bench/RESULTS.md (bench/judge_levers.py --judged). Each row also gets
"expected_scores", "score_probs" (p(0..5) per judgement) and "score_mass"; "scores" stays the parsed digits.
"""
import argparse
import sys
from collections import Counter
from dataclasses import dataclass

import judge
from judge import parse
from judge.expected import SCORE_MODES, score_distributions
from judge.parse import parse_score
from judge.prompt import judge_messages, neutralise_response
from model.errors import FormatError
from model.jsonl import check_id, check_output, iter_jsonl
from sample.generate import SamplingSettings, add_sampling_args, messages_problem, positive_int, stage_config
from sample.sampler import Completion
from sample.stage import Request, is_rank_zero, run_stage, throughput


@dataclass
class JudgeSettings(SamplingSettings):
    samples: int = 3                # judgements per candidate, averaged (the paper's 3)
    max_new_tokens: int = 256
    score: str = "parsed"           # one of SCORE_MODES: the digit each judgement wrote (the paper), or the
                                    # expectation of the model's distribution over it (judge/expected.py)


def read_candidates(path) -> list[dict]:
    rows, seen = [], {}
    for lineno, row in iter_jsonl(path, required_fields=("id", "sample", "prompt", "response"), allow_empty=False):
        check_id(row, "id", f"{path}:{lineno}")
        check_id(row, "sample", f"{path}:{lineno}")
        key = (row["id"], row["sample"])
        if not isinstance(row["prompt"], str) or not isinstance(row["response"], str):
            raise FormatError(f"{path}:{lineno}: 'prompt' and 'response' must be strings")
        problem = messages_problem(row["messages"]) if "messages" in row else None
        if problem:
            raise FormatError(f"{path}:{lineno}: 'messages' (the whole conversation of a multi-turn prompt) is not a "
                              f"conversation the chat templates take: {problem}")
        if key in seen:
            raise FormatError(f"{path}:{lineno}: candidate (id {key[0]!r}, sample {key[1]!r}) "
                              f"already on line {seen[key]}")
        seen[key] = lineno
        rows.append(row)
    return rows


def judged_rows(request: Request, completions: list[Completion]) -> list[dict]:
    parsed = [parse_score(c.text) for c in completions]
    scores = [p.score for p in parsed]
    valid = [s for s in scores if s is not None]
    return [{**request.fields, "judgements": [c.text for c in completions], "scores": scores,
             "parse_errors": [p.reason for p in parsed], "score": sum(valid) / len(valid) if valid else None,
             "n_parsed": len(valid), "neutralised": neutralise_response(request.fields["response"])[1]}]


def expected_rows(net, tokenizer):
    """judged_rows, with each candidate's score the mean of its judgements' expected scores."""
    def rows(request: Request, completions: list[Completion]) -> list[dict]:
        row, = judged_rows(request, completions)
        read = score_distributions(net, tokenizer, request.token_ids, [c.text for c in completions])
        expected = [r and r["expected"] for r in read]
        valid = [e for e in expected if e is not None]
        return [{**row, "score": sum(valid) / len(valid) if valid else None, "expected_scores": expected,
                 "score_probs": [r and r["probs"] for r in read], "score_mass": [r and r["mass"] for r in read],
                 "score_tokens": sum(r["tokens"] for r in read if r)}]
    return rows


def judge_rows(score: str) -> dict:
    """run_stage's rows arguments for a --score mode (the paper's parsed scores keep their settings record)."""
    if score == "expected":
        return {"make_rows": expected_rows, "rows_need_model": True, "settings": {"score": score}}
    return {"make_rows": judged_rows}


def unjudged_row(request: Request) -> dict:
    """The row of a candidate whose judge prompt does not fit the context: no judgements, a null score."""
    return {**request.fields, "judgements": [], "scores": [], "parse_errors": [], "score": None,
            "n_parsed": 0, "neutralised": neutralise_response(request.fields["response"])[1]}


def summary(rows: list[dict]) -> str:
    judgements = sum(len(r["judgements"]) for r in rows)
    parsed = sum(r["n_parsed"] for r in rows)
    histogram = Counter(round(s) for r in rows for s in r["scores"] if s is not None)
    reasons = Counter(e for r in rows for e in r["parse_errors"] if e)
    lines = [f"judged {len(rows)} candidates: {judgements} judgements, {parsed} parsed "
             f"({100 * parsed / max(judgements, 1):.1f}%); {sum(r['neutralised'] for r in rows)} responses "
             f"neutralised; {sum(not r['judgements'] for r in rows)} not judged (prompt too long)",
             "score histogram (each judgement, rounded): " +
             ", ".join(f"{k}: {histogram.get(k, 0)}" for k in range(parse.MAX_SCORE + 1))]
    if reasons:
        lines.append("unparsed because: " + ", ".join(f"{v} {k}" for k, v in reasons.most_common()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, epilog=judge.formats("judged.jsonl"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(parser, JudgeSettings())
    parser.add_argument("--samples", type=positive_int, default=JudgeSettings.samples,
                        help="judgements per candidate (default %(default)s)")
    parser.add_argument("--score", choices=SCORE_MODES, default=JudgeSettings.score,
                        help="parsed (the paper: the digit after 'Score:') or expected (the expectation of the "
                             "model's distribution over it; judge/expected.py). Default %(default)s")
    parser.add_argument("--candidates", required=True, help="JSONL with id, sample, prompt, response per line")
    parser.add_argument("--out", required=True, help="judged JSONL, one line per candidate")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_output(args.out, {"--candidates": args.candidates})
        candidates = read_candidates(args.candidates)
    except FormatError as e:
        sys.exit(f"error: {e}")

    def requests(tokenizer):
        # the judge sees a multi-turn prompt's whole conversation, not only its last turn
        return [Request([c["id"], c["sample"]], c,
                        tokenizer.encode_chat(judge_messages(c.get("messages") or c["prompt"], c["response"])),
                        [(c["id"], c["sample"])]) for c in candidates]

    rows, stats, _ = run_stage(stage_config(args), "judge/score.py", requests, n=args.samples, desc="judging",
                               on_too_long=unjudged_row, **judge_rows(args.score))
    if is_rank_zero():
        print(f"{summary(rows)}\n{throughput(stats)}", file=sys.stderr)


if __name__ == "__main__":
    main()
