"""eval/metrics.py: the reward-model metrics on hand-computed rankings (ties, missing scores, prompts with two
replies), and the rank correlations against scipy's."""
import math
import random

import pytest
from scipy import stats

from eval.metrics import (average_ranks, kendall_tau_b, pairwise_counts, reward_model_metrics, same_order,
                          spearman)

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
