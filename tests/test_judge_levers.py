"""bench/judge_levers.py: its readings of judgements files against hand-computed accuracies and agreements."""
import json
import sys
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import judge_levers  # noqa: E402


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_accuracy_by_reading_and_kind_of_worse_reply(tmp_path):
    kinds = ["mismatched", "reference", "truncated"]
    ranked = write_jsonl(tmp_path / "ranked.jsonl", [
        {"id": f"p{j}", "prompt": "q", "replies": [{"text": k, "rank": int(k != "reference"), "kind": k}
                                                    for k in kinds]} for j in range(2)])
    # parsed: the reference beats the mismatched reply and ties the truncated one; expected: the reference loses
    # to the mismatched reply and beats the truncated one, so each reading is right on one kind of pair only
    parsed = {"mismatched": 2, "reference": 4, "truncated": 4}
    expected = {"mismatched": 3.5, "reference": 3.0, "truncated": 1.2}
    judged = write_jsonl(tmp_path / "judgements.jsonl", [
        {"id": f"p{j}", "sample": i, "scores": [parsed[k]], "expected_scores": [expected[k]]}
        for j in range(2) for i, k in enumerate(kinds)])
    rows = {tuple(cell.strip() for cell in line.split("|")[2:4]): line.split("|")[5].strip()
            for line in judge_levers.table(ranked, [judged])[2:]}
    assert rows[("parsed, mean of 1", "all")].startswith("50.0%")
    assert rows[("parsed, mean of 1", "mismatched")].startswith("100.0%")
    assert rows[("parsed, mean of 1", "truncated")].startswith("0.0%")
    assert rows[("expected, mean of 1", "mismatched")].startswith("0.0%")
    assert rows[("expected, mean of 1", "truncated")].startswith("100.0%")


def test_a_set_without_kinds_gets_one_row_a_reading(tmp_path):
    ranked = write_jsonl(tmp_path / "ranked.jsonl", [{"id": "p", "prompt": "q", "replies": ["a", "b"],
                                                      "ranks": [0, 1]}])
    judged = write_jsonl(tmp_path / "judgements.jsonl", [
        {"id": "p", "sample": 0, "scores": [5, 1], "expected_scores": [4.0, 2.0]},
        {"id": "p", "sample": 1, "scores": [1, 1], "expected_scores": [1.0, 3.0]}])
    lines = judge_levers.table(ranked, [judged])[2:]
    # mean of 1: parsed 5 > 1, expected 4 > 1; mean of 2: parsed 3 > 1, expected 3.0 > 2.0
    assert [line.split("|")[2].strip() for line in lines] == [
        "parsed, mean of 1", "expected, mean of 1", "parsed, mean of 2", "expected, mean of 2"]
    assert all(line.split("|")[5].strip().startswith("100.0%") for line in lines)


def test_agreement_of_expected_with_the_three_sample_mean(tmp_path):
    # one prompt, three candidates: parsed means 4, 2, 3; first expected scores 3.9, 2.5, 1.0. Of the three pairs
    # (4 vs 2, 4 vs 3, 2 vs 3) the expected scores order the first two as the mean does, not the third
    judged = write_jsonl(tmp_path / "judged.jsonl", [
        {"id": "p", "score": 4.0, "scores": [4, 4, 4], "expected_scores": [3.9, 4.0, 4.1]},
        {"id": "p", "score": 2.0, "scores": [2, 2, 2], "expected_scores": [2.5, 2.0, 2.0]},
        {"id": "p", "score": 3.0, "scores": [3, 3, 3], "expected_scores": [1.0, 3.0, 3.0]}])
    lines = judge_levers.agreement(judged)
    assert "orders 2 of 3 candidate pairs" in lines[1]
    r = numpy.corrcoef([4, 2, 3], [3.9, 2.5, 1.0])[0, 1]   # a second implementation: 0.483
    assert f"Pearson correlation with the mean: {r:.3f}" == lines[2]
    assert "paper (mean of 3 parsed) 1, expected, 1 judgement 1" in lines[3]
