"""The project's checkpoint directory, read and written.

A checkpoint is a directory holding
  params.json         the ModelArgs, as JSON
  model.safetensors   the weights under Meta's parameter names (or shards
                      model-00001-of-0000N.safetensors + model.safetensors.index.json)
  tokenizer files     tokenizer.model (SentencePiece) or tokenizer.json (+ tokenizer_config.json)
Directories are written under a temporary name and renamed when complete, so a
crash mid-write never leaves a half checkpoint where a good one was.
"""
import hashlib
import json
import os
import shutil
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


@contextmanager
def atomic_directory(out):
    """Yield a temporary sibling of `out` to fill; it replaces `out` only if the block completes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


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
        save_file(self.pending, self.directory / name, metadata={"format": "pt"})
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


def save(directory, args: ModelArgs, tensors, tokenizer=None, max_shard_bytes: int = 5 * 2**30):
    """Write a checkpoint directory atomically, refusing weights that do not fit `args`.

    tensors: a state dict or an iterable of (name, tensor) pairs, under our names.
    tokenizer: anything with .save(directory); None writes no tokenizer.
    """
    items = tensors.items() if isinstance(tensors, dict) else tensors
    with atomic_directory(directory) as tmp:
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
        return ModelArgs.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise FormatError(f"{path}: {e}") from None


def weight_files(directory) -> dict[str, Path]:
    """Map each tensor name to the safetensors file that holds it (without reading any weights)."""
    directory = Path(directory)
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise FormatError(f"{index}: not a safetensors index ({e})") from None
        return {name: directory / file for name, file in weight_map.items()}
    single = directory / SINGLE
    if not single.is_file():
        raise FormatError(f"{directory}: neither {SINGLE} nor {INDEX} found")
    return {name: single for name in _header(single)}


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


def load(directory, device="cpu", dtype=torch.float32):
    """Load a checkpoint directory: returns (model, tokenizer), the model in eval mode."""
    args = verify(directory)
    with torch.device("meta"):
        model = Transformer(args)
    model.load_state_dict(dict(read_tensors(directory, device, dtype)), assign=True)
    return model.eval(), load_tokenizer(directory)


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
            load_tokenizer(d)
        except (FormatError, OSError, ValueError) as e:
            sys.exit(f"error: {e}\n(remove {d} and rerun the command that made it to rebuild it)")
        print(f"{d}: complete (dim {args.dim}, {args.n_layers} layers, vocab {args.vocab_size})")


if __name__ == "__main__":
    main()
