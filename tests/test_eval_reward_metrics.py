"""eval/reward_metrics.py: reading ranked sets in each accepted format, metrics from judged rows, and the CLI end to
end on the tiny model (its judgements are noise: the counts must add up, and a rerun resumes)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.reward_metrics import metrics_from_judgements, read_ranked, table
from model.errors import FormatError

ROOT = Path(__file__).resolve().parents[1]


def write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def oa_tree(pid, prompt, replies):
    """An Open Assistant tree with the export's fields: replies as (text, rank)."""
    def message(mid, text, role, rank, children=()):
        return {"message_id": mid, "parent_id": None, "text": text, "role": role, "lang": "en", "review_count": 3,
                "review_result": True, "deleted": False, "rank": rank, "synthetic": False, "replies": list(children)}
    return {"message_tree_id": pid, "tree_state": "ready_for_export", "prompt": message(
        pid, prompt, "prompter", None, [message(f"{pid}-r{i}", t, "assistant", r) for i, (t, r) in enumerate(replies)])}


def test_reads_both_ranked_jsonl_forms(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", [
        {"id": "a", "prompt": "p", "replies": ["x", "y", "z"], "ranks": [1, 0, 2]},
        {"id": 7, "prompt": "q", "replies": [{"id": "r1", "text": "u", "rank": 0},
                                             {"id": "r2", "text": "v", "rank": 0}]},
    ])
    rows, counts = read_ranked(path)
    assert rows == [{"id": "a", "prompt": "p", "replies": ["x", "y", "z"], "ranks": [1, 0, 2]},
                    {"id": 7, "prompt": "q", "replies": ["u", "v"], "ranks": [0, 0]}]
    assert not counts


@pytest.mark.parametrize("row, message", [
    ({"id": "a", "prompt": "p", "replies": ["x"], "ranks": [0]}, "at least two replies"),
    ({"id": "a", "prompt": "p", "replies": ["x", "y"]}, "need a 'ranks' list"),
    ({"id": "a", "prompt": "p", "replies": ["x", "y"], "ranks": [0]}, "one rank per reply"),
    ({"id": "a", "prompt": "p", "replies": ["x", "y"], "ranks": [0, -1]}, "non-negative integers"),
    ({"id": "a", "prompt": "p", "replies": [{"text": "x"}, {"text": "y", "rank": 0}]}, "'text' and 'rank'"),
    ({"id": ["a"], "prompt": "p", "replies": ["x", "y"], "ranks": [0, 1]}, "string or an integer"),
    ({"id": "a", "replies": ["x", "y"], "ranks": [0, 1]}, "missing field 'prompt'"),
])
def test_bad_ranked_lines_are_named(tmp_path, row, message):
    path = write_lines(tmp_path / "r.jsonl", [{"id": "ok", "prompt": "p", "replies": ["x", "y"], "ranks": [0, 1]}, row])
    with pytest.raises(FormatError, match=f"r.jsonl:2: .*{message}"):
        read_ranked(path)


def test_reads_open_assistant_trees_and_the_seed_set(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [oa_tree("t1", "Name a prime.", [("9", 1), ("2", 0), ("7", 2)]),
                                               oa_tree("t2", "Hi?", [("Hello.", 0)])])   # one reply: not ranked
    rows, counts = read_ranked(path)
    assert rows == [{"id": "t1", "prompt": "Name a prime.", "replies": ["2", "9", "7"], "ranks": [0, 1, 2]}]
    assert counts["prompt ranked (2 or more ranked replies)"] == 1
    seed, _ = read_ranked(ROOT / "data/seed/ranked.trees.jsonl")
    assert seed and all(len(r["replies"]) >= 2 and len(r["ranks"]) == len(r["replies"]) for r in seed)
    assert all(min(r["ranks"]) == 0 for r in seed)


def test_metrics_from_judged_rows():
    prompts = [{"id": "a", "replies": ["x", "y"], "ranks": [0, 1]}, {"id": "b", "replies": ["u", "v"], "ranks": [1, 0]}]
    judged = [{"id": "a", "sample": 1, "score": 2.0, "judgements": ["Score: 2", "?"], "n_parsed": 1},
              {"id": "a", "sample": 0, "score": 4.5, "judgements": ["Score: 4", "Score: 5"], "n_parsed": 2},
              {"id": "b", "sample": 0, "score": None, "judgements": [], "n_parsed": 0},
              {"id": "b", "sample": 1, "score": 3.0, "judgements": ["Score: 3", "Score: 3"], "n_parsed": 2}]
    m = metrics_from_judgements(prompts, judged)
    assert m["pairwise_accuracy"] == 0.5 and m["pairwise_missing_rate"] == 0.5 and m["exact_match"] == 0.5
    assert (m["n_judgements"], m["n_parsed"], m["n_not_judged"], m["parse_rate"]) == (6, 5, 1, 5 / 6)
    assert "this model" in table(m) and "81.7%" in table(m)      # the paper's M3 pairwise accuracy beside ours


def test_cli_end_to_end_on_the_tiny_model(tmp_path, tiny_checkpoint):
    ranked = write_lines(tmp_path / "t.jsonl", [
        oa_tree("t1", "the model judges", [("its own answers", 1), ("and learns", 0), ("from pairs", 2)]),
        oa_tree("t2", "chosen or rejected", [("chosen", 0), ("rejected", 1)])])
    cmd = [sys.executable, str(ROOT / "eval/reward_metrics.py"), "--model", str(tiny_checkpoint), "--ranked",
           str(ranked), "--samples", "2", "--max-new-tokens", "8", "--out", str(tmp_path / "rm.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "rm.json").read_text())
    assert (m["n_prompts"], m["n_replies"], m["n_pairs"], m["n_judgements"]) == (2, 5, 4, 10)
    judged = [json.loads(line) for line in (tmp_path / "rm.work" / "judgements.jsonl").read_text().splitlines()]
    assert [(j["id"], j["sample"], j["rank"]) for j in judged] == [("t1", 0, 0), ("t1", 1, 1), ("t1", 2, 2),
                                                                   ("t2", 0, 0), ("t2", 1, 1)]
    assert m["n_parsed"] == sum(j["n_parsed"] for j in judged) and m["parse_rate"] == m["n_parsed"] / 10
    assert "Kendall tau" in proc.stderr and "judgements" in proc.stderr
    # a rerun finds every judgement done and writes the same metrics
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0 and "this run sampled 0" in proc.stderr
    assert json.loads((tmp_path / "rm.json").read_text()) == m


@pytest.mark.slow
def test_cli_under_torchrun_equals_one_process(tmp_path, tiny_checkpoint):
    ranked = write_lines(tmp_path / "r.jsonl", [{"id": f"q{i}", "prompt": f"the model judges {i}",
                                                  "replies": ["its own answers", "pairs", "points"], "ranks": [0, 1, 2]}
                                                 for i in range(3)])
    args = ["--model", str(tiny_checkpoint), "--ranked", str(ranked), "--samples", "2", "--max-new-tokens", "6",
            "--batch-size", "4", "--temperature", "1.0"]
    one = subprocess.run([sys.executable, str(ROOT / "eval/reward_metrics.py"), *args,
                          "--out", str(tmp_path / "one.json")], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "eval/reward_metrics.py"), *args, "--out", str(tmp_path / "two.json")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    judged = [(tmp_path / f"{name}.work" / "judgements.jsonl").read_text() for name in ("one", "two")]
    assert judged[0] == judged[1]
    assert json.loads((tmp_path / "two.json").read_text())["n_judgements"] == 18
