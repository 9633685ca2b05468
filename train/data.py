"""Training data: chat examples tokenised once, cut by one rule, batched in a seeded order.

Input lines
  SFT: {"prompt": str, "response": str} or {"messages": [... ending on a user turn], "response": str}
  DPO: {"prompt": str (a user message), "chosen": str, "rejected": str}; other fields are ignored.

Which tokens carry loss. A response's tokens are those of the whole conversation,
encode_chat(messages + [answer], add_generation_prompt=False), after the prompt's,
encode_chat(messages), which must be a prefix of them. They end at the answer's end-of-turn token
(EOS for Llama-2 and Mistral, <|im_end|> for ChatML, <|eot_id|> for Llama 3), which carries loss so that the model
learns to stop; whatever the template writes after it (ChatML's "\\n") is dropped.

Truncation. A sequence longer than max_seq_len keeps its whole prompt and loses the end of its
response (which then has no end-of-turn token). An example whose prompt leaves no room for a
response token is dropped, and so is a DPO pair whose responses are the same after the cut. Both
are counted and reported, as are examples skipped for empty responses or chosen == rejected.

Order. Each epoch is a permutation of the examples drawn from (seed, epoch); consecutive runs of
batch_size examples are the optimizer steps (a last, partial batch is dropped). Within a step the
examples are sorted by length and cut into micro-batches, and rank r of `world` takes micro-batches
r, r + world, r + 2 * world, ... so every rank runs the same number of forwards.
"""
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import torch

from model.errors import FormatError
from model.jsonl import iter_jsonl


@dataclass
class Sequence:
    tokens: list[int]  # prompt + response
    n_prompt: int      # the first n_prompt tokens carry no loss


@dataclass
class Report:
    """What reading a data set kept, cut and skipped (with where, for the message)."""
    kept: int = 0
    truncated: int = 0
    skipped: Counter = field(default_factory=Counter)
    where: dict = field(default_factory=dict)  # reason -> first few "FILE:LINE"

    def skip(self, reason: str, where: str):
        self.skipped[reason] += 1
        self.where.setdefault(reason, [])
        if len(self.where[reason]) < 3:
            self.where[reason].append(where)

    def __str__(self):
        total = self.kept + sum(self.skipped.values())
        text = f"{self.kept} of {total} kept, {self.truncated} of them cut to max_seq_len"
        for reason, n in self.skipped.items():
            text += f"; skipped {n}: {reason} ({', '.join(self.where[reason])}{', ...' * (n > 3)})"
        return text


def response_tokens(tokenizer, messages: list[dict], response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids up to and including its end-of-turn token); see the module doc."""
    prompt = tokenizer.encode_chat(messages, add_generation_prompt=True)
    full = tokenizer.encode_chat(messages + [{"role": "assistant", "content": response}],
                                 add_generation_prompt=False)
    if full[:len(prompt)] != prompt:
        raise ValueError("the chat template does not encode the prompt as a prefix of prompt + response, "
                         "so the response tokens cannot be told apart")
    reply = full[len(prompt):]
    ends = [i for i, t in enumerate(reply) if t in tokenizer.stop_ids]
    if not ends:
        raise ValueError("the chat template ended the answer without an end-of-turn token")
    return prompt, reply[:ends[-1] + 1]


def _messages(row: dict, where: str) -> list[dict]:
    if ("prompt" in row) == ("messages" in row):
        raise FormatError(f"{where}: give exactly one of \"prompt\" (a string) or \"messages\" (a list)")
    if "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise FormatError(f"{where}: \"prompt\" must be a string")
        return [{"role": "user", "content": row["prompt"]}]
    messages = row["messages"]
    if not (isinstance(messages, list) and messages and isinstance(messages[-1], dict)
            and messages[-1].get("role") == "user"):
        raise FormatError(f"{where}: \"messages\" must be a non-empty list of messages ending with a user turn")
    return messages


def _encode(tokenizer, messages, response, where) -> tuple[list[int], list[int]]:
    try:
        return response_tokens(tokenizer, messages, response)
    except ValueError as e:  # bad roles or contents, or a template we cannot split
        raise FormatError(f"{where}: {e}") from None


def _cut(prompt: list[int], reply: list[int], max_len: int) -> tuple[Sequence, bool]:
    """prompt + reply cut to max_len tokens by the module doc's rule: (sequence, was it cut)."""
    room = max_len - len(prompt)
    return Sequence(prompt + reply[:room], len(prompt)), len(reply) > room


def read_sft(paths, tokenizer, max_len: int) -> tuple[list[Sequence], Report]:
    """The examples of one or more SFT files, in file order."""
    examples, report = [], Report()
    for path in paths:
        for lineno, row in iter_jsonl(path, ("response",)):
            where = f"{path}:{lineno}"
            messages = _messages(row, where)
            if not isinstance(row["response"], str):
                raise FormatError(f"{where}: \"response\" must be a string")
            if not row["response"].strip():
                report.skip("empty response", where)
                continue
            prompt, reply = _encode(tokenizer, messages, row["response"], where)
            if len(prompt) >= max_len:
                report.skip(f"prompt of max_seq_len ({max_len}) tokens or more", where)
                continue
            seq, cut = _cut(prompt, reply, max_len)
            examples.append(seq)
            report.kept += 1
            report.truncated += cut
    return examples, report


def read_pairs(path, tokenizer, max_len: int) -> tuple[list[tuple[Sequence, Sequence]], Report]:
    """The (chosen, rejected) pairs of a pairs.jsonl, in file order."""
    pairs, report = [], Report()
    for lineno, row in iter_jsonl(path, ("prompt", "chosen", "rejected")):
        where = f"{path}:{lineno}"
        # a multi-turn prompt's whole conversation when the pair has it ("prompt" is then its last turn)
        messages = _messages({"messages": row["messages"]} if "messages" in row else {"prompt": row["prompt"]}, where)
        if messages[-1]["content"] != row["prompt"]:
            raise FormatError(f"{where}: \"prompt\" must be the last turn of \"messages\" (judge/pairs.py writes both)")
        for key in ("chosen", "rejected"):
            if not isinstance(row[key], str):
                raise FormatError(f"{where}: \"{key}\" must be a string")
        if not row["chosen"].strip() or not row["rejected"].strip():
            report.skip("empty chosen or rejected", where)
            continue
        prompt, chosen = _encode(tokenizer, messages, row["chosen"], where)
        _, rejected = _encode(tokenizer, messages, row["rejected"], where)
        if chosen == rejected:  # the same text, or texts the template makes the same (it strips spaces)
            report.skip("chosen == rejected", where)
            continue
        if len(prompt) >= max_len:
            report.skip(f"prompt of max_seq_len ({max_len}) tokens or more", where)
            continue
        (chosen, cut_c), (rejected, cut_r) = _cut(prompt, chosen, max_len), _cut(prompt, rejected, max_len)
        if chosen.tokens == rejected.tokens:
            report.skip("chosen == rejected once cut to max_seq_len", where)
            continue
        pairs.append((chosen, rejected))
        report.kept += 1
        report.truncated += cut_c or cut_r
    return pairs, report


def step_batches(n_examples: int, batch_size: int, total_steps: int, seed: int) -> list[list[int]]:
    """The example indices of every optimizer step: seeded permutations, one per epoch."""
    per_epoch = n_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"{n_examples} usable examples are fewer than one batch (batch_size {batch_size})")
    generator, steps = torch.Generator().manual_seed(seed), []
    while len(steps) < total_steps:
        order = torch.randperm(n_examples, generator=generator).tolist()
        steps += [order[i * batch_size:(i + 1) * batch_size] for i in range(per_epoch)]
    return steps[:total_steps]


def micro_batches(batch: list[int], lengths: list[int], micro_batch_size: int, rank: int, world: int):
    """This rank's micro-batches of one step (lists of example indices), shortest examples first."""
    ordered = sorted(batch, key=lambda i: lengths[i])
    chunks = [ordered[i:i + micro_batch_size] for i in range(0, len(ordered), micro_batch_size)]
    return chunks[rank::world]


@dataclass
class Batch:
    inputs: torch.Tensor   # (B, T) token ids, right-padded
    index: torch.Tensor    # (M,) flat positions b * T + t whose next token carries loss
    labels: torch.Tensor   # (M,) that next token
    seq_ids: torch.Tensor  # (M,) the row b each one belongs to
    n_tokens: int          # real (non-pad) input tokens


def collate(seqs: list[Sequence], pad_id: int, device) -> Batch:
    """Right-padded inputs and the loss positions. With right padding and causal attention, padding
    never reaches a real token, so no attention mask is needed (and flash attention stays usable)."""
    T = max(len(s.tokens) for s in seqs) - 1
    inputs = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    index, labels, seq_ids = [], [], []
    for b, s in enumerate(seqs):
        inputs[b, :len(s.tokens) - 1] = torch.tensor(s.tokens[:-1])
        positions = range(s.n_prompt - 1, len(s.tokens) - 1)  # position t predicts token t + 1
        index += [b * T + t for t in positions]
        labels += s.tokens[s.n_prompt:]
        seq_ids += [b] * len(positions)
    index, labels, seq_ids = (torch.tensor(x, dtype=torch.long) for x in (index, labels, seq_ids))
    inputs, index, labels, seq_ids = (to_device(t, device) for t in (inputs, index, labels, seq_ids))
    return Batch(inputs, index, labels, seq_ids, sum(len(s.tokens) - 1 for s in seqs))


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor on `device` without waiting for the GPU: a copy from ordinary (pageable) memory waits
    for all queued GPU work, one from pinned memory is queued behind it."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def tokens_fingerprint(sequences) -> str:
    """A hash of the tokens of a data set (Sequences, or pairs of them): any change in the file, the
    tokenizer or the truncation changes it."""
    digest = hashlib.sha256()
    for item in sequences:
        for s in item if isinstance(item, tuple) else (item,):
            digest.update(json.dumps([s.n_prompt, s.tokens]).encode())
    return digest.hexdigest()
