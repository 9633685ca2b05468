"""EFT training data, built as the paper built it: the model judges human-ranked replies, and only
judgements that agree with the human ranking are kept, then rebalanced so no score dominates.

    python judge/oasst.py --input oasst.trees.jsonl.gz --out-dir data/oasst      # -> eft_pool.jsonl
    python judge/eft.py --model checkpoints/llama2-70b-sft-ift --pool data/oasst/eft_pool.jsonl \\
        --out data/oasst/eft.jsonl --max-fraction 0.3

Input lines {"id", "prompt", "replies": [{"id", "text", "rank"}, ...]} (judge/oasst.py's ranked
format; rank 0 = best). Every reply is judged once, and that judgement's score is what is
compared with the human ranks. A prompt's judgements are kept when
judge.oasst.agrees_with_ranking holds for their scores; then judge.oasst.rebalance caps the most
common scores so none is more than --max-fraction of the result (the paper's model gave 4 far too
often). Output lines {"id", "instruction", "response", "judgement"}: what judge/sft_data.py reads.
The judgements themselves are kept, resumably, in OUT.judgements.jsonl.
"""
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from judge.oasst import agrees_with_ranking, rebalance
from judge.prompt import judge_messages
from judge.score import JudgeSettings, judged_rows
from model.errors import FormatError
from model.jsonl import check_id, check_output, iter_jsonl, write_jsonl_atomic
from sample.generate import SamplingSettings, add_sampling_args, probability, stage_config
from sample.resume import check_owned, settings_path
from sample.stage import Request, is_rank_zero, run_stage, throughput


@dataclass
class EFTSettings(SamplingSettings):
    """How the judge samples its one judgement of each reply (as judge/score.py samples, by default), and
    the rebalancing cap."""
    max_new_tokens: int = JudgeSettings.max_new_tokens
    max_fraction: float = 0.3       # no score above this share of the kept examples (the paper's judge said 4 too often)


def read_pool(path) -> list[dict]:
    rows = []
    for lineno, row in iter_jsonl(path, required_fields=("id", "prompt", "replies"), allow_empty=False):
        replies = row["replies"]
        check_id(row, "id", f"{path}:{lineno}")
        if not isinstance(replies, list) or not all(isinstance(r, dict) and {"id", "text", "rank"} <= set(r)
                                                    for r in replies):
            raise FormatError(f"{path}:{lineno}: 'replies' must be a list of {{\"id\", \"text\", \"rank\"}}")
        for reply in replies:
            check_id(reply, "id", f"{path}:{lineno}: a reply")
        rows.append(row)
    return rows


def eft_examples(pool: list[dict], judged: dict, seed: int, max_fraction: float) -> tuple[list[dict], dict]:
    """EFT examples from the judged replies (judged[(prompt id, reply id)] = a judged row), and counts."""
    examples, counts = [], {"prompts": len(pool), "agree": 0, "disagree": 0, "not judged": 0}
    for row in pool:
        rows = [judged.get((row["id"], r["id"])) for r in row["replies"]]
        if any(r is None or not r["judgements"] for r in rows):
            counts["not judged"] += 1
            continue
        scores = [r["scores"][0] for r in rows]  # the judgement that becomes the training target
        if not agrees_with_ranking(scores, [r["rank"] for r in row["replies"]]):
            counts["disagree"] += 1
            continue
        counts["agree"] += 1
        examples += [{"id": f"{row['id']}/{reply['id']}", "instruction": row["prompt"], "response": reply["text"],
                      "judgement": r["judgements"][0]} for reply, r in zip(row["replies"], rows)]
    kept = rebalance(examples, seed, max_fraction) if examples else []
    counts.update(examples=len(examples), kept_after_rebalance=len(kept))
    return kept, counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(parser, EFTSettings())
    parser.add_argument("--pool", required=True, help="ranked prompts: {id, prompt, replies: [{id, text, rank}]}")
    parser.add_argument("--out", required=True, help="EFT JSONL: {id, instruction, response, judgement}")
    parser.add_argument("--max-fraction", type=probability, default=EFTSettings.max_fraction,
                        help="no score above this share (default %(default)s)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    final_out = Path(args.out)
    judgements = final_out.with_name(final_out.stem + ".judgements.jsonl")  # where run_stage writes
    try:
        for out in (final_out, judgements):
            check_output(out, {"--pool": args.pool})
        check_owned([final_out], settings_path(judgements))  # OUT is ours if its judgements are
        pool = read_pool(args.pool)
    except FormatError as e:
        sys.exit(f"error: {e}")

    def requests(tokenizer):
        return [Request([row["id"], r["id"]], {"id": row["id"], "sample": r["id"], "prompt": row["prompt"],
                                               "response": r["text"]},
                        tokenizer.encode_chat(judge_messages(row["prompt"], r["text"])), [(row["id"], r["id"])])
                for row in pool for r in row["replies"]]

    rows, stats, too_long = run_stage(stage_config(args, out=str(judgements)), "judge/eft.py", requests, judged_rows, 1,
                                      desc="judging ranked replies")
    if not is_rank_zero():
        return
    judged = {(r["id"], r["sample"]): r for r in rows}
    try:
        kept, counts = eft_examples(pool, judged, args.seed, args.max_fraction)
    except ValueError as e:
        sys.exit(f"error: {e}")
    write_jsonl_atomic(final_out, kept)
    print(f"eft: {counts} ({too_long} replies too long to judge) -> {final_out}\n{throughput(stats)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
