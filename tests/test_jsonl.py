"""model/jsonl.py: the JSONL reading and writing every pipeline stage shares."""
import gzip
import json
import os

import pytest

from model.errors import FormatError
from model.jsonl import TornLineError, read_jsonl, write_jsonl_atomic


def test_round_trip_keeps_order_unicode_and_newlines(tmp_path):
    rows = [{"id": "a", "text": "héllo\nwörld ✓", "n": 1}, {"id": "b", "x": None, "nested": {"k": [1, 2]}}]
    assert write_jsonl_atomic(tmp_path / "sub" / "out.jsonl", rows) == 2      # creates the folder
    assert read_jsonl(tmp_path / "sub" / "out.jsonl") == rows
    lines = (tmp_path / "sub" / "out.jsonl").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 3 and list(json.loads(lines[0])) == ["id", "text", "n"]


def test_reads_gzip_and_skips_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"a": 1}\n\n  \n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_a_complete_last_line_without_newline_is_fine(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n{"a": 2}')
    assert read_jsonl(tmp_path / "x.jsonl") == [{"a": 1}, {"a": 2}]


def test_torn_last_line_is_reported_with_its_offset(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "tex')
    with pytest.raises(TornLineError, match=r"x\.jsonl:3: the last line is cut off") as e:
        read_jsonl(path)
    assert e.value.line == 3 and e.value.offset == 18 and isinstance(e.value, FormatError)
    with open(path, "r+b") as f:                     # what a resuming writer does with it
        f.truncate(e.value.offset)
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("content, required, message", [
    ('{"a": 1}\n{"a": 2,,}\n{"a": 3}\n', (), r"x\.jsonl:2: not valid JSON"),
    ('{"a": 1}\n[1, 2]\n', (), r"x\.jsonl:2: expected a JSON object, got list"),
    ('{"a": 1}\n"text"\n', (), r"x\.jsonl:2: expected a JSON object, got str"),
    ('{"a": 1, "b": 2}\n{"c": 3}\n', ("a", "b"), r"x\.jsonl:2: missing fields 'a', 'b'"),
    ('{"a": 1, "b": 2}\n{"b": 3}\n', ("a", "b"), r"x\.jsonl:2: missing field 'a'$"),
])
def test_bad_lines_name_file_and_line(tmp_path, content, required, message):
    (tmp_path / "x.jsonl").write_text(content)
    with pytest.raises(FormatError, match=message) as e:
        read_jsonl(tmp_path / "x.jsonl", required_fields=required)
    assert not isinstance(e.value, TornLineError)     # a malformed middle line is not a torn tail


def test_not_utf8_missing_file_and_corrupt_gzip(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes('{"a": "é"}\n'.encode("latin-1"))
    with pytest.raises(FormatError, match=r"latin1\.jsonl:1: not UTF-8"):
        read_jsonl(tmp_path / "latin1.jsonl")
    with pytest.raises(FormatError, match=r"nope\.jsonl: cannot open"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n' * 100)[:-6])
    with pytest.raises(FormatError, match=r"bad\.jsonl\.gz: cannot read"):
        read_jsonl(tmp_path / "bad.jsonl.gz")


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl_atomic(path, [{"old": True}])

    def rows():
        yield {"new": 1}
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, rows())
    with pytest.raises(TypeError):
        write_jsonl_atomic(path, [{"bad": object()}])
    assert read_jsonl(path) == [{"old": True}]
    assert os.listdir(tmp_path) == ["out.jsonl"]
