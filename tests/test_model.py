"""The hand-written Llama against transformers' LlamaForCausalLM, and its cache and masks against itself
recomputed from scratch."""
import json
import shutil

import pytest
import torch

import model
from model.convert import convert_hf, export_hf
from model.llama import PRESETS, ModelArgs, Transformer, attend, attention_mask
from model.tokenizer import SentencePieceTokenizer

transformers = pytest.importorskip("transformers", reason="transformers is the reference implementation")


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# Llama 3.1's rope scaling, with an original context of 64 so that the tiny head's 8 frequencies fall in all three
# bands (wavelengths 2 pi 500000^(k/8): 6.3 under 64 / 4, kept; 32.5 between, blended; the rest beyond 64, scaled)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def hf_model(n_kv_heads, tie, rope_theta=10000.0, seed=0, rope=None):
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=n_kv_heads, vocab_size=400,
                                   max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=tie,
                                   rope_parameters={"rope_type": "default", **(rope or {}), "rope_theta": rope_theta})
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # larger than the default init, so logits are far from uniform
        for name, p in m.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("n_kv_heads,tie,theta,rope", [(2, False, 10000.0, None), (4, True, 100000.0, None),
                                                        (2, True, 500000.0, LLAMA3_ROPE)],
                         ids=["gqa-untied", "mha-tied", "llama3.1-rope"])
def test_logits_match_transformers(tmp_path, sp_model_file, n_kv_heads, tie, theta, rope):
    ref = hf_model(n_kv_heads, tie, theta, rope=rope)
    ref.save_pretrained(tmp_path / "hf")
    shutil.copy(sp_model_file, tmp_path / "hf" / "tokenizer.model")
    convert_hf(tmp_path / "hf", tmp_path / "ours")
    ours, _ = model.load(tmp_path / "ours")
    assert ours.args.tie_embeddings == tie and ours.args.n_kv_heads == n_kv_heads

    assert ours.args.rope_scaling_factor == (rope and rope["factor"])
    T = 150 if rope else 29  # past the scaled model's original context
    tokens = torch.randint(0, 256, (3, T))
    with torch.no_grad():
        expected = ref(tokens).logits
        got = ours(tokens)
    assert got.shape == expected.shape == (3, T, 400)
    assert rel_err(got, expected) < 1e-4
    pad = torch.ones(3, T, dtype=torch.bool)
    pad[1, :T // 3] = False                              # a ragged batch: one row left-padded
    positions = (pad.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = ref(tokens, attention_mask=pad.long(), position_ids=positions).logits
        got = ours(tokens, positions=positions, mask=attention_mask(pad, torch.arange(T)))
    assert rel_err(got[pad], padded[pad]) < 1e-4
    if rope:  # and through the KV cache, a token at a time after a prefill, and exported back to transformers
        with torch.no_grad():
            cache = ours.make_cache(batch_size=3, max_len=T)
            steps = [ours(tokens[:, :100], cache=cache, slots=torch.arange(100))]
            steps += [ours(tokens[:, t:t + 1], cache=cache, slots=torch.tensor([t])) for t in range(100, T)]
        assert rel_err(torch.cat(steps, dim=1), expected) < 1e-4
        export_hf(tmp_path / "ours", tmp_path / "exported")
        again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "exported", dtype=torch.float32).eval()
        with torch.no_grad():
            assert rel_err(again(tokens).logits, expected) < 1e-4


def test_qwen2_logits_match_transformers(tmp_path, sp_model_file):
    """Qwen2 / Qwen2.5 (biases on q, k and v, rope theta 1e6, tied embeddings): converted from transformers' own
    Qwen2ForCausalLM, the logits of a padded batch and through the KV cache match; exported back, transformers gives
    them again."""
    cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=400, max_position_embeddings=128,
                                   rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    torch.manual_seed(0)
    ref = transformers.Qwen2ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    assert ref.model.layers[0].self_attn.q_proj.bias is not None
    ref.save_pretrained(tmp_path / "hf")
    shutil.copy(sp_model_file, tmp_path / "hf" / "tokenizer.model")
    convert_hf(tmp_path / "hf", tmp_path / "ours")
    ours, _ = model.load(tmp_path / "ours")
    assert ours.args.qkv_bias and ours.args.tie_embeddings and ours.args.rope_theta == 1e6
    tokens = torch.randint(0, 256, (3, 31))
    pad = torch.ones(3, 31, dtype=torch.bool)
    pad[1, :7] = False                                   # a left-padded row
    positions = (pad.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = ref(tokens, attention_mask=pad.long(), position_ids=positions).logits
        got = ours(tokens, positions=positions, mask=attention_mask(pad, torch.arange(31)))
    assert rel_err(got[pad], expected[pad]) < 1e-4
    with torch.no_grad():  # and through the KV cache, a token at a time after a prefill
        cache = ours.make_cache(batch_size=3, max_len=31)
        steps = [ours(tokens[:, :20], cache=cache, slots=torch.arange(20))]
        steps += [ours(tokens[:, t:t + 1], cache=cache, slots=torch.tensor([t])) for t in range(20, 31)]
        assert rel_err(torch.cat(steps, dim=1), ref(tokens).logits) < 1e-4
    export_hf(tmp_path / "ours", tmp_path / "exported")
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["model_type"] == "qwen2"
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported", dtype=torch.float32).eval()
    with torch.no_grad():
        assert rel_err(again(tokens).logits, ref(tokens).logits) < 1e-4
    cfg.use_sliding_window = True
    (tmp_path / "sliding").mkdir()
    cfg.save_pretrained(tmp_path / "sliding")
    with pytest.raises(model.FormatError, match="sliding-window attention is not implemented"):
        convert_hf(tmp_path / "sliding", tmp_path / "no")


def test_mistral_logits_match_transformers(tmp_path, mistral_sp_model_file):
    """Mistral v0.3 (no sliding window, rope theta 1e6): converted from transformers' MistralForCausalLM with a
    Mistral tokenizer, the logits of a padded batch and through the KV cache match; exported, it is a Mistral
    directory again. v0.1's sliding window is refused."""
    cfg = transformers.MistralConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=400, max_position_embeddings=128,
                                     rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False,
                                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    torch.manual_seed(0)
    ref = transformers.MistralForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "hf")
    shutil.copy(mistral_sp_model_file, tmp_path / "hf" / "tokenizer.model")
    convert_hf(tmp_path / "hf", tmp_path / "ours")
    ours, tokenizer = model.load(tmp_path / "ours")
    assert tokenizer.chat_format == "mistral" and ours.args.rope_theta == 1e6 and not ours.args.qkv_bias
    tokens = torch.randint(0, 400, (3, 40))
    pad = torch.ones(3, 40, dtype=torch.bool)
    pad[2, :11] = False                                  # a left-padded row
    positions = (pad.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = ref(tokens, attention_mask=pad.long(), position_ids=positions).logits
        got = ours(tokens, positions=positions, mask=attention_mask(pad, torch.arange(40)))
        assert rel_err(got[pad], expected[pad]) < 1e-4
        plain = ref(tokens).logits
        cache = ours.make_cache(batch_size=3, max_len=40)
        steps = [ours(tokens[:, :30], cache=cache, slots=torch.arange(30))]
        steps += [ours(tokens[:, t:t + 1], cache=cache, slots=torch.tensor([t])) for t in range(30, 40)]
    assert rel_err(torch.cat(steps, dim=1), plain) < 1e-4
    export_hf(tmp_path / "ours", tmp_path / "exported")
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert (exported["model_type"], exported["sliding_window"]) == ("mistral", None)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported", dtype=torch.float32).eval()
    assert isinstance(again, transformers.MistralForCausalLM)
    with torch.no_grad():
        assert rel_err(again(tokens).logits, plain) < 1e-4
    cfg.sliding_window = 64  # shorter than the context of 128
    (tmp_path / "sliding").mkdir()
    cfg.save_pretrained(tmp_path / "sliding")
    with pytest.raises(model.FormatError, match="sliding_window 64 is shorter than the context of 128"):
        convert_hf(tmp_path / "sliding", tmp_path / "no")


def test_llama3_rope_frequencies_by_hand():
    """Meta's apply_scaling, computed here frequency by frequency: kept above the high-frequency wavelength,
    divided by the factor beyond the low one, blended between."""
    import math
    from model.llama import rotary_frequencies
    args = ModelArgs(dim=64, n_heads=4, n_kv_heads=4, rope_theta=500000.0, rope_scaling_factor=8.0,
                     rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_seq_len=64)
    expected = []
    for i in range(0, 16, 2):
        freq = 1 / 500000.0 ** (i / 16)
        wavelength = 2 * math.pi / freq
        if wavelength < 64 / 4:
            expected.append(freq)
        elif wavelength > 64 / 1:
            expected.append(freq / 8)
        else:
            smooth = (64 / wavelength - 1) / (4 - 1)
            expected.append((1 - smooth) * freq / 8 + smooth * freq)
    assert rotary_frequencies(args).tolist() == pytest.approx(expected, rel=1e-6)
    assert 0 < sum(e != pytest.approx(f, rel=1e-3) and e != pytest.approx(f / 8, rel=1e-3) for e, f in
                   zip(expected, [1 / 500000.0 ** (i / 16) for i in range(0, 16, 2)]))   # one is blended
    plain = ModelArgs(dim=64, n_heads=4, n_kv_heads=4, rope_theta=500000.0)
    assert rotary_frequencies(plain).tolist() == pytest.approx([1 / 500000.0 ** (i / 16) for i in range(0, 16, 2)])
    with pytest.raises(ValueError, match="rope_high_freq_factor 1.0 must be above rope_low_freq_factor 2.0"):
        ModelArgs(rope_low_freq_factor=2.0, rope_high_freq_factor=1.0)


@pytest.mark.parametrize("tie", [False, True])
def test_export_hf_round_trip(tmp_path, sp_model_file, tie):
    args = ModelArgs(**{**vars(PRESETS["tiny"]), "tie_embeddings": tie, "vocab_size": 400})  # the tokenizer's
    ours = Transformer(args).init_weights(std=0.08, seed=1).eval()
    model.save_model(tmp_path / "ours", ours, SentencePieceTokenizer(sp_model_file))
    export_hf(tmp_path / "ours", tmp_path / "hf")
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tokens = torch.randint(0, args.vocab_size, (2, 23))
    with torch.no_grad():
        assert rel_err(ours(tokens), ref(tokens).logits) < 1e-4
    # and the exported checkpoint converts back to the same weights
    convert_hf(tmp_path / "hf", tmp_path / "back")
    back, _ = model.load(tmp_path / "back")
    for name, p in ours.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], p, rtol=0, atol=0)


def tiny(seed=0, **overrides):
    return Transformer(ModelArgs(**{**vars(PRESETS["tiny"]), **overrides})).init_weights(std=0.08, seed=seed).eval()


@torch.no_grad()
def test_kv_cache_prefill_then_decode_matches_full_forward():
    net = tiny()
    tokens = torch.randint(0, 256, (2, 20))
    full = net(tokens)
    cache = net.make_cache(batch_size=2, max_len=24)
    got = [net(tokens[:, :12], cache=cache, slots=torch.arange(12))]
    for t in range(12, 20):
        got.append(net(tokens[:, t:t + 1], cache=cache, slots=torch.tensor([t])))
    torch.testing.assert_close(torch.cat(got, dim=1), full, rtol=1e-5, atol=1e-5)


def math_attention(q, k, v, mask):
    """SDPA's math kernel with K/V heads repeated for their query groups: the path attend() avoids."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    group = q.shape[1] // k.shape[1]
    with sdpa_kernel(SDPBackend.MATH):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), attn_mask=mask, is_causal=mask is None)


@torch.no_grad()
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (6, 2), (9, 3)])
@pytest.mark.parametrize("case", ["decode", "prefill", "causal", "per-head mask", "2-d mask"])
def test_attend_equals_the_math_kernel(dtype, tol, n_heads, n_kv_heads, case):
    """Grouped-query attention with a mask, folded into a longer query so that a fused kernel takes it,
    gives the math kernel's output: for MHA and GQA, decoding (one query over a padded cache), prefill
    (a padded batch) and causal training attention."""
    B, D = 3, 16
    T, S = {"decode": (1, 37), "causal": (13, 13)}.get(case, (9, 23))
    g = torch.Generator().manual_seed(n_heads * 100 + T)
    q = torch.randn(B, n_heads, T, D, generator=g).to(dtype)
    k, v = (torch.randn(B, n_kv_heads, S, D, generator=g).to(dtype) for _ in range(2))
    valid = torch.rand(B, S, generator=g) > 0.3
    valid[:, -T:] = True
    mask = None if case == "causal" else attention_mask(valid, torch.arange(S - T, S))     # (B, 1, T, S)
    if case == "per-head mask":
        own_slot = torch.arange(S)[None, :] == torch.arange(S - T, S)[:, None]                # (T, S)
        mask = mask & (torch.rand(B, n_heads, T, S, generator=g) > 0.2) | own_slot
    if case == "2-d mask":
        mask = torch.rand(T, S, generator=g) > 0.4
        mask[:, 0] = True
    got = attend(q, k, v, mask)
    assert got.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), math_attention(q, k, v, mask).float(), rtol=tol, atol=tol)


@torch.no_grad()
def test_left_padded_batch_matches_each_row_alone():
    """Rows of different lengths, left-padded into one batch, give each row's own logits."""
    net = tiny()
    rows = [torch.randint(0, 256, (n,)) for n in (5, 11, 8)]
    S = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), S, dtype=torch.long)
    valid = torch.zeros(len(rows), S, dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, S - len(r):], valid[i, S - len(r):] = r, True
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    slots = torch.arange(S)
    batched = net(tokens, positions=positions, mask=attention_mask(valid, slots))

    # the same with a KV cache: prefill all but the last token, then one decode step
    cache = net.make_cache(len(rows), S)
    net(tokens[:, :-1], positions=positions[:, :-1], mask=attention_mask(valid, slots[:-1]),
        cache=cache, slots=slots[:-1])
    last = net(tokens[:, -1:], positions=positions[:, -1:], mask=attention_mask(valid, slots[-1:]),
               cache=cache, slots=slots[-1:])
    for i, r in enumerate(rows):
        alone = net(r[None])
        torch.testing.assert_close(batched[i, S - len(r):], alone[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(last[i, 0], alone[0, -1], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_hidden_states_give_the_logits():
    net = tiny(tie_embeddings=True)
    tokens = torch.randint(0, 256, (2, 9))
    hidden = net(tokens, return_hidden=True)
    assert hidden.shape == (2, 9, 64)
    torch.testing.assert_close(hidden @ net.tok_embeddings.weight.T, net(tokens))


@torch.no_grad()
def test_bf16_forward_stays_close_to_fp32():
    net = tiny()
    tokens = torch.randint(0, 256, (2, 16))
    ref = net(tokens)
    low = net.to(torch.bfloat16)(tokens)
    assert low.dtype == torch.bfloat16
    assert rel_err(low, ref) < 3e-2


def test_dropout_only_in_training():
    net = tiny(dropout=0.1)
    tokens = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(net(tokens), net(tokens))
        net.train()
        assert not torch.allclose(net(tokens), net(tokens))


def test_model_args_reject_unknown_keys_and_bad_shapes():
    with pytest.raises(ValueError, match="ModelArgs: unknown key 'n_layer' \\(did you mean 'n_layers'\\?\\)"):
        ModelArgs.from_dict({"dim": 64, "n_layer": 2})
    with pytest.raises(ValueError, match="n_heads"):
        ModelArgs(dim=64, n_heads=3)


def test_presets_have_the_published_sizes():
    with torch.device("meta"):
        counts = {k: Transformer(PRESETS[k]).num_params() for k in PRESETS if k != "tiny"}
    # Parameter counts of the released checkpoints (Meta's model cards; the others' safetensors totals)
    assert counts == {"llama2-7b": 6_738_415_616, "llama2-13b": 13_015_864_320, "llama2-70b": 68_976_648_192,
                      "smollm2-135m": 134_515_008, "llama3.2-1b": 1_235_814_400, "llama3.2-3b": 3_212_749_824,
                      "llama3.1-8b": 8_030_261_248, "llama3.1-70b": 70_553_706_496, "qwen2.5-0.5b": 494_032_768,
                      "qwen2.5-1.5b": 1_543_714_304, "qwen2.5-7b": 7_615_616_512, "mistral-7b-v0.3": 7_248_023_552}


def test_per_row_cache_slots_need_a_mask():
    """Per-row slots (B, T) say each row is at its own length: the default mask (causal over slots shared by
    all rows) would be the wrong one, so it is refused rather than built."""
    net = Transformer(PRESETS["tiny"]).init_weights(seed=0)
    cache = net.make_cache(batch_size=2, max_len=8)
    with pytest.raises(ValueError, match="per-row slots"):
        net(torch.tensor([[3], [4]]), cache=cache, slots=torch.tensor([[2], [5]]))
