"""The model as a reward model, against human rankings: the paper's Table 4 metrics. Pure functions.

    m = reward_model_metrics(scores=[[4.5, 3.0, None], [5.0, 5.0]], ranks=[[0, 1, 2], [1, 0]])
    m["pairwise_accuracy"], m["five_best"], m["spearman"]

One prompt has two or more human-ranked replies: ranks[p][i] is reply i's human rank (0 = best; equal
ranks are ties) and scores[p][i] the model's score of it (the mean of its parsed judgements), or None
when no judgement of it parsed. Every rate is a fraction in [0, 1], or None when it has no denominator.

- pairwise_accuracy: over all pairs of replies to the same prompt with different human ranks, the
  fraction where the better-ranked reply has the strictly higher score. A tie in the model's scores
  counts as not correct (the model did not order the pair); pairwise_tie_rate is the fraction of
  pairs tied, so counting a tie as half is pairwise_accuracy + pairwise_tie_rate / 2. A pair with a
  missing score is not correct either (pairwise_missing_rate).
- five_best: of the replies the model scores 5 (every parsed judgement said 5; the top of the scale,
  judge/parse.py's MAX_SCORE, under another judge prompt), the fraction that humans ranked best, i.e.
  whose rank is the lowest among that prompt's replies.
- exact_match: the fraction of prompts whose order by the model's scores is the human order, ties
  included: for every pair of replies, the model ties them exactly when humans do and otherwise
  prefers the one humans ranked better. A prompt with a missing score is not a match.
- spearman, kendall_tau: correlations, per prompt, between the scores and the human preference
  (minus the rank, so agreement is positive), averaged over prompts. Spearman uses average ranks for
  ties and Kendall's is tau-b, as scipy.stats.spearmanr and kendalltau compute them. A prompt is
  left out of the average, and counted in n_correlation_excluded, when a score is missing or either
  side is constant (all scores equal, or all ranks equal), where the correlation is undefined.
  The paper does not say how it treats them, so spearman_constant_zero and kendall_tau_constant_zero
  also count the constant-score prompts, each as a correlation of 0 (a judge that gives every reply
  the same score has ordered nothing).

Uncertainty: bootstrap_intervals gives seeded percentile-bootstrap intervals over prompts for any
statistic of a set of prompts; reward_model_intervals applies it to the metrics above (one 95%
interval per metric, from N_RESAMPLES resamples of the prompts with replacement).
"""
import math
import random
from collections.abc import Callable, Sequence

from judge import parse

Scores = Sequence[float | None]
Ranks = Sequence[int]


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of `values`, ascending; tied values share the average of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho with average ranks for ties (scipy.stats.spearmanr); None if either side is constant."""
    return _pearson(average_ranks(x), average_ranks(y))


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b (scipy.stats.kendalltau): (concordant - discordant) / sqrt((n0 - ties_x)(n0 - ties_y)),
    n0 the number of pairs; a pair tied on both sides counts in both tie counts. None if either side is constant."""
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            s = _sign(x[i] - x[j]) * _sign(y[i] - y[j])
            concordant += s > 0
            discordant += s < 0
            ties_x += x[i] == x[j]
            ties_y += y[i] == y[j]
    n0 = n * (n - 1) // 2
    if ties_x == n0 or ties_y == n0:
        return None
    return (concordant - discordant) / math.sqrt((n0 - ties_x) * (n0 - ties_y))


def pairwise_counts(scores: Scores, ranks: Ranks) -> tuple[int, int, int, int]:
    """(correct, tied, missing, pairs) over the pairs of one prompt's replies with different human ranks."""
    correct = tied = missing = pairs = 0
    for i in range(len(ranks)):
        for j in range(len(ranks)):
            if ranks[i] >= ranks[j]:
                continue  # each ordered pair once: i is the reply humans preferred
            pairs += 1
            if scores[i] is None or scores[j] is None:
                missing += 1
            elif scores[i] == scores[j]:
                tied += 1
            elif scores[i] > scores[j]:
                correct += 1
    return correct, tied, missing, pairs


def same_order(scores: Scores, ranks: Ranks) -> bool:
    """Does ordering the replies by score (higher first) give exactly the human order, ties included?"""
    if any(s is None for s in scores):
        return False
    n = len(ranks)
    return all(_sign(scores[i] - scores[j]) == _sign(ranks[j] - ranks[i]) for i in range(n) for j in range(i + 1, n))


def reward_model_metrics(scores: Sequence[Scores], ranks: Sequence[Ranks]) -> dict:
    """Every metric of the module doc, with the counts behind them."""
    if len(scores) != len(ranks):
        raise ValueError(f"{len(scores)} prompts of scores for {len(ranks)} prompts of ranks")
    for p, (s, r) in enumerate(zip(scores, ranks)):
        if len(s) != len(r):
            raise ValueError(f"prompt {p}: {len(s)} scores for {len(r)} ranks")
        if len(r) < 2:
            raise ValueError(f"prompt {p}: a ranked prompt needs at least two replies, got {len(r)}")
    correct = tied = missing = pairs = 0
    fives = fives_best = exact = 0
    rhos, taus = [], []
    excluded = {"missing score": 0, "constant scores": 0, "constant ranks": 0}
    for s, r in zip(scores, ranks):
        c, t, m, n = pairwise_counts(s, r)
        correct, tied, missing, pairs = correct + c, tied + t, missing + m, pairs + n
        best = min(r)
        for score, rank in zip(s, r):
            if score is not None and score >= parse.MAX_SCORE:
                fives += 1
                fives_best += rank == best
        exact += same_order(s, r)
        if any(x is None for x in s):
            excluded["missing score"] += 1
        elif len(set(r)) == 1:
            excluded["constant ranks"] += 1
        elif len(set(s)) == 1:
            excluded["constant scores"] += 1
        else:
            preference = [-x for x in r]
            rhos.append(spearman(s, preference))
            taus.append(kendall_tau_b(s, preference))
    return {
        "n_prompts": len(ranks),
        "n_replies": sum(len(r) for r in ranks),
        "n_pairs": pairs,
        "pairwise_accuracy": _ratio(correct, pairs),
        "pairwise_tie_rate": _ratio(tied, pairs),
        "pairwise_missing_rate": _ratio(missing, pairs),
        "n_scored_5": fives,
        "five_best": _ratio(fives_best, fives),
        "exact_match": _ratio(exact, len(ranks)),
        "spearman": _ratio(sum(rhos), len(rhos)),
        "kendall_tau": _ratio(sum(taus), len(taus)),
        "n_correlated": len(rhos),
        "n_correlation_excluded": excluded,
        "spearman_constant_zero": _ratio(sum(rhos), len(rhos) + excluded["constant scores"]),
        "kendall_tau_constant_zero": _ratio(sum(taus), len(taus) + excluded["constant scores"]),
    }


N_RESAMPLES = 1000
LEVEL = 0.95


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of sorted values, interpolated linearly between the two nearest
    (numpy.percentile's default)."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (position - low) * (sorted_values[high] - sorted_values[low])


def bootstrap_intervals(n_items: int, statistic: Callable[[list[int]], dict[str, float | None]], seed: int,
                        n_resamples: int = N_RESAMPLES, level: float = LEVEL) -> dict[str, list[float] | None]:
    """Percentile-bootstrap intervals: `statistic` maps a list of item indices (a resample of range(n_items),
    drawn with replacement) to named values; for each name, [low, high] is the central `level` of its values
    over n_resamples resamples (those where it is not None), or None where it never had one. The resamples
    depend on `seed` only, so a rerun gives the same intervals."""
    if not n_items:
        return {name: None for name in statistic([])}
    rng = random.Random(seed)
    values: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        drawn = statistic([rng.randrange(n_items) for _ in range(n_items)])
        for name, value in drawn.items():
            values.setdefault(name, [])
            if value is not None:
                values[name].append(value)
    tail = (1 - level) / 2
    return {name: [percentile(sorted(v), tail), percentile(sorted(v), 1 - tail)] if v else None
            for name, v in values.items()}


INTERVAL_METRICS = ("pairwise_accuracy", "pairwise_tie_rate", "five_best", "exact_match", "spearman", "kendall_tau",
                    "spearman_constant_zero", "kendall_tau_constant_zero")


def reward_model_intervals(scores: Sequence[Scores], ranks: Sequence[Ranks], seed: int,
                           n_resamples: int = N_RESAMPLES) -> dict[str, list[float] | None]:
    """95% bootstrap intervals over prompts for the metrics in INTERVAL_METRICS."""
    def statistic(indices: list[int]) -> dict[str, float | None]:
        m = reward_model_metrics([scores[i] for i in indices], [ranks[i] for i in indices])
        return {k: m[k] for k in INTERVAL_METRICS}
    return bootstrap_intervals(len(scores), statistic, seed, n_resamples)


def parse_rate(n_parsed: int, n_judgements: int) -> float | None:
    """The fraction of judge outputs that gave a score (judge/parse.py)."""
    return _ratio(n_parsed, n_judgements)
