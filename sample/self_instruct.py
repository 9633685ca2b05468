"""Self-instruction creation: the model writes new prompts, few-shot, from the seed prompts.

    python sample/self_instruct.py --model runs/R/iter1/model --seed-prompts data/seed/ift.jsonl \\
        --out runs/R/iter2/prompts.jsonl --n-prompts 200
    python sample/self_instruct.py --template self-instruct --min-words 4 ...      (the paper's setting)

As in the paper, each request shows the model 8 example tasks (6 drawn from the seed prompts and
2 from the prompts generated so far, fewer at the start) and asks for one new task; it is sampled
at temperature 0.6, top-p 0.9. One task is taken from each request. Two request formats
(--template):
  demo            a chat request: the examples numbered "Task 1:" .. "Task 8:", an instruction to
                  write a new one, and the answer started for the model with "Task 9:", so that even
                  a small chat model writes a task rather than chatting about one. The task is what
                  follows, up to the end of its line or the next "Task N:" label.
  self-instruct   Self-Instruct's own completion prompt (Wang et al. 2023): "Come up with a series of
                  tasks:", the examples as a numbered list "1. " .. "8. " and "9." to continue, sent as
                  plain text (no chat template), as Self-Instruct sent it to GPT-3. The task is the text
                  after "9." up to the next numbered item or blank line, its whitespace collapsed.
A task is dropped when it is:
  "empty"            nothing left after the clean-up;
  "too short"        fewer than --min-words words; "too long": more than --max-words (Self-Instruct
                     drops 3 words or fewer and more than 150: --min-words 4 --max-words 150);
  "near-duplicate"   ROUGE-L F against a seed prompt or a prompt already kept of 0.7 or more (demo),
                     above 0.7 (self-instruct, its rule);
and, with the demo template:
  "template echo"    it repeats the request's own wording ("below are some tasks");
  "not a request"    an assistant talking instead of a user asking: it ends in ":" or opens like
                     an assistant's reply ("Sure", "Here is", "I'm an AI", ...);
  "not a text task"  it asks for something a text model cannot do (see NON_TEXT: images, audio,
                     attached files, browsing);
with the self-instruct template, Self-Instruct's own filters instead:
  "keyword"          one of its words a language model cannot act on (SELF_INSTRUCT_KEYWORDS: image,
                     graph, picture, file, map, draw, plot, go to, ...), as a whole word, any case;
  "write a program"  it starts "Write a program" (any case);
  "punctuation start", "non-ASCII start"   its first character is punctuation, or not ASCII.
Requests go on, a batch at a time, until --n-prompts are kept or --max-requests are spent.
Every attempt, kept or dropped and why, is recorded in OUT.attempts.jsonl, which also makes the
stage resumable: a rerun continues from the attempts written so far and gives what an
uninterrupted run gives. OUT ({"id", "prompt"} lines) is written when the stage is complete.
A model too big for one GPU (the paper's writer was Llama-2-Chat 70B) runs tensor parallel:
    torchrun --standalone --nproc_per_node=8 sample/self_instruct.py --tp --model ... (same options)
"""
import argparse
import hashlib
import json
import os
import random
import re
import string
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch.distributed as dist

from model.errors import FormatError
from model.jsonl import check_output, read_jsonl, write_jsonl_atomic
from sample.generate import (SamplingSettings, add_sampling_args, non_negative_int, positive_int, settings_from_args,
                             stage_config)
from sample.resume import check_owned, settings_path
from sample.sampler import Sampler
from sample.stage import load_model, open_output, row_seed, settings_record, setup_distributed
from sample.tp import broadcast_tokens

@dataclass
class SelfInstructSettings(SamplingSettings):
    n_prompts: int = 200            # new prompts to keep
    temperature: float = 0.6        # the paper's
    max_new_tokens: int = 128
    max_requests: int = 0           # give up after this many requests (0: 20 x n_prompts)
    min_words: int = 3              # shorter tasks are dropped ("too short")
    max_words: int = 150            # longer ones too ("too long")
    template: str = "demo"          # the request format and its filters: one of TEMPLATES (see above)
    # every setting decides the prompts, the batch size too: each batch's requests show the prompts kept in
    # earlier batches
    speed_only: ClassVar[tuple[str, ...]] = ()


INSTRUCTION = ("Below are some tasks that people have asked an AI assistant to help with.\n\n{examples}\n\n"
               "Write one new task that a person might ask an AI assistant. It should be different from the "
               "tasks above, and something a text-only assistant can answer. Reply with the new task only, as "
               "Task 9.")
ANSWER_START = "Task 9:"
ECHOES = re.compile(r"below are some tasks|write one new task|reply with the new task|text-only assistant", re.I)
CHATTER = re.compile(r"^(sure|certainly|of course|here is|here's|here are|i'm an ai|i am an ai|as an ai|"
                     r"i'm (ready|here|happy)|i am (ready|here|happy))\b", re.I)
# Self-Instruct's keyword filter, narrowed: "file" alone would drop ordinary coding questions.
NON_TEXT = re.compile(r"\b(images?|pictures?|photos?|photographs?|draw(ing)?|sketch|diagrams?|flowcharts?|"
                      r"videos?|audio|recordings?|listen to|attached|attachment|upload(ed)?|this file|the file|"
                      r"browse|(visit|open|go to) (the|this|a) (website|web ?page|url|link)|"
                      r"search the (web|internet))\b", re.I)


# Self-Instruct's filters (its bootstrap_instructions.py): words a text model cannot act on.
SELF_INSTRUCT_KEYWORDS = re.compile(r"\b(image|images|graph|graphs|picture|pictures|file|files|map|maps|draw|plot|"
                                    r"go to)\b", re.I)
TEMPLATES = ("demo", "self-instruct")


def few_shot_request(examples: list[str]) -> str:
    return INSTRUCTION.format(examples="\n".join(f"Task {i}: {e}" for i, e in enumerate(examples, 1)))


def self_instruct_request(examples: list[str]) -> str:
    """Self-Instruct's completion prompt: the examples as a numbered list, one line each, and the next number."""
    listed = "".join(f"{i}. {' '.join(e.split()).rstrip(':')}\n" for i, e in enumerate(examples, 1))
    return f"Come up with a series of tasks:\n{listed}{len(examples) + 1}."


def encode_request(tokenizer, template: str, examples: list[str]) -> list[int]:
    """A request's tokens: the demo's chat request with the answer begun, or Self-Instruct's plain-text prompt."""
    if template == "self-instruct":
        return tokenizer.encode(self_instruct_request(examples), bos=True)
    return tokenizer.encode_chat([{"role": "user", "content": few_shot_request(examples)}]) + tokenizer.encode(
        ANSWER_START)


def extract_task(completion: str, template: str = SelfInstructSettings.template) -> str:
    """The task a completion writes: after "Task 9:", up to the end of its line or the next "Task N:" (demo);
    after "9.", up to the next numbered item or blank line, whitespace collapsed (self-instruct)."""
    if template == "self-instruct":
        return " ".join(re.split(r"\n\s*\d+\s?\. |\n\s*\n", completion, maxsplit=1)[0].split())
    text = re.split(r"\n|\btask\s*\d+\s*:", completion.strip(), maxsplit=1, flags=re.I)[0].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def rouge_tokens(text: str) -> list[str]:
    """Lowercased alphanumeric words, as the ROUGE reference implementation tokenises."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def rouge_l(candidate: list[str], reference: list[str]) -> float:
    """ROUGE-L F1: from the longest common subsequence of the two token lists."""
    if not candidate or not reference:
        return 0.0
    prev = [0] * (len(reference) + 1)
    for c in candidate:
        cur = [0]
        for j, r in enumerate(reference):
            cur.append(prev[j] + 1 if c == r else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def drop_reason(task: str, known: list[list[str]], min_words: int, max_words: int,
                template: str = SelfInstructSettings.template,
                threshold: float = 0.7) -> str | None:
    """Why a generated task is dropped under `template`'s filters (see the module doc), or None to keep it;
    `known` holds the tokens of the seed prompts and of every prompt kept so far."""
    if not task:
        return "empty"
    if template == "demo" and ECHOES.search(task):
        return "template echo"
    if template == "demo" and (task.endswith(":") or CHATTER.search(task)):
        return "not a request"
    words = len(task.split())
    if words < min_words:
        return "too short"
    if words > max_words:
        return "too long"
    if template == "demo" and NON_TEXT.search(task):
        return "not a text task"
    if template == "self-instruct":
        if SELF_INSTRUCT_KEYWORDS.search(task):
            return "keyword"
        if task.lower().startswith("write a program"):
            return "write a program"
        if task[0] in string.punctuation:
            return "punctuation start"
        if not task[0].isascii():
            return "non-ASCII start"
    tokens = rouge_tokens(task)
    at_threshold_too = template == "demo"  # Self-Instruct's rule is strictly above
    if any(s > threshold or (at_threshold_too and s == threshold) for s in (rouge_l(tokens, k) for k in known)):
        return "near-duplicate"
    return None


def choose_examples(rng: random.Random, seeds: list[str], generated: list[str], k: int = 8,
                    k_generated: int = 2) -> list[str]:
    """k examples: k_generated from the generated prompts (as many as exist), the rest from the seed."""
    from_generated = rng.sample(generated, min(k_generated, len(generated)))
    examples = rng.sample(seeds, k - len(from_generated)) + from_generated
    rng.shuffle(examples)
    return examples


def request_prompts(sampler, tokenizer, log, seeds: list[str], settings: SelfInstructSettings, params,
                    seed: int, id_prefix: str, rank: int) -> None:
    """Ask for new prompts a batch of settings.batch_size requests at a time, each request showing examples
    drawn from the seeds and the prompts kept so far, until settings.n_prompts are kept or max_requests were
    made; every attempt, kept or dropped (and why), goes to the attempts log. A batch is redone whole if a
    crash left it partly written; rows already there are not rewritten."""
    B = settings.batch_size
    max_requests = settings.max_requests or 20 * settings.n_prompts
    start = (len(log.done) // B) * B
    history = sorted((r for r in log.done.values() if r["request"] < start), key=lambda r: r["request"])
    kept = [r["prompt"] for r in history if r["dropped"] is None]
    known = [rouge_tokens(s) for s in seeds] + [rouge_tokens(k) for k in kept]
    while len(kept) < settings.n_prompts and start < max_requests:
        batch = range(start, min(start + B, max_requests))
        prompts = [encode_request(tokenizer, settings.template,
                                  choose_examples(random.Random(row_seed(seed, "examples", r)), seeds, kept))
                   for r in batch]
        outs = sampler.generate(prompts, params, n=1, seeds=[[row_seed(seed, r, 0)] for r in batch])
        rows = []
        for r, [completion] in zip(batch, outs):
            task = extract_task(completion.text, settings.template)
            reason = drop_reason(task, known, settings.min_words, settings.max_words, settings.template)
            if reason is None:
                kept.append(task)
                known.append(rouge_tokens(task))
            rows.append({"request": r, "id": f"{id_prefix}-{r}", "prompt": task, "dropped": reason,
                         "raw": completion.text})
        start = batch.stop
        if rank == 0:
            log.append(rows)
            print(f"requests {batch.stop}, kept {len(kept)}/{settings.n_prompts}", file=sys.stderr)


def write_prompts(log, out: Path, n_prompts: int) -> None:
    """The attempts log merged, and its first n_prompts kept prompts written to `out`, with the counts."""
    attempts = log.finalize(sorted(log.done))
    new = [{"id": r["id"], "prompt": r["prompt"]} for r in attempts if r["dropped"] is None][:n_prompts]
    write_jsonl_atomic(out, new)
    reasons = Counter(r["dropped"] or "kept" for r in attempts)
    print(f"self-instruct: {len(attempts)} requests, {len(new)} prompts written to {out}; " +
          ", ".join(f"{v} {k}" for k, v in reasons.most_common()), file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = SelfInstructSettings()
    add_sampling_args(parser, defaults)
    parser.add_argument("--seed-prompts", required=True, help="JSONL with a \"prompt\" per line (the IFT seed)")
    parser.add_argument("--out", required=True, help="output JSONL of {\"id\", \"prompt\"}")
    parser.add_argument("--n-prompts", type=positive_int, default=defaults.n_prompts,
                        help="how many new prompts to keep (default %(default)s)")
    parser.add_argument("--max-requests", type=non_negative_int, default=defaults.max_requests,
                        help="give up after this many (default 20 x n-prompts)")
    parser.add_argument("--min-words", type=non_negative_int, default=defaults.min_words, help="default %(default)s")
    parser.add_argument("--max-words", type=positive_int, default=defaults.max_words, help="default %(default)s")
    parser.add_argument("--template", choices=TEMPLATES, default=defaults.template,
                        help="request format and filters (default %(default)s; self-instruct: the paper's, see above)")
    parser.add_argument("--id-prefix", default="gen", help="ids are PREFIX-<request number>")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    settings = settings_from_args(SelfInstructSettings, args)
    # Each request depends on the prompts kept before it, so there is no data parallelism: under torchrun
    # with --tp every rank runs the same loop over one model split across them (every rank takes rank 0's
    # sampled tokens, so every rank keeps the same prompts) and rank 0 writes.
    if "WORLD_SIZE" in os.environ and not args.tp:
        sys.exit("error: under torchrun self_instruct.py needs --tp (one model over all ranks); "
                 "without it, run it as one process")
    out = Path(args.out)
    attempts = out.with_name(out.stem + ".attempts.jsonl")
    rank, world, device = setup_distributed()
    try:
        for path in (out, attempts):
            check_output(path, {"--seed-prompts": args.seed_prompts})
        check_owned([out], settings_path(attempts))  # OUT is ours if the attempts it is made from are
        seeds = [row["prompt"] for row in read_jsonl(args.seed_prompts, required_fields=("prompt",))]
        if len(seeds) < 8:
            raise FormatError(f"{args.seed_prompts}: needs at least 8 seed prompts, has {len(seeds)}")
        config = stage_config(args)
        net, tokenizer = load_model(args.model, device, args.dtype, args.tp)
    except (FormatError, ValueError) as e:
        sys.exit(f"error: {e}")
    # What decides the attempts: each batch's requests show prompts kept in earlier batches, so the batch
    # size does too (--n-prompts and --max-requests only say when to stop).
    record = {**settings_record(config, net, "sample/self_instruct.py"),
              "seed_prompts": hashlib.sha256(json.dumps(seeds).encode()).hexdigest(), "batch_size": args.batch_size,
              "words": [args.min_words, args.max_words], "template": args.template, "id_prefix": args.id_prefix}
    log = open_output(attempts, rank, world, "sample/self_instruct.py", record, key_fields=("request",))
    if world > 1:
        dist.barrier()  # every rank has read the attempts so far before rank 0 appends
    sampler = Sampler(net, tokenizer, args.batch_size, share_prefix=config.share_prefix, compile=args.compile,
                      sync_tokens=broadcast_tokens if args.tp else None, check_every=args.check_every)
    request_prompts(sampler, tokenizer, log, seeds, settings, config.sampling, args.seed, args.id_prefix, rank)
    if rank == 0:
        write_prompts(log, out, settings.n_prompts)
    if world > 1:
        dist.barrier()  # no rank leaves before the output is written


if __name__ == "__main__":
    main()
