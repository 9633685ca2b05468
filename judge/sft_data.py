"""Supervised fine-tuning data for M1: IFT examples plus EFT examples turned into judge-prompt form.

    python judge/sft_data.py --ift data/seed/ift.jsonl --eft data/seed/eft.jsonl --out runs/R/iter1/sft.jsonl
    python judge/sft_data.py --ift data/seed/ift.jsonl --out runs/R/baseline/sft.jsonl     # the SFT baseline

IFT lines {"id", "prompt", "response"} pass through. EFT lines {"id", "instruction", "response",
"judgement"} become {"id", "prompt": the judge prompt filled with instruction and response (exactly
what judge/score.py will show the model), "response": the judgement ending in "Score: X"}. This is
how the trainers stay unaware of the judge: they see prompt/response pairs. Written atomically.
"""
import argparse
import sys

from judge.prompt import judge_prompt
from model.errors import FormatError
from model.jsonl import check_output, read_jsonl, write_jsonl_atomic


def sft_rows(ift: list[dict], eft: list[dict]) -> list[dict]:
    rows = [{"id": r["id"], "prompt": r["prompt"], "response": r["response"], "source": "ift"} for r in ift]
    rows += [{"id": r["id"], "prompt": judge_prompt(r["instruction"], r["response"]), "response": r["judgement"],
              "source": "eft"} for r in eft]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ift", required=True, help="JSONL of {id, prompt, response}")
    parser.add_argument("--eft", help="JSONL of {id, instruction, response, judgement}; leave out for the baseline")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        check_output(args.out, {"--ift": args.ift, "--eft": args.eft})
        ift = read_jsonl(args.ift, required_fields=("id", "prompt", "response"), allow_empty=False)
        eft = read_jsonl(args.eft, required_fields=("id", "instruction", "response", "judgement")) if args.eft else []
    except FormatError as e:
        sys.exit(f"error: {e}")
    n = write_jsonl_atomic(args.out, sft_rows(ift, eft))
    print(f"sft data: {len(ift)} IFT + {len(eft)} EFT = {n} examples -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
