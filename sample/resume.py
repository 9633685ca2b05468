"""Resumable JSONL output for the sampling stages (generate, judge, self-instruct).

Each process appends finished rows to its own part file, `OUT.part{rank}`, one batch at a time,
flushed and fsynced, so a crash loses at most the batch in flight. A rerun reads back OUT and every
part file, drops a torn last line (a kill mid-write), and skips every row already there. When all
rows are done, rank 0 merges everything into OUT in a stable order, through a temporary file and
a rename, and removes the parts: OUT exists only when complete.

Given `settings` (whatever decides the rows: the model's fingerprint, the inputs, the sampling
parameters), rank 0 keeps them in OUT.settings.json; a later run with other settings discards OUT and
the parts, says so, and starts over, so rows made by another model, from other inputs or with other
parameters are never reused or mixed in. Without the file (a run that recorded none) rows are kept.
"""
import json
import os
import sys
from pathlib import Path

from model.errors import FormatError
from model.jsonl import write_json_atomic, write_jsonl_atomic


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
        with open(path, "r+b") as f:
            f.truncate(start)
    return rows


class ResumableJSONL:
    def __init__(self, out, key_fields=("id", "sample"), rank: int = 0, settings: dict | None = None):
        """Read back what earlier runs wrote. With several ranks, rank 0 (the one given `settings`)
        must have been constructed before the others read (a barrier between them)."""
        self.out = Path(out)
        self.key_fields = key_fields
        self.part = self.out.with_name(f"{self.out.name}.part{rank}")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if settings is not None:
            self._check_settings(settings)
        self.done: dict[tuple, dict] = {}
        for path in [self.out, *sorted(self.out.parent.glob(f"{self.out.name}.part*"))]:
            if path.is_file():
                for row in read_rows(path, repair=path == self.part):
                    self.done[self.key(row)] = row

    def _check_settings(self, settings: dict) -> None:
        """Discard OUT and the parts if the run that wrote them had other settings; record ours."""
        path = self.out.with_name(f"{self.out.name}.settings.json")
        settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if old == settings:
            return
        stale = [p for p in [self.out, *self.out.parent.glob(f"{self.out.name}.part*")] if p.is_file()]
        if old is not None and stale:
            differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            print(f"{self.out}: written with another {', '.join(differ)}; discarding it and starting over",
                  file=sys.stderr)
            for p in stale:
                p.unlink()
        write_json_atomic(path, settings)

    def key(self, row: dict) -> tuple:
        return tuple(row[k] for k in self.key_fields)

    def append(self, rows: list[dict]) -> None:
        """Write rows that are not done yet, in one write, and make them durable before returning."""
        new = [r for r in rows if self.key(r) not in self.done]
        if not new:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new)
        with open(self.part, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.done.update((self.key(r), r) for r in new)

    def finalize(self, order: list[tuple]) -> list[dict]:
        """Merge every part into OUT (rows in `order`, a list of keys) and remove the parts."""
        parts = sorted(self.out.parent.glob(f"{self.out.name}.part*"))
        for path in parts:
            for row in read_rows(path):
                self.done[self.key(row)] = row
        missing = [k for k in order if k not in self.done]
        assert not missing, f"finalize with rows missing: {missing[:3]}"
        rows = [self.done[k] for k in order]
        write_jsonl_atomic(self.out, rows)
        for path in parts:
            path.unlink()
        return rows
