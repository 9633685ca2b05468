"""The shipped seed data under data/seed/: counts, fields, score balance, and that the tools read it."""
import filecmp
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from judge.oasst import ranked_prompts, read_messages
from judge.parse import parse_score
from judge.prompt import judge_messages
from model.jsonl import read_jsonl

SEED = Path(__file__).resolve().parent.parent / "data" / "seed"


@pytest.fixture(scope="module")
def ift():
    return read_jsonl(SEED / "ift.jsonl")


@pytest.fixture(scope="module", params=["eft.jsonl", "eft_contrast.jsonl"])
def eft(request):
    """The quick demo's EFT set and the judge demo's contrastive one: both are checked the same way."""
    return read_jsonl(SEED / request.param)


@pytest.fixture(scope="module")
def ranked():
    messages, empty_trees = read_messages([SEED / "ranked.trees.jsonl"])
    rows, counts = ranked_prompts(messages)
    assert empty_trees == 0
    return rows, counts


def test_ift(ift):
    assert len(ift) >= 150
    assert all(list(row) == ["id", "prompt", "response"] for row in ift)
    assert len({r["id"] for r in ift}) == len({r["prompt"] for r in ift}) == len(ift)
    words = [len(r["response"].split()) for r in ift]
    assert all(10 <= n <= 160 for n in words)                       # short poems are the only answers under 30
    assert sum(30 <= n <= 150 for n in words) >= 0.95 * len(ift)
    assert all(r["prompt"].strip() and r["response"].strip() for r in ift)
    categories = Counter(r["id"].split("-")[1] for r in ift)
    assert len(categories) >= 10 and max(categories.values()) <= 0.2 * len(ift)


def test_eft(eft):
    assert len(eft) >= 150
    assert all(list(row) == ["id", "instruction", "response", "judgement"] for row in eft)
    assert len({r["id"] for r in eft}) == len(eft)
    scores = Counter()
    for row in eft:
        assert re.search(r"\nScore: [0-5]$", row["judgement"]), row["id"]
        score = parse_score(row["judgement"]).score
        assert score is not None and score == int(score), row["id"]
        scores[int(score)] += 1
        justification = row["judgement"].rsplit("\nScore:", 1)[0]
        assert len(justification.split()) < 100, row["id"]
        messages = judge_messages(row["instruction"], row["response"])
        assert row["instruction"] in messages[0]["content"] and row["response"] in messages[0]["content"]
    assert set(scores) == set(range(6))
    assert max(scores.values()) <= 0.3 * len(eft)


def test_ranked_trees_load_with_the_open_assistant_loader(ranked):
    rows, counts = ranked
    assert len(rows) >= 50
    assert counts == {"prompt ranked (2 or more ranked replies)": len(rows),
                      "reply usable": sum(len(r["replies"]) for r in rows)}  # no message skipped
    hand_written = {r["prompt"]: r["response"] for r in read_jsonl(SEED / "source" / "ranked_answers.jsonl")}
    for row in rows:
        ranks = [reply["rank"] for reply in row["replies"]]
        assert 3 <= len(ranks) <= 4 and ranks == list(range(len(ranks))), row["id"]
        assert row["replies"][0]["text"] == hand_written[row["prompt"]]      # the hand-written answer is best


def test_sets_are_disjoint(ift, eft, ranked):
    ranked_prompts = {r["prompt"] for r in ranked[0]}
    assert not ranked_prompts & {r["prompt"] for r in ift}
    assert not ranked_prompts & {r["instruction"] for r in eft}
    assert {r["instruction"] for r in eft} <= {r["prompt"] for r in ift}


def test_wrong_answers_belong_to_seed_prompts(ift):
    prompt_ids = {r["id"] for r in ift} | {r["id"] for r in read_jsonl(SEED / "source" / "ranked_answers.jsonl")}
    wrong = read_jsonl(SEED / "source" / "wrong_answers.jsonl", ("id", "response", "correction"))
    assert {w["id"] for w in wrong} <= prompt_ids and len({w["id"] for w in wrong}) == len(wrong)


def test_the_generator_rebuilds_the_shipped_files(tmp_path):
    subprocess.run([sys.executable, str(SEED / "make_seed.py"), "--out-dir", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("eft.jsonl", "eft_contrast.jsonl", "ranked.trees.jsonl"):
        assert filecmp.cmp(tmp_path / name, SEED / name, shallow=False), name
