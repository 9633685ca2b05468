"""Sample completions for a file of prompts.

    python sample/generate.py --model checkpoints/smollm2-135m --prompts prompts.jsonl --out candidates.jsonl \\
        --samples 4 --temperature 0.7 --top-p 0.9 --max-new-tokens 512 --batch-size 16 --seed 0
    torchrun --nproc_per_node=8 sample/generate.py --samples 4 ...       # data parallel: each rank its share
    torchrun --nproc_per_node=8 sample/generate.py --tp --samples 4 ...  # tensor parallel: one model, 8 GPUs

Input lines: {"id": ..., "prompt": "..."} (a user message; the model's chat template is applied)
or {"id": ..., "messages": [{"role": ..., "content": ...}, ...]} (an optional "system" turn, then
"user" and "assistant" turns alternating, the last a "user" turn); an id is a string or an integer,
unique in the file. Other fields are carried over.
Output: one line per sample: the input's fields plus "sample", "response", "finish_reason"
("stop" or "length") and "n_tokens". The run is resumable: rerun the same command after a crash
or Ctrl-C and it continues where it stopped, writing every (id, sample) exactly once.
"""
import argparse
import json
import math
import sys
from dataclasses import dataclass, fields
from typing import ClassVar

from model.errors import FormatError
from model.jsonl import check_id, check_output, iter_jsonl
from sample.sampler import Completion
from sample.stage import Request, StageConfig, is_rank_zero, run_stage, throughput


@dataclass
class SamplingSettings:
    """A sampling stage's settings, each the flag of the same name (--max-new-tokens for max_new_tokens).
    These defaults are the only ones: the CLI's flags take them, and the loop's config (configs/iteration.py)
    is made of these classes and passes every field."""
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    batch_size: int = 16            # rows decoded together
    # the settings that change speed and memory but not the outputs (a changed one redoes nothing)
    speed_only: ClassVar[tuple[str, ...]] = ("batch_size",)


@dataclass
class GenerateSettings(SamplingSettings):
    samples: int = 4                # candidates per prompt (the paper's N = 4)


def settings_from_args(cls, args):
    """An instance of a settings class from the parsed flags of its fields."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def read_prompts(path) -> tuple[list[dict], dict[str, int]]:
    """Validated input lines, and counts of the ones skipped (empty prompts) by reason.

    Problems that mean the file is not what the user thinks (bad JSON, missing fields, ids that are
    not strings or integers or appear twice, messages no chat template can take, no lines at all) are
    errors naming the file and line, raised before any work starts.
    """
    rows, seen, skipped = [], {}, {"empty prompt": 0}
    for lineno, row in iter_jsonl(path, required_fields=("id",), allow_empty=False):
        where = f"{path}:{lineno}"
        check_id(row, "id", where)
        if row["id"] in seen:
            raise FormatError(f"{where}: duplicate id {row['id']!r} (first on line {seen[row['id']]})")
        seen[row["id"]] = lineno
        if ("prompt" in row) == ("messages" in row):
            raise FormatError(f"{where}: give exactly one of \"prompt\" (a string) or \"messages\" (a list)")
        if "prompt" in row and not isinstance(row["prompt"], str):
            raise FormatError(f"{where}: \"prompt\" must be a string")
        problem = messages_problem(row["messages"]) if "messages" in row else None
        if problem:
            raise FormatError(f"{where}: \"messages\" must be a list of {{\"role\", \"content\": str}} objects, an "
                              f"optional system turn first, then user and assistant turns alternating, the last a "
                              f"user turn: {problem}")
        text = row["prompt"] if "prompt" in row else row["messages"][-1]["content"]
        if not text.strip():
            skipped["empty prompt"] += 1
            continue
        rows.append(row)
    return rows, skipped


def messages_problem(messages) -> str | None:
    """What keeps a conversation from the chat templates (model/tokenizer.py), or None: Llama-2's takes
    only an optional first system turn, then user and assistant turns alternating, and both answer a
    last user turn."""
    if not isinstance(messages, list) or not messages:
        return "it is not a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return f"message {i} is not an object with a string \"content\""
    first = 1 if messages[0].get("role") == "system" else 0
    for i, m in enumerate(messages[first:], start=first):
        expected = "user" if (i - first) % 2 == 0 else "assistant"
        if m.get("role") != expected:
            return f"message {i} has role {json.dumps(m.get('role'))}, expected \"{expected}\""
    if messages[-1]["role"] != "user":
        return "the last message is not a user turn"
    return None


def chat_ids(tokenizer, row: dict, raw: bool = False) -> list[int]:
    if raw:  # a base model continuing plain text
        return tokenizer.encode(row["prompt"], bos=True)
    messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
    return tokenizer.encode_chat(messages)


def sample_rows(request: Request, completions: list[Completion]) -> list[dict]:
    fields = request.fields
    prompt = fields["prompt"] if "prompt" in fields else fields["messages"][-1]["content"]
    return [{**fields, "prompt": prompt, "sample": s, "response": c.text, "finish_reason": c.finish_reason,
             "n_tokens": c.n_tokens} for s, c in enumerate(completions)]


def _flag_value(text: str, parse, ok, expected: str):
    """`text` parsed and checked, for argparse: a bad value is one line naming the flag and what it takes."""
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _flag_value(text, int, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    return _flag_value(text, int, lambda v: v >= 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    return _flag_value(text, float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")


def probability(text: str) -> float:
    """A share in (0, 1]: a nucleus mass, a fraction."""
    return _flag_value(text, float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def add_sampling_args(parser, defaults: SamplingSettings):
    """The options every sampling CLI shares (generate, judge, self-instruct), defaults from its settings."""
    parser.add_argument("--model", required=True, help="checkpoint directory (see model/convert.py)")
    add_decoding_args(parser, defaults.temperature, defaults.top_p, defaults.max_new_tokens)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                        help="rows decoded together (default %(default)s)")
    add_running_args(parser)


def add_decoding_args(parser, temperature: float, top_p: float, max_new_tokens: int) -> None:
    """--temperature, --top-p, --top-k and --max-new-tokens, with these defaults (top-k off)."""
    parser.add_argument("--temperature", type=non_negative_float, default=temperature,
                        help="0 = greedy (default %(default)s)")
    parser.add_argument("--top-p", type=probability, default=top_p, help="nucleus sampling mass (default %(default)s)")
    parser.add_argument("--top-k", type=non_negative_int, default=StageConfig.top_k,
                        help="keep only the k most likely tokens (0 = off)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens,
                        help="length limit, in tokens (default %(default)s)")


def add_running_args(parser):
    """How a sampling CLI runs (seed, dtype, parallelism, speed): StageConfig's fields past the sampling."""
    parser.add_argument("--seed", type=int, default=StageConfig.seed, help="same seed, same outputs (default %(default)s)")
    parser.add_argument("--dtype", default=StageConfig.dtype, choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto (default): bfloat16 on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16), "
                             "else float32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA graphs on GPUs)")
    parser.add_argument("--no-share-prefix", action="store_true",
                        help="prefill every row on its own (for comparison; slower)")
    parser.add_argument("--tp", action="store_true",
                        help="under torchrun: tensor parallel (one model split over all ranks) instead of data parallel")
    parser.add_argument("--check-every", type=positive_int, default=None,
                        help="decode steps between looks at which rows finished (default 1 on CPU, 8 on GPU)")


def stage_config(args, **changes) -> StageConfig:
    """The StageConfig of add_sampling_args' options (and args.out), with `changes` on top."""
    config = dict(model=args.model, out=args.out, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, **running_config(args))
    return StageConfig(**{**config, **changes})


def running_config(args) -> dict:
    """add_running_args' options as StageConfig fields."""
    return dict(seed=args.seed, dtype=args.dtype, share_prefix=not args.no_share_prefix, compile=args.compile,
                tp=args.tp, check_every=args.check_every)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(parser, GenerateSettings())
    parser.add_argument("--samples", type=positive_int, default=GenerateSettings.samples,
                        help="samples per prompt (default %(default)s)")
    parser.add_argument("--prompts", required=True, help="input JSONL: {\"id\", \"prompt\"} or {\"id\", \"messages\"}")
    parser.add_argument("--out", required=True, help="output JSONL (one line per sample)")
    parser.add_argument("--raw", action="store_true", help="no chat template: continue the prompt text (base models)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_output(args.out, {"--prompts": args.prompts})
        lines, skipped = read_prompts(args.prompts)
    except FormatError as e:
        sys.exit(f"error: {e}")

    def requests(tokenizer):
        return [Request(row["id"], row, chat_ids(tokenizer, row, args.raw),
                        [(row["id"], s) for s in range(args.samples)]) for row in lines]

    rows, stats, skipped["too long for the context"] = run_stage(stage_config(args), "sample/generate.py", requests,
                                                                 sample_rows, args.samples, "sampling")
    if is_rank_zero():
        skips = ", ".join(f"{v} {k}" for k, v in skipped.items() if v) or "none"
        print(f"generate: {len(rows)} rows in the output; {throughput(stats)}; skipped prompts: {skips}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
