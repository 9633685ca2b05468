"""eval/metrics.py: the reward-model metrics on hand-computed rankings (ties, missing scores, prompts with two
replies), and the rank correlations against scipy's."""
import math
import random

import pytest
from scipy import stats

import numpy as np

from eval.metrics import (average_ranks, bootstrap_intervals, kendall_tau_b, pairwise_counts, percentile,
                          reward_model_intervals, reward_model_metrics, same_order, spearman)

# (scores, ranks) per prompt; rank 0 = best. What each contributes is worked out in the comments.
PROMPTS = [
    # 3 pairs: (0,1) right, (0,2) right, (1,2) wrong. One 5, on the best reply. Not an exact match.
    # Spearman: score ranks [3,1,2] vs preference ranks [3,2,1]: 1 - 6*2/(3*8) = 0.5; Kendall: (2-1)/3.
    ([5.0, 3.0, 4.0], [0, 1, 2]),
    # two replies, tied scores: the pair is tied (not right); two 5s, one of them on the best reply;
    # not a match (the model ties what humans ordered); constant scores: no correlation.
    ([5.0, 5.0], [1, 0]),
    # humans tie replies 0 and 1 (rank 0 both): pairs (0,2), (1,2) right; two 5s, both best (lowest rank);
    # the model ties exactly where humans do: an exact match; rho = tau = 1.
    ([5.0, 5.0, 2.0], [0, 0, 1]),
    # a missing score: the pair is missing (not right), no match, no correlation.
    ([None, 3.0], [0, 1]),
    # two replies, wrong way round: rho = tau = -1.
    ([2.0, 4.5], [0, 1]),
    # humans tie everything: no ordered pair; not a match (the model does not tie); constant ranks.
    ([3.0, 4.0], [0, 0]),
]


def test_metrics_on_hand_computed_rankings():
    m = reward_model_metrics([s for s, _ in PROMPTS], [r for _, r in PROMPTS])
    assert (m["n_prompts"], m["n_replies"], m["n_pairs"]) == (6, 14, 8)
    assert m["pairwise_accuracy"] == pytest.approx(4 / 8)
    assert m["pairwise_tie_rate"] == pytest.approx(1 / 8)
    assert m["pairwise_missing_rate"] == pytest.approx(1 / 8)
    assert m["n_scored_5"] == 5 and m["five_best"] == pytest.approx(4 / 5)
    assert m["exact_match"] == pytest.approx(1 / 6)
    assert m["n_correlated"] == 3
    assert m["spearman"] == pytest.approx((0.5 + 1 - 1) / 3)
    assert m["kendall_tau"] == pytest.approx((1 / 3 + 1 - 1) / 3)
    assert m["n_correlation_excluded"] == {"missing score": 1, "constant scores": 1, "constant ranks": 1}
    # the constant-score prompt (the second) counted as a correlation of 0: one more prompt in the average
    assert m["spearman_constant_zero"] == pytest.approx((0.5 + 1 - 1 + 0) / 4)
    assert m["kendall_tau_constant_zero"] == pytest.approx((1 / 3 + 1 - 1 + 0) / 4)


def test_pairwise_counts_and_exact_match_one_prompt_at_a_time():
    assert pairwise_counts([5.0, 3.0, 4.0], [0, 1, 2]) == (2, 0, 0, 3)
    assert pairwise_counts([4.0, 4.0], [0, 1]) == (0, 1, 0, 1)        # a tie is not correct
    assert pairwise_counts([4.0, None], [1, 0]) == (0, 0, 1, 1)
    assert pairwise_counts([1.0, 2.0], [3, 3]) == (0, 0, 0, 0)        # humans tied: no pair
    assert same_order([4.0, 3.0, 3.0], [0, 2, 2])                      # ranks need not be consecutive
    assert not same_order([4.0, 3.0, 3.5], [0, 2, 2])                  # humans tie, the model does not
    assert not same_order([4.0, 4.0, 3.0], [0, 1, 2])                  # the model ties, humans do not
    assert not same_order([4.0, None], [0, 1])


def test_rates_without_a_denominator_are_none():
    m = reward_model_metrics([[1.0, 2.0]], [[0, 0]])
    assert m["n_pairs"] == 0 and m["pairwise_accuracy"] is None and m["pairwise_tie_rate"] is None
    assert m["five_best"] is None and m["spearman"] is None and m["exact_match"] == 0
    assert reward_model_metrics([], [])["exact_match"] is None


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least two replies"):
        reward_model_metrics([[4.0]], [[0]])
    with pytest.raises(ValueError, match="2 scores for 3 ranks"):
        reward_model_metrics([[4.0, 3.0]], [[0, 1, 2]])


def test_rank_correlations_match_scipy_with_ties():
    rng = random.Random(0)
    checked = 0
    for _ in range(300):
        n = rng.randint(2, 8)
        x = [rng.choice([0, 1, 2, 3, 3.5, 4, 5]) for _ in range(n)]   # plenty of ties
        y = [rng.randint(0, 3) for _ in range(n)]
        assert average_ranks(x) == pytest.approx(list(stats.rankdata(x)))
        if len(set(x)) == 1 or len(set(y)) == 1:
            assert spearman(x, y) is None and kendall_tau_b(x, y) is None
            continue
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)
        checked += 1
    assert checked > 200


def test_per_prompt_correlations_are_averaged_like_scipy_per_prompt():
    rng = random.Random(1)
    scores = [[rng.choice([1, 2, 3, 4, 5]) + 0.5 * rng.randint(0, 1) for _ in range(rng.randint(2, 5))]
              for _ in range(40)]
    ranks = [rng.sample(range(len(s)), len(s)) for s in scores]
    m = reward_model_metrics(scores, ranks)
    kept = [(s, [-r for r in rr]) for s, rr in zip(scores, ranks) if len(set(s)) > 1]
    assert m["n_correlated"] == len(kept) and m["n_correlation_excluded"]["constant scores"] == 40 - len(kept)
    assert m["spearman"] == pytest.approx(sum(stats.spearmanr(s, p).statistic for s, p in kept) / len(kept))
    assert m["kendall_tau"] == pytest.approx(sum(stats.kendalltau(s, p).statistic for s, p in kept) / len(kept))
    assert not math.isnan(m["spearman"])


def test_percentile_is_numpys_linear_percentile():
    rng = random.Random(2)
    for _ in range(50):
        values = sorted(rng.uniform(-1, 1) for _ in range(rng.randint(1, 30)))
        for q in (0, 0.025, 0.3, 0.5, 0.975, 1):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, 100 * q)), abs=1e-12)


def test_bootstrap_interval_of_a_proportion_matches_the_normal_approximation():
    # 400 prompts, 120 of them "right": the mean's bootstrap distribution is close to normal with standard error
    # sqrt(p (1 - p) / n), so the 95% interval is p -/+ 1.96 standard errors = 0.3 -/+ 0.0449
    items = [1] * 120 + [0] * 280
    low, high = bootstrap_intervals(len(items), lambda drawn: {"mean": sum(items[i] for i in drawn) / len(drawn)},
                                    seed=0, n_resamples=4000)["mean"]
    half = 1.96 * math.sqrt(0.3 * 0.7 / 400)
    assert low == pytest.approx(0.3 - half, abs=0.006) and high == pytest.approx(0.3 + half, abs=0.006)


def test_bootstrap_hand_computed_cases():
    # one prompt: every resample is that prompt, so the interval is the value itself
    assert bootstrap_intervals(1, lambda drawn: {"x": 0.25 * len(drawn)}, seed=3) == {"x": [0.25, 0.25]}
    # two prompts [0, 1], the mean: resamples give 0, 1/2 or 1 with probability 1/4, 1/2, 1/4, so the 95%
    # interval spans [0, 1] and the central 40% (quantiles 0.3 and 0.7) is [1/2, 1/2]
    values = [0.0, 1.0]

    def mean(drawn):
        return {"mean": sum(values[i] for i in drawn) / 2}
    assert bootstrap_intervals(2, mean, seed=0) == {"mean": [0.0, 1.0]}
    low, high = bootstrap_intervals(2, mean, seed=0, level=0.4)["mean"]
    assert (low, high) == (0.5, 0.5)
    # seeded: the same seed gives the same interval, a statistic without a value is None, no prompts no interval
    assert bootstrap_intervals(30, lambda d: {"m": sum(d) / 30}, seed=5) == bootstrap_intervals(
        30, lambda d: {"m": sum(d) / 30}, seed=5)
    assert bootstrap_intervals(3, lambda d: {"never": None}, seed=0) == {"never": None}
    assert bootstrap_intervals(0, lambda d: {"m": 1.0 if d else None}, seed=0) == {"m": None}  # no prompts


def test_reward_model_intervals_over_prompts():
    # a judge that orders every pair right: every resample gives 1, the interval is [1, 1]
    scores, ranks = [[3.0, 2.0, 1.0]] * 5, [[0, 1, 2]] * 5
    assert reward_model_intervals(scores, ranks, seed=0)["pairwise_accuracy"] == [1.0, 1.0]
    # a mixed one: each interval holds the point estimate, and the metrics without a value have none
    rng = random.Random(4)
    scores = [[rng.choice([1.0, 2.0, 3.0, 4.0]) for _ in range(3)] for _ in range(40)]
    ranks = [[0, 1, 2]] * 40
    m, intervals = reward_model_metrics(scores, ranks), reward_model_intervals(scores, ranks, seed=0)
    for key in ("pairwise_accuracy", "exact_match", "spearman", "kendall_tau", "spearman_constant_zero"):
        low, high = intervals[key]
        assert low <= m[key] <= high and high - low > 0.05, key
    assert intervals["five_best"] is None   # no reply scored 5
