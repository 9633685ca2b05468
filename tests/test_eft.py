"""judge/eft.py: the agreement filter and rebalancing applied to judged replies, and the CLI end to end."""
import json
import subprocess
import sys
from pathlib import Path

from judge.eft import eft_examples

ROOT = Path(__file__).resolve().parents[1]


def judged(score):
    text = "Fine." if score is None else f"Reasons. Score: {score}"
    return {"judgements": [text], "scores": [None if score is None else float(score)]}


def test_only_judgements_that_agree_with_the_ranking_are_kept():
    pool = [{"id": "a", "prompt": "qa", "replies": [{"id": "1", "text": "best", "rank": 0},
                                                     {"id": "2", "text": "worse", "rank": 1}]},
            {"id": "b", "prompt": "qb", "replies": [{"id": "1", "text": "best", "rank": 0},
                                                     {"id": "2", "text": "worse", "rank": 1}]},
            {"id": "c", "prompt": "qc", "replies": [{"id": "1", "text": "x", "rank": 0},
                                                     {"id": "2", "text": "y", "rank": 1}]},
            {"id": "d", "prompt": "qd", "replies": [{"id": "1", "text": "x", "rank": 0}]}]
    rows = {("a", "1"): judged(4), ("a", "2"): judged(2),     # agrees
            ("b", "1"): judged(3), ("b", "2"): judged(3),     # a tie where humans saw a difference
            ("c", "1"): judged(5), ("c", "2"): judged(None)}  # a missing score; d was never judged
    kept, counts = eft_examples(pool, rows, seed=0, max_fraction=0.5)
    assert counts == {"prompts": 4, "agree": 1, "disagree": 2, "not judged": 1, "examples": 2,
                      "kept_after_rebalance": 2}
    assert kept == [{"id": "a/1", "instruction": "qa", "response": "best", "judgement": "Reasons. Score: 4"},
                    {"id": "a/2", "instruction": "qa", "response": "worse", "judgement": "Reasons. Score: 2"}]


def test_rebalancing_caps_the_common_score():
    pool = [{"id": f"p{i}", "prompt": f"q{i}", "replies": [{"id": "1", "text": "a", "rank": 0},
                                                            {"id": "2", "text": "b", "rank": 1}]} for i in range(6)]
    rows = {}
    for i in range(6):  # every prompt: 4 vs (1, 2 or 3)
        rows[(f"p{i}", "1")], rows[(f"p{i}", "2")] = judged(4), judged(1 + i % 3)
    kept, counts = eft_examples(pool, rows, seed=0, max_fraction=0.3)
    scores = [k["judgement"][-1] for k in kept]
    assert counts["examples"] == 12 and len(kept) == counts["kept_after_rebalance"] == 8  # score 4 capped at 2
    assert max(scores.count(s) for s in set(scores)) <= 0.3 * len(kept)


def test_cli_end_to_end_on_the_tiny_model(tmp_path, tiny_checkpoint):
    pool = [{"id": f"p{i}", "prompt": f"question {i}", "replies": [{"id": "r1", "text": "good", "rank": 0},
                                                                    {"id": "r2", "text": "bad", "rank": 1}]}
            for i in range(2)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pool))
    proc = subprocess.run([sys.executable, str(ROOT / "judge/eft.py"), "--model", str(tiny_checkpoint),
                           "--pool", str(tmp_path / "pool.jsonl"), "--out", str(tmp_path / "eft.jsonl"),
                           "--max-new-tokens", "8"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    judgements = (tmp_path / "eft.judgements.jsonl").read_text().splitlines()
    assert len(judgements) == 4 and (tmp_path / "eft.jsonl").is_file()
    assert "'prompts': 2" in proc.stderr
