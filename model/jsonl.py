"""JSON Lines files: read with `file:line` errors, write atomically.

Every stage of the pipeline hands the next one a JSONL file, so every stage
reads and writes them the same way:

    rows = read_jsonl("candidates.jsonl", required_fields=("id", "prompt"))
    write_jsonl_atomic("pairs.jsonl", pairs)

Reading (`.gz` files are decompressed on the fly):
  - blank lines are skipped;
  - a line that is not a JSON object, lacks a required field, or holds a lone surrogate (a "\\ud800"
    escape without its pair: it decodes, but no UTF-8 text can hold it) raises
    FormatError("FILE:LINE: what is wrong"); with allow_empty=False, so does a file with no rows;
  - a last line with no newline at its end that does not parse is a file cut
    off while being written (a crash, a full disk): it raises TornLineError, a
    FormatError that also carries `offset`, the byte offset where the torn line
    starts, so a resumable writer can truncate the file there and go on.
Writing goes to a temporary sibling file that replaces the target only once
every row is written and flushed, so a reader never sees half a file. A CLI calls check_output on
its output path before any work, so that an output it cannot write is found out at once.
"""
import gzip
import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from model.errors import FormatError

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # "\ud800".."\udfff": half of a pair, or a lone one


class TornLineError(FormatError):
    """The last line of a JSONL file is incomplete: the file was cut off mid-write."""

    def __init__(self, message: str, path: Path, line: int, offset: int):
        super().__init__(message)
        self.path, self.line, self.offset = path, line, offset


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _has_lone_surrogate(row: dict) -> bool:
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def iter_jsonl(path, required_fields: Iterable[str] = (), allow_empty: bool = True) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a JSONL(.gz) file; see the module doc."""
    path, required_fields, n_rows = Path(path), tuple(required_fields), 0
    try:
        f = _open_binary(path)
    except OSError as e:
        raise FormatError(f"{path}: cannot open: {e.strerror or e}") from None
    offset = 0
    with f:
        try:
            for lineno, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise FormatError(f"{path}:{lineno}: not UTF-8 text") from None
                except json.JSONDecodeError as e:
                    if not raw.endswith(b"\n"):  # only the last line can lack its newline
                        raise TornLineError(f"{path}:{lineno}: the last line is cut off (no newline at the end and "
                                            f"not valid JSON): the file was truncated while being written",
                                            path, lineno, start) from None
                    raise FormatError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise FormatError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(row):
                    raise FormatError(f"{path}:{lineno}: a lone surrogate (a \\ud800-\\udfff escape without its "
                                      "pair) is not text")
                missing = [k for k in required_fields if k not in row]
                if missing:
                    raise FormatError(f"{path}:{lineno}: missing field{'s' * (len(missing) > 1)} "
                                      f"{', '.join(map(repr, missing))}")
                n_rows += 1
                yield lineno, row
        except (OSError, EOFError) as e:  # a corrupt or truncated .gz stream
            raise FormatError(f"{path}: cannot read: {e}") from None
    if not n_rows and not allow_empty:
        raise FormatError(f"{path}: the file is empty (no JSON lines)")


def read_jsonl(path, required_fields: Iterable[str] = (), allow_empty: bool = True) -> list[dict]:
    """All objects of a JSONL(.gz) file, in order; raises FormatError naming FILE:LINE (see the module doc)."""
    return [row for _, row in iter_jsonl(path, required_fields, allow_empty)]


def check_id(row: dict, field: str, where: str) -> None:
    """FormatError unless row[field] is a string or an integer: ids are dict keys, seeds and output
    fields in every stage, which a float (NaN is not equal to itself), a bool, null, a list or an
    object cannot all be the same way."""
    value = row[field]
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise FormatError(f"{where}: {field!r} must be a string or an integer, got {json.dumps(value)}")


def check_output(out, inputs: dict | None = None, flag: str = "--out") -> None:
    """FormatError, before any work, when `out` cannot be a stage's output file: a directory, one of
    `inputs` ({flag: path}, compared resolved; the output would replace what it is made from), or in a
    folder that cannot be made or written (the writers make missing folders)."""
    out = Path(out)
    if out.is_dir():
        raise FormatError(f"{flag} {out}: is a directory; give the name of a file to write")
    for name, path in (inputs or {}).items():
        if path is not None and Path(path).resolve() == out.resolve():
            raise FormatError(f"{flag} {out} is also {name}: the output would replace its own input")
    folder = out.parent
    while not folder.exists():  # the missing folders will be made in the first one that exists
        folder = folder.parent
    if not folder.is_dir():
        raise FormatError(f"cannot write {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FormatError(f"cannot write {out}: the folder {folder} is not writable")


def write_jsonl_atomic(path, rows: Iterable[dict]) -> int:
    """Write `rows` as JSONL (UTF-8, one object a line) to `path`, atomically; returns the number of rows.

    Creates the parent directory. If writing fails, `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def write_json_atomic(path, obj) -> None:
    """Write `obj` as indented JSON to `path`, atomically (a temporary sibling renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
