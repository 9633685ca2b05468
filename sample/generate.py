"""Sample completions for a file of prompts.

    python sample/generate.py --model checkpoints/smollm2-135m --prompts prompts.jsonl --out candidates.jsonl \\
        --n 4 --temperature 0.7 --top-p 0.9 --max-new-tokens 512 --batch-size 16 --seed 0
    torchrun --nproc_per_node=8 sample/generate.py --num-samples 4 ...       # data parallel: each rank its share
    torchrun --nproc_per_node=8 sample/generate.py --tp --num-samples 4 ...  # tensor parallel: one model, 8 GPUs

Input lines: {"id": ..., "prompt": "..."} (a user message; the model's chat template is applied)
or {"id": ..., "messages": [{"role": ..., "content": ...}, ...]} (an optional "system" turn, then
"user" and "assistant" turns alternating, the last a "user" turn); an id is a string or an integer,
unique in the file. Other fields are carried over.
Output: one line per sample: the input's fields plus "sample", "response", "finish_reason"
("stop" or "length") and "n_tokens". The run is resumable: rerun the same command after a crash
or Ctrl-C and it continues where it stopped, writing every (id, sample) exactly once.
"""
import argparse
import atexit
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import model
from model.distributed import join_process_group
from model.errors import FormatError
from model.jsonl import check_id, check_output, iter_jsonl
from sample.resume import ResumableJSONL, read_rows
from sample.sampler import Completion, Sampler, SamplingParams
from sample.tp import broadcast_tokens


@dataclass
class Request:
    id: object  # seeds the request's samples (with the sample index)
    fields: dict  # the input line, carried over to the output
    token_ids: list[int]
    keys: list[tuple]  # the output rows it produces, as ResumableJSONL keys


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


def row_seed(seed: int, id, sample: int) -> int:
    """A seed for one (id, sample): stable across runs, machines and batchings."""
    digest = hashlib.sha256(f"{seed}/{json.dumps(id)}/{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def run(sampler: Sampler, requests: list[Request], params: SamplingParams, n: int, seed: int,
        writer: ResumableJSONL, make_rows, rank: int = 0, world: int = 1, write: bool = True,
        desc: str = "sampling") -> dict:
    """Sample n completions per request and append make_rows(request, completions) to the writer as
    requests finish (a batch of rows at a time), skipping requests whose rows are all written.

    With world > 1 (data parallel) rank r takes every world-th request, longest first, so that the
    ranks get similar work. A request's rows do not depend on which rank or which other requests
    shared its steps (see sample/sampler.py). Returns throughput stats.
    """
    by_length = sorted(range(len(requests)), key=lambda i: (-len(requests[i].token_ids), i))
    todo = [requests[i] for i in by_length[rank::world] if any(k not in writer.done for k in requests[i].keys)]
    stats = {"samples": 0, "tokens": 0, "stop": 0, "length": 0, "seconds": 0.0}
    bar = tqdm(total=len(todo) * n, desc=desc, unit="sample", disable=rank != 0, dynamic_ncols=True)
    start = time.perf_counter()
    for done in sampler.stream([r.token_ids for r in todo], params, n,
                               seeds=[[row_seed(seed, r.id, s) for s in range(n)] for r in todo]):
        rows = [row for i, completions in done for row in make_rows(todo[i], completions)]
        if write:
            writer.append(rows)
        for _, completions in done:
            for c in completions:
                stats["samples"] += 1
                stats["tokens"] += c.n_tokens
                stats[c.finish_reason] += 1
        stats["seconds"] = time.perf_counter() - start
        bar.update(len(done) * n)
        bar.set_postfix(tok_s=f"{stats['tokens'] / max(stats['seconds'], 1e-9):.1f}")
    bar.close()
    return stats


def sample_rows(request: Request, completions: list[Completion]) -> list[dict]:
    fields = request.fields
    prompt = fields["prompt"] if "prompt" in fields else fields["messages"][-1]["content"]
    return [{**fields, "prompt": prompt, "sample": s, "response": c.text, "finish_reason": c.finish_reason,
             "n_tokens": c.n_tokens} for s, c in enumerate(completions)]


def is_rank_zero() -> bool:
    """True in a plain process and on torchrun's rank 0: the one that writes results and prints."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_distributed():
    """(rank, world size, device) under torchrun, or (0, 1, best device) for one process."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():  # once per process: a CLI may run several stages
        join_process_group(device)
        atexit.register(dist.destroy_process_group)
    return dist.get_rank(), dist.get_world_size(), device


def load_model(path, device, dtype_name: str, tp: bool):
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    if tp and not dist.is_initialized():
        raise ValueError("--tp splits the model over torchrun's processes: run it under torchrun, or leave out --tp")
    if tp:
        from sample.tp import load_tensor_parallel
        return load_tensor_parallel(path, device, dtype)
    return model.load(path, device=device, dtype=dtype)


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


def add_sampling_args(parser, temperature=0.7, top_p=0.9, max_new_tokens=512):
    """The options every sampling CLI shares (generate, judge, self-instruct)."""
    parser.add_argument("--model", required=True, help="checkpoint directory (see model/convert.py)")
    parser.add_argument("--temperature", type=non_negative_float, default=temperature,
                        help="0 = greedy (default %(default)s)")
    parser.add_argument("--top-p", type=probability, default=top_p, help="nucleus sampling mass (default %(default)s)")
    parser.add_argument("--top-k", type=non_negative_int, default=0,
                        help="keep only the k most likely tokens (0 = off)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens, help="default %(default)s")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="rows decoded together (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same outputs (default %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA graphs on GPUs)")
    parser.add_argument("--no-share-prefix", action="store_true",
                        help="prefill every row on its own (for comparison; slower)")
    parser.add_argument("--tp", action="store_true",
                        help="under torchrun: tensor parallel (one model split over all ranks) instead of data parallel")


def requests_digest(requests: list[Request]) -> str:
    """A hash of what the model is asked: every request's token ids, output keys and carried fields."""
    digest = hashlib.sha256()
    for r in requests:
        digest.update(json.dumps([r.keys, r.token_ids, r.fields], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def stage_settings(a, net) -> dict:
    """What decides a sampling stage's rows besides its requests: the checkpoint, the dtype, the sampling
    parameters and the seed (not the batch size or the parallelism: outputs do not depend on them)."""
    return {"model": model.checkpoint.fingerprint(a.model), "dtype": str(next(net.parameters()).dtype),
            "sampling": [a.temperature, a.top_p, a.top_k, a.max_new_tokens], "seed": a.seed}


def open_output(out, rank: int, world: int, stage: str, settings: dict, **kwargs) -> ResumableJSONL:
    """OUT's ResumableJSONL on every rank, rank 0's first (the writer of `stage`, see sample/resume.py),
    so that it has refused files it did not write and discarded rows made with other settings before any
    rank reads. A file it refuses is one line on stderr and exit status 1 (torchrun then stops the rest)."""
    try:
        writer = ResumableJSONL(out, rank=rank, stage=stage, settings=settings, **kwargs) if rank == 0 else None
    except FormatError as e:
        sys.exit(f"error: {e}")
    if world > 1:
        dist.barrier()
    return writer or ResumableJSONL(out, rank=rank, **kwargs)


def run_stage(a, stage: str, make_requests, make_rows, n: int, desc: str, on_too_long=None):
    """What every sampling CLI does around its own rows: set up torchrun if present, load the model,
    sample the requests that make_requests(tokenizer) builds (resumably, data or tensor parallel),
    and merge the output, which belongs to `stage` (a name, written in its settings record:
    see sample/resume.py). A request too long for the context is skipped, or, with on_too_long,
    written as the row on_too_long(request) returns. Returns (output rows, this run's stats, number
    of requests too long) on every rank (the others read back what rank 0 merged), so that a CLI of
    several stages can run them all under torchrun, one after the other, in the same processes.
    """
    rank, world, device = setup_distributed()
    try:
        params = SamplingParams(a.temperature, a.top_p, a.top_k, a.max_new_tokens)
        net, tokenizer = load_model(a.model, device, a.dtype, a.tp)
    except (FormatError, ValueError) as e:
        sys.exit(f"error: {e}")
    requests = make_requests(tokenizer)
    writer = open_output(a.out, rank, world, stage,
                         {**stage_settings(a, net), "n": n, "requests": requests_digest(requests)})
    fits = [r for r in requests if len(r.token_ids) < net.args.max_seq_len]
    too_long = [r for r in requests if len(r.token_ids) >= net.args.max_seq_len]
    if on_too_long is not None and rank == 0:
        writer.append([on_too_long(r) for r in too_long])
    sampler = Sampler(net, tokenizer, a.batch_size, share_prefix=not a.no_share_prefix, compile=a.compile,
                      sync_tokens=broadcast_tokens if a.tp else None)
    dp_rank, dp_world = (0, 1) if a.tp else (rank, world)
    stats = run(sampler, fits, params, n, a.seed, writer, make_rows, dp_rank, dp_world,
                write=not a.tp or rank == 0, desc=desc)
    if world > 1 and not a.tp:  # throughput of all ranks together
        totals = torch.tensor([stats[k] for k in ("samples", "tokens", "stop", "length")], dtype=torch.float64,
                              device=device)
        dist.all_reduce(totals)
        stats.update(zip(("samples", "tokens", "stop", "length"), map(int, totals.tolist())))
    if world > 1:
        dist.barrier()
    if rank == 0:
        written = requests if on_too_long is not None else fits
        rows = writer.finalize([k for r in written for k in r.keys])
    if world > 1:
        dist.barrier()  # the output is complete before any rank goes on to a next stage
    if rank != 0:
        rows = read_rows(Path(a.out))
    return rows, stats, len(too_long)


def throughput(stats: dict) -> str:
    rate = stats["tokens"] / max(stats["seconds"], 1e-9)
    return (f"this run sampled {stats['samples']} ({stats['tokens']} tokens, {rate:.1f} tokens/s; "
            f"{stats['stop']} stopped, {stats['length']} hit the length limit)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(parser)
    parser.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=4,
                        help="samples per prompt (default %(default)s); under torchrun write --num-samples, "
                             "since torchrun reads --n as an abbreviation of its own options")
    parser.add_argument("--prompts", required=True, help="input JSONL: {\"id\", \"prompt\"} or {\"id\", \"messages\"}")
    parser.add_argument("--out", required=True, help="output JSONL (one line per sample)")
    parser.add_argument("--raw", action="store_true", help="no chat template: continue the prompt text (base models)")
    a = parser.parse_args(argv)
    try:
        check_output(a.out, {"--prompts": a.prompts})
        lines, skipped = read_prompts(a.prompts)
    except FormatError as e:
        sys.exit(f"error: {e}")

    def requests(tokenizer):
        return [Request(row["id"], row, chat_ids(tokenizer, row, a.raw), [(row["id"], s) for s in range(a.n)])
                for row in lines]

    rows, stats, skipped["too long for the context"] = run_stage(a, "sample/generate.py", requests, sample_rows, a.n,
                                                                 "sampling")
    if is_rank_zero():
        skips = ", ".join(f"{v} {k}" for k, v in skipped.items() if v) or "none"
        print(f"generate: {len(rows)} rows in the output; {throughput(stats)}; skipped prompts: {skips}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
