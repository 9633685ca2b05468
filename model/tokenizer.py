"""The project's two tokenizers behind one small interface.

* `SentencePieceTokenizer`: Llama-2's `tokenizer.model`, with the Llama-2 chat layout exactly as
  Meta's `llama/generation.py` builds it (the model was fine-tuned on those ids, so any drift in
  spaces or BOS/EOS placement is a distribution shift, not a cosmetic difference).
* `BPETokenizer`: the GPT-2 style byte-level BPE of the CPU demo model (SmolLM2-135M-Instruct),
  rebuilt from a GGUF file's metadata on top of HF `tokenizers`, with the ChatML layout.

Both give: encode, decode, encode_chat, bos_id, eos_id, pad_id, stop_ids, vocab_size, save; and for
the HF export in model/convert.py, decode_token (one token's text) and save_hf (HF's file only).
`load_tokenizer(directory)` picks the class by the file a checkpoint directory holds.
"""
import json
import re
import shutil
from pathlib import Path

from model.errors import FormatError

ROLES = ("system", "user", "assistant")


def _check_messages(messages: list[dict]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")


class SentencePieceTokenizer:
    """Llama-2's sentencepiece model; chat turns laid out as in Meta's `chat_completion`.

    Llama-2's chat markers are text ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"), so a message that
    contains one would tokenize exactly like the template's own and could open or close a turn (a
    judged answer writing the judge's reply). Meta's code refuses such dialogs; here the markers in
    message content are broken visibly with a space ("[ /INST]", "< </SYS>>"), so that only the
    template writes them. sentencepiece never turns text such as "</s>" into a control id.
    """

    B_INST, E_INST = "[INST]", "[/INST]"
    B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
    TAGS = {"[INST]": "[ INST]", "[/INST]": "[ /INST]", "<<SYS>>": "< <SYS>>", "<</SYS>>": "< </SYS>>"}

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

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(ids))  # control pieces (BOS/EOS) decode to nothing

    def decode_token(self, id: int) -> str:
        """One token's piece, control tokens included ("<s>")."""
        return self.sp.id_to_piece(id)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Llama-2 chat: every user turn is its own BOS ... [/INST] sequence, every answer ends in EOS.

        A leading system message is folded into the first user turn, as Meta does. With
        add_generation_prompt the dialog must end on a user turn (the model answers after
        `[/INST]`); without it, it may also end on an assistant turn, closed by its EOS.
        """
        _check_messages(messages)
        messages = [{**m, "content": self.plain(m["content"])} for m in messages]
        if messages and messages[0]["role"] == "system":
            if len(messages) < 2 or messages[1]["role"] != "user":
                raise ValueError("a system message must be followed by a user message")
            merged = self.B_SYS + messages[0]["content"] + self.E_SYS + messages[1]["content"]
            messages = [{"role": "user", "content": merged}] + list(messages[2:])
        if not messages:
            raise ValueError("encode_chat needs at least one user message")
        for i, m in enumerate(messages):
            want = "user" if i % 2 == 0 else "assistant"
            if m["role"] != want:
                raise ValueError(f"Llama-2 chat roles must alternate user/assistant (after an optional "
                                 f"first system message); message {i} is {m['role']!r}, expected {want!r}")
        if messages[-1]["role"] == "assistant" and add_generation_prompt:
            raise ValueError("the dialog ends on an assistant turn: there is nothing to prompt for; "
                             "pass add_generation_prompt=False to encode it as a finished dialog")
        ids: list[int] = []
        for user, answer in zip(messages[::2], messages[1::2]):
            text = f"{self.B_INST} {user['content'].strip()} {self.E_INST} {answer['content'].strip()} "
            ids += self.encode(text, bos=True, eos=True)
        if messages[-1]["role"] == "user":
            ids += self.encode(f"{self.B_INST} {messages[-1]['content'].strip()} {self.E_INST}", bos=True)
        return ids

    @classmethod
    def plain(cls, text: str) -> str:
        """Message text with Llama-2's chat markers broken (see the class doc)."""
        for tag, broken in cls.TAGS.items():
            text = text.replace(tag, broken)
        return text

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, Path(directory) / "tokenizer.model")

    save_hf = save  # an HF Llama directory holds the same tokenizer.model


# tokenizer.ggml.pre -> the HF pre-tokenizer that splits text the way the merges were learned.
# SmolLM2's own tokenizer.json has Sequence[Digits(individual_digits), ByteLevel(use_regex)], and
# llama.cpp maps "smollm" to the same two regexes ("\p{N}", then GPT-2's). Plain GPT-2 has only the
# second. Any other value (llama.cpp's "default" included, which has extra punctuation/number
# splits) would tokenize differently from what the model was trained on, so it is refused.
PRE_TOKENIZERS = ("gpt2", "smollm")


def _pre_tokenizer(pre: str):
    from tokenizers import pre_tokenizers as pt
    byte_level = pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    return pt.Sequence([pt.Digits(individual_digits=True), byte_level]) if pre == "smollm" else byte_level


_CHATML_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}]*?)<\|im_end\|>")


def _chatml_default_system(template: str, where: str) -> str | None:
    """The default system prompt a ChatML jinja template inserts, if it writes one as a literal."""
    if "<|im_start|>" not in template:
        raise FormatError(f"{where} is not a ChatML template (no <|im_start|>); only ChatML is supported")
    found = _CHATML_SYSTEM.search(template)
    return found.group(1) if found else None


def _read_json(path: Path) -> dict:
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


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) with the ChatML chat layout, as SmolLM2-Instruct uses it.

    Built from vocab + merges rather than taken from transformers, whose GGUF conversion ignores
    `tokenizer.ggml.pre` for "smollm" (no digit splitting). Control tokens are special added tokens
    that decode() drops. Text is always text: encode() spells "<|im_end|>" written in a message out in
    ordinary pieces, and only encode_chat puts the control ids between the messages, so no message
    can close its turn and write the next one (a judged answer forging the judge's reply).
    """

    CONFIG = "tokenizer_config.json"

    def __init__(self, tokenizer, *, bos_id: int, eos_id: int, pad_id: int, stop_ids: list[int],
                 default_system: str | None = None, pre: str = "gpt2"):
        self.tok = tokenizer
        self.tok.encode_special_tokens = True  # see the class doc (a setting of the object, not saved)
        self.im_start, self.im_end = tokenizer.token_to_id("<|im_start|>"), tokenizer.token_to_id("<|im_end|>")
        if self.im_start is None or self.im_end is None:
            raise FormatError("the tokenizer has no <|im_start|> / <|im_end|> tokens, which the ChatML layout needs")
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.stop_ids = list(stop_ids)
        self.default_system = default_system  # used when a conversation does not start with one
        self.pre = pre
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)

    @staticmethod
    def _stop_ids(tok, eos_id: int) -> list[int]:
        """EOS (<|im_end|> for SmolLM2) ends a turn; <|endoftext|> ends a document, so it stops too."""
        eot = tok.token_to_id("<|endoftext|>")
        return [eos_id] + ([eot] if eot is not None and eot != eos_id else [])

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
        default_system = _chatml_default_system(get("tokenizer.chat_template", str),
                                                f"{source}: key 'tokenizer.chat_template'")
        for name in ("<|im_start|>", "<|im_end|>"):
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
        return cls(tok, bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["padding"],
                   stop_ids=cls._stop_ids(tok, ids["eos"]), default_system=default_system, pre=pre)

    @classmethod
    def from_hf(cls, directory) -> "BPETokenizer":
        """A Hugging Face model directory: tokenizer.json + HF's tokenizer_config.json (token strings,
        chat_template). The tokenizer.json brings its own pre-tokenizer, so it is used as is."""
        directory = Path(directory)
        tok, cfg_path = _read_tokenizer_json(directory / "tokenizer.json"), directory / "tokenizer_config.json"
        cfg = _read_json(cfg_path)

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
        if not isinstance(template, str):
            raise FormatError(f"{cfg_path}: key 'chat_template' is missing or not a string")
        default_system = _chatml_default_system(template, f"{cfg_path}: key 'chat_template'")
        eos = token_id("eos_token")
        return cls(tok, bos_id=token_id("bos_token", eos), eos_id=eos, pad_id=token_id("pad_token", eos),
                   stop_ids=cls._stop_ids(tok, eos), default_system=default_system)

    @classmethod
    def load(cls, directory) -> "BPETokenizer":
        """Read what save() wrote: tokenizer.json (HF format) + our tokenizer_config.json."""
        directory = Path(directory)
        tok, cfg_path = _read_tokenizer_json(directory / "tokenizer.json"), directory / cls.CONFIG
        cfg = _read_json(cfg_path)
        for key, kind in (("bos_id", int), ("eos_id", int), ("pad_id", int), ("stop_ids", list),
                          ("chat_format", str), ("pre", str)):
            if not isinstance(cfg.get(key), kind):
                raise FormatError(f"{cfg_path}: key {key!r} is missing or not a {kind.__name__}")
        if cfg["chat_format"] != "chatml":
            raise FormatError(f"{cfg_path}: key 'chat_format' is {cfg['chat_format']!r}, expected 'chatml'")
        size = tok.get_vocab_size(with_added_tokens=True)
        for key in ("bos_id", "eos_id", "pad_id", "stop_ids"):
            ids = cfg[key] if key == "stop_ids" else [cfg[key]]
            if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size for i in ids):
                raise FormatError(f"{cfg_path}: key {key!r} = {cfg[key]!r}: not ids of the vocabulary of {size} "
                                  "(a non-empty list of them for stop_ids)")
        return cls(tok, bos_id=cfg["bos_id"], eos_id=cfg["eos_id"], pad_id=cfg["pad_id"],
                   stop_ids=cfg["stop_ids"], default_system=cfg.get("default_system"), pre=cfg["pre"])

    def save(self, directory) -> None:
        self.save_hf(directory)
        cfg = dict(bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id, stop_ids=self.stop_ids,
                   chat_format="chatml", default_system=self.default_system, pre=self.pre)
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
        """ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message.

        Like SmolLM2's template, a conversation that does not open with a system message gets the
        template's default system prompt. The control tokens are put in as ids and the text between
        them encoded as text: the same ids as HF's apply_chat_template, which splits the rendered text
        at control tokens before encoding the pieces, except that a message's own "<|im_end|>" stays text.
        """
        _check_messages(messages)
        if messages and messages[0]["role"] != "system" and self.default_system is not None:
            messages = [{"role": "system", "content": self.default_system}] + list(messages)
        ids: list[int] = []
        for m in messages:
            ids += [self.im_start, *self.encode(f"{m['role']}\n{m['content']}"), self.im_end, *self.encode("\n")]
        if add_generation_prompt:
            ids += [self.im_start, *self.encode("assistant\n")]
        return ids


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
