"""The KV-cached batched sampler: the engine behind answering, judging and prompt writing.

    sampler = Sampler(model, tokenizer, max_batch_size=16)
    outs = sampler.generate([ids_a, ids_b], SamplingParams(temperature=0.7, top_p=0.9), n=4)
    outs[0][2].text, outs[0][2].finish_reason      # prompt a, sample 2

How a batch runs (see `_run_batch`):
  1. Prompts are split into a prefix common to all of them (the judge template's opening, say)
     and a suffix per prompt. The prefix is prefilled once, for one row, and copied to every row.
  2. The suffixes are prefilled together, left-padded, each prompt once.
  3. Each prompt's cache row is copied to its n sample rows (fan-out), and the decode loop runs:
     one token per row per step, written into a static cache at the same slot for every row.
     Rows that hit a stop token or their length limit leave the batch (the cache is compacted),
     so finished rows cost nothing, and the loop ends when no row is left.
Rotary positions are per row (a left-padded row starts later in the cache but at position 0),
and a boolean key mask hides padding; see model.attention_mask.

Randomness is per row: each (prompt, sample) gets its own seed, from which all its uniforms are
drawn up front, and tokens are drawn by inverse CDF from one uniform per step. So a sample's
tokens do not depend on which other rows shared its batch, which is what lets an interrupted
run resume and produce what an uninterrupted one would have.
"""
from dataclasses import dataclass

import torch

from model import attention_mask

TOPK_PREFILTER = 256  # nucleus sampling first looks only at the 256 most likely tokens (see sample_tokens)


@dataclass
class SamplingParams:
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k filter
    max_new_tokens: int = 512

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"invalid sampling parameters {self}")


@dataclass
class Completion:
    token_ids: list[int]  # generated tokens, without the stop token
    text: str
    finish_reason: str  # "stop" (a stop token was generated) or "length"

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def sample_tokens(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one token per row from logits (B, V) with temperature, top-k and top-p.

    uniforms (B,) in [0, 1) pick the token by inverse CDF over the filtered distribution, so the
    draw is a pure function of the logits and the row's own random number. The nucleus is the
    smallest set of most likely tokens whose mass reaches top_p. It is looked for among the top
    TOPK_PREFILTER tokens first (a partial sort); only rows whose nucleus is larger fall back to
    sorting the whole vocabulary, so the result is exact either way.
    """
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)  # (B, V)
    k = min(probs.shape[-1], params.top_k or probs.shape[-1])
    if params.top_p == 1.0 and k == probs.shape[-1]:
        sorted_probs, order = probs, None  # plain sampling: no need to sort
    else:
        sorted_probs, order = probs.topk(min(k, TOPK_PREFILTER), dim=-1)
        if k > TOPK_PREFILTER and not bool((sorted_probs.sum(-1) >= params.top_p).all()):
            sorted_probs, order = probs.topk(k, dim=-1)
        if params.top_p < 1.0:
            before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
            sorted_probs = sorted_probs.masked_fill(before >= params.top_p, 0.0)
    cdf = sorted_probs.cumsum(-1)
    target = uniforms.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]
    choice = (cdf <= target).sum(-1).clamp(max=cdf.shape[-1] - 1)  # first index whose CDF passes target
    nonzero = sorted_probs.gather(1, choice[:, None])[:, 0] > 0
    # A uniform landing exactly on a CDF step can point past the last kept token; step back.
    choice = torch.where(nonzero, choice, (sorted_probs > 0).sum(-1) - 1)
    return choice if order is None else order.gather(1, choice[:, None])[:, 0]


def common_prefix_len(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def plan_batches(lengths: list[int], n: int, max_batch_size: int) -> list[list[int]]:
    """Group prompt indices into batches of at most max_batch_size rows (n rows per prompt).

    Prompts are sorted by length first, so a batch holds prompts of similar length (less
    padding). A prompt's n samples always share a batch, even when n > max_batch_size.
    """
    per_batch = max(1, max_batch_size // n)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + per_batch] for i in range(0, len(order), per_batch)]


class Sampler:
    def __init__(self, model, tokenizer, max_batch_size: int = 16, share_prefix: bool = True,
                 compile: bool = False, sync_tokens=None):
        """sync_tokens: called on each step's sampled tokens (B,) before they are used, e.g. to give every
        tensor-parallel rank rank 0's tokens (sample/tp.py's broadcast_tokens)."""
        self.model, self.tokenizer = model, tokenizer
        self.sync_tokens = sync_tokens
        self.max_batch_size, self.share_prefix = max_batch_size, share_prefix
        self.stop_ids = torch.tensor(tokenizer.stop_ids)
        self.device = model.tok_embeddings.weight.device
        # The output head in fp32: bf16 logits are quantised (to 0.125 above 16), which moves the nucleus.
        # One fp32 copy of the (V, D) head, made once, so each step's (B, D) x (D, V) product runs in fp32.
        weight = model.output_weight
        self.head_weight = weight if weight.dtype == torch.float32 else weight.detach().float()
        self.decode_step = self._decode_step
        self.compact = not compile
        if compile:
            # A compiled decode step wants fixed shapes: rows stay in the batch when they finish
            # (their tokens are ignored) instead of triggering a recompilation per batch size.
            mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs on GPUs
            self.decode_step = torch.compile(self._decode_step, mode=mode, dynamic=False)

    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1,
                 seeds: list[list[int]] | None = None) -> list[list[Completion]]:
        """n completions for each prompt (token ids, chat template already applied).

        seeds[i][j] seeds sample j of prompt i; by default prompt i, sample j gets i * n + j.
        """
        if seeds is None:
            seeds = [[i * n + j for j in range(n)] for i in range(len(prompts))]
        results: list[list[Completion]] = [[] for _ in prompts]
        for batch in plan_batches([len(p) for p in prompts], n, self.max_batch_size):
            outs = self._run_batch([prompts[i] for i in batch], params, n, [seeds[i] for i in batch])
            for i, completions in zip(batch, outs):
                results[i] = completions
        return results

    @torch.no_grad()
    def _decode_step(self, tokens, positions, mask, cache, slots):
        hidden = self.model(tokens, positions=positions, mask=mask, cache=cache, slots=slots, return_hidden=True)
        return hidden[:, -1].float() @ self.head_weight.T  # (B, V) fp32

    @torch.no_grad()
    def _run_batch(self, prompts: list[list[int]], params: SamplingParams, n: int,
                   seeds: list[list[int]]) -> list[list[Completion]]:
        model, device = self.model, self.device
        max_len = model.args.max_seq_len
        if any(not p for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        too_long = [len(p) for p in prompts if len(p) >= max_len]
        if too_long:
            raise ValueError(f"prompt of {too_long[0]} tokens leaves no room to generate "
                             f"within max_seq_len {max_len}")
        n_per_prompt = n
        if not self.share_prefix:  # every row prefilled on its own: the baseline the benchmark compares with
            prompts, seeds, n = [p for p in prompts for _ in range(n)], [[s] for ss in seeds for s in ss], 1
        U = len(prompts)
        # The shared prefix leaves at least one token in every suffix, whose logits start decoding.
        P = min(common_prefix_len(prompts), min(len(p) for p in prompts) - 1) if self.share_prefix else 0
        suffix_lens = torch.tensor([len(p) - P for p in prompts], device=device)
        S_suffix = int(suffix_lens.max())
        n_new = min(params.max_new_tokens, max_len - min(len(p) for p in prompts))
        S = P + S_suffix + n_new  # cache slots this batch can reach

        cache = model.make_cache(1 if P else U, S)
        valid = torch.zeros(U, S, dtype=torch.bool, device=device)  # which slots hold real tokens, per row
        if P:  # 1. the common prefix, once
            prefix = torch.tensor([prompts[0][:P]], device=device)
            slots = torch.arange(P, device=device)
            model(prefix, cache=cache, slots=slots, return_hidden=True)
            for c in cache:
                c.k, c.v = c.k.expand(U, -1, -1, -1).contiguous(), c.v.expand(U, -1, -1, -1).contiguous()
            valid[:, :P] = True

        # 2. the suffixes, left-padded to a common length
        tokens = torch.full((U, S_suffix), self.tokenizer.pad_id, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            tokens[i, S_suffix - len(p) + P:] = torch.tensor(p[P:], device=device)
        pad = S_suffix - suffix_lens  # (U,)
        slots = torch.arange(P, P + S_suffix, device=device)
        valid[:, P:P + S_suffix] = torch.arange(S_suffix, device=device)[None, :] >= pad[:, None]
        positions = (slots[None, :] - pad[:, None]).clamp(min=0)
        logits = self.decode_step(tokens, positions, attention_mask(valid, slots), cache, slots)

        # 3. fan out to n rows per prompt, then decode
        rows = torch.arange(U * n, device=device)  # which output row each batch row is
        if n > 1:
            for c in cache:
                c.k, c.v = c.k.repeat_interleave(n, 0), c.v.repeat_interleave(n, 0)
            valid, logits = valid.repeat_interleave(n, 0), logits.repeat_interleave(n, 0)
        next_pos = (torch.tensor([len(p) for p in prompts], device=device)).repeat_interleave(n)
        limit = (max_len - next_pos).clamp(max=params.max_new_tokens)  # new tokens each row may write
        uniforms = torch.stack([torch.rand(n_new, generator=torch.Generator().manual_seed(int(s)))
                                for ss in seeds for s in ss]).to(device)  # (rows, n_new)
        out = torch.full((U * n, n_new), -1, dtype=torch.long, device=device)
        finished = torch.zeros(U * n, dtype=torch.bool, device=device)
        stopped = torch.zeros(U * n, dtype=torch.bool, device=device)
        stop_ids = self.stop_ids.to(device)
        slot = P + S_suffix
        for t in range(n_new):
            token = sample_tokens(logits, params, uniforms[rows, t])
            if self.sync_tokens is not None:
                token = self.sync_tokens(token)
            is_stop = torch.isin(token, stop_ids) & ~finished[rows]
            out[rows, t] = torch.where(finished[rows], -1, token)
            stopped[rows] |= is_stop
            finished[rows] |= is_stop | (t + 1 >= limit[rows])
            if bool(finished.all()):
                break
            if self.compact and bool(finished[rows].any()):
                keep = (~finished[rows]).nonzero()[:, 0]
                for c in cache:
                    c.k, c.v = c.k[keep], c.v[keep]
                rows, valid, token = rows[keep], valid[keep], token[keep]
            valid[:, slot] = True
            slot_t = torch.tensor([slot], device=device)
            positions = (next_pos[rows] + t)[:, None]
            logits = self.decode_step(token[:, None], positions, attention_mask(valid, slot_t), cache, slot_t)
            slot += 1

        results = []
        for r in range(U * n):
            ids = [i for i in out[r].tolist() if i >= 0]
            if stopped[r]:
                ids = ids[:-1]
            results.append(Completion(ids, self.tokenizer.decode(ids), "stop" if stopped[r] else "length"))
        return [results[i:i + n_per_prompt] for i in range(0, len(results), n_per_prompt)]
