"""The project's two tokenizers behind one small interface.

* `SentencePieceTokenizer`: a sentencepiece `tokenizer.model`: Llama-2's, with Meta's chat layout, or
  Mistral v0.3's, with the [INST] control tokens.
* `BPETokenizer`: byte-level BPE on top of HF `tokenizers`, with the ChatML layout (the CPU demo's
  SmolLM2-135M-Instruct, Qwen2.5) or Llama 3's: from a GGUF file's metadata, a Hugging Face tokenizer.json,
  or Meta's tiktoken tokenizer.model.

The layouts themselves are in model/chat.py: each model was fine-tuned on its own ids, so any drift in spaces
or BOS/EOS placement is a distribution shift, not a cosmetic difference.

Both give: encode, decode, encode_chat, bos_id, eos_id, pad_id, stop_ids, vocab_size, save; and for
the HF export in model/convert.py, decode_token (one token's text) and save_hf (HF's file only).
`load_tokenizer(directory)` picks the class by the file a checkpoint directory holds.
"""
import json
import re
import shutil
from pathlib import Path

from model import chat
from model.errors import FormatError

class SentencePieceTokenizer:
    """A sentencepiece model: Llama-2's (chat format "llama2") or Mistral v0.3's ("mistral", told apart by its
    [INST] and [/INST] control pieces). See model/chat.py for the layouts; sentencepiece never turns text such as
    "</s>" or "[INST]" into a control id.
    """

    def __init__(self, model_path):
        path = Path(model_path)
        if not path.is_file():
            raise FormatError(f"{path}: no such file")
        import sentencepiece  # here, not at the top: `import model` works where only the BPE tokenizer is needed
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with a terse message
            raise FormatError(f"{path}: not a readable sentencepiece model ({e})") from e
        if self.sp.vocab_size() == 0:
            raise FormatError(f"{path}: sentencepiece model has an empty vocabulary")
        self.path = path
        self.vocab_size: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise FormatError(f"{path}: model defines no BOS/EOS piece (bos={self.bos_id}, eos={self.eos_id})")
        # Llama-2 has no pad piece (pad_id == -1); padded positions are masked anyway, EOS is a safe filler.
        self.pad_id: int = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eos_id
        self.stop_ids: list[int] = [self.eos_id]
        controls = {name: self.sp.piece_to_id(name) for name in chat.CONTROLS["mistral"]}
        mistral = all(self.sp.id_to_piece(i) == name and self.sp.is_control(i) for name, i in controls.items())
        self.chat_format = "mistral" if mistral else "llama2"
        self.controls = controls if mistral else {}  # Llama-2's markers are text

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(ids))  # control pieces (BOS/EOS, [INST]) decode to nothing

    def decode_token(self, id: int) -> str:
        """One token's piece, control tokens included ("<s>")."""
        return self.sp.id_to_piece(id)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The conversation in the model's layout (model/chat.py). Llama-2 and Mistral alternate user and assistant
        turns after an optional system message; with add_generation_prompt the dialog must end on a user turn."""
        return chat.encode_chat(self, messages, add_generation_prompt)

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, Path(directory) / "tokenizer.model")

    save_hf = save  # an HF Llama or Mistral directory holds the same tokenizer.model


# tokenizer.ggml.pre -> the HF pre-tokenizer that splits text the way the merges were learned.
# SmolLM2's own tokenizer.json has Sequence[Digits(individual_digits), ByteLevel(use_regex)], and
# llama.cpp maps "smollm" to the same two regexes ("\p{N}", then GPT-2's). Plain GPT-2 has only the
# second. Any other value (llama.cpp's "default" included, which has extra punctuation/number
# splits) would tokenize differently from what the model was trained on, so it is refused.
PRE_TOKENIZERS = ("gpt2", "smollm")
# Llama 3's split pattern (Meta's tokenizer.py; tokenizer.json's Split pre-tokenizer holds the same)
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Meta's special tokens for Llama 3.1 and later, ids from the end of the BPE ranks on; 256 in all, the rest
# reserved. Llama 3.0 has the same ids for the ones the chat layout uses.
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
LLAMA3_SPECIAL += [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(LLAMA3_SPECIAL))]
# tokens that end a turn or a document in some family: each one the tokenizer has is a stop id
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


def _pre_tokenizer(pre: str):
    from tokenizers import pre_tokenizers as pt
    byte_level = pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    return pt.Sequence([pt.Digits(individual_digits=True), byte_level]) if pre == "smollm" else byte_level


_CHATML_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}]*?)<\|im_end\|>")
_LLAMA3_CUTOFF = re.compile(r"Cutting Knowledge Date: ([^'\"{}\\]*)\\n")
_LLAMA3_DATE = re.compile(r"set date_string = [\"']([^'\"{}\\]*)[\"']")


def _template_layout(template: str | None, tok, where: str) -> dict:
    """The chat format a jinja template writes (ChatML or Llama 3), and what else it puts in: ChatML's default
    system prompt, Llama 3.1's system preamble. Without a template (a base model), the format the tokenizer's
    control tokens are for. Templates are read, never run."""
    if template is None:
        for chat_format in ("llama3", "chatml"):
            if all(tok.token_to_id(name) is not None for name in chat.CONTROLS[chat_format]):
                return {"chat_format": chat_format}
        raise FormatError(f"{where}: no chat template, and the tokenizer has neither ChatML's nor Llama 3's "
                          "control tokens")
    if "<|im_start|>" in template:
        found = _CHATML_SYSTEM.search(template)
        return {"chat_format": "chatml", "default_system": found.group(1) if found else None}
    if "<|start_header_id|>" in template:
        cutoff = _LLAMA3_CUTOFF.search(template)
        if cutoff is None:  # Llama 3.0: the system turn only when the conversation has one
            return {"chat_format": "llama3"}
        date = _LLAMA3_DATE.search(template)
        if date is None:
            raise FormatError(f"{where} writes a knowledge cutoff but sets no fixed date_string")
        # the template's fixed date, also where transformers would write today's (3.2's strftime_now): a prompt
        # that changed from day to day would change every judgement with it
        return {"chat_format": "llama3",
                "system_preamble": f"Cutting Knowledge Date: {cutoff.group(1)}\nToday Date: {date.group(1)}\n\n"}
    raise FormatError(f"{where} is neither a ChatML (<|im_start|>) nor a Llama 3 (<|start_header_id|>) template; "
                      "only those two byte-level BPE layouts are supported")


def read_json_object(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot read ({e})") from e
    if not isinstance(cfg, dict):
        raise FormatError(f"{path}: expected a JSON object")
    return cfg


def _read_tokenizer_json(path: Path):
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on missing or malformed files
        raise FormatError(f"{path}: not a readable tokenizers file ({e})") from e


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, the alphabet byte-level BPE vocabularies are written in: printable
    Latin-1 bytes stand for themselves, the other 68 for the characters from U+0100 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


_TIKTOKEN_LINE = re.compile(r"([A-Za-z0-9+/]+={0,2}) (\d+)")


def is_tiktoken(path: Path) -> bool:
    """Whether a tokenizer.model is tiktoken's text format (Meta's Llama 3 release) rather than sentencepiece's."""
    try:
        with open(path, "rb") as f:
            first = f.readline(200).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return _TIKTOKEN_LINE.fullmatch(first) is not None


def read_tiktoken(path: Path) -> dict[bytes, int]:
    """A tiktoken BPE file: one "base64-of-the-token's-bytes rank" line per token, ranks 0, 1, 2, ..."""
    import base64
    ranks = {}
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot read as a tiktoken file ({e})") from e
    for n, line in enumerate(lines, 1):
        found = _TIKTOKEN_LINE.fullmatch(line.strip())
        if found is None or int(found.group(2)) != len(ranks):
            raise FormatError(f"{path}: line {n} is not 'base64 {len(ranks)}' (a token and the next rank)")
        token = base64.b64decode(found.group(1), validate=True)
        if not token or token in ranks:
            raise FormatError(f"{path}: line {n} holds an empty or repeated token")
        ranks[token] = len(ranks)
    if not all(bytes([b]) in ranks for b in range(256)):
        raise FormatError(f"{path}: not every single byte is a token, so some text could not be encoded")
    return ranks


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) on top of HF `tokenizers`, with the ChatML or the Llama 3 chat layout.

    Read from a GGUF file's metadata (the demo model: transformers' GGUF conversion ignores `tokenizer.ggml.pre` for
    "smollm", no digit splitting), from a Hugging Face directory's tokenizer.json (Llama 3.x, Qwen2.5, SmolLM2), or
    from Meta's tiktoken tokenizer.model (Llama 3). Control tokens are special added tokens that decode() drops.
    Text is always text: encode() spells "<|im_end|>" or "<|eot_id|>" written in a message out in ordinary pieces,
    and only the chat layout puts control ids in (model/chat.py).
    """

    CONFIG = "tokenizer_config.json"

    def __init__(self, tokenizer, *, bos_id: int, eos_id: int, pad_id: int, stop_ids: list[int],
                 chat_format: str = "chatml", default_system: str | None = None, system_preamble: str | None = None,
                 pre: str = "gpt2"):
        self.tok = tokenizer
        self.tok.encode_special_tokens = True  # see the class doc (a setting of the object, not saved)
        if chat_format not in ("chatml", "llama3"):
            raise FormatError(f"chat format {chat_format!r}: a byte-level BPE tokenizer has 'chatml' or 'llama3'")
        self.chat_format = chat_format
        self.controls = {name: tokenizer.token_to_id(name) for name in chat.CONTROLS[chat_format]}
        missing = [name for name, i in self.controls.items() if i is None]
        if missing:
            raise FormatError(f"the tokenizer has no {' / '.join(missing)} tokens, which the {chat_format} layout needs")
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.stop_ids = list(stop_ids)
        self.default_system = default_system  # ChatML: used when a conversation does not start with a system turn
        self.system_preamble = system_preamble  # Llama 3.1: opens the system turn, which is then always written
        self.pre = pre
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)

    @staticmethod
    def _stop_ids(tok, eos_id: int) -> list[int]:
        """EOS, then every other token of END_TOKENS the vocabulary has: <|im_end|> ends a ChatML turn and
        <|endoftext|> a document; Llama 3 ends a turn with <|eot_id|>, a tool call with <|eom_id|> and a document
        with <|end_of_text|>."""
        ends = [tok.token_to_id(name) for name in END_TOKENS]
        return [eos_id] + [i for i in ends if i is not None and i != eos_id]

    @classmethod
    def from_gguf(cls, metadata: dict, source: str = "GGUF metadata") -> "BPETokenizer":
        """Build from a GGUF key/value dict; `source` (e.g. the file name) is quoted in errors."""
        from tokenizers import AddedToken, Tokenizer, decoders, models

        def get(key, kind):
            if key not in metadata:
                raise FormatError(f"{source}: key {key!r} is missing")
            if not isinstance(metadata[key], kind):
                raise FormatError(f"{source}: key {key!r} has type {type(metadata[key]).__name__}")
            return metadata[key]

        if get("tokenizer.ggml.model", str) != "gpt2":
            raise FormatError(f"{source}: key 'tokenizer.ggml.model' is "
                              f"{metadata['tokenizer.ggml.model']!r}, BPETokenizer reads only 'gpt2'")
        pre = metadata.get("tokenizer.ggml.pre", "gpt2")  # files older than the key were all GPT-2
        if pre not in PRE_TOKENIZERS:
            raise FormatError(f"{source}: key 'tokenizer.ggml.pre' is {pre!r}; supported: {PRE_TOKENIZERS}")
        tokens, types = get("tokenizer.ggml.tokens", list), get("tokenizer.ggml.token_type", list)
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens) or len(types) != len(tokens):
            raise FormatError(f"{source}: keys 'tokenizer.ggml.tokens'/'token_type' have duplicate "
                              f"tokens or differ in length ({len(tokens)} vs {len(types)})")
        merges = []
        for i, m in enumerate(get("tokenizer.ggml.merges", list)):
            pair = m.split(" ")
            if len(pair) != 2:
                raise FormatError(f"{source}: key 'tokenizer.ggml.merges' entry {i} {m!r} is not 'a b'")
            merges.append(tuple(pair))
        ids = {"bos": get("tokenizer.ggml.bos_token_id", int), "eos": get("tokenizer.ggml.eos_token_id", int)}
        ids["padding"] = metadata.get("tokenizer.ggml.padding_token_id", ids["eos"])
        for name, value in ids.items():
            if not isinstance(value, int) or not 0 <= value < len(tokens):
                raise FormatError(f"{source}: key 'tokenizer.ggml.{name}_token_id' = {value!r} "
                                  f"is not an id in the vocabulary of {len(tokens)}")
        template = get("tokenizer.chat_template", str)
        if "<|im_start|>" not in template:
            raise FormatError(f"{source}: key 'tokenizer.chat_template' is not a ChatML template (no <|im_start|>); "
                              "GGUF files are read with ChatML only")
        for name in chat.CONTROLS["chatml"]:
            if name not in vocab or types[vocab[name]] != 3:
                raise FormatError(f"{source}: key 'tokenizer.ggml.tokens' has no control token {name}, "
                                  "which the ChatML template needs")
        try:
            tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        except Exception as e:
            raise FormatError(f"{source}: vocab/merges do not form a BPE model ({e})") from e
        tok.pre_tokenizer = _pre_tokenizer(pre)
        tok.decoder = decoders.ByteLevel()
        # 3 = CONTROL (special, dropped by decode), 4 = USER_DEFINED (matched whole, kept in text).
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types) if k == 3])
        tok.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, k in zip(tokens, types) if k == 4])
        layout = _template_layout(template, tok, f"{source}: key 'tokenizer.chat_template'")
        return cls(tok, bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["padding"],
                   stop_ids=cls._stop_ids(tok, ids["eos"]), pre=pre, **layout)

    @classmethod
    def from_hf(cls, directory) -> "BPETokenizer":
        """A Hugging Face model directory: tokenizer.json + HF's tokenizer_config.json (token strings,
        chat_template). The tokenizer.json brings its own pre-tokenizer, so it is used as is."""
        directory = Path(directory)
        tok, cfg_path = _read_tokenizer_json(directory / "tokenizer.json"), directory / "tokenizer_config.json"
        cfg = read_json_object(cfg_path)

        def token_id(key, default=None):
            text = cfg.get(key)
            text = text.get("content") if isinstance(text, dict) else text
            if text is None and default is not None:
                return default
            if not isinstance(text, str) or tok.token_to_id(text) is None:
                raise FormatError(f"{cfg_path}: key {key!r} = {text!r} is not a token of tokenizer.json")
            return tok.token_to_id(text)

        template = cfg.get("chat_template")
        if template is None and (directory / "chat_template.jinja").is_file():
            template = (directory / "chat_template.jinja").read_text()
        if template is not None and not isinstance(template, str):
            raise FormatError(f"{cfg_path}: key 'chat_template' is not a string (a list of named templates, "
                              "or another value)")
        layout = _template_layout(template, tok, f"{cfg_path}: key 'chat_template'")
        eos = token_id("eos_token")
        try:
            return cls(tok, bos_id=token_id("bos_token", eos), eos_id=eos, pad_id=token_id("pad_token", eos),
                       stop_ids=cls._stop_ids(tok, eos), **layout)
        except FormatError as e:  # a control token the template's layout needs is not in the vocabulary
            raise FormatError(f"{directory / 'tokenizer.json'}: {e}") from None

    @classmethod
    def from_tiktoken(cls, path) -> "BPETokenizer":
        """Meta's Llama 3 tokenizer.model: tiktoken's BPE ranks, Llama 3's split pattern, Meta's special tokens.

        tiktoken merges, at each step, the adjacent pair whose joined bytes have the lowest rank, and takes a whole
        pre-token that is itself a token at once. The same BPE in `tokenizers`: every split of a token into two
        tokens is a merge, ordered by the joined token's rank, and ignore_merges for whole pre-tokens (the
        conversion transformers uses for these files too).
        """
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models
        from tokenizers import pre_tokenizers as pt
        path = Path(path)
        ranks = read_tiktoken(path)
        to_text = _byte_to_unicode()

        def text(token: bytes) -> str:
            return "".join(to_text[b] for b in token)

        merges = []
        for token, rank in ranks.items():
            splits = [(token[:i], token[i:]) for i in range(1, len(token))
                      if token[:i] in ranks and token[i:] in ranks]
            splits.sort(key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
            merges += [(text(left), text(right)) for left, right in splits]
        tok = Tokenizer(models.BPE(vocab={text(t): r for t, r in ranks.items()}, merges=merges, fuse_unk=False,
                                   byte_fallback=False, ignore_merges=True))
        tok.pre_tokenizer = pt.Sequence([pt.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                                         pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL])
        eot = tok.token_to_id("<|eot_id|>")
        return cls(tok, bos_id=tok.token_to_id("<|begin_of_text|>"), eos_id=eot, pad_id=eot,
                   stop_ids=cls._stop_ids(tok, eot), chat_format="llama3")

    @classmethod
    def load(cls, directory) -> "BPETokenizer":
        """Read what save() wrote: tokenizer.json (HF format) + our tokenizer_config.json."""
        directory = Path(directory)
        tok, cfg_path = _read_tokenizer_json(directory / "tokenizer.json"), directory / cls.CONFIG
        cfg = read_json_object(cfg_path)
        for key, kind in (("bos_id", int), ("eos_id", int), ("pad_id", int), ("stop_ids", list),
                          ("chat_format", str), ("pre", str)):
            if not isinstance(cfg.get(key), kind):
                raise FormatError(f"{cfg_path}: key {key!r} is missing or not a {kind.__name__}")
        if cfg["chat_format"] not in ("chatml", "llama3"):
            raise FormatError(f"{cfg_path}: key 'chat_format' is {cfg['chat_format']!r}, expected 'chatml' or 'llama3'")
        for key in ("default_system", "system_preamble"):
            if cfg.get(key) is not None and not isinstance(cfg[key], str):
                raise FormatError(f"{cfg_path}: key {key!r} is not a string or null")
        size = tok.get_vocab_size(with_added_tokens=True)
        for key in ("bos_id", "eos_id", "pad_id", "stop_ids"):
            ids = cfg[key] if key == "stop_ids" else [cfg[key]]
            if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size for i in ids):
                raise FormatError(f"{cfg_path}: key {key!r} = {cfg[key]!r}: not ids of the vocabulary of {size} "
                                  "(a non-empty list of them for stop_ids)")
        try:
            return cls(tok, bos_id=cfg["bos_id"], eos_id=cfg["eos_id"], pad_id=cfg["pad_id"],
                       stop_ids=cfg["stop_ids"], chat_format=cfg["chat_format"],
                       default_system=cfg.get("default_system"), system_preamble=cfg.get("system_preamble"),
                       pre=cfg["pre"])
        except FormatError as e:
            raise FormatError(f"{cfg_path}: {e}") from None

    def save(self, directory) -> None:
        self.save_hf(directory)
        cfg = dict(bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id, stop_ids=self.stop_ids,
                   chat_format=self.chat_format, default_system=self.default_system,
                   system_preamble=self.system_preamble, pre=self.pre)
        (Path(directory) / self.CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")

    def save_hf(self, directory) -> None:
        """Only the file an HF export shares with us: tokenizer.json."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.tok.save(str(Path(directory) / "tokenizer.json"))

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def decode_token(self, id: int) -> str:
        """One token's text, control tokens included ("<|im_end|>")."""
        return self.tok.decode([id], skip_special_tokens=False)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The conversation in the tokenizer's layout (model/chat.py): the same ids as HF's apply_chat_template,
        which splits the rendered text at control tokens before encoding the pieces, except that a message's own
        "<|im_end|>" or "<|eot_id|>" stays text."""
        return chat.encode_chat(self, messages, add_generation_prompt)


def load_tokenizer(directory) -> SentencePieceTokenizer | BPETokenizer:
    """The tokenizer saved in a checkpoint directory: tokenizer.model wins over tokenizer.json."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FormatError(f"{directory}: tokenizer directory does not exist")
    if (directory / "tokenizer.model").is_file():
        return SentencePieceTokenizer(directory / "tokenizer.model")
    if (directory / "tokenizer.json").is_file():
        return BPETokenizer.load(directory)
    raise FormatError(f"{directory}: holds neither tokenizer.model (sentencepiece) nor tokenizer.json (BPE)")
