"""Preference losses: a registry of plain PyTorch functions on per-sequence log-probs.

Every loss sees, for a batch of B pairs, four (B,) fp32 tensors: the policy's log-probs of the chosen and of
the rejected response, and the reference model's log-probs of the same two, plus beta and the loss's own
options (its keyword arguments, set in the DPO config's `loss_options`). It returns the (B,) per-pair losses;
autograd differentiates it. `average` says whether a sequence's log-prob is the mean of its tokens'
log-probs instead of their sum (IPO's regulariser is scaled for per-token log-likelihoods).

Adding a loss is one function and its decorator:

    @register("my_loss")
    def my_loss(chosen, rejected, ref_chosen, ref_rejected, beta, margin=0.5):
        return torch.relu(margin - beta * ((chosen - rejected) - (ref_chosen - ref_rejected)))

after which `--set loss_type=my_loss loss_options='{margin: 1.0}'` trains with it (train/config.py takes its
choices from LOSSES, and checks the options against the function's keyword arguments).
"""
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from kernels.backend import at_least_fp32
from model.settings import checked

METRICS = ("policy_chosen_logps", "policy_rejected_logps", "rewards_chosen", "rewards_rejected",
           "margins", "accuracy")


@dataclass(frozen=True)
class PreferenceLoss:
    fn: Callable[..., torch.Tensor]  # (chosen, rejected, ref_chosen, ref_rejected, beta, **options) -> (B,)
    average: bool                    # sequence log-probs as the mean of their tokens' (else the sum)
    check: Callable[[dict], str] | None = None  # options -> what is wrong with them ("" if nothing)

    @property
    def options(self) -> dict:
        """The loss's options and their defaults: the keyword arguments after beta."""
        params = list(inspect.signature(self.fn).parameters.values())[5:]
        return {p.name: p.default for p in params}


LOSSES: dict[str, PreferenceLoss] = {}


def register(name: str, average: bool = False, check: Callable[[dict], str] | None = None):
    """Add the decorated function to LOSSES under `name`; `check(options)` names a bad option value."""
    def add(fn):
        if name in LOSSES:
            raise ValueError(f"a preference loss named {name!r} is already registered")
        LOSSES[name] = PreferenceLoss(fn, average, check)
        return fn
    return add


def _smoothing(options: dict) -> str:
    eps = options["label_smoothing"]
    return "" if isinstance(eps, (int, float)) and 0 <= eps < 0.5 else f"label_smoothing must be in [0, 0.5), got {eps!r}"


def log_ratio(chosen, rejected, ref_chosen, ref_rejected):
    """z: how much more the policy prefers the chosen answer than the reference does."""
    return (chosen - rejected) - (ref_chosen - ref_rejected)


@register("sigmoid", check=_smoothing)
def sigmoid(chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0):
    """DPO (Rafailov et al. 2023, eq. 7), the paper's loss. label_smoothing eps > 0 is conservative DPO
    (cDPO, Mitchell 2023): the label is taken to be flipped with probability eps."""
    z = beta * log_ratio(chosen, rejected, ref_chosen, ref_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


@register("ipo", average=True)
def ipo(chosen, rejected, ref_chosen, ref_rejected, beta):
    """IPO (Azar et al. 2023, eq. 17 with tau = beta, as TRL writes it), on mean token log-probs."""
    return (log_ratio(chosen, rejected, ref_chosen, ref_rejected) - 1 / (2 * beta)) ** 2


@register("robust", check=_smoothing)
def robust(chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.1):
    """Robust DPO (Chowdhury et al. 2024, eq. 7): an unbiased loss under labels flipped with probability
    eps = label_smoothing; unlike cDPO it pushes the flipped term the other way, scaled by 1 / (1 - 2 eps).
    The default eps 0.1 is ours (TRL's default 0 makes it plain DPO)."""
    z = beta * log_ratio(chosen, rejected, ref_chosen, ref_rejected)
    return (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)


@register("hinge")
def hinge(chosen, rejected, ref_chosen, ref_rejected, beta):
    """The hinge loss of SLiC-HF (Zhao et al. 2023), on the reference-normalised log-ratio as TRL writes it:
    relu(1 - beta * z), zero once the policy's preference exceeds the reference's by 1 / beta."""
    return torch.relu(1 - beta * log_ratio(chosen, rejected, ref_chosen, ref_rejected))


def check_options(loss_type: str, options: dict) -> dict:
    """The options of `loss_type` with `options` applied; a name the loss does not take is an error."""
    if loss_type not in LOSSES:
        raise ValueError(f"loss_type must be one of {tuple(LOSSES)}, got {loss_type!r}")
    known = LOSSES[loss_type].options
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "no options"
        raise ValueError(f"loss_options: {loss_type} takes {takes}; got {', '.join(unknown)}")
    # each option has its default's type (an int is a float too)
    options = {**known, **{k: checked(type(known[k]), v, f"loss_options.{k}") for k, v in options.items()}}
    problem = LOSSES[loss_type].check(options) if LOSSES[loss_type].check else ""
    if problem:
        raise ValueError(f"loss_options of {loss_type}: {problem}")
    return options


def preference_loss(policy: torch.Tensor, ref: torch.Tensor | None, beta: float, loss_type: str = "sigmoid",
                    options: dict | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean loss over B pairs and the per-pair metrics in METRICS (no gradient), in fp32 (or float64).

    policy (2B,): the policy's sequence log-probs, the B chosen then the B rejected (reduced as
    LOSSES[loss_type].average says); ref (2B,) the reference's, reduced the same way, or None for
    reference-free (the reference log-probs taken as 0)."""
    if policy.dim() != 1 or policy.shape[0] < 2 or policy.shape[0] % 2:
        raise ValueError(f"policy log-probs must be (2B,) with B >= 1, got {tuple(policy.shape)}")
    if ref is not None and ref.shape != policy.shape:
        raise ValueError(f"reference log-probs must have the policy's shape {tuple(policy.shape)}, got {tuple(ref.shape)}")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    options = check_options(loss_type, options or {})
    policy = at_least_fp32(policy)
    ref = torch.zeros_like(policy) if ref is None else ref.to(policy.dtype)
    B = policy.shape[0] // 2
    chosen, rejected, ref_chosen, ref_rejected = policy[:B], policy[B:], ref[:B], ref[B:]
    losses = LOSSES[loss_type].fn(chosen, rejected, ref_chosen, ref_rejected, beta, **options)
    with torch.no_grad():
        rewards_chosen, rewards_rejected = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
        metrics = (chosen, rejected, rewards_chosen, rewards_rejected, rewards_chosen - rewards_rejected,
                   (rewards_chosen > rewards_rejected).float())
    return losses.mean(), {name: m.detach() for name, m in zip(METRICS, metrics)}
