"""Expected-score judging (beyond the paper): the judge's score read as a distribution, not a sample.

    probs = score_distributions(net, tokenizer, prompt_ids, ["The answer is right... Score: 4"])[0]
    expected_score(probs)   # sum_k k * p(k) / sum_k p(k), k = 0..MAX_SCORE

The paper samples three judgements and averages the scores they end with, so a reply's score is one of a
few values (0, 1/3, 2/3, ...) and two replies tie often. Here the judge writes its justification as usual
(sampled, or greedy with temperature 0); then, instead of taking the digit it wrote after "Score:", we ask
the model how likely each score is at that point, and use the expectation: a score from one judgement that
is not rounded to a digit, so ties all but vanish (bench/RESULTS.md measures its agreement with the paper's
3-sample mean).

Where the score is read: the judgement up to its final verdict's label (judge/parse.py's rule: the last
"Score:" is the judge's final word) followed by " k", for each k; a judgement with no verdict gets "\nScore:"
appended (it is still read, not dropped: the model is asked to conclude). Each of those texts is tokenized
after the judge prompt's tokens, so the reading does not depend on how a tokenizer splits " 4" (one token,
or a space and a digit): the probability of score k is that of the tokens that follow what all of them
share. p(k) are renormalised over k = 0..MAX_SCORE; `mass` (their sum before that) says how sure the model
was that a score comes next at all. The cost is one forward pass over prompt and judgement (the tokens are
counted), batched, with no generation.
"""
import math

import torch

from judge import parse
from sample.sampler import common_prefix_len

SCORE_MODES = ("parsed", "expected")   # judge/score.py --score: the paper's parsed digit, or the expectation
CANDIDATES = [f" {k}" for k in range(parse.MAX_SCORE + 1)]
FORWARD_ROWS = 8                        # sequences per forward pass


def score_prefix(judgement: str) -> str:
    """The judgement up to and including the colon of its final verdict, or with "\\nScore:" appended when it
    has none (the model is then asked for its score where it stopped)."""
    verdicts = parse.find_verdicts(judgement)
    if verdicts:
        return judgement[:verdicts[-1].end("colon")]
    return judgement.rstrip() + "\nScore:"


def expected_score(probs: list[float]) -> float:
    """sum_k k p(k) over the scores 0..len(probs)-1, with probs renormalised to sum to 1."""
    total = sum(probs)
    return sum(k * p for k, p in enumerate(probs)) / total


def _hidden_at(net, sequences: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
    """The model's final hidden states (len(positions[i]), dim) at positions[i] of sequences[i] (right-padded
    batches of FORWARD_ROWS: under the causal mask a position never sees the padding after it)."""
    device = net.output_weight.device
    out = []
    for start in range(0, len(sequences), FORWARD_ROWS):
        chunk, where = sequences[start:start + FORWARD_ROWS], positions[start:start + FORWARD_ROWS]
        width = max(len(s) for s in chunk)
        tokens = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        for i, s in enumerate(chunk):
            tokens[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        hidden = net(tokens, return_hidden=True)
        out.extend(hidden[i, p] for i, p in enumerate(where))
    return out


def _log_probs(net, hidden: torch.Tensor) -> torch.Tensor:
    """log-softmax over the vocabulary, in fp32, for hidden states (n, dim)."""
    return torch.log_softmax(hidden.float() @ net.output_weight.float().T, dim=-1)


@torch.inference_mode()
def score_distributions(net, tokenizer, prompt_ids: list[int], judgements: list[str]) -> list[dict | None]:
    """For each judgement of one judge prompt: {"probs": [p(0), ..., p(MAX_SCORE)] (renormalised), "mass"
    (their sum before), "expected", "tokens" (the tokens read)}, or None where the texts do not fit the
    model's context."""
    limit = net.args.max_seq_len
    options = []
    for text in judgements:
        prefix = score_prefix(text)
        seqs = [prompt_ids + tokenizer.encode(prefix + c) for c in CANDIDATES]
        options.append(seqs if max(map(len, seqs)) <= limit else None)
    # one sequence per judgement when every score is one token after what the options share (the usual case:
    # a forward pass over that shared part gives every score's probability); otherwise each option whole
    sequences, positions, plan = [], [], []
    for seqs in options:
        if seqs is None:
            plan.append(None)
            continue
        shared = common_prefix_len(seqs)
        if all(len(s) == shared + 1 for s in seqs):
            plan.append(("one", len(sequences), shared))
            sequences.append(seqs[0][:shared])
            positions.append([shared - 1])
        else:
            plan.append(("each", len(sequences), shared))
            for s in seqs:
                sequences.append(s)
                positions.append(list(range(shared - 1, len(s) - 1)))
    hidden = _hidden_at(net, sequences, positions)
    results = []
    for seqs, step in zip(options, plan):
        if step is None:
            results.append(None)
            continue
        how, first, shared = step
        if how == "one":
            logp = _log_probs(net, hidden[first])[0]
            option_logp = [logp[s[shared]].item() for s in seqs]
            tokens = shared
        else:
            option_logp = []
            for k, s in enumerate(seqs):
                logp = _log_probs(net, hidden[first + k])
                option_logp.append(sum(logp[j, s[shared + j]].item() for j in range(len(s) - shared)))
            tokens = sum(len(s) for s in seqs)
        top = max(option_logp)
        weights = [math.exp(v - top) for v in option_logp]
        probs = [w / sum(weights) for w in weights]
        results.append({"probs": probs, "mass": math.exp(top) * sum(weights), "expected": expected_score(probs),
                        "tokens": tokens})
    return results
