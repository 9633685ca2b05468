"""What SFT and DPO share around their loss: the run directory, the optimizer and its schedule,
resumable training states, metrics, and the loop over optimizer steps.

Run directory, for `--out DIR`:
  DIR/                      the final model checkpoint (params.json, model.safetensors, tokenizer)
  DIR.train/config.yaml     the resolved config (loadable with --config), the command in a comment
  DIR.train/metrics.jsonl   one JSON line per optimizer step
  DIR.train/state/          the latest training state: torch.distributed.checkpoint shards of model
                            and optimizer (one file per rank), rng-RANK.pt, meta.json (the step)
  DIR.train/snapshots/step-000200/   a model checkpoint every save_every steps
Every directory is written under a temporary name and renamed when complete, so a crash leaves the
previous one in place. Every rank writes its shard of the state, so with several nodes OUT must be on
a filesystem they all see. The schedule is a function of the step, and the data order one of the seed
and the step, so model, optimizer, RNG states and the step number are all a resume needs; a resume may
change lr, final_lr, grad_clip and micro_batch_size, and no other setting (RESUME_MAY_CHANGE).
A state on disk is input like any other: its pickles are read through allow-lists (_StateReader,
_PlainDataPlanner), never run, and no weights that hold NaN or inf are saved or resumed from.
"""
import json
import math
import os
import pickle
import shutil
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException, DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor
from tqdm import tqdm

import model
from model.checkpoint import check_replaceable, checkpoint_tokenizer, read_params
from model.dtypes import DTYPES
from model.errors import FormatError
from train.config import TrainConfig, dump_config, load_config
from train.data import micro_batches, step_batches
from train.distributed import Dist, checkpoint_dtype, save_plain

STATE_FORMAT = 1
# What a resume may change: the schedule is recomputed and grad_clip read at every step. The other optimizer
# settings come back with the saved optimizer state, and the rest decide the data order and the steps.
# The speed-only settings too (micro_batch_size splits each step's batch differently; the steps stay the same).
RESUME_MAY_CHANGE = ("lr", "final_lr", "grad_clip", *TrainConfig.speed_only)


class NonFiniteLoss(RuntimeError):
    """A step's loss, gradient norm or updated weights were NaN or inf: the run stops and keeps its last good
    state."""


class RunDir:
    def __init__(self, out):
        self.out = Path(out)
        self.train = self.out.with_name(self.out.name + ".train")
        self.state = self.train / "state"
        self.snapshots = self.train / "snapshots"
        self.metrics = self.train / "metrics.jsonl"
        self.config = self.train / "config.yaml"

    def snapshot(self, step: int) -> Path:
        return self.snapshots / f"step-{step:06d}"


def add_args(parser, config: str):
    parser.add_argument("--config", default=config, help="YAML settings (default %(default)s)")
    parser.add_argument("--model", required=True, help="the checkpoint to start from")
    parser.add_argument("--out", required=True, help="the trained model's checkpoint directory; training "
                                                     "state, snapshots and metrics go to OUT.train/")
    parser.add_argument("--resume", action="store_true", help="continue from OUT.train/state, with the same config "
                        f"and inputs, except that {', '.join(RESUME_MAY_CHANGE)} may change (starts afresh if no "
                        "state was saved yet)")
    parser.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                        help="override config keys, e.g. --set lr=1e-6 max_steps=50")


@dataclass
class Session:
    """What both trainers know before reading their data."""
    group: Dist             # this process's place among the ranks
    cfg: TrainConfig
    run: RunDir
    model_args: model.ModelArgs  # the input checkpoint's, written unchanged into the output checkpoints
    tokenizer: object
    max_len: int            # tokens per sequence: max_seq_len, or the model's context if shorter
    save_dtype: torch.dtype
    command: str            # the command line, for config.yaml


def start(args, config_class, group: Dist) -> Session:
    """Read and check the config, the input checkpoint's params and tokenizer, and the run directory."""
    cfg = load_config(config_class, args.config, args.set)
    if cfg.batch_size % (cfg.micro_batch_size * group.world):
        raise FormatError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch_size "
                          f"{cfg.micro_batch_size} x {group.world} ranks")
    model_args = read_params(args.model)
    tokenizer = checkpoint_tokenizer(args.model, model_args)
    run = RunDir(args.out)
    changed = check_run_dir(run, cfg, args.resume)
    if changed and group.rank == 0:
        print(f"note: resuming with other settings ({'; '.join(changed)}); metrics.jsonl has each step's lr",
              file=sys.stderr)
    group.barrier()  # every rank has looked before rank 0 creates anything
    torch.manual_seed(cfg.seed + group.rank)  # dropout; the data order has its own generator
    save_dtype = checkpoint_dtype(args.model) if cfg.save_dtype == "auto" else DTYPES[cfg.save_dtype]
    return Session(group, cfg, run, model_args, tokenizer, min(cfg.max_seq_len, model_args.max_seq_len), save_dtype,
                   command_line())


def plan_steps(lengths: list[int], cfg: TrainConfig, group: Dist, data: str) -> tuple[list[list[int]], list[list[list[int]]]]:
    """(the example indices of every step, this rank's micro-batches of every step); `data` names the file."""
    try:
        batches = step_batches(len(lengths), cfg.batch_size, total_steps(cfg, len(lengths)), cfg.seed)
    except ValueError as e:
        raise FormatError(f"{data}: {e}") from None
    return batches, [micro_batches(b, lengths, cfg.micro_batch_size, group.rank, group.world) for b in batches]


def check_run_dir(run: RunDir, cfg: TrainConfig, resume: bool) -> list[str]:
    """Check that --out and --resume agree with what is on disk; returns the settings a resume changes
    ("lr: 0.001 -> 0.0005"), only ever those of RESUME_MAY_CHANGE."""
    if not resume:
        for path in (run.out, run.train):
            if path.exists():
                raise FormatError(f"{path} exists: pass --resume to continue that run, or choose another --out")
    check_replaceable(run.out)  # a folder this project did not write is refused now, not after training
    if not resume or not run.config.is_file():
        return []
    saved = load_config(type(cfg), run.config)
    changed = {k: f"{k}: {getattr(saved, k)!r} -> {getattr(cfg, k)!r}" for k in vars(cfg)
               if getattr(saved, k) != getattr(cfg, k)}
    refused = [text for k, text in changed.items() if k not in RESUME_MAY_CHANGE]
    if refused:
        raise FormatError(f"{run.config}: the run being resumed had other settings ({'; '.join(refused)}); "
                          f"resume with the same config (only {', '.join(RESUME_MAY_CHANGE)} may change), or start "
                          "a new --out")
    return list(changed.values())


def open_run_dir(session: Session):
    """Create OUT.train/ and write config.yaml (rank 0), once the inputs are known to be good."""
    if session.group.rank == 0:
        session.run.train.mkdir(parents=True, exist_ok=True)
        session.run.config.write_text(dump_config(session.cfg, session.command))
    session.group.barrier()


def make_optimizer(net, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr,
                             betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup to lr, then cosine to final_lr,
    reached at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps - 1)
    return cfg.final_lr + (cfg.lr - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def total_steps(cfg: TrainConfig, n_examples: int) -> int:
    return cfg.max_steps or cfg.epochs * (n_examples // cfg.batch_size)


def _rng_state() -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


@contextmanager
def _single_process_quiet():
    """dcp warns every time it runs without a process group, which a single CPU process means to do."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_state(run: RunDir, net, optimizer, step: int, group: Dist, meta: dict):
    """Write the training state after `step` steps to a temporary directory, then swap it in."""
    tmp, old = run.train / ".state.tmp", run.train / ".state.old"
    if group.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    group.barrier()
    model_state, optim_state = get_state_dict(net, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp, no_dist=group.mesh is None)
    torch.save(_rng_state(), tmp / f"rng-{group.rank}.pt")
    group.barrier()
    if group.rank == 0:
        (tmp / "meta.json").write_text(json.dumps({"format": STATE_FORMAT, "step": step, "world": group.world, **meta}))
        if run.state.exists():
            run.state.rename(old)
        tmp.rename(run.state)
        shutil.rmtree(old, ignore_errors=True)
    group.barrier()


# What dcp.save writes into a state's .metadata (listed from a real state's pickle with a find_class that
# logs), and torch's dtypes and layouts: the only globals a .metadata pickle may name.
_METADATA_GLOBALS = {
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    # StorageMeta.checkpoint_id, a path; Python 3.13 pickles pathlib's classes as pathlib._local's
    *((module, name) for module in ("pathlib", "pathlib._local") for name in ("PosixPath", "WindowsPath")),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _METADATA_GLOBALS or (
                module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which dcp.save does not write there")


class _StateReader(FileSystemReader):
    """dcp's FileSystemReader, with the state's .metadata read by _MetadataUnpickler as it is constructed.
    FileSystemReader.read_metadata (torch 2.6 to 2.13) reads it with plain pickle.load, which runs whatever
    a crafted file names; and dcp.load catches read_metadata's errors, logging their tracebacks, to try
    other files, so a refusal comes here, before dcp.load starts."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.metadata = _read_metadata(path / ".metadata")

    def read_metadata(self, *args, **kwargs) -> Metadata:
        # what FileSystemReader.read_metadata does after its pickle.load
        if getattr(self.metadata, "storage_meta", None) is None:
            self.metadata.storage_meta = StorageMeta()
        self.metadata.storage_meta.load_id = self.load_id
        return self.metadata


def _read_metadata(path: Path) -> Metadata:
    try:
        with open(path, "rb") as file:
            metadata = _MetadataUnpickler(file).load()
    except Exception as e:  # whatever a damaged or crafted pickle raises: UnpicklingError, EOFError, KeyError, ...
        raise FormatError(f"{path}: not a training state's metadata, and not unpickled further: {e}") from None
    if not isinstance(metadata, Metadata):
        raise FormatError(f"{path}: not a training state's metadata (it holds a {type(metadata).__name__})")
    return metadata


class _PlainDataPlanner(DefaultLoadPlanner):
    """dcp's DefaultLoadPlanner, whose load_bytes unpickles with weights_only=False (torch 2.6 to 2.13).
    What a state keeps as bytes, the optimizer's param_groups (numbers, bools, tuples, parameter names),
    loads with weights_only=True: loading it so first refuses anything else before dcp's own load sees it."""

    def load_bytes(self, read_item, value):
        try:
            torch.load(value, weights_only=True)
        except Exception:  # pickle.UnpicklingError for a global it does not allow, or a damaged archive
            raise FormatError(f"{read_item.dest_index.fqn}: not plain data that torch.load(weights_only=True) "
                              "reads, so not unpickled further") from None
        value.seek(0)
        super().load_bytes(read_item, value)


def load_state(run: RunDir, net, optimizer, group: Dist, meta: dict) -> int:
    """Restore the latest training state, if any; returns the number of steps it had done."""
    state = run.state
    if not (state / "meta.json").is_file() and (run.train / ".state.old" / "meta.json").is_file():
        state = run.train / ".state.old"  # a crash between the two renames of save_state
    if not (state / "meta.json").is_file():
        return 0
    saved = json.loads((state / "meta.json").read_text())
    for key, value in meta.items():
        if saved.get(key) != value:
            raise FormatError(f"{state}: the run being resumed used another {key} ({saved.get(key)!r}, now "
                              f"{value!r}); resume with the same inputs and code, or start afresh (a new --out, "
                              f"or remove {run.train} and {run.out})")
    model_state, optim_state = get_state_dict(net, optimizer)
    loaded = {"model": model_state, "optim": optim_state}
    reader = _StateReader(state)
    try:
        with _single_process_quiet():
            dcp.load(loaded, storage_reader=reader, planner=_PlainDataPlanner(), no_dist=group.mesh is None)
    except CheckpointException as e:  # every rank raises it, with each failing rank's error
        error, _ = next(iter(e.failures.values()))
        reason = next(iter(str(error).splitlines()), type(error).__name__)
        raise FormatError(f"{state}: cannot be read as this run's training state: {reason}") from None
    set_state_dict(net, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    check_weights(net, group, state)  # saved before train() checked weights, or not by this trainer
    rng = state / f"rng-{group.rank}.pt"
    if saved["world"] == group.world and rng.is_file():  # dropout masks continue as if never stopped
        rng = torch.load(rng, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return saved["step"]


def _trim_metrics(path: Path, step: int):
    """Keep the metrics of steps 1..step: a killed run may have logged steps after its last state."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines(keepends=True)
                 if line.endswith("\n") and json.loads(line)["step"] <= step]
        path.write_text("".join(lines))


def train(run: RunDir, cfg: TrainConfig, net, optimizer, group: Dist, plan: list[list[list[int]]], micro_step,
          start: int, snapshot, meta: dict, desc: str) -> dict:
    """Optimizer steps start .. len(plan) - 1; returns the last step's metrics.

    plan[s] is this rank's micro-batches of step s. micro_step(s, micro_batch) runs forward and backward
    and returns sums over its examples, already divided by the step's size: {"loss", "tokens", other
    metrics}, as numbers or 0-dim device tensors (read once per step, not per micro-batch). Every
    save_every steps it writes snapshot(directory) and the training state (with `meta`,
    which a resume must match), and at the end the training state.
    """
    if group.rank == 0:
        _trim_metrics(run.metrics, start)
    bar = tqdm(total=len(plan), initial=start, desc=desc, unit="step", disable=group.rank != 0, dynamic_ncols=True)
    record, saved = {}, start
    net.train()
    with open(run.metrics, "a") if group.rank == 0 else nullcontext() as log, bar:
        for step in range(start, len(plan)):
            record = _step(cfg, net, optimizer, group, step, plan, micro_step)
            if not math.isfinite(record["loss"]) or not math.isfinite(record["grad_norm"]):
                raise NonFiniteLoss(f"step {step + 1}: the loss ({record['loss']}) or its gradient norm "
                                    f"({record['grad_norm']}) is not finite; stopped before updating the weights: "
                                    f"{_what_now(run, saved)}")
            if log:
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:.0f}")
            if (step + 1) % cfg.save_every == 0 or step + 1 == len(plan):
                if not weights_finite(net, group):  # so that every state, snapshot and final model is finite
                    raise NonFiniteLoss(f"step {step + 1}: the updated weights hold NaN or inf (the loss and "
                                        f"gradient norm were finite); nothing of this step is saved: "
                                        f"{_what_now(run, saved)}")
                if (step + 1) % cfg.save_every == 0:
                    snapshot(run.snapshot(step + 1))
                save_state(run, net, optimizer, step + 1, group, meta)
                saved = step + 1
    return record


def weights_finite(net, group: Dist) -> bool:
    """Whether every weight on every rank is finite (not a norm: a finite 1e30 squared is inf). One all-reduce
    and one host read, and every rank gets the same answer, so under FSDP they all stop together."""
    with torch.no_grad():
        shards = [p.to_local() if isinstance(p, DTensor) else p for p in net.parameters()]
        not_finite = torch.stack([t.isfinite().all().logical_not() for t in shards]).sum()
    return group.all_reduce([not_finite]).item() == 0


def check_weights(net, group: Dist, source):
    """Refuse weights just read from `source` (the input checkpoint, a training state) if any is NaN or inf."""
    if not weights_finite(net, group):
        raise FormatError(f"{source}: its weights hold NaN or inf; nothing can be trained from them")


def _what_now(run: RunDir, saved: int) -> str:
    """What to do after a non-finite step, as --resume accepts it (see RESUME_MAY_CHANGE)."""
    if not saved:
        return "no training state was saved yet; start again with --resume and a lower lr (--set lr=... final_lr=...)"
    return (f"the last good training state, {run.state} (step {saved}), is kept; continue from it with --resume "
            "and a lower lr (--set lr=... final_lr=...)")


def _step(cfg: TrainConfig, net, optimizer, group: Dist, step: int, plan, micro_step) -> dict:
    """One optimizer step; returns its metrics. Weights are left alone if loss or gradients are not finite."""
    began = time.perf_counter()
    lr = lr_at(step, cfg, len(plan))
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    sums: dict = {}  # numbers and 0-dim device tensors, added up on the device
    for micro in plan[step]:
        for key, value in micro_step(step, micro).items():
            sums[key] = sums.get(key, 0) + value
    keys = sorted(sums)
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip or math.inf)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    # the step's one host sync: every metric, summed over ranks, and the gradient norm
    *values, grad_norm = torch.cat([group.all_reduce([sums[k] for k in keys]),
                                    grad_norm.to(group.device, torch.float64).reshape(1)]).tolist()
    sums = {k: int(v) if isinstance(sums[k], int) else v for k, v in zip(keys, values)}  # token counts stay whole
    if math.isfinite(sums["loss"]) and math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - began
    return {"step": step + 1, **sums, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": sums["tokens"] / seconds,
            "seconds": seconds}


def fail(message: str, group: Dist):
    """One line on stderr and a non-zero exit (each rank says it, prefixed with its number when there are several:
    a problem that only one rank meets must not go unreported)."""
    prefix = f"rank {group.rank}: " if group is not None and group.world > 1 else ""
    print(f"{prefix}error: {message}", file=sys.stderr)
    sys.exit(1)


def command_line() -> str:
    return " ".join([os.path.relpath(sys.argv[0]) if sys.argv else ""] + sys.argv[1:])


def train_and_save(session: Session, net, optimizer, plan: list[list[list[int]]], micro_step, start: int, meta: dict,
                   desc: str, describe) -> None:
    """What both trainers do once their model, data and micro-step are ready: train (see train()), write the
    final checkpoint (a rerun of a finished run leaves it as it is) and say what came out, with
    describe(last step's metrics) after the step count."""
    def snapshot(directory):
        save_plain(directory, net, session.model_args, session.tokenizer, session.save_dtype, session.group)

    last = train(session.run, session.cfg, net, optimizer, session.group, plan, micro_step, start, snapshot, meta, desc)
    if last or not session.run.out.exists():
        snapshot(session.run.out)
    if session.group.rank == 0:
        summary = describe(last) if last else " (the run was already complete)"
        print(f"{desc}: {len(plan)} steps{summary}; model in {session.run.out}", file=sys.stderr)

