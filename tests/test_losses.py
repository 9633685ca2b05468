"""train/losses.py: every registered preference loss against its paper's formula written out here on
Python floats, its autograd gradient against finite differences, the options checks, and the recipe for
adding a loss (register it in a test, train two DPO steps with it)."""
import json
import math

import re

import pytest
import torch
import torch.nn.functional as F

import model
from train import dpo
from train.data import read_pairs, step_batches
from train.config import DPOConfig, load_config
from train.losses import LOSSES, METRICS, preference_loss, register


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def by_hand(loss_type: str, z: float, beta: float, eps: float) -> float:
    """One pair's loss from z = (pi_c - pi_r) - (ref_c - ref_r), as the papers write it."""
    if loss_type == "sigmoid":   # DPO (Rafailov et al. 2023, eq. 7); eps > 0: cDPO
        return -(1 - eps) * logsigmoid(beta * z) - eps * logsigmoid(-beta * z)
    if loss_type == "ipo":       # Azar et al. 2023, eq. 17, tau = beta
        return (z - 1 / (2 * beta)) ** 2
    if loss_type == "robust":    # Chowdhury et al. 2024, eq. 7
        return ((1 - eps) * -logsigmoid(beta * z) - eps * -logsigmoid(-beta * z)) / (1 - 2 * eps)
    if loss_type == "hinge":     # SLiC-HF (Zhao et al. 2023) on the normalised log-ratio
        return max(0.0, 1 - beta * z)
    raise AssertionError(loss_type)


CASES = [("sigmoid", {}), ("sigmoid", {"label_smoothing": 0.2}), ("ipo", {}), ("robust", {}),
         ("robust", {"label_smoothing": 0.3}), ("hinge", {})]


def test_every_shipped_loss_is_tested():
    assert {name for name, _ in CASES} == {"sigmoid", "ipo", "robust", "hinge"} <= set(LOSSES)


@pytest.mark.parametrize("loss_type,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
@pytest.mark.parametrize("with_ref", [True, False])
def test_loss_and_metrics_against_the_formula(loss_type, options, with_ref):
    g = torch.Generator().manual_seed(1)
    B, beta = 5, 0.3
    policy = -20 * torch.rand(2 * B, generator=g, dtype=torch.float64)
    ref = -20 * torch.rand(2 * B, generator=g, dtype=torch.float64) if with_ref else None
    loss, metrics = preference_loss(policy, ref, beta, loss_type, options)
    r = [0.0] * (2 * B) if ref is None else ref.tolist()
    p = policy.tolist()
    eps = {**LOSSES[loss_type].options, **options}.get("label_smoothing", 0.0)
    want = sum(by_hand(loss_type, (p[i] - p[B + i]) - (r[i] - r[B + i]), beta, eps) for i in range(B)) / B
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert set(metrics) == set(METRICS)
    for i in range(B):
        rc, rr = beta * (p[i] - r[i]), beta * (p[B + i] - r[B + i])
        got = {k: v[i].item() for k, v in metrics.items()}
        assert got["policy_chosen_logps"] == pytest.approx(p[i]) and got["policy_rejected_logps"] == pytest.approx(p[B + i])
        assert got["rewards_chosen"] == pytest.approx(rc) and got["rewards_rejected"] == pytest.approx(rr)
        assert got["margins"] == pytest.approx(rc - rr) and got["accuracy"] == float(rc > rr)


@pytest.mark.parametrize("loss_type,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_autograd_gradient_matches_finite_differences(loss_type, options):
    g = torch.Generator().manual_seed(2)
    policy = (-10 * torch.rand(6, generator=g, dtype=torch.float64)).requires_grad_()
    ref = -10 * torch.rand(6, generator=g, dtype=torch.float64)
    if loss_type == "hinge":  # keep every pair off the hinge's kink
        policy = torch.tensor([-1.0, -2.0, -8.0, -30.0, -1.0, -2.0], dtype=torch.float64, requires_grad=True)
        ref = torch.tensor([-5.0, -5.0, -5.0, -5.0, -5.0, -5.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: preference_loss(x, ref, 0.3, loss_type, options)[0], (policy,))


def test_metrics_carry_no_gradient_and_bad_inputs_are_named():
    policy = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    _, metrics = preference_loss(policy, None, 0.1)
    assert not any(m.requires_grad for m in metrics.values())
    with pytest.raises(ValueError, match=r"\(2B,\)"):
        preference_loss(torch.zeros(3), None, 0.1)
    with pytest.raises(ValueError, match="shape"):
        preference_loss(torch.zeros(4), torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match="beta"):
        preference_loss(torch.zeros(4), None, 0.0)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        preference_loss(torch.zeros(4), None, 0.1, "kto")
    with pytest.raises(ValueError, match="hinge takes no options; got label_smoothing"):
        preference_loss(torch.zeros(4), None, 0.1, "hinge", {"label_smoothing": 0.1})
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\)"):
        preference_loss(torch.zeros(4), None, 0.1, "robust", {"label_smoothing": 0.5})
    # an option has its default's type: text is refused, an int is a number
    with pytest.raises(ValueError, match=r"loss_options.label_smoothing: expected a finite number, got '1e-1'"):
        preference_loss(torch.zeros(4), None, 0.1, "sigmoid", {"label_smoothing": "1e-1"})
    as_int, _ = preference_loss(torch.tensor([-1.0, -3.0]), None, 0.1, "sigmoid", {"label_smoothing": 0})
    as_float, _ = preference_loss(torch.tensor([-1.0, -3.0]), None, 0.1, "sigmoid", {"label_smoothing": 0.0})
    assert as_int == as_float


def test_config_choices_and_options_come_from_the_registry(tmp_path):
    cfg = load_config(DPOConfig, "configs/dpo.yaml", ["loss_type=sigmoid", "loss_options={label_smoothing: 0.1}"])
    assert (cfg.loss_type, cfg.loss_options) == ("sigmoid", {"label_smoothing": 0.1})
    for override, message in (("loss_type=nope", "loss_type must be one of ('sigmoid', 'ipo', 'robust', 'hinge'"),
                              ("loss_options={smoothing: 0.1}", "sigmoid takes label_smoothing; got smoothing")):
        with pytest.raises(Exception, match=re.escape(message)):
            load_config(DPOConfig, "configs/dpo.yaml", [override])


def mean_logp(net, seq) -> float:
    """Mean log p(response token) from the full logits, the plain way."""
    tokens = torch.tensor(seq.tokens)
    with torch.no_grad():
        logp = F.log_softmax(net(tokens[None, :-1])[0].double(), dim=-1)
    return logp.gather(1, tokens[1:, None])[seq.n_prompt - 1:, 0].mean().item()


def test_a_loss_registered_here_trains(tmp_path, tiny_checkpoint, capsys):
    """The README's recipe: one function and its decorator, then `loss_type=` names it. Two DPO steps with a
    squared hinge on length-averaged log-probs; each step's logged loss against the same loss written out on
    log-probs from the full logits of the step's policy (the input model, then the step-1 snapshot)."""
    @register("squared_hinge", average=True)
    def squared_hinge(chosen, rejected, ref_chosen, ref_rejected, beta, margin=1.0):
        return torch.relu(margin - beta * ((chosen - rejected) - (ref_chosen - ref_rejected))) ** 2

    try:
        words = "the model judges its own answers and learns from pairs of chosen rejected responses".split()
        rows = [{"id": i, "prompt": " ".join(words[i:i + 3]), "chosen": " ".join(words[i + 3:i + 6]),
                 "rejected": " ".join(words[i + 6:i + 8])} for i in range(6)]
        pairs_file = tmp_path / "pairs.jsonl"
        pairs_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        dpo.main(["--config", "configs/dpo-tiny.yaml", "--model", str(tiny_checkpoint), "--pairs", str(pairs_file),
                  "--out", str(tmp_path / "m2"), "--set", "loss_type=squared_hinge", "loss_options={margin: 2.0}",
                  "max_steps=2", "batch_size=2", "micro_batch_size=2", "dropout=0", "lr=1e-2", "save_every=1"])
    finally:
        del LOSSES["squared_hinge"]
    assert "2 steps, last loss" in capsys.readouterr().err
    logged = [json.loads(line) for line in (tmp_path / "m2.train" / "metrics.jsonl").read_text().splitlines()]
    ref, tok = model.load(tiny_checkpoint)
    pairs, _ = read_pairs(pairs_file, tok, 256)
    policies = [ref, model.load(tmp_path / "m2.train" / "snapshots" / "step-000001")[0]]
    for step, (batch, policy) in enumerate(zip(step_batches(len(pairs), 2, 2, seed=0), policies)):
        losses = []
        for i in batch:
            (pc, pr), (rc, rr) = [[mean_logp(net, s) for s in pairs[i]] for net in (policy, ref)]
            losses.append(max(0.0, 2.0 - 0.1 * ((pc - pr) - (rc - rr))) ** 2)
        assert logged[step]["loss"] == pytest.approx(sum(losses) / 2, rel=1e-4)
    assert logged[0]["loss"] == pytest.approx(4.0)  # the policy is the reference at step 1: z = 0
    assert logged[1]["loss"] != pytest.approx(4.0)  # step 1 moved the policy
