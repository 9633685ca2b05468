"""The project's checkpoint directory, read and written.

A checkpoint is a directory holding
  params.json         the ModelArgs, as JSON
  model.safetensors   the weights under Meta's parameter names (or shards
                      model-00001-of-0000N.safetensors + model.safetensors.index.json)
  tokenizer files     tokenizer.model (SentencePiece) or tokenizer.json (+ tokenizer_config.json)
Directories are written under a temporary name and renamed when complete, so a
crash mid-write never leaves a half checkpoint where a good one was. An existing
directory is replaced only if this project wrote it (see check_replaceable).
"""
import hashlib
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.errors import FormatError
from model.llama import ModelArgs, Transformer
from model.tokenizer import load_tokenizer

PARAMS = "params.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


# Every file a checkpoint of ours or an HF export of ours (model/convert.py's export_hf) holds. A directory
# whose entries are all such files, params.json or config.json among them, is one we wrote and may replace.
OUR_FILES = re.compile("|".join([r"params\.json", r"model(-\d{5}-of-\d{5})?\.safetensors",
                                  r"model\.safetensors\.index\.json", r"tokenizer(\.model|\.json|_config\.json)",
                                  r"(generation_)?config\.json"]))
MARKERS = (PARAMS, "config.json")


def check_replaceable(out) -> None:
    """Raise FormatError unless `out` is absent, an empty directory, or a directory this project wrote:
    plain files only (no links, no folders), every name in OUR_FILES, and one of MARKERS among them."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise FormatError(f"{out}: not replaced: it is not a directory (a link or a file); remove it or "
                          "choose another output")
    entries = sorted(out.iterdir())
    foreign = [p.name for p in entries if p.is_symlink() or not p.is_file() or not OUR_FILES.fullmatch(p.name)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise FormatError(f"{out}: not replaced: it holds {shown}, which no checkpoint of ours holds; "
                          "remove it yourself or choose another output")
    if entries and not any(p.name in MARKERS for p in entries):
        raise FormatError(f"{out}: not replaced: it holds no {' or '.join(MARKERS)}, so this project did not "
                          "write it; remove it yourself or choose another output")


def _check_apart(out, sources) -> None:
    """Raise FormatError if `out` is, holds or lies inside any of `sources` (symbolic links resolved)."""
    target = Path(out).resolve()
    for source in sources:
        source_path = Path(source).resolve()
        if target == source_path or target in source_path.parents or source_path in target.parents:
            raise FormatError(f"{out}: is, holds or lies inside the source {source}; choose another output")


def _may_be_running(pid: int) -> bool:
    """Whether process `pid` may exist on this machine (signal 0 asks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # someone else's process, or no PID at all: not ours to judge
        return True
    return True


def _clear_leftovers(out: Path) -> None:
    """Deal with the temporaries a killed atomic_directory left beside `out` (.OUT.tmp-PID, .OUT.old-PID).
    If PID no longer runs on this machine they are ours from a dead run: a .tmp is removed; an .old is the
    previous `out`, renamed back if `out` is missing (the run died between its two renames), else removed.
    Those of a running process, or that are not directories, are reported and left alone."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)")
    for path in sorted(out.parent.iterdir()):
        found = pattern.fullmatch(path.name)
        if found is None:
            continue
        pid = int(found.group(2))
        if path.is_symlink() or not path.is_dir():
            print(f"{path}: not a directory atomic_directory made: not removed", file=sys.stderr)
        elif pid != os.getpid() and _may_be_running(pid):
            print(f"{path}: process {pid} may still be writing it: not removed", file=sys.stderr)
        elif found.group(1) == "old" and not out.exists():
            print(f"{path}: restored as {out} (the run replacing it died between two renames)", file=sys.stderr)
            path.rename(out)
        else:
            shutil.rmtree(path)


@contextmanager
def atomic_directory(out, sources=()):
    """Yield a temporary sibling of `out` to fill; it replaces `out` only if the block completes.

    Refused (FormatError, before anything is written) if `out` is not check_replaceable, or overlaps one
    of `sources`, the paths the block reads. Leftovers of a killed earlier run are cleared first.
    """
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise FormatError(f"{out}: name the output directory itself, not . or ..")
    _check_apart(out, sources)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(out)
    check_replaceable(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        check_replaceable(out)  # again: `out` may have changed while the block ran
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)  # what is left (no permission?) the next run clears


class ShardWriter:
    """Writes named tensors to safetensors files of at most ~max_shard_bytes each.

    Tensors are held only until their shard is full, so converting a model far
    larger than memory (Llama-2-70B) needs about one shard of RAM. One shard is
    named `model.safetensors`; several get HF-style names and an index file.
    """

    def __init__(self, directory, max_shard_bytes: int = 5 * 2**30):
        self.directory, self.max_shard_bytes = Path(directory), max_shard_bytes
        self.pending, self.pending_bytes, self.files, self.weight_map, self.total = {}, 0, [], {}, 0

    def add(self, name: str, tensor: torch.Tensor):
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += nbytes
        self.total += nbytes

    def _flush(self):
        name = f"shard-{len(self.files):05d}.tmp"
        path = self.directory / name
        # safetensors writes its files 0600; create the file first to learn the mode the user's umask gives
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        mode = path.stat().st_mode & 0o777
        save_file(self.pending, path, metadata={"format": "pt"})
        path.chmod(mode)
        self.files.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self):
        if self.pending or not self.files:
            self._flush()
        n = len(self.files)
        for i, (tmp_name, names) in enumerate(self.files):
            final = SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.directory / tmp_name).rename(self.directory / final)
            self.weight_map.update({k: final for k in names})
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": self.weight_map}
            (self.directory / INDEX).write_text(json.dumps(index, indent=2))


def save(directory, args: ModelArgs, tensors, tokenizer=None, max_shard_bytes: int = 5 * 2**30, sources=()):
    """Write a checkpoint directory atomically, refusing weights that do not fit `args`.

    tensors: a state dict or an iterable of (name, tensor) pairs, under our names.
    tokenizer: anything with .save(directory); None writes no tokenizer.
    sources: the paths `tensors` are read from, which `directory` must not overlap (atomic_directory).
    """
    items = tensors.items() if isinstance(tensors, dict) else tensors
    with atomic_directory(directory, sources) as tmp:
        writer = ShardWriter(tmp, max_shard_bytes)
        for name, tensor in items:
            writer.add(name, tensor.detach().cpu())
        writer.close()
        (tmp / PARAMS).write_text(json.dumps(vars(args), indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
        verify(tmp)  # names and shapes agree with params.json, before it replaces anything


def save_model(directory, model: Transformer, tokenizer=None, **kwargs):
    save(directory, model.args, model.state_dict(), tokenizer, **kwargs)


def read_params(directory) -> ModelArgs:
    path = Path(directory) / PARAMS
    if not path.is_file():
        raise FormatError(f"{path}: no such file (is {directory} a checkpoint directory?)")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: {e}") from None
    return ModelArgs.from_dict(values, str(path))


def weight_files(directory) -> dict[str, Path]:
    """Map each tensor name to the safetensors file that holds it (without reading any weights)."""
    directory = Path(directory)
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:  # ValueError: bad JSON or bad UTF-8
            raise FormatError(f"{index}: not a safetensors index ({e})") from None
        if not isinstance(weight_map, dict):
            raise FormatError(f"{index}: weight_map is not an object")
        return {name: _indexed_file(index, name, file) for name, file in weight_map.items()}
    single = directory / SINGLE
    if not single.is_file():
        raise FormatError(f"{directory}: neither {SINGLE} nor {INDEX} found")
    return {name: single for name in _header(single)}


def _indexed_file(index: Path, name: str, file) -> Path:
    """The file an index names for tensor `name`: a bare file name in the index's own directory, never a path
    ("../x", "/x", "sub/x"), so an index cannot make us read outside the checkpoint. (It may be a link to a
    file: the Hugging Face cache links each shard to a blob.)"""
    if not isinstance(file, str) or file in ("", ".", "..") or Path(file).name != file:
        raise FormatError(f"{index}: weight_map[{name!r}] = {file!r} is not a file name in {index.parent}")
    if not (index.parent / file).is_file():
        raise FormatError(f"{index}: weight_map[{name!r}] = {file!r} is not a file in {index.parent}")
    return index.parent / file


def _header(path: Path) -> dict[str, tuple]:
    """{name: shape} from a safetensors header, checking the file is complete."""
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise FormatError(f"{path}: not a readable safetensors file ({e})") from None


def read_tensors(directory, device="cpu", dtype=None):
    """Yield (name, tensor) for every weight in a checkpoint directory, one file at a time."""
    by_file: dict[Path, list[str]] = {}
    for name, path in weight_files(directory).items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        _header(path)
        with safe_open(path, framework="pt", device=str(device)) as f:
            for name in names:
                t = f.get_tensor(name)
                yield name, t if dtype is None else t.to(dtype)


def fingerprint(directory) -> str:
    """Identifies a checkpoint without reading its weights: params.json and each weight file's path,
    size and modification time (a checkpoint rewritten in place gets a new one)."""
    digest = hashlib.sha256(repr(read_params(directory)).encode())
    for file in sorted(set(weight_files(directory).values())):
        stat = file.stat()
        digest.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def verify(directory) -> ModelArgs:
    """Check a checkpoint's weights against its params.json (names and shapes) without reading them."""
    directory = Path(directory)
    args = read_params(directory)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(args).state_dict().items()}
    found = {}
    for path in sorted(set(weight_files(directory).values())):
        found.update({k: (path, shape) for k, shape in _header(path).items()})
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise FormatError(f"{directory}: weights do not match {PARAMS}: "
                          f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                          f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for name, (path, shape) in found.items():
        if shape != expected[name]:
            raise FormatError(f"{path}: tensor {name} has shape {list(shape)} but {PARAMS} "
                              f"implies {list(expected[name])}")
    return args


def checkpoint_tokenizer(directory, args: ModelArgs):
    """The checkpoint's tokenizer, refused if it can give ids the model has no embedding for (a larger
    vocabulary, or BOS/EOS/pad/stop ids past the model's): those would index past the embedding table."""
    tokenizer = load_tokenizer(directory)
    if tokenizer.vocab_size > args.vocab_size:
        raise FormatError(f"{directory}: the tokenizer's {tokenizer.vocab_size} tokens do not fit the model's "
                          f"vocab_size {args.vocab_size} ({PARAMS})")
    ids = {"BOS": tokenizer.bos_id, "EOS": tokenizer.eos_id, "pad": tokenizer.pad_id,
           "stop": max(tokenizer.stop_ids)}
    for what, token_id in ids.items():
        if not 0 <= token_id < args.vocab_size:
            raise FormatError(f"{directory}: the tokenizer's {what} id {token_id} is not below the model's "
                              f"vocab_size {args.vocab_size} ({PARAMS})")
    return tokenizer


def load(directory, device="cpu", dtype=torch.float32):
    """Load a checkpoint directory: returns (model, tokenizer), the model in eval mode."""
    args = verify(directory)
    tokenizer = checkpoint_tokenizer(directory, args)
    with torch.device("meta"):
        model = Transformer(args)
    model.load_state_dict(dict(read_tensors(directory, device, dtype)), assign=True)
    return model.eval(), tokenizer


def main(argv=None):
    """python model/checkpoint.py DIR [DIR ...]: check that each checkpoint is complete (params.json, every
    weight file whole and matching it, a readable tokenizer) without loading its weights."""
    import sys
    dirs = sys.argv[1:] if argv is None else argv
    if not dirs or dirs[0] in ("-h", "--help"):
        sys.exit(main.__doc__)
    for d in dirs:
        try:
            args = verify(d)
            checkpoint_tokenizer(d, args)
        except (FormatError, OSError, ValueError) as e:
            sys.exit(f"error: {e}\n(remove {d} and rerun the command that made it to rebuild it)")
        print(f"{d}: complete (dim {args.dim}, {args.n_layers} layers, vocab {args.vocab_size})")


if __name__ == "__main__":
    main()
