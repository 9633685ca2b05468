"""judge/expected.py: the expected score read against hand-made distributions (a stub model whose next-token
distribution we write, and the bigram judge of conftest's score_writer), and --score expected end to end."""
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from judge.expected import expected_score, score_distributions, score_prefix

ROOT = Path(__file__).resolve().parents[1]


class CharTokenizer:
    """One token a character (its code point), except that `split` maps a character to two tokens."""
    def __init__(self, split=None):
        self.split = split or {}

    def encode(self, text):
        return [t for c in text for t in self.split.get(c, [ord(c)])]


class FixedNextToken(torch.nn.Module):
    """A 'model' whose next-token distribution is `probs` at every position: hidden = log probs, head = identity."""
    def __init__(self, probs: torch.Tensor, max_seq_len=10_000):
        super().__init__()
        self.args = SimpleNamespace(max_seq_len=max_seq_len)
        self.logp = probs.log()
        self.output_weight = torch.eye(len(probs))

    def forward(self, tokens, return_hidden=False):
        assert return_hidden
        return self.logp.expand(*tokens.shape, -1)


def distribution(values: dict[int, float], vocab=256) -> torch.Tensor:
    """`values` at their token ids, the rest of the mass spread evenly over the other ids."""
    probs = torch.full((vocab,), (1 - sum(values.values())) / (vocab - len(values)), dtype=torch.float64)
    for token, p in values.items():
        probs[token] = p
    return probs


def test_score_prefix_cuts_at_the_final_verdict_or_asks_for_one():
    assert score_prefix("Fine, but long.\nScore: 4") == "Fine, but long.\nScore:"
    assert score_prefix("Score: 2 at first. On reflection, **Score**: 3") == "Score: 2 at first. On reflection, **Score**:"
    assert score_prefix("It is relevant and correct.  \n") == "It is relevant and correct.\nScore:"
    assert score_prefix("The underscore: 4 is not a verdict") == "The underscore: 4 is not a verdict\nScore:"


def test_expected_score_of_a_hand_made_distribution():
    assert expected_score([0.05, 0.05, 0.1, 0.2, 0.4, 0.2]) == pytest.approx(3.45)
    assert expected_score([0, 0, 0, 0, 0, 2.0]) == 5.0           # renormalised
    assert expected_score([1, 1, 1, 1, 1, 1]) == pytest.approx(2.5)


def test_distribution_read_at_the_score_token():
    digits = {ord(str(k)): p for k, p in enumerate([0.025, 0.025, 0.05, 0.1, 0.2, 0.1])}   # half the mass
    net = FixedNextToken(distribution(digits))
    [read] = score_distributions(net, CharTokenizer(), [1, 2, 3], ["Relevant and complete.\nScore: 5"])
    assert read["probs"] == pytest.approx([0.05, 0.05, 0.1, 0.2, 0.4, 0.2])
    assert read["mass"] == pytest.approx(0.5) and read["expected"] == pytest.approx(3.45)
    # one forward pass over prompt + "...Score: " (the space is shared by every option)
    assert read["tokens"] == 3 + len("Relevant and complete.\nScore: ")


def test_a_score_of_several_tokens_is_read_as_their_product():
    # "5" is two tokens, 200 then 201: p(" 5") = p(200) p(201) = 0.5 * 0.2; the others as written
    values = {ord(str(k)): p for k, p in enumerate([0.01, 0.02, 0.03, 0.04, 0.1])}
    values.update({200: 0.5, 201: 0.2})
    net = FixedNextToken(distribution(values))
    [read] = score_distributions(net, CharTokenizer(split={"5": [200, 201]}), [7], ["ok\nScore: 1"])
    raw = [0.01, 0.02, 0.03, 0.04, 0.1, 0.5 * 0.2]
    assert read["probs"] == pytest.approx([p / sum(raw) for p in raw])
    assert read["mass"] == pytest.approx(sum(raw))
    assert read["expected"] == pytest.approx(sum(k * p for k, p in enumerate(raw)) / sum(raw))


def test_a_judgement_past_the_context_is_not_read():
    net = FixedNextToken(distribution({ord("3"): 0.5}), max_seq_len=20)
    short, long = score_distributions(net, CharTokenizer(), [0], ["ok. Score: 3", "x" * 30])
    raw = [0.5 / 255] * 6
    raw[3] = 0.5
    assert short["expected"] == pytest.approx(expected_score(raw)) and long is None


def test_the_bigram_judge_gives_each_of_its_digits_a_fifth(score_writer):
    """conftest's score_writer: after ":" comes "▁", then 1-5 equally likely (logits 25 against 0)."""
    from model import load
    net, tok = load(score_writer)
    prompt = tok.encode_chat([{"role": "user", "content": "judge this"}])
    reads = score_distributions(net, tok, prompt, ["score: 2", "no verdict here"])
    for read in reads:
        assert read["probs"][0] == pytest.approx(0, abs=1e-6)
        assert read["probs"][1:] == pytest.approx([0.2] * 5, abs=1e-6)
        assert read["expected"] == pytest.approx(3.0, abs=1e-5) and read["mass"] == pytest.approx(1, abs=1e-4)


def test_score_cli_expected_mode_on_the_bigram_judge(tmp_path, score_writer):
    cands = [{"id": f"q{i}", "sample": 0, "prompt": f"question {i}", "response": f"answer {i}"} for i in range(3)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cands))
    cmd = [sys.executable, str(ROOT / "judge/score.py"), "--model", str(score_writer), "--candidates",
           str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "j.jsonl"), "--samples", "2", "--max-new-tokens", "8"]
    proc = subprocess.run(cmd + ["--score", "expected"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    for r in rows:
        assert all(s in (1, 2, 3, 4, 5) for s in r["scores"])             # the digits it wrote, parsed
        assert r["expected_scores"] == pytest.approx([3.0, 3.0], abs=1e-5)  # what it thought of them
        assert r["score"] == pytest.approx(3.0, abs=1e-5) and math.isclose(sum(r["score_probs"][0]), 1)
    # the paper's mode over the same file: the rows made in the other mode are discarded, not reused
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert all("expected_scores" not in r and r["score"] == sum(r["scores"]) / 2 for r in rows)
