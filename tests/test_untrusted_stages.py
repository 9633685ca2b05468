"""Untrusted input and the user's data. A stage refuses, before it samples anything, files it did not write
(someone's JSONL at --out, another stage's output, a symbolic link, a work folder of another CLI's), a
second writer of the same output, and an output it cannot write; and bad input, in a file or a flag, is
one line naming the file and line or the flag, never a traceback. The CLIs run in this process, on the
tiny model, so that each case takes a fraction of a second."""
import fcntl
import json
import os
from pathlib import Path

import pytest

from eval.export import main as export_main
from eval.head_to_head import main as head_to_head_main
from eval.reward_metrics import main as reward_metrics_main
from judge.eft import main as eft_main
from judge.oasst import main as oasst_main
from judge.pairs import main as pairs_main
from judge.score import main as score_main
from judge.sft_data import main as sft_data_main
from model.errors import FormatError
from model.jsonl import read_jsonl
from sample.generate import main as generate_main
from sample.resume import ResumableJSONL
from sample.self_instruct import main as self_instruct_main

FAST = "--max-new-tokens 2 --batch-size 4"
ELSEWHERE = "move it away or choose another --out"


def line(row) -> str:
    return json.dumps(row) + "\n"


@pytest.fixture
def files(tmp_path) -> Path:
    """A folder with a valid input for every CLI: prompts, candidates, judged, seed, ranked, pool files."""
    (tmp_path / "p.jsonl").write_text(line({"id": "a", "prompt": "the model"}))
    (tmp_path / "c.jsonl").write_text(line({"id": "a", "sample": 0, "prompt": "the model", "response": "answers"}))
    (tmp_path / "j.jsonl").write_text(line({"id": "a", "sample": 0, "prompt": "p", "response": "r", "score": 1}))
    (tmp_path / "seed.jsonl").write_text("".join(line({"prompt": f"question {i} about the model"}) for i in range(8)))
    replies = [{"id": "r0", "text": "chosen", "rank": 0}, {"id": "r1", "text": "rejected", "rank": 1}]
    (tmp_path / "r.jsonl").write_text(line({"id": "q", "prompt": "the model", "replies": replies}))
    (tmp_path / "pool.jsonl").write_text(line({"id": "q", "prompt": "the model", "replies": replies}))
    (tmp_path / "file.txt").write_text("not a folder\n")
    return tmp_path


@pytest.fixture
def refusal(capsys):
    """run(main, argv): the one-line message main(argv) stops with, asserting a failing exit status and no
    traceback (an exception other than SystemExit fails the test)."""
    def run(main, argv: str) -> str:
        with pytest.raises(SystemExit) as stop:
            main(argv.split())
        err = capsys.readouterr().err
        assert stop.value.code not in (0, None), err
        message = stop.value.code if isinstance(stop.value.code, str) else err.strip().splitlines()[-1]
        assert "\n" not in message and "Traceback" not in err
        return message
    return run


def cli_args(template: str, tmp: Path, model: Path) -> str:
    return template.format(tmp=tmp, model=model, fast=FAST)


def cli_name(value):
    """Test ids: a CLI's main by its module; other values as pytest names them."""
    return value.__module__ if callable(value) else None


# ---------------------------------------------------------------- files a stage did not write

GENERATE = "--model {model} --prompts {tmp}/p.jsonl --out {tmp}/o.jsonl --samples 1 {fast}"
SELF_INSTRUCT = ("--model {model} --seed-prompts {tmp}/seed.jsonl --out {tmp}/s.jsonl --n-prompts 1 --max-requests 2 "
                 "--min-words 1 {fast}")
HEAD_TO_HEAD = ("--a {model} --b {model} --judge {model} --prompts {tmp}/p.jsonl --out {tmp}/h.json {fast} "
                "--judge-max-new-tokens 2")

# (CLI, its arguments, the file someone else put there, the settings record that would make it ours). The
# file's row has the key of the stage's first row: the stage used to adopt it (or, with other keys, delete it).
FOREIGN = [
    (generate_main, GENERATE, "o.jsonl", "o.jsonl.settings.json"),
    (generate_main, GENERATE, "o.jsonl.part0", "o.jsonl.settings.json"),
    (score_main, "--model {model} --candidates {tmp}/c.jsonl --out {tmp}/o.jsonl --samples 1 {fast}", "o.jsonl",
     "o.jsonl.settings.json"),
    (self_instruct_main, SELF_INSTRUCT, "s.jsonl", "s.attempts.jsonl.settings.json"),
    (self_instruct_main, SELF_INSTRUCT, "s.attempts.jsonl.part0", "s.attempts.jsonl.settings.json"),
    (eft_main, "--model {model} --pool {tmp}/pool.jsonl --out {tmp}/e.jsonl {fast}", "e.jsonl",
     "e.judgements.jsonl.settings.json"),
    (head_to_head_main, HEAD_TO_HEAD, "h.json", "h.work/settings.json"),
    (head_to_head_main, HEAD_TO_HEAD, "h.work/answers_a.jsonl", "h.work/settings.json"),
]


@pytest.mark.parametrize("main, argv, planted, record", FOREIGN, ids=cli_name)
def test_a_file_the_stage_did_not_write_is_neither_adopted_nor_replaced(files, tiny_checkpoint, refusal, main, argv,
                                                                        planted, record):
    theirs = files / planted
    theirs.parent.mkdir(exist_ok=True)
    theirs.write_text(line({"id": "a", "sample": 0, "request": 0, "prompt": "theirs", "response": "theirs"}))
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    message = refusal(main, cli_args(argv, files, tiny_checkpoint))
    assert message == f"error: {theirs} exists and was not written by this stage (no {files / record}): {ELSEWHERE}"
    assert theirs.read_text().count("theirs") == 2
    assert sorted(p.relative_to(files) for p in files.rglob("*")) == before  # nothing left behind either


def test_an_output_of_another_stage_is_refused_not_discarded(files, tiny_checkpoint, refusal):
    generate_main(cli_args(GENERATE, files, tiny_checkpoint).split())
    out = files / "o.jsonl"
    before = out.read_bytes()
    message = refusal(score_main, cli_args("--model {model} --candidates {tmp}/c.jsonl --out {tmp}/o.jsonl "
                                           "--samples 1 {fast}", files, tiny_checkpoint))
    assert message == (f"error: {out} was written by sample/generate.py, not by judge/score.py "
                       f"(says o.jsonl.settings.json): {ELSEWHERE}")
    assert out.read_bytes() == before


def test_a_settings_file_that_is_not_a_record_does_not_make_out_ours(files, tiny_checkpoint, refusal):
    out = files / "o.jsonl"
    out.write_text(line({"id": "a", "sample": 0, "response": "theirs"}))
    (files / "o.jsonl.settings.json").write_text(json.dumps({"sampling": [1.0]}))  # no stage: not one of ours
    message = refusal(generate_main, cli_args(GENERATE, files, tiny_checkpoint))
    assert message == (f"error: {files / 'o.jsonl.settings.json'} is not a settings record of this project's "
                       f"stages, so {out} is not ours: {ELSEWHERE}")
    assert "theirs" in out.read_text()


def test_a_symbolic_link_in_place_of_a_part_file_is_not_followed(files, tiny_checkpoint, refusal):
    """A rerun would read the link's target as a part, cut off its "torn" last line and append to it."""
    generate_main(cli_args(GENERATE, files, tiny_checkpoint).split())  # a finished run: OUT and its record
    victim = files / "notes.txt"
    victim.write_text("someone's notes\n")
    (files / "o.jsonl.part0").symlink_to(victim)
    message = refusal(generate_main, cli_args(GENERATE, files, tiny_checkpoint))
    assert message == (f"error: {files / 'o.jsonl.part0'} is a symbolic link; a stage writes only files of its "
                       f"own: {ELSEWHERE}")
    assert victim.read_text() == "someone's notes\n"


def test_appends_do_not_follow_a_symbolic_link_made_while_running(tmp_path):
    writer = ResumableJSONL(tmp_path / "o.jsonl", stage="test", settings={})
    victim = tmp_path / "notes.txt"
    victim.write_text("someone's notes\n")
    writer.part.symlink_to(victim)
    with pytest.raises(OSError):
        writer.append([{"id": 1, "sample": 0}])
    assert victim.read_text() == "someone's notes\n"


def test_one_writer_at_a_time(tmp_path):
    """The writer (rank 0) holds OUT.lock until finalize; a second one meanwhile is refused, whatever its
    settings, instead of mixing its rows in; finalize leaves no lock file behind."""
    out = tmp_path / "o.jsonl"
    first = ResumableJSONL(out, stage="test", settings={"temperature": 0.5})
    with pytest.raises(FormatError, match=f"^{out} is being written by another run \\(it holds o.jsonl.lock\\)"):
        ResumableJSONL(out, stage="test", settings={"temperature": 0.9})
    first.append([{"id": 1, "sample": 0}])
    assert first.finalize([(1, 0)]) == [{"id": 1, "sample": 0}]
    assert not (tmp_path / "o.jsonl.lock").exists()
    second = ResumableJSONL(out, stage="test", settings={"temperature": 0.5})
    assert list(second.done) == [(1, 0)]


def test_a_second_run_of_a_cli_is_refused_while_the_first_writes(files, tiny_checkpoint, refusal):
    with open(files / "o.jsonl.lock", "w") as held:  # what the first run holds while it writes
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        message = refusal(generate_main, cli_args(GENERATE, files, tiny_checkpoint))
    assert message == (f"error: {files / 'o.jsonl'} is being written by another run (it holds o.jsonl.lock): "
                       "wait for it to finish, or choose another --out")
    assert not (files / "o.jsonl").exists() and not (files / "o.jsonl.settings.json").exists()


# (what the work folder holds, the refusal) for head_to_head --out h.json
WORK_FOLDERS = [
    ({"settings.json": {"a": "x"}}, "{work}/settings.json is not a settings record of this project's stages, "
                                    "so {work} is not ours"),
    ({"settings.json": {"stage": "eval/reward_metrics.py"}},
     "{work} was written by eval/reward_metrics.py, not by eval/head_to_head.py (says settings.json)"),
    ({"answers_a.jsonl": {"id": "a"}}, "{work}/answers_a.jsonl exists and was not written by this stage "
                                       "(no {work}/settings.json)"),
]


@pytest.mark.parametrize("content, message", WORK_FOLDERS)
def test_a_work_folder_another_cli_made_is_not_removed(files, tiny_checkpoint, refusal, content, message):
    work = files / "h.work"
    work.mkdir()
    for name, row in content.items():
        (work / name).write_text(json.dumps(row))
    (work / "notes.txt").write_text("someone's notes\n")
    got = refusal(head_to_head_main, cli_args(HEAD_TO_HEAD, files, tiny_checkpoint))
    assert got == f"error: {message.format(work=work)}: {ELSEWHERE}"
    assert sorted(p.name for p in work.iterdir()) == sorted([*content, "notes.txt"])


# ---------------------------------------------------------------- outputs that cannot be written

# (CLI, arguments, the message) with {tmp} the folder of `files`
BAD_OUT = [
    (generate_main, "--model {model} --prompts {tmp}/p.jsonl --out {tmp}",
     "--out {tmp}: is a directory; give the name of a file to write"),
    (generate_main, "--model {model} --prompts {tmp}/p.jsonl --out {tmp}/p.jsonl",
     "--out {tmp}/p.jsonl is also --prompts: the output would replace its own input"),
    (generate_main, "--model {model} --prompts {tmp}/p.jsonl --out {tmp}/../{tmp.name}/p.jsonl",
     "--out {tmp}/../{tmp.name}/p.jsonl is also --prompts: the output would replace its own input"),
    (generate_main, "--model {model} --prompts {tmp}/p.jsonl --out {tmp}/file.txt/o.jsonl",
     "cannot write {tmp}/file.txt/o.jsonl: {tmp}/file.txt is not a folder"),
    (score_main, "--model {model} --candidates {tmp}/c.jsonl --out {tmp}/c.jsonl",
     "--out {tmp}/c.jsonl is also --candidates: the output would replace its own input"),
    (self_instruct_main, "--model {model} --seed-prompts {tmp}/seed.jsonl --out {tmp}/seed.jsonl --n-prompts 1",
     "--out {tmp}/seed.jsonl is also --seed-prompts: the output would replace its own input"),
    (reward_metrics_main, "--model {model} --ranked {tmp}/r.jsonl --out {tmp}/r.jsonl",
     "--out {tmp}/r.jsonl is also --ranked: the output would replace its own input"),
    (head_to_head_main, "--a {model} --b {model} --judge {model} --prompts {tmp}/p.jsonl --out {tmp}",
     "--out {tmp}: is a directory; give the name of a file to write"),
    (pairs_main, "--judged {tmp}/j.jsonl --out {tmp}/j.jsonl",
     "--out {tmp}/j.jsonl is also --judged: the output would replace its own input"),
    (sft_data_main, "--ift {tmp}/p.jsonl --out {tmp}/file.txt/sft.jsonl",
     "cannot write {tmp}/file.txt/sft.jsonl: {tmp}/file.txt is not a folder"),
]


@pytest.mark.parametrize("main, argv, message", BAD_OUT, ids=cli_name)
def test_an_output_that_cannot_be_written_is_refused_before_sampling(files, tiny_checkpoint, refusal, main, argv,
                                                                     message):
    before = {p: p.read_bytes() for p in files.iterdir() if p.is_file()}
    assert refusal(main, cli_args(argv, files, tiny_checkpoint)) == "error: " + message.format(tmp=files)
    assert {p: p.read_bytes() for p in files.iterdir() if p.is_file()} == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused(files, tiny_checkpoint, refusal):
    (files / "ro").mkdir(mode=0o555)
    message = refusal(generate_main, f"--model {tiny_checkpoint} --prompts {files}/p.jsonl --out {files}/ro/o.jsonl")
    assert message == f"error: cannot write {files}/ro/o.jsonl: the folder {files}/ro is not writable"


# ---------------------------------------------------------------- bad input files

MESSAGES = ('"messages" must be a list of {"role", "content": str} objects, an optional system turn first, then '
            'user and assistant turns alternating, the last a user turn: ')
USER, ASSISTANT, SYSTEM = ({"role": r, "content": "x"} for r in ("user", "assistant", "system"))

# (the prompts file, the message after "error: {tmp}/p.jsonl")
BAD_PROMPTS = [
    (line({"id": 1, "messages": "hello"}), ":1: " + MESSAGES + "it is not a non-empty list"),
    (line({"id": 1, "messages": []}), ":1: " + MESSAGES + "it is not a non-empty list"),
    (line({"id": 1, "messages": [{"role": "user"}]}),
     ":1: " + MESSAGES + 'message 0 is not an object with a string "content"'),
    (line({"id": 1, "messages": ["hi"]}), ":1: " + MESSAGES + 'message 0 is not an object with a string "content"'),
    (line({"id": 1, "messages": [USER, USER]}),
     ":1: " + MESSAGES + 'message 1 has role "user", expected "assistant"'),
    (line({"id": 1, "messages": [USER, SYSTEM, USER]}),
     ":1: " + MESSAGES + 'message 1 has role "system", expected "assistant"'),
    (line({"id": 1, "messages": [SYSTEM, ASSISTANT, USER]}),
     ":1: " + MESSAGES + 'message 1 has role "assistant", expected "user"'),
    (line({"id": 1, "messages": [{"role": "tool", "content": "x"}]}),
     ":1: " + MESSAGES + 'message 0 has role "tool", expected "user"'),
    (line({"id": 1, "messages": [USER, ASSISTANT]}), ":1: " + MESSAGES + "the last message is not a user turn"),
    (line({"id": 1, "messages": [SYSTEM]}), ":1: " + MESSAGES + "the last message is not a user turn"),
    ('{"id": [1], "prompt": "a"}\n', ":1: 'id' must be a string or an integer, got [1]"),
    ('{"id": {"k": 1}, "prompt": "a"}\n', ":1: 'id' must be a string or an integer, got {\"k\": 1}"),
    ('{"id": null, "prompt": "a"}\n', ":1: 'id' must be a string or an integer, got null"),
    ('{"id": 0, "prompt": "a"}\n{"id": NaN, "prompt": "a"}\n', ":2: 'id' must be a string or an integer, got NaN"),
    ('{"id": Infinity, "prompt": "a"}\n', ":1: 'id' must be a string or an integer, got Infinity"),
    ('{"id": true, "prompt": "a"}\n', ":1: 'id' must be a string or an integer, got true"),
    ('{"id": 1.5, "prompt": "a"}\n', ":1: 'id' must be a string or an integer, got 1.5"),
    ('{"id": 1, "prompt": "a \\ud800 b"}\n',
     ":1: a lone surrogate (a \\ud800-\\udfff escape without its pair) is not text"),
    ('{"id": 1, "messages": [{"role": "user", "content": "\\udc00"}]}\n',
     ":1: a lone surrogate (a \\ud800-\\udfff escape without its pair) is not text"),
    ("", ": the file is empty (no JSON lines)"),
    ("\n  \n", ": the file is empty (no JSON lines)"),
]


@pytest.mark.parametrize("content, message", BAD_PROMPTS)
def test_bad_prompts_are_one_line_naming_file_and_line(files, tiny_checkpoint, refusal, content, message):
    (files / "p.jsonl").write_text(content)
    got = refusal(generate_main, cli_args(GENERATE, files, tiny_checkpoint))
    assert got == f"error: {files / 'p.jsonl'}{message}"
    assert not (files / "o.jsonl").exists()


def test_surrogate_pairs_are_text(files, tiny_checkpoint):
    (files / "p.jsonl").write_text('{"id": "a", "prompt": "the model \\ud83d\\ude00 and \\\\ud800 as text"}\n')
    generate_main(cli_args(GENERATE, files, tiny_checkpoint).split())
    assert read_jsonl(files / "o.jsonl")[0]["prompt"] == "the model \U0001F600 and \\ud800 as text"


def judged(**fields) -> str:
    return line({"id": "a", "sample": 0, "prompt": "p", "response": "r", "score": 1, **fields})


BAD_JUDGED = [
    (judged(score=7), ":1: 'score' must be a number from 0 to 5 or null, got 7"),
    (judged(score=-0.5), ":1: 'score' must be a number from 0 to 5 or null, got -0.5"),
    (judged() + judged(sample=1, score=5.5), ":2: 'score' must be a number from 0 to 5 or null, got 5.5"),
    (judged(neutralised="yes"), ":1: 'neutralised' must be true or false, got \"yes\""),
    (judged(neutralised=1), ":1: 'neutralised' must be true or false, got 1"),
    (judged(neutralised=None), ":1: 'neutralised' must be true or false, got null"),
    (judged(id=None), ":1: 'id' must be a string or an integer, got null"),
    ("", ": the file is empty (no JSON lines)"),
]


@pytest.mark.parametrize("content, message", BAD_JUDGED)
def test_bad_judged_files_are_one_line_naming_file_and_line(files, refusal, content, message):
    (files / "j.jsonl").write_text(content)
    got = refusal(pairs_main, f"--judged {files}/j.jsonl --out {files}/pairs.jsonl")
    assert got == f"error: {files}/j.jsonl{message}"
    assert not (files / "pairs.jsonl").exists()


# (CLI, arguments, the input emptied) with {tmp} the folder of `files`
EMPTY_INPUTS = [
    (score_main, "--model {model} --candidates {tmp}/c.jsonl --out {tmp}/o.jsonl", "c.jsonl"),
    (eft_main, "--model {model} --pool {tmp}/pool.jsonl --out {tmp}/e.jsonl", "pool.jsonl"),
    (head_to_head_main, HEAD_TO_HEAD, "p.jsonl"),
    (export_main, "mt-bench --model {model} --questions {tmp}/q.jsonl --out {tmp}/m.jsonl", "q.jsonl"),
    (sft_data_main, "--ift {tmp}/p.jsonl --out {tmp}/sft.jsonl", "p.jsonl"),
    (oasst_main, "--input {tmp}/oa.jsonl --out-dir {tmp}/oa", "oa.jsonl"),
]


@pytest.mark.parametrize("main, argv, name", EMPTY_INPUTS, ids=cli_name)
def test_an_empty_input_is_an_error_not_an_empty_output(files, tiny_checkpoint, refusal, main, argv, name):
    (files / name).write_text("")
    got = refusal(main, cli_args(argv, files, tiny_checkpoint))
    assert got == f"error: {files / name}: the file is empty (no JSON lines)"


def test_an_empty_alpaca_eval_set_is_an_error(files, tiny_checkpoint, refusal):
    (files / "a.json").write_text("[]")
    message = refusal(export_main, f"alpacaeval --model {tiny_checkpoint} --eval-set {files}/a.json "
                                   f"--generator m --out {files}/out.json")
    assert message == f"error: {files}/a.json: the list is empty: no instructions to answer"


BAD_IDS = [
    (score_main, "--model {model} --candidates {tmp}/c.jsonl --out {tmp}/o.jsonl", "c.jsonl",
     '{"id": NaN, "sample": 0, "prompt": "p", "response": "r"}\n', ":1: 'id' must be a string or an integer, got NaN"),
    (score_main, "--model {model} --candidates {tmp}/c.jsonl --out {tmp}/o.jsonl", "c.jsonl",
     '{"id": "a", "sample": [0], "prompt": "p", "response": "r"}\n',
     ":1: 'sample' must be a string or an integer, got [0]"),
    (eft_main, "--model {model} --pool {tmp}/pool.jsonl --out {tmp}/e.jsonl", "pool.jsonl",
     line({"id": "q", "prompt": "p", "replies": [{"id": None, "text": "t", "rank": 0}]}),
     ":1: a reply: 'id' must be a string or an integer, got null"),
    (export_main, "mt-bench --model {model} --questions {tmp}/q.jsonl --out {tmp}/m.jsonl", "q.jsonl",
     line({"question_id": 1.0, "turns": ["hi"]}), ":1: 'question_id' must be a string or an integer, got 1.0"),
    (reward_metrics_main, "--model {model} --ranked {tmp}/r.jsonl --out {tmp}/m.json", "r.jsonl",
     line({"id": False, "prompt": "p", "replies": ["a", "b"], "ranks": [0, 1]}),
     ":1: 'id' must be a string or an integer, got false"),
]


@pytest.mark.parametrize("main, argv, name, content, message", BAD_IDS, ids=cli_name)
def test_ids_that_are_not_strings_or_integers_are_refused(files, tiny_checkpoint, refusal, main, argv, name, content,
                                                         message):
    (files / name).write_text(content)
    assert refusal(main, cli_args(argv, files, tiny_checkpoint)) == f"error: {files / name}{message}"


# ---------------------------------------------------------------- bad flags

# (CLI, the flags, the end of argparse's message)
BAD_FLAGS = [
    (generate_main, "--samples 0", "argument --samples: expected an integer >= 1, got '0'"),
    (generate_main, "--samples -1", "argument --samples: expected an integer >= 1, got '-1'"),
    (generate_main, "--samples two", "argument --samples: expected an integer >= 1, got 'two'"),
    (generate_main, "--temperature nan", "argument --temperature: expected a number >= 0, got 'nan'"),
    (generate_main, "--temperature -0.1", "argument --temperature: expected a number >= 0, got '-0.1'"),
    (generate_main, "--temperature inf", "argument --temperature: expected a number >= 0, got 'inf'"),
    (generate_main, "--top-p 0", "argument --top-p: expected a number in (0, 1], got '0'"),
    (generate_main, "--top-p 1.5", "argument --top-p: expected a number in (0, 1], got '1.5'"),
    (generate_main, "--top-p nan", "argument --top-p: expected a number in (0, 1], got 'nan'"),
    (generate_main, "--top-k -1", "argument --top-k: expected an integer >= 0, got '-1'"),
    (generate_main, "--max-new-tokens 0", "argument --max-new-tokens: expected an integer >= 1, got '0'"),
    (generate_main, "--batch-size 0", "argument --batch-size: expected an integer >= 1, got '0'"),
    (score_main, "--samples 0", "argument --samples: expected an integer >= 1, got '0'"),
    (score_main, "--temperature nan", "argument --temperature: expected a number >= 0, got 'nan'"),
    (self_instruct_main, "--n-prompts 0", "argument --n-prompts: expected an integer >= 1, got '0'"),
    (eft_main, "--max-fraction 0", "argument --max-fraction: expected a number in (0, 1], got '0'"),
    (reward_metrics_main, "--samples -2", "argument --samples: expected an integer >= 1, got '-2'"),
    (head_to_head_main, "--temperature nan", "argument --temperature: expected a number >= 0, got 'nan'"),
    (head_to_head_main, "--judge-temperature -1", "argument --judge-temperature: expected a number >= 0, got '-1'"),
    (head_to_head_main, "--judge-top-p 2", "argument --judge-top-p: expected a number in (0, 1], got '2'"),
    (head_to_head_main, "--judge-max-new-tokens 0",
     "argument --judge-max-new-tokens: expected an integer >= 1, got '0'"),
    (head_to_head_main, "--batch-size -4", "argument --batch-size: expected an integer >= 1, got '-4'"),
    (export_main, "mt-bench --max-new-tokens 0", "argument --max-new-tokens: expected an integer >= 1, got '0'"),
    (pairs_main, "--judged j.jsonl --out pairs.jsonl --min-gap nan", "--min-gap must be a number >= 0, got nan"),
]


@pytest.mark.parametrize("main, argv, message", BAD_FLAGS, ids=cli_name)
def test_bad_flags_are_one_line_naming_the_flag(refusal, main, argv, message):
    assert refusal(main, argv).endswith(f"error: {message}")
