"""The sampling stage library: what every sampling CLI does around its own rows.

    config = StageConfig(model="runs/R/iter1/model", out="judged.jsonl", temperature=0.7, top_p=0.9,
                         max_new_tokens=256)
    rows, stats, n_too_long = run_stage(config, "judge/score.py", make_requests, make_rows, n=3, desc="judging")

A stage turns Requests (token ids to sample from, and the input fields to carry over) into output rows:
run_stage joins torchrun's process group if there is one, loads the model (data or tensor parallel),
samples every request n times through the engine (sample/sampler.py), and writes make_rows(request,
completions) resumably (sample/resume.py) into config.out, which belongs to the named stage. The CLIs
(sample/generate.py, judge/score.py, judge/eft.py, eval/) parse their flags into a StageConfig and call
it with keyword arguments; nothing here reads command-line arguments.
"""
import atexit
import hashlib
import json
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
from model.dtypes import resolve_dtype
from model.errors import FormatError
from model.sources import ROOT, code_digest
from sample.resume import ResumableJSONL, read_rows
from sample.sampler import Sampler, SamplingParams
from sample.tp import broadcast_tokens


@dataclass
class StageConfig:
    """Everything a sampling stage needs besides its requests. What decides the rows (the model, the
    sampling parameters, the dtype, the seed) is written into the output's settings record; the rest
    (batch size, parallelism, compile, check_every) changes only the speed."""
    model: str  # checkpoint directory (see model/convert.py)
    out: str  # output JSONL
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 512
    seed: int = 0
    dtype: str = "auto"  # see resolve_dtype
    batch_size: int = 16  # the engine's row slots
    share_prefix: bool = True  # prefill the common prefix and each prompt once (False: every row alone)
    compile: bool = False
    tp: bool = False  # under torchrun: tensor parallel instead of data parallel
    check_every: int | None = None  # decode steps between looks at finished rows (see sample/sampler.py)

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.top_k, self.max_new_tokens)


@dataclass
class Request:
    id: object  # seeds the request's samples (with the sample index)
    fields: dict  # the input line, carried over to the output
    token_ids: list[int]
    keys: list[tuple]  # the output rows it produces, as ResumableJSONL keys


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
    shared its steps (up to rounding: see sample/sampler.py). Returns throughput stats.
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
    dtype = resolve_dtype(dtype_name, device)
    if tp and not dist.is_initialized():
        raise ValueError("--tp splits the model over torchrun's processes: run it under torchrun, or leave out --tp")
    if tp:
        from sample.tp import load_tensor_parallel
        return load_tensor_parallel(path, device, dtype)
    return model.load(path, device=device, dtype=dtype)


def requests_digest(requests: list[Request]) -> str:
    """A hash of what the model is asked: every request's token ids, output keys and carried fields."""
    digest = hashlib.sha256()
    for r in requests:
        digest.update(json.dumps([r.keys, r.token_ids, r.fields], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def settings_record(config: StageConfig, net, stage: str = "") -> dict:
    """What decides a sampling stage's rows besides its requests: the checkpoint, the dtype, the sampling
    parameters, the seed, and the code of the stage's script (its first word) with every project module it
    imports (model/sources.py); not the batch size or the parallelism: outputs do not depend on them."""
    script = stage.split(" ")[0]
    code = code_digest(script) if script.endswith(".py") and (ROOT / script).is_file() else ""
    return {"model": model.checkpoint.fingerprint(config.model), "dtype": str(next(net.parameters()).dtype),
            "sampling": [config.temperature, config.top_p, config.top_k, config.max_new_tokens], "seed": config.seed,
            "code": code}


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


def run_stage(config: StageConfig, stage: str, make_requests, make_rows, n: int, desc: str,
              on_too_long=None, rows_need_model: bool = False, settings: dict | None = None):
    """What every sampling CLI does around its own rows: set up torchrun if present, load the model,
    sample the requests that make_requests(tokenizer) builds (resumably, data or tensor parallel),
    and merge the output, which belongs to `stage` (a name, written in its settings record:
    see sample/resume.py). A request too long for the context is skipped, or, with on_too_long,
    written as the row on_too_long(request) returns. With rows_need_model, make_rows(net, tokenizer) gives
    the rows function (expected-score judging reads the model's distributions); `settings` are more of what
    decides the rows, for the output's settings record (rows made with others are discarded). Returns (output rows,
    this run's stats, number of requests too long) on every rank (the others read back what rank 0
    merged), so that a CLI of several stages can run them all under torchrun, one after the other, in the
    same processes.
    """
    rank, world, device = setup_distributed()
    try:
        params = config.sampling
        net, tokenizer = load_model(config.model, device, config.dtype, config.tp)
    except (FormatError, ValueError) as e:
        sys.exit(f"error: {e}")
    requests = make_requests(tokenizer)
    if rows_need_model:
        make_rows = make_rows(net, tokenizer)
    writer = open_output(config.out, rank, world, stage,
                         {**settings_record(config, net, stage), "n": n, "requests": requests_digest(requests),
                          **(settings or {})})
    fits = [r for r in requests if len(r.token_ids) < net.args.max_seq_len]
    too_long = [r for r in requests if len(r.token_ids) >= net.args.max_seq_len]
    if on_too_long is not None and rank == 0:
        writer.append([on_too_long(r) for r in too_long])
    sampler = Sampler(net, tokenizer, config.batch_size, share_prefix=config.share_prefix, compile=config.compile,
                      sync_tokens=broadcast_tokens if config.tp else None, check_every=config.check_every)
    dp_rank, dp_world = (0, 1) if config.tp else (rank, world)
    stats = run(sampler, fits, params, n, config.seed, writer, make_rows, dp_rank, dp_world,
                write=not config.tp or rank == 0, desc=desc)
    if world > 1 and not config.tp:  # throughput of all ranks together
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
        rows = read_rows(Path(config.out))
    return rows, stats, len(too_long)


def throughput(stats: dict) -> str:
    rate = stats["tokens"] / max(stats["seconds"], 1e-9)
    return (f"this run sampled {stats['samples']} ({stats['tokens']} tokens, {rate:.1f} tokens/s; "
            f"{stats['stop']} stopped, {stats['length']} hit the length limit)")
