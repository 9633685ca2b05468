"""Resumable JSONL output for the sampling stages (generate, judge, self-instruct).

Each process appends finished rows to its own part file, `OUT.part{rank}`, one batch at a time,
flushed and fsynced, so a crash loses at most the batch in flight. A rerun reads back OUT and every
part file, drops a torn last line (a kill mid-write), and skips every row already there. When all
rows are done, rank 0 merges everything into OUT in a stable order, through a temporary file and
a rename, and removes the parts: OUT exists only when complete.

A stage owns OUT through its settings record, OUT.settings.json: the stage's name (the program that
writes OUT) and its settings (whatever decides the rows: the model's fingerprint, the inputs, the
sampling parameters). Rank 0 reads the record before anything else:
  - none: OUT is new; an OUT or a part file already there was written by someone else, and the stage
    refuses to start rather than adopt its rows, rewrite it or delete it;
  - another stage's (or a file that is not a record): refused the same way;
  - this stage's with other settings: OUT and the parts are discarded, said so, and the stage starts
    over, so rows made by another model, from other inputs or with other parameters are never reused;
  - this stage's with the same settings: the rows there are resumed.
From then until finalize rank 0 holds an exclusive lock (flock) on OUT.lock, so that a second run
writing OUT at the same time is refused rather than mixing its rows in; all ranks of one torchrun job
are one writer. A symbolic link in place of OUT or a part is refused, and part files are opened
without following one: a stage writes only files of its own.
"""
import fcntl
import glob
import json
import os
import sys
from pathlib import Path

from model.errors import FormatError
from model.jsonl import write_json_atomic, write_jsonl_atomic

ELSEWHERE = "move it away or choose another --out"


def read_rows(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a JSONL file we wrote. A torn last line is dropped, and with repair=True cut off the
    file so that appends continue cleanly; a bad line anywhere else is corruption and an error.
    Unlike model.jsonl.iter_jsonl, a last line with no newline counts as torn even when it parses:
    our writes end every row with one, and appending after it would glue two rows together."""
    data = path.read_bytes()
    rows, start, lineno = [], 0, 0
    while start < len(data):
        newline = data.find(b"\n", start)
        end = len(data) if newline < 0 else newline + 1
        lineno += 1
        try:
            if newline < 0:
                raise ValueError("no newline")
            rows.append(json.loads(data[start:end]))
        except ValueError:
            if end < len(data):
                raise FormatError(f"{path}:{lineno}: not valid JSON; the file is corrupt "
                                  "(delete it to start that stage over)") from None
            break  # a torn last line: the write it came from never finished
        start = end
    if repair and start < len(data):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, start)
        finally:
            os.close(fd)
    return rows


def settings_path(out: Path) -> Path:
    return out.with_name(f"{out.name}.settings.json")


def check_owned(paths, record: Path) -> None:
    """FormatError if one of `paths` exists while `record`, the settings record of the stage that
    writes them, does not: someone else wrote it."""
    if record.exists():
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise FormatError(f"{path} exists and was not written by this stage (no {record}): {ELSEWHERE}")


def read_record(path: Path, stage: str, owned: Path) -> dict | None:
    """The settings record in `path` if it is `stage`'s, None if there is none; FormatError if it is
    another stage's, or no record at all: `owned`, what it would make ours, is someone else's."""
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    writer = record.get("stage") if isinstance(record, dict) else None
    if writer == stage:
        return record
    if isinstance(writer, str):
        raise FormatError(f"{owned} was written by {writer}, not by {stage} (says {path.name}): {ELSEWHERE}")
    raise FormatError(f"{path} is not a settings record of this project's stages, so {owned} is not ours: "
                      f"{ELSEWHERE}")


def _same_file(path: Path, f) -> bool:
    """Whether `path` still names the open file `f` (its last holder may have removed it meanwhile)."""
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False


def _lock(path: Path, out: Path):
    """The open file holding an exclusive flock on `path` (created if missing); FormatError if another
    process holds it."""
    while True:
        try:
            f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+b")
        except OSError as e:
            raise FormatError(f"{path}: cannot open the lock file ({e.strerror})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise FormatError(f"{out} is being written by another run (it holds {path.name}): wait for it to "
                              "finish, or choose another --out") from None
        if _same_file(path, f):
            return f
        f.close()  # its last holder removed it as we opened it: lock the one there now


class ResumableJSONL:
    def __init__(self, out, key_fields=("id", "sample"), rank: int = 0, stage: str | None = None,
                 settings: dict | None = None):
        """Read back what earlier runs wrote. The writer, rank 0, gives `stage` (the name of the program
        writing OUT) and `settings` (see the module doc); with several ranks it must have been
        constructed before the others read (a barrier between them)."""
        self.out = Path(out)
        self.key_fields = key_fields
        self.part = self.out.with_name(f"{self.out.name}.part{rank}")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock = None
        if stage is not None:
            self._lock = _lock(self._lock_path(), self.out)
            try:
                self._check_record({"stage": stage, **(settings or {})})
            except BaseException:
                self._release()  # a refused run leaves nothing behind
                raise
        self.done: dict[tuple, dict] = {}
        for path in [self.out, *self._parts()]:
            if path.is_file():
                for row in read_rows(path, repair=path == self.part):
                    self.done[self.key(row)] = row

    def _lock_path(self) -> Path:
        return self.out.with_name(f"{self.out.name}.lock")

    def _parts(self) -> list[Path]:
        """The part files of every rank: OUT.part0, OUT.part1, ..."""
        prefix = f"{self.out.name}.part"
        return sorted(p for p in self.out.parent.glob(glob.escape(prefix) + "*") if p.name[len(prefix):].isdigit())

    def _check_record(self, record: dict) -> None:
        """Refuse files this stage did not write; discard OUT and the parts if the run that wrote them had
        other settings; record ours (see the module doc)."""
        path = settings_path(self.out)
        record = json.loads(json.dumps(record))  # as it reads back: tuples become lists
        ours = [self.out, *self._parts()]
        for p in ours:
            if p.is_symlink():
                raise FormatError(f"{p} is a symbolic link; a stage writes only files of its own: {ELSEWHERE}")
        check_owned(ours, path)
        old = read_record(path, record["stage"], self.out)
        if old == record:
            return
        stale = [p for p in ours if p.exists()]
        if old is not None and stale:
            differ = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            print(f"{self.out}: written with another {', '.join(differ)}; discarding it and starting over",
                  file=sys.stderr)
            for p in stale:
                p.unlink()
        write_json_atomic(path, record)

    def key(self, row: dict) -> tuple:
        return tuple(row[k] for k in self.key_fields)

    def append(self, rows: list[dict]) -> None:
        """Write rows that are not done yet, in one write, and make them durable before returning."""
        new = [r for r in rows if self.key(r) not in self.done]
        if not new:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new)
        fd = os.open(self.part, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.done.update((self.key(r), r) for r in new)

    def finalize(self, order: list[tuple]) -> list[dict]:
        """Merge every part into OUT (rows in `order`, a list of keys), remove the parts and release OUT."""
        parts = self._parts()
        for path in parts:
            for row in read_rows(path):
                self.done[self.key(row)] = row
        missing = [k for k in order if k not in self.done]
        assert not missing, f"finalize with rows missing: {missing[:3]}"
        rows = [self.done[k] for k in order]
        write_jsonl_atomic(self.out, rows)
        for path in parts:
            path.unlink()
        self._release()
        return rows

    def _release(self) -> None:
        """Remove OUT.lock and unlock it, in that order: a run that opened it meanwhile sees it gone."""
        if self._lock is not None:
            self._lock_path().unlink()
            self._lock.close()
            self._lock = None
