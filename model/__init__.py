"""The Llama-2 network, its tokenizers, and the checkpoint formats.

    import model
    net, tokenizer = model.load("checkpoints/smollm2-135m")
"""
from model.checkpoint import load, save, save_model
from model.errors import FormatError
from model.llama import PRESETS, KVCache, ModelArgs, Transformer, attention_mask
from model.tokenizer import load_tokenizer

__all__ = ["load", "save", "save_model", "FormatError", "PRESETS", "KVCache", "ModelArgs", "Transformer",
           "attention_mask", "load_tokenizer"]
