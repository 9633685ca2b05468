"""The sampler against greedy decoding by full recomputation, prefix sharing against plain batching,
and the sampling distribution against the filtered softmax it is meant to draw from."""
import numpy as np
import pytest
import torch

from model import ModelArgs, PRESETS, Transformer
from sample.sampler import HEAD_RECOMPUTE, TOPK_PREFILTER, Sampler, SamplingParams, common_prefix_len, sample_tokens


class StubTokenizer:
    """Just what the sampler needs from a tokenizer; decode spells out the ids."""

    def __init__(self, stop_ids=(), pad_id=0):
        self.stop_ids, self.pad_id = list(stop_ids), pad_id

    def decode(self, ids):
        return " ".join(map(str, ids))


def tiny(seed=0):
    args = ModelArgs(**{**vars(PRESETS["tiny"]), "max_seq_len": 64})
    return Transformer(args).init_weights(std=0.3, seed=seed).eval()  # peaked logits: varied greedy tokens


@torch.no_grad()
def greedy_by_recomputation(net, prompt, max_new_tokens, stop_ids=()):
    """The slow, obviously right way: rerun the whole sequence for every new token."""
    ids = list(prompt)
    for _ in range(min(max_new_tokens, net.args.max_seq_len - len(prompt))):
        token = int(net(torch.tensor([ids]))[0, -1].argmax())
        if token in stop_ids:
            return ids[len(prompt):], "stop"
        ids.append(token)
    return ids[len(prompt):], "length"


def random_prompts(lengths, vocab=256, seed=0, prefix=()):
    g = torch.Generator().manual_seed(seed)
    return [list(prefix) + torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def test_greedy_with_cache_equals_recomputation_for_ragged_batch():
    net = tiny()
    prompts = random_prompts([3, 9, 1, 14, 6])
    params = SamplingParams(temperature=0, max_new_tokens=20)
    want = [greedy_by_recomputation(net, p, 20) for p in prompts]
    # make rows stop at different steps: each row's 5th..8th greedy token becomes a stop token
    stop_ids = sorted({want[i][0][4 + i % 4] for i in range(len(prompts))})
    want = [greedy_by_recomputation(net, p, 20, stop_ids) for p in prompts]
    assert {reason for _, reason in want} == {"stop"} or len({len(ids) for ids, _ in want}) > 1
    got = Sampler(net, StubTokenizer(stop_ids), max_batch_size=8).generate(prompts, params)
    for (ids, reason), [c] in zip(want, got):
        assert (c.token_ids, c.finish_reason, c.n_tokens) == (ids, reason, len(ids))


def test_rows_stop_at_the_context_limit():
    net = tiny()
    prompts = random_prompts([60, 10])  # max_seq_len 64: the first prompt has room for 4 tokens
    got = Sampler(net, StubTokenizer()).generate(prompts, SamplingParams(temperature=0, max_new_tokens=8))
    assert [c.n_tokens for [c] in got] == [4, 8] and got[0][0].finish_reason == "length"
    assert got[0][0].token_ids == greedy_by_recomputation(net, prompts[0], 8)[0]


@pytest.mark.parametrize("max_batch_size", [4, 12])
def test_prefix_sharing_and_fan_out_equal_plain_batching(max_batch_size):
    """A long template opening shared by all prompts, each prompt sampled 3 times: prefilled once."""
    net = tiny()
    template = random_prompts([25], seed=1)[0]
    prompts = random_prompts([2, 7, 4, 11], seed=2, prefix=template)
    assert common_prefix_len(prompts) == 25
    params = SamplingParams(temperature=0, max_new_tokens=12)
    shared = Sampler(net, StubTokenizer(), max_batch_size, share_prefix=True).generate(prompts, params, n=3)
    plain = Sampler(net, StubTokenizer(), max_batch_size, share_prefix=False).generate(prompts, params, n=3)
    for p, s, q in zip(prompts, shared, plain):
        want = greedy_by_recomputation(net, p, 12)[0]
        assert [c.token_ids for c in s] == [c.token_ids for c in q] == [want] * 3


def test_sampled_outputs_depend_on_the_seed_not_on_the_batch():
    net = tiny()
    prompts = random_prompts([5, 8, 3, 12], seed=3)
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=10)
    seeds = [[100 + 10 * i + j for j in range(2)] for i in range(4)]
    together = Sampler(net, StubTokenizer(), max_batch_size=8).generate(prompts, params, n=2, seeds=seeds)
    alone = [Sampler(net, StubTokenizer(), max_batch_size=2).generate([p], params, n=2, seeds=[s])[0]
             for p, s in zip(prompts, seeds)]
    assert [[c.token_ids for c in cs] for cs in together] == [[c.token_ids for c in cs] for cs in alone]
    other = Sampler(net, StubTokenizer(), max_batch_size=8).generate(
        prompts, params, n=2, seeds=[[s + 1 for s in ss] for ss in seeds])
    assert [[c.token_ids for c in cs] for cs in together] != [[c.token_ids for c in cs] for cs in other]


@torch.no_grad()
def sampled_by_recomputation(net, prompt, params, seed, stop_ids=()):
    """One row drawn on its own by full recomputation, from its own seed's uniforms (see the module doc of
    sample/sampler.py): what the engine must give a row whatever shared its steps."""
    n_new = min(params.max_new_tokens, net.args.max_seq_len - len(prompt))
    uniforms = torch.rand(n_new, generator=torch.Generator().manual_seed(seed))
    ids = list(prompt)
    for t in range(n_new):
        logits = (net(torch.tensor([ids]), return_hidden=True)[:, -1].float() @ net.output_weight.float().T)
        token = int(sample_tokens(logits, params, uniforms[t:t + 1])[0])
        if token in stop_ids:
            return ids[len(prompt):]
        ids.append(token)
    return ids[len(prompt):]


@pytest.mark.parametrize("slots,check_every", [(1, 1), (3, 1), (5, 4), (16, 3)])
def test_continuous_batching_gives_each_row_its_own_draws(slots, check_every):
    """Rows of many lengths stop at different steps and newcomers take their slots: whatever the slot
    count, the check interval and the order prompts arrive in, every (prompt, sample) is what it is alone."""
    net = tiny()
    template = random_prompts([6], seed=4)[0]
    prompts = random_prompts([2, 13, 5, 9, 1, 20, 4], seed=5, prefix=template)
    stop_ids = list(range(3, 256, 9))  # a ninth of the vocabulary stops a row
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=15)
    seeds = [[1000 + 7 * i + j for j in range(3)] for i in range(len(prompts))]
    want = [[sampled_by_recomputation(net, p, params, s, stop_ids) for s in ss] for p, ss in zip(prompts, seeds)]
    assert len({len(t) for row in want for t in row}) > 3  # rows did finish at many different steps
    order = [3, 0, 6, 2, 5, 1, 4]
    sampler = Sampler(net, StubTokenizer(stop_ids), max_batch_size=slots, check_every=check_every)
    got = sampler.generate([prompts[i] for i in order], params, n=3, seeds=[seeds[i] for i in order])
    assert [[c.token_ids for c in got[order.index(i)]] for i in range(len(prompts))] == want
    streamed = [i for done in sampler.stream(prompts, params, n=3, seeds=seeds) for i, _ in done]
    assert sorted(streamed) == list(range(len(prompts)))  # each prompt once, when its samples are all done


def test_greedy_bf16_rows_do_not_depend_on_slots_or_order():
    net = tiny().to(torch.bfloat16)
    prompts = random_prompts([3, 17, 8, 1, 11], seed=6)
    params = SamplingParams(temperature=0, max_new_tokens=12)
    stop_ids = list(range(3, 256, 11))
    runs = []
    for slots, order in ((1, [0, 1, 2, 3, 4]), (4, [4, 2, 0, 3, 1]), (9, [1, 3, 0, 4, 2])):
        got = Sampler(net, StubTokenizer(stop_ids), max_batch_size=slots).generate([prompts[i] for i in order], params, n=2)
        runs.append([[c.token_ids for c in got[order.index(i)]] for i in range(len(prompts))])
    assert runs[0] == runs[1] == runs[2]
    assert len({len(t) for row in runs[0] for t in row}) > 1


def test_one_cache_for_the_engines_life():
    """Calls with rows of other lengths reuse the engine's cache; one that needs longer rows grows it once."""
    net = Transformer(ModelArgs(**{**vars(PRESETS["tiny"]), "max_seq_len": 256})).init_weights(std=0.3, seed=0).eval()
    sampler = Sampler(net, StubTokenizer(), max_batch_size=4)
    params = SamplingParams(temperature=0, max_new_tokens=10)
    sampler.generate(random_prompts([5, 30]), params)
    first = sampler.cache[0].k
    sampler.generate(random_prompts([12, 3, 40]), params)
    assert sampler.cache[0].k is first and first.shape[:3] == (4, 2, 64)
    sampler.generate(random_prompts([100]), params)
    assert sampler.cache[0].k.shape[2] == 128


@pytest.mark.slow
def test_compiled_step_compiles_once_per_length_bucket():
    """Calls whose rows reach different lengths: one compilation per power-of-two length bucket reached (64
    and 128), none for the call after, and the eager step's tokens."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    net = Transformer(ModelArgs(**{**vars(PRESETS["tiny"]), "max_seq_len": 128})).init_weights(std=0.3, seed=0).eval()
    # the first call sizes the cache (a larger one later would mean new buffers, and compiling again)
    calls = [random_prompts(lengths, seed=k) for k, lengths in enumerate(([100, 3], [40, 9, 5], [50, 2]))]
    params = SamplingParams(temperature=0, max_new_tokens=28)
    eager = Sampler(net, StubTokenizer(), max_batch_size=4)
    want = [[[c.token_ids for c in cs] for cs in eager.generate(prompts, params, n=2)] for prompts in calls]
    torch._dynamo.reset()
    counters.clear()
    compiled = Sampler(net, StubTokenizer(), max_batch_size=4, compile=True)
    got = [[[c.token_ids for c in cs] for cs in compiled.generate(prompts, params, n=2)] for prompts in calls]
    assert got == want
    assert counters["stats"]["unique_graphs"] == 2


def filtered_distribution(logits, temperature, top_p, top_k):
    """The target distribution, in float64 and written independently of sample_tokens."""
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, dtype=bool)
    mass = 0.0
    for rank, i in enumerate(order):
        if (top_k and rank >= top_k) or mass >= top_p:
            break
        keep[i], mass = True, mass + p[i]
    q = np.where(keep, p, 0.0)
    return q / q.sum()


@pytest.mark.parametrize("V,temperature,top_p,top_k", [
    (40, 0.7, 0.9, 0), (40, 1.0, 1.0, 0), (40, 1.3, 1.0, 5), (40, 1.5, 0.6, 3),
    (1000, 1.0, 0.9, 0),  # a flat distribution: the nucleus is larger than the top-k prefilter
])
def test_sampling_frequencies_match_the_filtered_distribution(V, temperature, top_p, top_k):
    g = torch.Generator().manual_seed(V + int(100 * top_p) + top_k)
    scale = 0.05 if V > TOPK_PREFILTER else 2.0
    logits = torch.randn(V, generator=g, dtype=torch.float64) * scale
    target = filtered_distribution(logits.numpy(), temperature, top_p, top_k)
    draws = 200_000 if V < 100 else 50_000
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    tokens = sample_tokens(logits.float().expand(draws, V), params, torch.rand(draws, generator=g))
    counts = np.bincount(tokens.numpy(), minlength=V)
    assert counts[target == 0].sum() == 0, "a token outside the nucleus / top-k was drawn"
    if V > TOPK_PREFILTER:
        assert (target > 0).sum() > TOPK_PREFILTER
    # chi-square over the kept tokens; with a fixed seed, a loose bound on the statistic
    kept = target > 0
    expected = target[kept] * draws
    chi2 = (((counts[kept] - expected) ** 2) / expected).sum()
    dof = kept.sum() - 1
    assert dof >= 1 and chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)


def test_inverse_cdf_edges():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 3)
    params = SamplingParams(temperature=1.0, top_p=0.7)
    # u = 0 takes the most likely token; u just below 1 the least likely one kept (not a filtered one)
    assert sample_tokens(logits, params, torch.tensor([0.0, 0.999999, 0.5])).tolist()[:2] == [0, 1]
    assert sample_tokens(logits, SamplingParams(temperature=0), torch.rand(3)).tolist() == [0, 0, 0]


def test_bad_requests():
    net = tiny()
    sampler = Sampler(net, StubTokenizer())
    with pytest.raises(ValueError, match="empty prompt"):
        sampler.generate([[5], []], SamplingParams())
    with pytest.raises(ValueError, match="prompt of 64 tokens leaves no room"):
        sampler.generate([[5] * 64], SamplingParams())
    with pytest.raises(ValueError, match="invalid sampling parameters"):
        SamplingParams(top_p=0)


def test_a_bf16_heads_likely_logits_are_exact():
    """A bf16 model's likely logits are not rounded to bf16 (0.125 apart above 16, which moves the nucleus):
    the HEAD_RECOMPUTE largest equal the float64 product of the same bf16 hidden states and weights, and
    the others are within bf16 rounding of it."""
    args = ModelArgs(**{**vars(PRESETS["tiny"]), "vocab_size": 4 * HEAD_RECOMPUTE})  # most logits not recomputed
    net = Transformer(args).init_weights(std=0.3, seed=0).eval().to(torch.bfloat16)
    with torch.no_grad():
        net.output.weight.mul_(40)  # logits well above 16
    sampler = Sampler(net, StubTokenizer())
    tokens = torch.tensor([[5, 9, 77, 3], [8, 8, 1, 2]])
    with torch.no_grad():
        hidden = net(tokens, return_hidden=True)[:, -1]
        logits = sampler._logits(hidden)                                                  # (2, V)
    exact = hidden.double() @ net.output.weight.double().T
    top = exact.topk(HEAD_RECOMPUTE, dim=-1).indices
    assert logits.dtype == torch.float32 and exact.abs().max() > 16
    error = (logits.double() - exact).abs()
    assert error.gather(1, top).max() < 1e-5 * exact.abs().max()
    assert error.max() <= exact.abs().max() * 2 ** -8
    assert (exact.bfloat16().double() - exact).abs().max() > 1e-2  # what bf16 logits would have lost


TP_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
from sample.sampler import Sampler, SamplingParams
from sample.tp import broadcast_tokens, load_tensor_parallel

class Tok:  # a third of the vocabulary stops a row, so rows stop at different steps
    pad_id, stop_ids = 0, list(range(3, 400, 3))
    def decode(self, ids):
        return " ".join(map(str, ids))

dist.init_process_group("gloo")
rank = dist.get_rank()
net, _ = load_tensor_parallel(sys.argv[1], torch.device("cpu"), torch.float32)
prompts = [[1, 5, 7, 9], [1, 8], [1, 4, 4, 4, 6, 2]]
# rank 1 draws from other uniforms, as if its reductions had rounded otherwise: its tokens differ
seeds = [[10 * i + s + 1000 * rank for s in range(3)] for i in range(3)]
outs = Sampler(net, Tok(), max_batch_size=9, sync_tokens=broadcast_tokens).generate(
    prompts, SamplingParams(temperature=1.0, max_new_tokens=12), n=3, seeds=seeds)
got = [[c.token_ids for c in row] for row in outs]
with open(f"{sys.argv[2]}/rank{rank}.json", "w") as f:  # (two ranks printing at once can mix their lines)
    json.dump(got, f)
dist.barrier()
dist.destroy_process_group()
os._exit(0)  # as train/distributed.py's teardown: a normal exit can abort a gloo rank after the work is done
"""


@pytest.mark.slow
def test_tensor_parallel_ranks_take_rank_zeros_tokens(tmp_path, tiny_checkpoint):
    """Under tensor parallelism every rank uses rank 0's sampled tokens: a rank that would draw other
    tokens does not leave the ranks with batches of different shapes (a hang), and every rank gets what
    one process with rank 0's seeds gets."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import model
    root = Path(__file__).parents[1]
    (tmp_path / "tp.py").write_text(TP_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "tp.py"), str(tiny_checkpoint), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0] == results[1]

    class Tok:
        pad_id, stop_ids = 0, list(range(3, 400, 3))

        def decode(self, ids):
            return ""
    net, _ = model.load(tiny_checkpoint)
    prompts = [[1, 5, 7, 9], [1, 8], [1, 4, 4, 4, 6, 2]]
    outs = Sampler(net, Tok(), max_batch_size=9).generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=12),
                                                          n=3, seeds=[[10 * i + s for s in range(3)] for i in range(3)])
    one_process = [[c.token_ids for c in row] for row in outs]
    assert results[0] == one_process
    assert len({len(t) for row in one_process for t in row}) > 1  # rows did stop at different steps


def test_tensor_parallel_splits_the_qkv_biases_with_their_rows():
    """Qwen2's q, k, v biases are split over the ranks as their projections' output rows are (the forward over
    ranks is the slow test above, on the bias-free tiny model)."""
    import model
    from sample.tp import apply_tensor_parallel, shard_plan
    args = model.ModelArgs(**{**vars(model.PRESETS["tiny"]), "qkv_bias": True})
    with torch.device("meta"):
        net = model.Transformer(args)
    plan = shard_plan(net)
    assert plan["layers.0.attention.wq.bias"] == plan["layers.0.attention.wq.weight"] == 0
    assert "layers.0.attention.wo.bias" not in plan
    attn = apply_tensor_parallel(net, 2).layers[0].attention
    assert attn.wq.bias.shape == (args.n_heads * args.head_dim // 2,) == (attn.wq.weight.shape[0],)
    assert attn.wk.bias.shape == attn.wv.bias.shape == (args.n_kv_heads * args.head_dim // 2,)
