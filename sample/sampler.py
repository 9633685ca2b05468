"""The KV-cached sampling engine behind answering, judging and prompt writing: continuous batching.

    sampler = Sampler(model, tokenizer, max_batch_size=16)
    outs = sampler.generate([ids_a, ids_b], SamplingParams(temperature=0.7, top_p=0.9), n=4)
    outs[0][2].text, outs[0][2].finish_reason      # prompt a, sample 2
    for done in sampler.stream(prompts, params, n=4):  # the same, a list of (prompt index, completions)
        ...                                            # each time some prompts are complete

The engine keeps max_batch_size row slots busy. Every (prompt, sample) waits in a queue, longest
prompts first; whenever slots are free the next ones take them, and decoding goes on for all
slots together, so the batch stays full until the queue drains. Its steps (see `stream`):
  1. The prefix common to all prompts of a call (the judge template's opening, say) is prefilled
     once, for one row (`_prefill_prefix`).
  2. Newcomers (`_admit`): the prompts of the rows taking free slots are prefilled together,
     right-padded, each prompt once, on top of the prefix; each prompt's keys and values are
     copied into the slots of its samples (fan-out). A prompt whose samples do not all fit is held
     and copied into later slots without a second prefill.
  3. Decode steps (`_decode_step`): one token for every slot, written into one KV cache that lives
     as long as the engine (slots x a length bucket, grown when a call needs longer rows). Each
     slot has its own length: its new key goes to its own cache position, its rotary position is
     that position, and its mask shows it its own positions only. Attention reads the cache up to
     a bucket past the longest row, not the whole buffer. A step does not wait on the host: which
     rows are done is only looked at every `check_every` steps.
  4. Retiring (`_retire`): the rows that finished leave their slots, which newcomers take.
Nothing is copied when a row finishes (no compaction); a finished row that waits for the next check
records no more tokens (its steps rewrite only its own last cache position, which nothing reads).

Randomness is per row: each (prompt, sample) gets its own seed, from which all its uniforms are
drawn up front, and tokens are drawn by inverse CDF from one uniform per step. So a sample's
tokens do not depend on which other rows shared its steps or which slot it had, which is what lets
an interrupted run resume and produce what an uninterrupted one would have. (Up to rounding: a
row's logits are the same sums whatever shares its steps, but a matrix product with another number of
rows may add them in another order, and in bf16 that can tip a near-tie between two tokens. In fp32 the
tests see identical rows; in bf16 a resumed row can rarely differ from the uninterrupted one.)

With compile=True the decode step is torch.compile'd (CUDA graphs on a GPU) for a fixed number of
rows and power-of-two attention lengths: one compilation per length bucket that a run reaches (the
recompile limit is raised to COMPILED_LENGTHS so that no bucket falls back to eager). Prefill stays
eager (its shapes change with every group of newcomers).
"""
from collections import deque
from dataclasses import dataclass

import torch

TOPK_PREFILTER = 256  # nucleus sampling on a CPU first looks only at the 256 most likely tokens (see sample_tokens)
HEAD_RECOMPUTE = 256  # a non-fp32 head's most likely logits, recomputed in fp32 (see Sampler._logits)
LENGTH_STEP = 64  # eager decode reads the cache up to a multiple of this past the longest row
COMPILED_LENGTHS = 32  # compilations of the decode step allowed (each length bucket of each engine is one)


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
    smallest set of most likely tokens whose mass reaches top_p. On a CPU it is looked for among the
    top TOPK_PREFILTER tokens first (a partial sort); only if some row's nucleus is larger is the
    whole vocabulary sorted, so the result is exact either way. On a GPU the whole vocabulary is
    sorted at once: cheap there, and it keeps the step free of a host sync.
    """
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)  # (B, V)
    k = min(probs.shape[-1], params.top_k or probs.shape[-1])
    if params.top_p == 1.0 and k == probs.shape[-1]:
        sorted_probs, order = probs, None  # plain sampling: no need to sort
    else:
        prefilter = TOPK_PREFILTER if probs.device.type == "cpu" else k
        sorted_probs, order = probs.topk(min(k, prefilter), dim=-1)
        if k > prefilter and not bool((sorted_probs.sum(-1) >= params.top_p).all()):
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


def length_bucket(n: int, compiled: bool, cap: int) -> int:
    """How many cache positions a step reads to cover n: the next multiple of LENGTH_STEP, or for a
    compiled step the next power of two from LENGTH_STEP up (few shapes, few compilations); at most cap."""
    if compiled:
        bucket = LENGTH_STEP
        while bucket < n:
            bucket *= 2
    else:
        bucket = -(-n // LENGTH_STEP) * LENGTH_STEP
    return min(bucket, cap)


@dataclass
class Row:
    """A (prompt, sample) in a slot, as the host knows it."""
    prompt: int  # index into the call's prompts
    sample: int
    length: int  # prompt tokens
    limit: int  # new tokens it may write
    steps: int = 0  # decode steps since it took the slot (an upper bound on its tokens)


class SlotState:
    """The per-slot tensors of a call, on the model's device; row b of each belongs to slot b."""

    def __init__(self, n_slots: int, n_new: int, vocab_size: int, device):
        self.logits = torch.zeros(n_slots, vocab_size, device=device)  # the logits its next token is drawn from
        self.uniforms = torch.zeros(n_slots, n_new, device=device)  # its random numbers, one per new token
        self.out = torch.zeros(n_slots, n_new, dtype=torch.long, device=device)  # its new tokens
        self.n_out = torch.zeros(n_slots, dtype=torch.long, device=device)  # how many, the stop token included
        self.length = torch.ones(n_slots, dtype=torch.long, device=device)  # prompt tokens (1 for an empty slot)
        self.limit = torch.zeros(n_slots, dtype=torch.long, device=device)
        self.finished = torch.ones(n_slots, dtype=torch.bool, device=device)  # empty slots count as finished
        self.stopped = torch.zeros(n_slots, dtype=torch.bool, device=device)


class Sampler:
    def __init__(self, model, tokenizer, max_batch_size: int = 16, share_prefix: bool = True,
                 compile: bool = False, sync_tokens=None, check_every: int | None = None):
        """max_batch_size: row slots decoded together. share_prefix=False prefills every row on its own (the
        baseline the benchmark compares with). sync_tokens: called on each step's sampled tokens (B,) before
        they are used, e.g. to give every tensor-parallel rank rank 0's tokens (sample/tp.py's
        broadcast_tokens). check_every: decode steps between looks at which rows finished (default 1 on a
        CPU, where looking costs nothing, 8 on a GPU, which can then queue steps ahead)."""
        self.model, self.tokenizer = model, tokenizer
        self.sync_tokens = sync_tokens
        self.max_batch_size, self.share_prefix = max_batch_size, share_prefix
        self.device = model.tok_embeddings.weight.device
        self.check_every = check_every or (1 if self.device.type == "cpu" else 8)
        self.stop_ids = torch.tensor(tokenizer.stop_ids, dtype=torch.long, device=self.device)
        self.compiled = compile
        self.cache = None  # the engine's KV cache: max_batch_size rows, made on first use, grown when needed
        self.forward_step = self._forward_step
        if compile:
            from torch import _dynamo
            # Every bucket is a compilation of the one _forward_step: past dynamo's recompile limit (8) the step
            # would silently run eager. (A process-wide setting; it only ever goes up. Before torch 2.7 its
            # name was cache_size_limit.)
            limit = "recompile_limit" if hasattr(_dynamo.config, "recompile_limit") else "cache_size_limit"
            setattr(_dynamo.config, limit, max(getattr(_dynamo.config, limit), COMPILED_LENGTHS))
            mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs on GPUs
            self.forward_step = torch.compile(self._forward_step, mode=mode, dynamic=False)

    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1,
                 seeds: list[list[int]] | None = None) -> list[list[Completion]]:
        """n completions for each prompt (token ids, chat template already applied).

        seeds[i][j] seeds sample j of prompt i; by default prompt i, sample j gets i * n + j.
        """
        results: list[list[Completion]] = [[] for _ in prompts]
        for done in self.stream(prompts, params, n, seeds):
            for i, completions in done:
                results[i] = completions
        return results

    @torch.no_grad()
    def stream(self, prompts: list[list[int]], params: SamplingParams, n: int = 1,
               seeds: list[list[int]] | None = None):
        """Like generate, but yields, each time some prompts have all n samples done, a list of
        (prompt index, its n completions)."""
        if not prompts:
            return
        if seeds is None:
            seeds = [[i * n + j for j in range(n)] for i in range(len(prompts))]
        max_len = self.model.args.max_seq_len
        if any(not p for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        too_long = [len(p) for p in prompts if len(p) >= max_len]
        if too_long:
            raise ValueError(f"prompt of {too_long[0]} tokens leaves no room to generate "
                             f"within max_seq_len {max_len}")
        limits = [min(params.max_new_tokens, max_len - len(p)) for p in prompts]
        self._reserve(max(len(p) + m for p, m in zip(prompts, limits)))
        # The shared prefix leaves at least one token in every suffix, whose logits start decoding.
        P = min(common_prefix_len(prompts), min(len(p) for p in prompts) - 1) if self.share_prefix else 0
        prefix = self._prefill_prefix(prompts[0][:P])
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))  # little padding among newcomers
        queue = deque(Row(i, j, len(prompts[i]), limits[i]) for i in order for j in range(n))
        state = SlotState(self.max_batch_size, max(limits), self.model.args.vocab_size, self.device)
        slots: list[Row | None] = [None] * self.max_batch_size
        held = None  # (prompt index, its keys and values, its last logits): samples of it still wait
        done: dict[int, list] = {}
        while queue or any(slots):
            free = [b for b, row in enumerate(slots) if row is None][:len(queue)]
            if free:
                newcomers = [queue.popleft() for _ in free]
                held = self._admit(state, free, newcomers, prompts, seeds, prefix, held,
                                   holds=bool(queue) and queue[0].prompt == newcomers[-1].prompt)
                for b, row in zip(free, newcomers):
                    slots[b] = row
            rows = self.max_batch_size if self.compiled else max(b for b, row in enumerate(slots) if row) + 1
            reach = max(row.length + min(row.steps + self.check_every, row.limit) for row in slots if row)
            length = length_bucket(reach, self.compiled, self.cache[0].k.shape[2])
            for _ in range(self.check_every):
                self._decode_step(state, params, rows, length)
            for row in slots:
                if row:
                    row.steps += self.check_every
            finished = self._retire(state, slots, rows)
            complete = []
            for row, completion in finished:
                done.setdefault(row.prompt, [None] * n)[row.sample] = completion
                if all(done[row.prompt]):
                    complete.append((row.prompt, done.pop(row.prompt)))
            if complete:
                yield complete

    def _reserve(self, length: int) -> None:
        """A cache of max_batch_size rows that holds `length` positions (grown to the next multiple of
        LENGTH_STEP if not: the compiled step's power-of-two buckets stop at the capacity, so the buffer
        need not be one, and for a 7B model at 64 slots a power of two could be tens of GiB more)."""
        if self.cache is not None and self.cache[0].k.shape[2] >= length:
            return
        self.cache = None  # free the old one first
        capacity = length_bucket(length, False, self.model.args.max_seq_len)
        self.cache = self.model.make_cache(self.max_batch_size, capacity)

    def _prefill_prefix(self, prefix: list[int]):
        """The keys and values of the shared prefix, for one row (a cache of length len(prefix)), or None."""
        if not prefix:
            return None
        cache = self.model.make_cache(1, len(prefix))
        slots = torch.arange(len(prefix), device=self.device)
        self.model(torch.tensor([prefix], device=self.device), cache=cache, slots=slots, return_hidden=True)
        return cache

    def _prefill(self, prompts: list[list[int]], prefix):
        """Prefill prompts (each starting with the prefix) together, right-padded: a cache of their rows
        and the logits (m, V) of each one's last token."""
        P = prefix[0].k.shape[2] if prefix else 0
        suffixes = [p[P:] for p in prompts]
        S = max(len(s) for s in suffixes)
        cache = self.model.make_cache(len(prompts), P + S)
        if prefix:
            for c, pc in zip(cache, prefix):
                c.k[:, :, :P], c.v[:, :, :P] = pc.k, pc.v
        tokens = torch.full((len(prompts), S), self.tokenizer.pad_id, dtype=torch.long)
        for r, s in enumerate(suffixes):
            tokens[r, :len(s)] = torch.tensor(s)
        # Right padding: a real token's causal window holds only the prefix and its own earlier tokens.
        hidden = self.model(tokens.to(self.device), cache=cache, slots=torch.arange(P, P + S, device=self.device),
                            return_hidden=True)  # (m, S, dim)
        last = torch.tensor([len(s) - 1 for s in suffixes], device=self.device)
        return cache, self._logits(hidden[torch.arange(len(prompts), device=self.device), last])

    def _admit(self, state: SlotState, free: list[int], newcomers: list[Row], prompts, seeds, prefix, held,
               holds: bool):
        """Put newcomers into the free slots: prefill their prompts (except a held one), copy each prompt's
        keys and values into its samples' slots, and set the slots' state. Returns what to hold for the
        next admission: the last newcomer's prompt if `holds` (more of its samples wait)."""
        fan_out = self.share_prefix
        key = (lambda row: row.prompt) if fan_out else (lambda row: (row.prompt, row.sample))
        new_keys = list(dict.fromkeys(key(row) for row in newcomers if held is None or key(row) != held[0]))
        sources = {}  # prompt key -> (cache, row in it, logits)
        if new_keys:
            cache, logits = self._prefill([prompts[k if fan_out else k[0]] for k in new_keys], prefix)
            sources.update((k, (cache, r, logits[r])) for r, k in enumerate(new_keys))
        if held is not None:
            sources[held[0]] = held[1]
        for source in {id(s[0]): s[0] for s in sources.values()}.values():  # one copy per prefill cache
            picks = [(b, sources[key(row)][1]) for b, row in zip(free, newcomers) if sources[key(row)][0] is source]
            dst = torch.tensor([b for b, _ in picks], device=self.device)
            src = torch.tensor([r for _, r in picks], device=self.device)
            width = source[0].k.shape[2]
            for c, s in zip(self.cache, source):
                c.k[:, :, :width].index_copy_(0, dst, s.k.index_select(0, src))
                c.v[:, :, :width].index_copy_(0, dst, s.v.index_select(0, src))
        dst = torch.tensor(free, device=self.device)
        state.logits[dst] = torch.stack([sources[key(row)][2] for row in newcomers])
        draws = torch.zeros(len(newcomers), state.uniforms.shape[1])
        for r, row in enumerate(newcomers):  # the row's own random numbers, whatever its slot
            draws[r, :row.limit] = torch.rand(row.limit, generator=torch.Generator().manual_seed(
                int(seeds[row.prompt][row.sample])))
        state.uniforms[dst] = draws.to(self.device)
        state.length[dst] = torch.tensor([row.length for row in newcomers], device=self.device)
        state.limit[dst] = torch.tensor([row.limit for row in newcomers], device=self.device)
        state.n_out[dst], state.finished[dst], state.stopped[dst] = 0, False, False
        last = newcomers[-1]
        return (key(last), sources[key(last)]) if holds and fan_out else None

    def _decode_step(self, state: SlotState, params: SamplingParams, rows: int, length: int) -> None:
        """One token for the first `rows` slots, from their logits; then their next logits. A finished row
        (or an empty slot) records nothing and stays at its last position; all on the device, no host sync."""
        s = state
        live = ~s.finished[:rows]
        n_out = s.n_out[:rows]
        at = n_out.clamp(max=s.out.shape[1] - 1)[:, None]  # (rows, 1): where its next token goes
        token = sample_tokens(s.logits[:rows], params, s.uniforms[:rows].gather(1, at)[:, 0])
        if self.sync_tokens is not None:
            token = self.sync_tokens(token)
        s.out[:rows].scatter_(1, at, torch.where(live, token, s.out[:rows].gather(1, at)[:, 0])[:, None])
        s.stopped[:rows] |= live & torch.isin(token, self.stop_ids)
        n_out += live
        s.finished[:rows] |= s.stopped[:rows] | (n_out >= s.limit[:rows])
        position = (s.length[:rows] + n_out - 1)[:, None]  # (rows, 1): the new token's cache position
        s.logits[:rows] = self.forward_step(token[:, None], position, length)

    def _forward_step(self, tokens: torch.Tensor, position: torch.Tensor, length: int) -> torch.Tensor:
        """tokens (B, 1) at cache positions (B, 1) of the first B slots -> logits (B, V) in fp32, attending to
        each row's positions up to its own among the first `length`."""
        mask = torch.arange(length, device=tokens.device)[None, :] <= position  # (B, length)
        hidden = self.model(tokens, positions=position, mask=mask[:, None, None, :], cache=self.cache,
                            slots=position, return_hidden=True)
        return self._logits(hidden[:, -1])

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head's logits (B, V) in fp32 for hidden states (B, dim). A bf16 product rounds logits to bf16
        (0.125 apart above 16), which moves the nucleus; an fp32 product of a bf16 head is several times
        slower on a CPU. So the head runs in the model's dtype and its HEAD_RECOMPUTE most likely logits,
        the ones sampling looks at closely, are recomputed in fp32 (the rest keep their rounding, which
        changes the softmax's normaliser by far less than it changes any one token's probability)."""
        weight = self.model.output_weight
        logits = (hidden @ weight.T).float()
        if weight.dtype == torch.float32:
            return logits
        top = logits.topk(min(HEAD_RECOMPUTE, logits.shape[-1]), dim=-1).indices  # (B, K)
        rows = max(1, 2 ** 24 // (top.shape[1] * hidden.shape[1]))  # (rows, K, dim) fp32 at most 64 MiB at a time
        exact = torch.cat([torch.einsum("bd,bkd->bk", h.float(), weight[t].float())
                           for h, t in zip(hidden.split(rows), top.split(rows))])
        return logits.scatter(1, top, exact)

    def _retire(self, state: SlotState, slots: list, rows: int) -> list[tuple[Row, Completion]]:
        """The finished rows among the first `rows` slots, as completions; their slots are freed."""
        finished = state.finished[:rows].tolist()
        leaving = [b for b in range(rows) if slots[b] is not None and finished[b]]
        if not leaving:
            return []
        index = torch.tensor(leaving, device=self.device)
        records = torch.cat([state.n_out[index, None], state.stopped[index, None].long(), state.out[index]], 1)
        result = []
        for b, (n_out, stopped, *out) in zip(leaving, records.tolist()):
            ids = out[:n_out - 1] if stopped else out[:n_out]
            result.append((slots[b], Completion(ids, self.tokenizer.decode(ids), "stop" if stopped else "length")))
            slots[b] = None
        return result
