"""Chat layouts: how each model family turns a conversation into token ids.

The method never writes a chat format itself: prompts, judge prompts and training data are lists of
{"role", "content"} messages, and the checkpoint's tokenizer lays them out with one of these functions. Each
follows its family's published template (and the family's own code where there is some):

  llama2   Meta's `chat_completion`: <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s> per turn
  mistral  Mistral v0.3 (mistral_common): <s>[INST]{user}[/INST]{answer}</s>, the system text before the last user
           message; [INST] and [/INST] are control tokens
  chatml   Qwen2.5, SmolLM2: <|im_start|>{role}\\n{content}<|im_end|>\\n, with the template's default system prompt
           when a conversation brings none
  llama3   Llama 3.x: <|begin_of_text|> then <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|> per
           message; Llama 3.1's template also always writes a system turn that opens with a preamble
           ("Cutting Knowledge Date: ...")

Control tokens go in as ids and message text is encoded as text, so no message can end its turn and write the
next one (a judged answer forging the judge's reply). Llama-2's markers are text, not control tokens, so in
messages they are broken visibly instead (LLAMA2_TAGS).

Every function takes the tokenizer (for encode, bos_id, eos_id and the control ids in `tokenizer.controls`), the
messages (checked by check_messages) and add_generation_prompt: True ends the ids where the assistant's answer
starts; False encodes a finished dialog, whose ids start with the prompt's (train/data.py relies on it).
"""

ROLES = ("system", "user", "assistant")
CHAT_FORMATS = ("llama2", "mistral", "chatml", "llama3")
# the control tokens each format needs besides BOS and EOS
CONTROLS = {"llama2": (), "mistral": ("[INST]", "[/INST]"), "chatml": ("<|im_start|>", "<|im_end|>"),
            "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}
LLAMA2_TAGS = {"[INST]": "[ INST]", "[/INST]": "[ /INST]", "<<SYS>>": "< <SYS>>", "<</SYS>>": "< </SYS>>"}


def check_messages(messages: list[dict]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    check_messages(messages)
    layout = {"llama2": llama2, "mistral": mistral, "chatml": chatml, "llama3": llama3}[tokenizer.chat_format]
    return layout(tokenizer, list(messages), add_generation_prompt)


def _turns(messages: list[dict], add_generation_prompt: bool, family: str) -> tuple[str | None, list[dict]]:
    """(the leading system message's text or None, the rest), checked to alternate user/assistant from a user turn,
    as Llama-2's and Mistral's templates require."""
    system = None
    if messages and messages[0]["role"] == "system":
        if len(messages) < 2 or messages[1]["role"] != "user":
            raise ValueError("a system message must be followed by a user message")
        system, messages = messages[0]["content"], messages[1:]
    if not messages:
        raise ValueError("encode_chat needs at least one user message")
    for i, m in enumerate(messages):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise ValueError(f"{family} chat roles must alternate user/assistant (after an optional first system "
                             f"message); message {i} is {m['role']!r}, expected {want!r}")
    if messages[-1]["role"] == "assistant" and add_generation_prompt:
        raise ValueError("the dialog ends on an assistant turn: there is nothing to prompt for; "
                         "pass add_generation_prompt=False to encode it as a finished dialog")
    return system, messages


def llama2_plain(text: str) -> str:
    """Message text with Llama-2's chat markers broken, so that only the layout writes them."""
    for tag, broken in LLAMA2_TAGS.items():
        text = text.replace(tag, broken)
    return text


def llama2(tokenizer, messages, add_generation_prompt):
    """Every user turn is its own BOS ... [/INST] sequence and every answer ends in EOS; the system message is
    folded into the first user turn, as Meta does."""
    messages = [{**m, "content": llama2_plain(m["content"])} for m in messages]
    system, messages = _turns(messages, add_generation_prompt, "Llama-2")
    if system is not None:
        messages[0] = {"role": "user", "content": f"<<SYS>>\n{system}\n<</SYS>>\n\n{messages[0]['content']}"}
    ids: list[int] = []
    for user, answer in zip(messages[::2], messages[1::2]):
        ids += tokenizer.encode(f"[INST] {user['content'].strip()} [/INST] {answer['content'].strip()} ",
                                bos=True, eos=True)
    if messages[-1]["role"] == "user":
        ids += tokenizer.encode(f"[INST] {messages[-1]['content'].strip()} [/INST]", bos=True)
    return ids


def mistral(tokenizer, messages, add_generation_prompt):
    """Mistral v0.3: one BOS, [INST] user [/INST] answer EOS per turn. The system text opens the last user message
    (as mistral_common does; Hugging Face's template agrees whenever the dialog ends on a user turn, and drops the
    system text otherwise). sentencepiece's dummy prefix gives each text the space the template writes."""
    system, messages = _turns(messages, add_generation_prompt, "Mistral")
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    inst, end_inst = (tokenizer.controls[name] for name in CONTROLS["mistral"])
    ids = [tokenizer.bos_id]
    for i, m in enumerate(messages):
        if m["role"] == "user":
            text = f"{system}\n\n{m['content']}" if i == last_user and system is not None else m["content"]
            ids += [inst, *tokenizer.encode(text), end_inst]
        else:
            ids += tokenizer.encode(m["content"].strip()) + [tokenizer.eos_id]
    return ids


def chatml(tokenizer, messages, add_generation_prompt):
    """<|im_start|>{role}\\n{content}<|im_end|>\\n per message, any order of roles. Like SmolLM2's and Qwen2.5's
    templates, a conversation that does not open with a system message gets the template's default system prompt
    (tokenizer.default_system; None: no system turn)."""
    if (not messages or messages[0]["role"] != "system") and tokenizer.default_system is not None:
        messages = [{"role": "system", "content": tokenizer.default_system}] + messages
    start, end = (tokenizer.controls[name] for name in CONTROLS["chatml"])
    ids: list[int] = []
    for m in messages:
        ids += [start, *tokenizer.encode(f"{m['role']}\n{m['content']}"), end, *tokenizer.encode("\n")]
    if add_generation_prompt:
        ids += [start, *tokenizer.encode("assistant\n")]
    return ids


def llama3(tokenizer, messages, add_generation_prompt):
    """<|begin_of_text|>, then a header and the stripped content per message, any order of roles, as Meta's
    ChatFormat and the Llama 3 template write them. With tokenizer.system_preamble (Llama 3.1's and 3.2's
    templates: knowledge cutoff and date) the first turn is always the system's: the preamble, then the system
    message's text if there is one."""
    start, end, eot = (tokenizer.controls[name] for name in CONTROLS["llama3"])

    def header(role):
        return [start, *tokenizer.encode(role), end, *tokenizer.encode("\n\n")]

    ids = [tokenizer.bos_id]
    if tokenizer.system_preamble is not None:
        system = messages.pop(0)["content"].strip() if messages and messages[0]["role"] == "system" else ""
        ids += header("system") + tokenizer.encode(tokenizer.system_preamble + system) + [eot]
    for m in messages:
        ids += header(m["role"]) + tokenizer.encode(m["content"].strip()) + [eot]
    if add_generation_prompt:
        ids += header("assistant")
    return ids
