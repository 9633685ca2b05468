"""Self-instruction creation: ROUGE-L against hand-computed values, the clean-up and each filter,
and the CLI end to end (and resumed) on the tiny model."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from sample import self_instruct
from sample.self_instruct import (choose_examples, drop_reason, encode_request, extract_task, few_shot_request,
                                  rouge_l, rouge_tokens, self_instruct_request)

ROOT = Path(__file__).resolve().parents[1]


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat on a mat") = "the cat on mat" = 4 tokens
    f = rouge_l(rouge_tokens("The cat sat on the mat."), rouge_tokens("the cat on a mat"))
    p, r = 4 / 6, 4 / 5
    assert f == pytest.approx(2 * p * r / (p + r))
    assert rouge_l(["a", "b"], ["a", "b"]) == 1.0
    assert rouge_l(["a"], ["b"]) == 0.0 and rouge_l([], ["a"]) == 0.0
    assert rouge_tokens("What's 2+2?") == ["what", "s", "2", "2"]


def test_extract_task():
    assert extract_task(" How do I bake bread?\nTask 10: Something else") == "How do I bake bread?"
    assert extract_task(' "Explain recursion to a child." Task 10: more') == "Explain recursion to a child."
    assert extract_task("\n") == ""


@pytest.mark.parametrize("task,reason", [
    ("", "empty"),
    ("Below are some tasks that people have asked", "template echo"),
    ("Here is a new task:", "not a request"),
    ("Sure! Let me think of a question.", "not a request"),
    ("Why?", "too short"),
    (" ".join(["word"] * 151), "too long"),
    ("Describe the attached image in detail please.", "not a text task"),
    ("Summarise the video I sent you.", "not a text task"),
    ("How do I reverse a list in Python?", "near-duplicate"),
    ("How do I reverse a Python list?", "near-duplicate"),
    ("How can I create a website using HTML and CSS?", None),
    ("How do I read a file line by line in Rust?", None),
    ("What are three good habits for learning a new language?", None),
])
def test_drop_reasons(task, reason):
    known = [rouge_tokens("How do I reverse a list in Python?")]
    assert drop_reason(task, known, min_words=3, max_words=150) == reason


def test_few_shot_examples_come_from_seed_and_generated():
    seeds, generated = [f"seed {i}" for i in range(20)], ["gen a", "gen b", "gen c"]
    ex = choose_examples(random.Random(0), seeds, generated)
    assert len(ex) == 8 and len(set(ex)) == 8 and sum(e.startswith("gen") for e in ex) == 2
    assert sum(e.startswith("gen") for e in choose_examples(random.Random(0), seeds, ["gen a"])) == 1
    text = few_shot_request(ex)
    assert "Task 1: " in text and "Task 8: " in text and "Task 9" in text


def test_self_instruct_request_is_its_numbered_completion_prompt():
    # Self-Instruct's encode_prompt: a heading, "k. task" lines (whitespace collapsed, a trailing colon dropped),
    # and the next number for the model to continue
    text = self_instruct_request(["Name three  fruits.", "Translate this:\n'hello'", "Write a haiku:"])
    assert text == ("Come up with a series of tasks:\n1. Name three fruits.\n2. Translate this: 'hello'\n"
                    "3. Write a haiku\n4.")


def test_self_instruct_requests_are_plain_text_and_the_demo_s_a_chat(tiny_checkpoint):
    from model.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(tiny_checkpoint)
    examples = [f"Task number {i} here" for i in range(8)]
    ids = encode_request(tokenizer, "self-instruct", examples)
    assert ids == [tokenizer.bos_id] + tokenizer.encode(self_instruct_request(examples))
    chat = encode_request(tokenizer, "demo", examples)
    assert chat == (tokenizer.encode_chat([{"role": "user", "content": few_shot_request(examples)}])
                    + tokenizer.encode("Task 9:"))


def test_extract_task_self_instruct():
    assert extract_task(" Write a haiku about rain.\n10. Another task", "self-instruct") == "Write a haiku about rain."
    assert extract_task(" Explain tides\n  in simple words.\n\nunrelated", "self-instruct") == (
        "Explain tides in simple words.")
    assert extract_task("\n10. Only the next one", "self-instruct") == ""


# Self-Instruct's filters, with its word limits (more than 3, at most 150)
@pytest.mark.parametrize("task,reason", [
    ("", "empty"),
    ("Why is it?", "too short"),
    (" ".join(["word"] * 151), "too long"),
    ("Describe what this image shows, please.", "keyword"),
    ("Plot the numbers one to ten.", "keyword"),
    ("Tell me how to GO TO the station.", "keyword"),
    ("Draw me a picture of a house.", "keyword"),
    ("Summarise the files I have here.", "keyword"),
    ("Write a program that sorts a list.", "write a program"),
    ("write a program to add two numbers", "write a program"),
    ('"Explain recursion to a child," she said.', "punctuation start"),
    ("Élaborer une liste de courses simple.", "non-ASCII start"),
    ("How do I reverse a list in Python?", "near-duplicate"),
    ("Here is a new task: explain tides.", None),           # the demo's "not a request": kept here
    ("Describe the attached audio recording in detail.", None),   # the demo's "not a text task": kept here
    ("How do I read a file line by line?", "keyword"),       # "file": Self-Instruct drops it, the demo keeps it
])
def test_self_instruct_drop_reasons(task, reason):
    known = [rouge_tokens("How do I reverse a list in Python?")]
    assert drop_reason(task, known, min_words=4, max_words=150, template="self-instruct") == reason


def test_near_duplicate_threshold_demo_at_or_above_self_instruct_above():
    known = [["a", "b", "x", "y"]]
    task = "a b c d"                              # tokens a b c d: LCS 2 of 4 and 4, so ROUGE-L F = 0.5 exactly
    assert rouge_l(rouge_tokens(task), known[0]) == 0.5
    assert drop_reason(task, known, 1, 150, "demo", threshold=0.5) == "near-duplicate"
    assert drop_reason(task, known, 1, 150, "self-instruct", threshold=0.5) is None


def test_cli_with_the_self_instruct_template(tmp_path, tiny_checkpoint, capsys):
    self_instruct.main(["--model", str(tiny_checkpoint), "--seed-prompts", str(ROOT / "data/seed/ift.jsonl"),
                        "--out", str(tmp_path / "p.jsonl"), "--n-prompts", "50", "--max-requests", "4",
                        "--batch-size", "4", "--max-new-tokens", "12", "--min-words", "1",
                        "--template", "self-instruct"])
    attempts = [json.loads(line) for line in (tmp_path / "p.attempts.jsonl").read_text().splitlines()]
    assert [a["request"] for a in attempts] == list(range(4))
    # each attempt's task and fate follow the self-instruct rules, replayed here in order from its raw completion
    seeds = [json.loads(line)["prompt"] for line in (ROOT / "data/seed/ift.jsonl").read_text().splitlines()]
    known = [rouge_tokens(s) for s in seeds]
    for a in attempts:
        assert a["prompt"] == extract_task(a["raw"], "self-instruct")
        assert a["dropped"] == drop_reason(a["prompt"], known, 1, 150, "self-instruct")
        if a["dropped"] is None:
            known.append(rouge_tokens(a["prompt"]))
    assert "4 requests" in capsys.readouterr().err


def run(tmp_path, ckpt, n_prompts, max_requests):
    return subprocess.run([sys.executable, str(ROOT / "sample/self_instruct.py"), "--model", str(ckpt),
                           "--seed-prompts", str(ROOT / "data/seed/ift.jsonl"), "--out", str(tmp_path / "p.jsonl"),
                           "--n-prompts", str(n_prompts), "--max-requests", str(max_requests), "--batch-size", "4",
                           "--max-new-tokens", "12", "--min-words", "1"], capture_output=True, text=True)


def test_cli_counts_add_up_and_resume_gives_the_same_attempts(tmp_path, tiny_checkpoint):
    proc = run(tmp_path, tiny_checkpoint, 100, 8)  # more prompts than 8 requests can give: all 8 run
    assert proc.returncode == 0, proc.stderr
    attempts = [json.loads(line) for line in (tmp_path / "p.attempts.jsonl").read_text().splitlines()]
    kept = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [a["request"] for a in attempts] == list(range(8))
    assert kept == [{"id": a["id"], "prompt": a["prompt"]} for a in attempts if a["dropped"] is None]
    assert f"{len(attempts)} requests, {len(kept)} prompts written" in proc.stderr
    # cut the log back to a batch and a half, as a crash would, and rerun: the same attempts come back
    lines = (tmp_path / "p.attempts.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "p.jsonl").unlink()
    (tmp_path / "p.attempts.jsonl").unlink()
    (tmp_path / "p.attempts.jsonl.part0").write_text("".join(lines[:6]) + lines[6][:10])
    assert run(tmp_path, tiny_checkpoint, 100, 8).returncode == 0
    again = [json.loads(line) for line in (tmp_path / "p.attempts.jsonl").read_text().splitlines()]
    assert again == attempts


@pytest.mark.slow
def test_tensor_parallel_equals_one_process(tmp_path, tiny_checkpoint):
    """Under torchrun with --tp all ranks run the loop on one split model and rank 0 writes. Greedy and fp32,
    so that the order of the all-reduce's float sums cannot tip a sample (in bf16 it can); the attempts must
    be the same."""
    common = ["--model", str(tiny_checkpoint), "--seed-prompts", str(ROOT / "data/seed/ift.jsonl"),
              "--n-prompts", "100", "--max-requests", "8", "--batch-size", "4", "--max-new-tokens", "12",
              "--min-words", "1", "--temperature", "0", "--dtype", "float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(ROOT / "sample/self_instruct.py"), *common,
                          "--out", str(tmp_path / "one.jsonl")], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(ROOT / "sample/self_instruct.py"), *common, "--out", str(tmp_path / "two.jsonl")]
    refused = subprocess.run(torchrun, capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "needs --tp" in refused.stderr
    two = subprocess.run(torchrun + ["--tp"], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two.attempts.jsonl").read_text() == (tmp_path / "one.attempts.jsonl").read_text()
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert not list(tmp_path.glob("*.part*"))
