"""The Llama-2 network (with Llama 3.1's rope scaling and Qwen2's q, k, v biases), written out in one file.

It follows Meta's original `model.py` (parameter names included, so Meta
checkpoints load without renaming) with three additions the rest of the
project needs: explicit per-row positions and an attention mask for padded
batches, a static KV cache for the sampler, and `return_hidden=True` so the
trainers can compute log-probs from the final hidden states without a full
logits tensor. Parallelism (FSDP, tensor parallel, torch.compile) is applied
from outside by `train/` and `sample/`; this file knows nothing of it.
"""
import math
import reprlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from model.settings import from_mapping

try:  # optional, CUDA only; scaled_dot_product_attention is the fallback everywhere
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None


# The largest value each integer field may take (the smallest is 1): far above any released Llama, and low
# enough that no header can make us build a billion layers or allocate terabytes.
INT_LIMITS = {"dim": 2**16, "n_layers": 1024, "n_heads": 2**16, "n_kv_heads": 2**16, "vocab_size": 2**24,
              "multiple_of": 2**16, "max_seq_len": 2**20}
MAX_FFN_WIDTH = 2**20


def _is_number(value) -> bool:
    """An int or a finite float: not a bool, a string, nan, inf, or an int too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_int(name: str, value, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise ValueError(f"{name} = {reprlib.repr(value)}: must be an integer from 1 to {high}")


def _positive_float(name: str, value) -> float:
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{name} = {reprlib.repr(value)}: must be a positive finite number")
    return float(value)


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None  # None: same as n_heads (no grouped-query attention)
    vocab_size: int = 32000
    multiple_of: int = 256  # the FFN hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None
    ffn_hidden_dim: Optional[int] = None  # explicit FFN size (HF configs give it); overrides the rule above
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Llama 3.1's rope scaling (Hugging Face's rope_type "llama3", Meta's use_scaled_rope): the rotary frequencies
    # whose wavelength is beyond the original context are divided by the factor, those under it / high_freq_factor
    # kept, those between blended. None: no scaling (Llama-2, Llama 3.0).
    rope_scaling_factor: Optional[float] = None
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192
    max_seq_len: int = 4096
    tie_embeddings: bool = False  # output head shares the token embedding matrix
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2 / Qwen2.5)
    dropout: float = 0.0  # on each residual branch, training only (the paper fine-tunes with 0.1)

    def __post_init__(self):
        """Check every field's type and range, so that params.json or a converted header that cannot make a
        working model (a string, a zero, a billion layers) is refused here rather than in a forward or an
        allocation; ValueError names the field."""
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name, high in INT_LIMITS.items():
            _check_int(name, getattr(self, name), high)
        if self.ffn_hidden_dim is not None:
            _check_int("ffn_hidden_dim", self.ffn_hidden_dim, MAX_FFN_WIDTH)
        self.norm_eps = _positive_float("norm_eps", self.norm_eps)
        self.rope_theta = _positive_float("rope_theta", self.rope_theta)
        if self.rope_scaling_factor is not None:
            self.rope_scaling_factor = _positive_float("rope_scaling_factor", self.rope_scaling_factor)
        self.rope_low_freq_factor = _positive_float("rope_low_freq_factor", self.rope_low_freq_factor)
        self.rope_high_freq_factor = _positive_float("rope_high_freq_factor", self.rope_high_freq_factor)
        if self.rope_high_freq_factor <= self.rope_low_freq_factor:
            raise ValueError(f"rope_high_freq_factor {self.rope_high_freq_factor} must be above rope_low_freq_factor "
                             f"{self.rope_low_freq_factor}")
        _check_int("rope_original_max_seq_len", self.rope_original_max_seq_len, INT_LIMITS["max_seq_len"])
        if self.ffn_dim_multiplier is not None:
            self.ffn_dim_multiplier = _positive_float("ffn_dim_multiplier", self.ffn_dim_multiplier)
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout = {reprlib.repr(self.dropout)}: must be a number in [0, 1)")
        self.dropout = float(self.dropout)
        for name in ("tie_embeddings", "qkv_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} = {reprlib.repr(getattr(self, name))}: must be true or false")
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim {self.dim}, n_heads {self.n_heads}, n_kv_heads {self.n_kv_heads}: "
                             "dim must divide by n_heads and n_heads by n_kv_heads")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head_dim {self.dim // self.n_heads} must be even for rotary embeddings")
        if not 1 <= self.hidden_dim <= MAX_FFN_WIDTH:
            raise ValueError(f"multiple_of {self.multiple_of} and ffn_dim_multiplier {self.ffn_dim_multiplier} "
                             f"give an FFN width of {self.hidden_dim}, not from 1 to {MAX_FFN_WIDTH}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: Meta's rule (2/3 of 4*dim, scaled, rounded up) unless given explicitly."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_dict(cls, d: dict, where: str = "ModelArgs") -> "ModelArgs":
        """ModelArgs from a params.json mapping; unknown keys are refused, values checked by __post_init__."""
        return from_mapping(cls, d, where, check_types=False)


LLAMA3 = dict(vocab_size=128256, rope_theta=500000.0, max_seq_len=131072)
QWEN25 = dict(rope_theta=1e6, norm_eps=1e-6, max_seq_len=32768, qkv_bias=True)
PRESETS = {
    "llama2-7b": ModelArgs(dim=4096, n_layers=32, n_heads=32, vocab_size=32000),
    "llama2-13b": ModelArgs(dim=5120, n_layers=40, n_heads=40, vocab_size=32000),
    "llama2-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000,
                            multiple_of=4096, ffn_dim_multiplier=1.3),
    "smollm2-135m": ModelArgs(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152,
                              rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True),
    # Llama 3.x: 128k vocabulary, rope theta 500000 with Llama 3.1's scaling (3.2's small models: factor 32), a 128k
    # context; 3.2-1B/3B tie their embeddings
    "llama3.2-1b": ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_hidden_dim=8192, tie_embeddings=True,
                             rope_scaling_factor=32.0, **LLAMA3),
    "llama3.2-3b": ModelArgs(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, ffn_hidden_dim=8192, tie_embeddings=True,
                             rope_scaling_factor=32.0, **LLAMA3),
    "llama3.1-8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_hidden_dim=14336,
                             rope_scaling_factor=8.0, **LLAMA3),
    "llama3.1-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_hidden_dim=28672,
                              rope_scaling_factor=8.0, **LLAMA3),
    # Qwen2.5: biases on q, k and v, rope theta 1e6; the small ones tie their embeddings
    "qwen2.5-0.5b": ModelArgs(dim=896, n_layers=24, n_heads=14, n_kv_heads=2, ffn_hidden_dim=4864, vocab_size=151936,
                              tie_embeddings=True, **QWEN25),
    "qwen2.5-1.5b": ModelArgs(dim=1536, n_layers=28, n_heads=12, n_kv_heads=2, ffn_hidden_dim=8960, vocab_size=151936,
                              tie_embeddings=True, **QWEN25),
    "qwen2.5-7b": ModelArgs(dim=3584, n_layers=28, n_heads=28, n_kv_heads=4, ffn_hidden_dim=18944, vocab_size=152064,
                            **QWEN25),
    "mistral-7b-v0.3": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_hidden_dim=14336,
                                 vocab_size=32768, rope_theta=1e6, max_seq_len=32768),
    # Random weights, for tests: GQA, an FFN that is not a power of two, a small vocabulary.
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=16,
                      max_seq_len=256),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in fp32 and cast back, as Meta's model does: bf16 sums of squares lose too much.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rotary_frequencies(args: ModelArgs, device=None) -> torch.Tensor:
    """The rotary angle per position of each pair of a head's dimensions, (head_dim/2,) in fp32: theta^(-2i/d),
    with Llama 3.1's scaling when args.rope_scaling_factor is set (Meta's apply_scaling)."""
    d = args.head_dim
    inv_freq = 1.0 / args.rope_theta ** (torch.arange(0, d, 2, device=device).float() / d)
    if args.rope_scaling_factor is None:
        return inv_freq
    original, low, high = args.rope_original_max_seq_len, args.rope_low_freq_factor, args.rope_high_freq_factor
    wavelength = 2 * math.pi / inv_freq
    smooth = ((original / wavelength - low) / (high - low)).clamp(0, 1)  # 0: beyond original / low, 1: under / high
    return (1 - smooth) * inv_freq / args.rope_scaling_factor + smooth * inv_freq


def rotary_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor):
    """cos and sin of the rotary angles, (B, T, head_dim/2) in fp32, for integer positions (B, T) and the
    frequencies of rotary_frequencies.

    Computed per forward from the positions instead of read from a precomputed
    table: it is cheap, has no length limit, and leaves the model without
    buffers that would need re-initialising after building it on the meta device.
    """
    angles = positions.float()[..., None] * inv_freq  # (B, T, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x0, x1), (x2, x3), ... of each head: Meta's layout, not HF's halves."""
    B, T, H, D = x.shape
    xf = x.float().view(B, T, H, D // 2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(3).type_as(x)


class KVCache(nn.Module):
    """Static key/value buffers for one layer: (B, n_kv_heads, max_len, head_dim).

    Cache positions ("slots") are written either at slots shared by every row (a prefill of padded
    prompts) or at a slot per row (the sampler's decode step, where each row is at its own length). Each row's rotary positions and its attention mask are the caller's business.
    """

    def __init__(self, batch_size, max_len, n_kv_heads, head_dim, dtype, device=None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, n_kv_heads, T, head_dim) at slots (T,), the same for all rows, or (B, T), one per
        row; return the buffers of the rows written: all of them, or with per-row slots the first B."""
        if slots.dim() == 1:
            self.k.index_copy_(2, slots, k)
            self.v.index_copy_(2, slots, v)
            return self.k, self.v
        B = k.shape[0]
        rows = torch.arange(B, device=slots.device)[:, None]  # (B, 1), with slots (B, T): one cell per token
        self.k[rows, :, slots] = k.transpose(1, 2)  # the indexed cells are (B, T, n_kv_heads, head_dim)
        self.v[rows, :, slots] = v.transpose(1, 2)
        return self.k[:B], self.v[:B]


def attention_mask(key_valid: torch.Tensor, query_slots: torch.Tensor) -> torch.Tensor:
    """Boolean mask (B, 1, T, S), True = may attend, for queries at slots (T,) over keys (B, S).

    Causal over slots, restricted to keys that hold real tokens (not padding).
    A query may always see its own slot, so a padding query's row is never
    empty (an all-masked row would make softmax produce NaN).
    """
    S = key_valid.shape[1]
    key_slots = torch.arange(S, device=key_valid.device)
    causal = key_slots[None, :] <= query_slots[:, None]  # (T, S)
    own = key_slots[None, :] == query_slots[:, None]
    return ((causal & key_valid[:, None, None, :]) | own)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention: q (B, n_heads, T, head_dim) over k, v (B, n_kv_heads, S, head_dim) -> like q.

    mask: boolean, broadcastable to (B, 1, T, S) or per head (B, n_heads, T, S), True = may attend;
    None = causal (T == S).
    The fused kernels accumulate the softmax in fp32. Without a mask, SDPA's enable_gqa reads each K/V
    head for its group of query heads (flash attention takes that). With a mask, flash attention is
    out and the memory-efficient kernel takes no unequal head counts, which would leave the math kernel
    (repeated K/V, the whole T x S score matrix). So grouped-query attention with a mask folds each
    query group into the query length: the n_heads / n_kv_heads query heads that share a K/V head
    become one head with group * T queries, all under that head's mask rows. That is ordinary
    attention with equal head counts, exactly the same sums, which the fused kernels accept.
    """
    B, H, T, D = q.shape
    n_kv = k.shape[1]
    if mask is None or H == n_kv:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              enable_gqa=H != n_kv)
    group, S = H // n_kv, k.shape[2]
    folded = q.reshape(B, n_kv, group * T, D)  # row g*T + t of K/V head j: query t of head j*group + g
    mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if T > 1 or mask.shape[1] > 1:  # (one query whose mask is the same for all heads: it broadcasts as it is)
        mask = mask.expand(mask.shape[0], mask.shape[1], T, S)                 # (B|1, 1|H, T, S)
        mask = mask.repeat(1, 1, group, 1) if mask.shape[1] == 1 else mask.reshape(mask.shape[0], n_kv, group * T, S)
    out = F.scaled_dot_product_attention(folded, k, v, attn_mask=mask)        # (B, n_kv, group*T, D)
    return out.reshape(B, H, T, D)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=args.qkv_bias)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x, cos, sin, mask=None, cache: Optional[KVCache] = None, slots=None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        if cache is None and mask is None and flash_attn_func is not None and x.is_cuda \
                and x.dtype in (torch.float16, torch.bfloat16):
            out = flash_attn_func(q, k, v, causal=True)  # (B, T, n_heads, head_dim); GQA built in
            return self.wo(out.reshape(B, T, -1))

        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, head_dim)
        if cache is not None:
            k, v = cache.update(slots, k, v)  # (B, n_kv_heads, S, head_dim)
            if mask is not None and mask.shape[-1] < k.shape[2]:  # keys past the mask's are not read
                k, v = k[:, :, :mask.shape[-1]], v[:, :, :mask.shape[-1]]
            if mask is None:  # no padding: causal over the slots written so far
                mask = attention_mask(torch.ones(B, k.shape[2], dtype=torch.bool, device=x.device), slots)
        out = attend(q, k, v, mask)  # (B, n_heads, T, head_dim)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x, cos, sin, mask=None, cache=None, slots=None):
        h = x + self.dropout(self.attention(self.attention_norm(x), cos, sin, mask, cache, slots))
        return h + self.dropout(self.feed_forward(self.ffn_norm(h)))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        # With tied embeddings there is no separate head: one parameter, one name in the checkpoint.
        self.output = None if args.tie_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)

    @property
    def output_weight(self) -> torch.Tensor:
        """The (vocab_size, dim) matrix that turns hidden states into logits."""
        return self.tok_embeddings.weight if self.output is None else self.output.weight

    def init_weights(self, std: float = 0.02, seed: Optional[int] = None):
        """Random weights (tests, and from-scratch experiments): normal(0, std) matrices, unit norms."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
        return self

    def make_cache(self, batch_size: int, max_len: int, dtype=None, device=None) -> list[KVCache]:
        """One static KVCache per layer, sized for batch_size rows of up to max_len tokens."""
        p = self.tok_embeddings.weight
        return [KVCache(batch_size, max_len, layer.attention.n_kv_heads, self.args.head_dim,
                        dtype or p.dtype, device or p.device) for layer in self.layers]

    def forward(self, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, cache: Optional[list[KVCache]] = None,
                slots: Optional[torch.Tensor] = None, return_hidden: bool = False) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab_size), or final hidden states (B, T, dim).

        positions (B, T): rotary positions per row (default 0..T-1, or `slots` with a cache).
        mask: boolean, broadcastable to (B, 1, T, S), True = may attend; default causal.
        cache, slots (T,) or (B, T): read and write the KV cache at these slots (see KVCache); a mask over
        fewer keys than the cache holds reads only the first mask.shape[-1] slots.
        """
        B, T = tokens.shape
        if cache is not None and slots is None:
            raise ValueError("a KV cache needs the slots (T,) to write the new keys and values at")
        if slots is not None and slots.dim() == 2 and mask is None:
            raise ValueError("per-row slots (B, T) need a mask: the default one is causal over slots shared by all rows")
        if positions is None:
            positions = slots if slots is not None else torch.arange(T, device=tokens.device)
            positions = positions.expand(B, T)
        cos, sin = rotary_cos_sin(positions, rotary_frequencies(self.args, tokens.device))
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, None if cache is None else cache[i], slots)
        h = self.norm(h)
        if return_hidden:
            return h
        return F.linear(h, self.output_weight)  # (B, T, vocab_size)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

