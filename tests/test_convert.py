"""Checkpoint conversion: Meta's sharded release, the demo GGUF against transformers' own GGUF loading,
sharded safetensors, and every kind of bad input the converters and the loader must refuse clearly."""
import json
import pathlib

import numpy as np
import pytest
import torch

import model
from model.convert import convert_gguf, convert_hf, convert_meta, export_hf, meta_rope_params
from model.errors import FormatError
from model.llama import PRESETS, ModelArgs, Transformer
from model.tokenizer import SentencePieceTokenizer

# How Meta's fairscale layers split each tensor over model-parallel ranks, written out independently
# of model/convert.py: ColumnParallelLinear splits the output rows, RowParallelLinear the input
# columns, ParallelEmbedding (Llama-2) the embedding columns, VocabParallelEmbedding (Llama 3) its rows;
# norms are replicated.
COLUMN_PARALLEL = ("wq", "wk", "wv", "w1", "w3", "output")
ROW_PARALLEL = ("wo", "w2")


def meta_shards(state: dict, mp: int, vocab_parallel: bool = False) -> list[dict]:
    shards = [{} for _ in range(mp)]
    for name, t in state.items():
        kind = name.split(".")[-2]
        if kind in COLUMN_PARALLEL or (kind == "tok_embeddings" and vocab_parallel):
            parts = t.chunk(mp, dim=0)
        elif kind in ROW_PARALLEL or kind == "tok_embeddings":
            parts = t.chunk(mp, dim=1)
        else:
            parts = [t.clone() for _ in range(mp)]
        for shard, part in zip(shards, parts):
            shard[name] = part.clone()
    for shard in shards:
        shard["rope.freqs"] = torch.randn(8)  # Llama-2 releases carry this table; it must be skipped
    return shards


def write_meta_release(directory: pathlib.Path, sp_model_file, mp=2) -> Transformer:
    directory.mkdir()
    args = ModelArgs(**{**vars(PRESETS["tiny"]), "vocab_size": 400})  # the test tokenizer's size
    net = Transformer(args).init_weights(seed=3)
    for i, shard in enumerate(meta_shards(net.state_dict(), mp)):
        torch.save(shard, directory / f"consolidated.{i:02d}.pth")
    params = {"dim": args.dim, "multiple_of": args.multiple_of, "n_heads": args.n_heads,
              "n_kv_heads": args.n_kv_heads, "n_layers": args.n_layers, "norm_eps": args.norm_eps,
              "vocab_size": -1}
    (directory / "params.json").write_text(json.dumps(params))
    (directory / "tokenizer.model").write_bytes(pathlib.Path(sp_model_file).read_bytes())
    return net


def test_meta_release_with_two_shards_converts_back_exactly(tmp_path, sp_model_file):
    original = write_meta_release(tmp_path / "meta", sp_model_file, mp=2)
    convert_meta(tmp_path / "meta", tmp_path / "ours")
    loaded, tokenizer = model.load(tmp_path / "ours")
    assert loaded.args.vocab_size == 400 and tokenizer.vocab_size == 400
    assert loaded.args.max_seq_len == 4096  # Llama-2's context, absent from Meta's params.json
    got, want = loaded.state_dict(), original.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def write_tiktoken(path: pathlib.Path) -> int:
    """A tiktoken BPE file as Meta's Llama 3 release has one: every byte, then "he", "ll", "hell", "hello"; the
    number of ranks."""
    import base64
    tokens = [bytes([b]) for b in range(256)] + [b"he", b"ll", b"hell", b"hello"]
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    return len(tokens)


def test_meta_llama3_release_with_two_shards_merges_to_the_one_shard_model(tmp_path):
    """Llama 3.1's layout: a tiktoken tokenizer.model with Meta's 256 special tokens after its ranks, use_scaled_rope,
    the embedding split along the vocabulary; two shards and one convert to the same model."""
    n_ranks = write_tiktoken(tmp_path / "tokenizer.model")
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=n_ranks + 256, multiple_of=16,
                     ffn_dim_multiplier=1.3, rope_theta=500000.0)
    net = Transformer(args).init_weights(seed=3)
    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": n_ranks + 256, "multiple_of": 16,
              "ffn_dim_multiplier": 1.3, "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": True}
    for mp in (1, 2):
        release = tmp_path / f"meta-{mp}"
        release.mkdir()
        for i, shard in enumerate(meta_shards(net.state_dict(), mp, vocab_parallel=True)):
            del shard["rope.freqs"]  # (Llama 3 releases have none)
            torch.save(shard, release / f"consolidated.{i:02d}.pth")
        (release / "params.json").write_text(json.dumps(params))
        (release / "tokenizer.model").write_bytes((tmp_path / "tokenizer.model").read_bytes())
        convert_meta(release, tmp_path / f"ours-{mp}")
    one, tokenizer = model.load(tmp_path / "ours-1")
    two, _ = model.load(tmp_path / "ours-2")
    for name, tensor in net.state_dict().items():
        assert torch.equal(one.state_dict()[name], tensor) and torch.equal(two.state_dict()[name], tensor), name
    scaling = [one.args.rope_scaling_factor, one.args.rope_low_freq_factor, one.args.rope_high_freq_factor,
               one.args.rope_original_max_seq_len]
    assert scaling == [8.0, 1.0, 4.0, 8192] and one.args.max_seq_len == 131072  # Meta's apply_scaling; 128k
    assert tokenizer.chat_format == "llama3" and tokenizer.encode("hello") == [n_ranks - 1]
    assert (tokenizer.bos_id, tokenizer.eos_id) == (n_ranks, n_ranks + 9)  # <|begin_of_text|>, <|eot_id|>
    assert tokenizer.encode_chat([{"role": "user", "content": "hello"}])[:2] == [n_ranks, n_ranks + 6]


def test_meta_scaled_rope_factor_is_32_for_llama32_small_and_8_otherwise():
    """Meta's 3.2 1B/3B params.json say use_scaled_rope with no factor; their factor is 32 (their config.json on
    Hugging Face, and our presets), 3.1's 8; a factor given in the file wins."""
    base = {"n_layers": 16, "use_scaled_rope": True}
    for preset in ("llama3.2-1b", "llama3.2-3b", "llama3.1-8b", "llama3.1-70b"):
        args = PRESETS[preset]
        assert meta_rope_params({**base, "dim": args.dim}, "p")["rope_scaling_factor"] == args.rope_scaling_factor
    assert PRESETS["llama3.2-1b"].rope_scaling_factor == 32 and PRESETS["llama3.1-8b"].rope_scaling_factor == 8
    assert meta_rope_params({**base, "dim": 2048, "rope_scaling_factor": 16.0}, "p")["rope_scaling_factor"] == 16
    assert "rope_scaling_factor" not in meta_rope_params({"dim": 4096}, "p")
    with pytest.raises(FormatError, match="p: rope_scaling_factor without use_scaled_rope"):
        meta_rope_params({"dim": 4096, "rope_scaling_factor": 8.0}, "p")


# the tiny preset with the test tokenizer's 400 tokens (a checkpoint's tokenizer must fit its model)
TINY = ModelArgs(**{**vars(PRESETS["tiny"]), "vocab_size": 400})


def test_sharded_safetensors_round_trip(tmp_path, sp_model_file):
    net = Transformer(TINY).init_weights(seed=4)
    model.save_model(tmp_path / "ckpt", net, SentencePieceTokenizer(sp_model_file), max_shard_bytes=60_000)
    files = sorted(p.name for p in (tmp_path / "ckpt").glob("*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(net.state_dict())
    loaded, _ = model.load(tmp_path / "ckpt")
    for name, p in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p)


def test_checkpoint_replaced_atomically_on_failure(tmp_path, sp_model_file):
    tok = SentencePieceTokenizer(sp_model_file)
    model.save_model(tmp_path / "ckpt", Transformer(TINY).init_weights(seed=5), tok)

    def failing():
        yield "tok_embeddings.weight", torch.zeros(400, 64)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.save(tmp_path / "ckpt", TINY, failing(), tok)
    model.load(tmp_path / "ckpt")  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # and no temporary left behind


# ---------------------------------------------------------------- the demo model

@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory, demo_gguf):
    out = tmp_path_factory.mktemp("demo") / "smollm2-135m"
    convert_gguf(demo_gguf, out)
    return out


def test_demo_gguf_logits_match_transformers_gguf_loading(demo_gguf, demo_checkpoint):
    transformers = pytest.importorskip("transformers", reason="transformers is the reference implementation")
    pytest.importorskip("gguf", reason="transformers needs the gguf package to read GGUF files")
    ref = transformers.AutoModelForCausalLM.from_pretrained(demo_gguf.parent, gguf_file=demo_gguf.name,
                                                            dtype=torch.float32).eval()
    ours, tokenizer = model.load(demo_checkpoint)
    assert ours.args == ModelArgs(**{**vars(PRESETS["smollm2-135m"]), "ffn_hidden_dim": 1536,
                                     "norm_eps": ours.args.norm_eps})
    tokens = torch.tensor([tokenizer.encode_chat([{"role": "user", "content": "Name three primary colours."}])])
    with torch.no_grad():
        want, got = ref(tokens).logits, ours(tokens)
    err = ((got.double() - want.double()).norm() / want.double().norm()).item()
    assert err < 1e-3
    assert torch.equal(got[0, -1].argmax(), want[0, -1].argmax())


@torch.no_grad()
def test_demo_model_answers_a_chat_prompt_sensibly(demo_checkpoint):
    net, tokenizer = model.load(demo_checkpoint)
    ids = tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    for _ in range(12):  # greedy, recomputing the whole sequence: the sampler is tested elsewhere
        ids.append(int(net(torch.tensor([ids]))[0, -1].argmax()))
        if ids[-1] in tokenizer.stop_ids:
            break
    answer = tokenizer.decode(ids[len(tokenizer.encode_chat([{"role": "user", "content": "x"}])) - 1:])
    assert "Paris" in answer, answer


# ---------------------------------------------------------------- bad input

def test_missing_checkpoint_directory(tmp_path):
    with pytest.raises(FormatError, match=r"nowhere/params.json: no such file"):
        model.load(tmp_path / "nowhere")


def test_truncated_safetensors(tmp_path, sp_model_file):
    model.save_model(tmp_path / "ckpt", Transformer(PRESETS["tiny"]), SentencePieceTokenizer(sp_model_file))
    f = tmp_path / "ckpt" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(FormatError, match=r"ckpt/model.safetensors: not a readable safetensors file"):
        model.load(tmp_path / "ckpt")


def test_params_that_do_not_fit_the_weights(tmp_path, sp_model_file):
    model.save_model(tmp_path / "ckpt", Transformer(PRESETS["tiny"]), SentencePieceTokenizer(sp_model_file))
    params = tmp_path / "ckpt" / "params.json"
    good = json.loads(params.read_text())
    params.write_text(json.dumps({**good, "multiple_of": 32}))
    with pytest.raises(FormatError, match=r"feed_forward.w1.weight has shape \[176, 64\] but params.json "
                                          r"implies \[192, 64\]"):
        model.load(tmp_path / "ckpt")
    params.write_text(json.dumps({**good, "n_layers": 3}))
    with pytest.raises(FormatError, match=r"weights do not match params.json: missing \['layers.2"):
        model.load(tmp_path / "ckpt")
    params.write_text(json.dumps({**good, "n_layer": 3}))
    with pytest.raises(FormatError, match=r"params.json: unknown key 'n_layer' \(did you mean 'n_layers'\?\)"):
        model.load(tmp_path / "ckpt")
    params.write_text("{\"dim\": 64,")
    with pytest.raises(FormatError, match=r"params.json: Expecting"):
        model.load(tmp_path / "ckpt")


class Payload:
    """Unpickling this would run code (create a file): weights_only loading must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_pth_with_pickled_objects_is_refused_not_run(tmp_path, sp_model_file):
    write_meta_release(tmp_path / "meta", sp_model_file, mp=1)
    marker = tmp_path / "was-run"
    shard = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    torch.save({**shard, "extra": Payload(marker)}, tmp_path / "meta" / "consolidated.00.pth")
    with pytest.raises(FormatError, match=r"consolidated.00.pth: cannot be loaded as a file of tensors"):
        convert_meta(tmp_path / "meta", tmp_path / "ours")
    assert not marker.exists() and not (tmp_path / "ours").exists()


def test_truncated_pth(tmp_path, sp_model_file):
    write_meta_release(tmp_path / "meta", sp_model_file, mp=2)
    f = tmp_path / "meta" / "consolidated.01.pth"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(FormatError, match=r"consolidated.01.pth: cannot be loaded"):
        convert_meta(tmp_path / "meta", tmp_path / "ours")


def test_gguf_with_an_unsupported_tensor_type(tmp_path):
    gguf = pytest.importorskip("gguf", reason="the gguf package writes the test file")
    w = gguf.GGUFWriter(tmp_path / "m.gguf", arch="llama")
    w.add_block_count(1)
    w.add_embedding_length(256)
    w.add_head_count(4)
    w.add_feed_forward_length(512)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_context_length(64)
    w.add_tensor("token_embd.weight", np.random.randn(32, 256).astype(np.float32))
    # Q2_K: 256 values per 84-byte block; a valid layout, a type we do not dequantise.
    w.add_tensor("blk.0.attn_q.weight", np.zeros((256, 84), dtype=np.uint8),
                 raw_dtype=gguf.GGMLQuantizationType.Q2_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(FormatError, match=r"m.gguf: .*blk.0.attn_q.weight.*Q2_K"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


CONVERSATIONS = [
    [{"role": "user", "content": "Name three primary colours."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. How can I help?"},
     {"role": "user", "content": "Tell me a joke about judges."}],
]


def test_export_hf_tokenizer_and_chat_template_match_ours(tmp_path, sp_model_file, demo_gguf):
    """transformers, reading the exported directory, lays out chats with the same ids as we do."""
    transformers = pytest.importorskip("transformers", reason="transformers is the reference implementation")
    from model.gguf_file import read_gguf
    from model.tokenizer import BPETokenizer, load_tokenizer
    bpe = BPETokenizer.from_gguf(read_gguf(demo_gguf).metadata)
    for name, tok in (("sp", SentencePieceTokenizer(sp_model_file)), ("bpe", bpe)):
        args = ModelArgs(**{**vars(PRESETS["tiny"]), "vocab_size": tok.vocab_size})
        model.save_model(tmp_path / name, Transformer(args), tok)
        export_hf(tmp_path / name, tmp_path / f"{name}-hf")
        ref = transformers.AutoTokenizer.from_pretrained(tmp_path / f"{name}-hf")
        for messages in CONVERSATIONS:
            want = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
            assert tok.encode_chat(messages) == list(want), (name, messages)
        convert_hf(tmp_path / f"{name}-hf", tmp_path / f"{name}-back")
        back = load_tokenizer(tmp_path / f"{name}-back")
        assert [back.encode_chat(m) for m in CONVERSATIONS] == [tok.encode_chat(m) for m in CONVERSATIONS]
        assert (back.bos_id, back.eos_id, back.stop_ids) == (tok.bos_id, tok.eos_id, tok.stop_ids)
