"""eval/export.py: AlpacaEval and MT-Bench files, written from the tiny model for small examples of each input
format: the output has the evaluators' fields, order and counts, and MT-Bench's second turn follows the
model's own first answer."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.export import read_alpaca_eval, read_mt_bench
from model.errors import FormatError

ROOT = Path(__file__).resolve().parents[1]


def export(*args):
    proc = subprocess.run([sys.executable, str(ROOT / "eval/export.py"), *map(str, args)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_alpacaeval_outputs(tmp_path, tiny_checkpoint):
    eval_set = [{"instruction": "the model judges its own answers", "output": "reference answer",
                 "generator": "gpt4_1106_preview", "dataset": "helpful_base"},
                {"instruction": "what are chosen and rejected responses", "output": "ref", "generator": "gpt4",
                 "dataset": "oasst"},
                {"instruction": "the model judges its own answers", "output": "ref", "generator": "gpt4",
                 "dataset": "vicuna"}]                      # the same instruction twice: both kept, in order
    (tmp_path / "alpaca_eval.json").write_text(json.dumps(eval_set))
    out = tmp_path / "exports" / "outputs.json"
    proc = export("alpacaeval", "--model", tiny_checkpoint, "--eval-set", tmp_path / "alpaca_eval.json",
                  "--out", out, "--max-new-tokens", 6, "--generator", "tiny-M1")
    outputs = json.loads(out.read_text())
    assert [sorted(o) for o in outputs] == [["dataset", "generator", "instruction", "output"]] * 3
    assert [o["instruction"] for o in outputs] == [e["instruction"] for e in eval_set]
    assert [o["dataset"] for o in outputs] == ["helpful_base", "oasst", "vicuna"]
    assert {o["generator"] for o in outputs} == {"tiny-M1"}                    # the model's, not the reference's
    answers = [json.loads(line) for line in (tmp_path / "exports" / "outputs.work" / "answers.jsonl").open()]
    assert [a["response"] for a in answers] == [o["output"] for o in outputs]
    assert outputs[0]["output"] == outputs[2]["output"]                        # greedy by default
    assert "3 instructions answered as 'tiny-M1'" in proc.stderr


def test_mt_bench_answers_condition_the_second_turn_on_the_first_answer(tmp_path, tiny_checkpoint):
    questions = [{"question_id": 81, "category": "writing", "turns": ["write about the model", "now shorter"]},
                 {"question_id": 82, "category": "math", "turns": ["score the points", "and the question"]}]
    (tmp_path / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = tmp_path / "model_answer" / "tiny-m1.jsonl"
    export("mt-bench", "--model", tiny_checkpoint, "--questions", tmp_path / "question.jsonl", "--out", out,
           "--max-new-tokens", 6, "--temperature", 0.7, "--top-p", 0.9)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [sorted(x) for x in lines] == [["answer_id", "choices", "model_id", "question_id", "tstamp"]] * 2
    assert [x["question_id"] for x in lines] == [81, 82] and {x["model_id"] for x in lines} == {"tiny-m1"}
    assert len({x["answer_id"] for x in lines}) == 2
    assert all(len(x["choices"]) == 1 and x["choices"][0]["index"] == 0 and len(x["choices"][0]["turns"]) == 2
               for x in lines)
    turn2 = [json.loads(line) for line in (tmp_path / "model_answer" / "tiny-m1.work" / "turn2.jsonl").open()]
    for q, x, t2 in zip(questions, lines, turn2):
        first, second = x["choices"][0]["turns"]
        assert t2["messages"] == [{"role": "user", "content": q["turns"][0]},
                                  {"role": "assistant", "content": first},
                                  {"role": "user", "content": q["turns"][1]}]
        assert t2["response"] == second
    assert not list((tmp_path / "model_answer").glob("*.jsonl*part*"))
    assert sorted(p.name for p in (tmp_path / "model_answer").glob("*.jsonl")) == ["tiny-m1.jsonl"]


def test_bad_inputs_are_named(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"instruction": "x"}))
    with pytest.raises(FormatError, match="expected a JSON list"):
        read_alpaca_eval(tmp_path / "a.json")
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "x"}, {"output": "y"}]))
    with pytest.raises(FormatError, match="item 1 has no string \"instruction\""):
        read_alpaca_eval(tmp_path / "a.json")
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "turns": ["a"]}\n{"question_id": 1, "turns": ["b"]}\n')
    with pytest.raises(FormatError, match="q.jsonl:2: question_id 1 already on line 1"):
        read_mt_bench(tmp_path / "q.jsonl")
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "turns": []}\n')
    with pytest.raises(FormatError, match="q.jsonl:1: 'turns' must be a non-empty list"):
        read_mt_bench(tmp_path / "q.jsonl")
