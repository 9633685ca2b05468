"""A model's answers in the formats of outside evaluators: AlpacaEval and MT-Bench. Nothing is downloaded.

    python eval/export.py alpacaeval --model runs/R/iter3/model --eval-set alpaca_eval.json \\
        --out exports/M3/alpaca_eval_outputs.json --generator R-M3
    python eval/export.py mt-bench --model runs/R/iter3/model --questions question.jsonl \\
        --out data/mt_bench/model_answer/M3.jsonl [--model-id M3]

alpacaeval: --eval-set is AlpacaEval's evaluation set as a local file, a JSON list of objects with at
  least "instruction" (the released alpaca_eval.json also has "dataset", "output" and "generator" of
  the reference model). --out is a JSON list in the same order, one object per instruction:
  {"instruction", "output" (this model's answer), "generator" (--generator), "dataset" (copied when
  present)}, what `alpaca_eval --model_outputs` reads.
mt-bench: --questions is MT-Bench's question.jsonl, one {"question_id", "category", "turns": [t1, t2]}
  a line. The model answers turn 1; turn 2 is asked in the same conversation, after the model's own
  answer to turn 1 (and so on for longer questions). --out is a JSONL answer file, one line per
  question: {"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns": [a1, a2]}],
  "tstamp"}, the format FastChat's llm_judge reads from its model_answer/ folder (which names the model
  after the file: keep --model-id equal to the file name, the default).
Answers are greedy by default (--temperature 0) with one sampling setting for every question; FastChat's
own generation uses a temperature per MT-Bench category. A prompt too long for the model's context gets
an empty answer, counted in the summary. The answers with their finish reasons and token counts stay in
OUT's work folder (eval/stages.py), resumably. Both run under torchrun (data parallel, or --tp for
a model split over the ranks); rank 0 writes --out.
"""
import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from eval.stages import (ContestSettings, add_answer_args, answer, contest_configs, prepare_work_dir, sampling_settings,
                         work_dir, write_json)
from model.errors import FormatError
from model.jsonl import check_id, check_output, iter_jsonl, write_jsonl_atomic
from sample.stage import StageConfig, is_rank_zero


def read_alpaca_eval(path) -> list[dict]:
    """AlpacaEval's evaluation set: a JSON list of objects with a string "instruction"."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise FormatError(f"{path}: expected a JSON list of {{\"instruction\", ...}} objects, "
                          f"got {type(data).__name__}")
    if not data:
        raise FormatError(f"{path}: the list is empty: no instructions to answer")
    for i, row in enumerate(data):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise FormatError(f"{path}: item {i} has no string \"instruction\"")
    return data


def read_mt_bench(path) -> list[dict]:
    """MT-Bench questions: {"question_id", "turns": [str, ...]} lines, question ids unique."""
    rows, seen = [], {}
    for lineno, row in iter_jsonl(path, required_fields=("question_id", "turns"), allow_empty=False):
        qid, turns = row["question_id"], row["turns"]
        check_id(row, "question_id", f"{path}:{lineno}")
        if qid in seen:
            raise FormatError(f"{path}:{lineno}: question_id {qid!r} already on line {seen[qid]}")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise FormatError(f"{path}:{lineno}: 'turns' must be a non-empty list of strings")
        seen[qid] = lineno
        rows.append(row)
    return rows


def export_alpaca_eval(answering: StageConfig, model, work: Path, eval_set: list[dict],
                       generator: str) -> tuple[list[dict], list[dict]]:
    """(the AlpacaEval outputs, the answer rows behind them, kept in `work`)."""
    prompts = [{"id": i, "prompt": row["instruction"]} for i, row in enumerate(eval_set)]
    answers = answer(answering, model, prompts, work / "answers.jsonl")
    outputs = [{"instruction": row["instruction"], "output": ans["response"], "generator": generator,
                **({"dataset": row["dataset"]} if "dataset" in row else {})} for row, ans in zip(eval_set, answers)]
    return outputs, answers


def export_mt_bench(answering: StageConfig, model, work: Path, questions: list[dict],
                    model_id: str) -> tuple[list[dict], list[dict]]:
    """(the MT-Bench answer lines, the answer rows of every turn, kept in `work`). Turn k is answered, for the
    questions that have it, in a conversation holding the earlier turns and the model's own answers to them."""
    conversations = {q["question_id"]: [] for q in questions}
    all_answers = []
    for k in range(max(len(q["turns"]) for q in questions)):
        asked = [q for q in questions if len(q["turns"]) > k]
        for q in asked:
            conversations[q["question_id"]].append({"role": "user", "content": q["turns"][k]})
        prompts = [{"id": q["question_id"], "messages": list(conversations[q["question_id"]])} for q in asked]
        answers = answer(answering, model, prompts, work / f"turn{k + 1}.jsonl", desc=f"answering turn {k + 1}")
        for q, ans in zip(asked, answers):
            conversations[q["question_id"]].append({"role": "assistant", "content": ans["response"]})
        all_answers += answers
    lines = [{"question_id": q["question_id"],
              "answer_id": hashlib.sha256(f"{model_id}/{q['question_id']}".encode()).hexdigest()[:22],
              "model_id": model_id,
              "choices": [{"index": 0, "turns": [m["content"] for m in conversations[q["question_id"]]
                                                 if m["role"] == "assistant"]}],
              "tstamp": time.time()} for q in questions]
    return lines, all_answers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = parser.add_subparsers(dest="format", required=True)
    alpaca = formats.add_parser("alpacaeval", help="AlpacaEval model outputs (JSON list)")
    alpaca.add_argument("--eval-set", required=True, help="AlpacaEval's evaluation set, a local JSON file")
    alpaca.add_argument("--generator", required=True, help="the \"generator\" field: the model's name in AlpacaEval")
    mt = formats.add_parser("mt-bench", help="MT-Bench answers (JSONL), both turns")
    mt.add_argument("--questions", required=True, help="MT-Bench's question.jsonl, a local file")
    mt.add_argument("--model-id", help="the \"model_id\" field (default: the --out file's name without .jsonl)")
    for p in (alpaca, mt):
        p.add_argument("--model", required=True, help="checkpoint directory")
        p.add_argument("--out", required=True, help="file to write; answers are kept in its .work folder")
        add_answer_args(p, ContestSettings(max_new_tokens=1024), judge=False)
    args = parser.parse_args(argv)
    answering, _ = contest_configs(args, judge=False)
    flag, given = ("--eval-set", args.eval_set) if args.format == "alpacaeval" else ("--questions", args.questions)
    try:
        check_output(args.out, {flag: given})
        if args.format == "alpacaeval":
            source, name = read_alpaca_eval(args.eval_set), args.generator
        else:
            source, name = read_mt_bench(args.questions), args.model_id or Path(args.out).stem
    except FormatError as e:
        sys.exit(f"error: {e}")
    prepare_work_dir(args.out, f"eval/export.py {args.format}", {"model": Path(args.model), "input": Path(given),
                                                          "answer_sampling": sampling_settings(answering)})
    export = export_alpaca_eval if args.format == "alpacaeval" else export_mt_bench
    outputs, answers = export(answering, args.model, work_dir(args.out), source, name)
    if not is_rank_zero():
        return  # torchrun: rank 0 writes the file
    if args.format == "alpacaeval":
        write_json(args.out, outputs)
    else:
        write_jsonl_atomic(args.out, outputs)
    too_long = sum(r["finish_reason"] == "too long" for r in answers)
    limited = sum(r["finish_reason"] == "length" for r in answers)
    print(f"{len(outputs)} {'instructions' if args.format == 'alpacaeval' else 'questions'} answered as {name!r} "
          f"({len(answers)} answers: {limited} hit --max-new-tokens, {too_long} empty because the prompt was too "
          f"long for the context); wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
