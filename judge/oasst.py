"""Open Assistant exports -> the seed sets the method starts from, and the EFT filter.

  python judge/oasst.py --input 2023-04-12_oasst_ready.trees.jsonl.gz --out-dir data/oasst   (make seed)
  python judge/oasst.py --input data/seed/ranked.trees.jsonl --out-dir /tmp/seed --n-ift 0 --n-ranked 1000

Reads both formats Open Assistant released, `.jsonl` or `.jsonl.gz`, told apart line by line:
  *.trees.jsonl     one tree a line: {"message_tree_id", "tree_state", "prompt": message with nested "replies"}
  *.messages.jsonl  one message a line, linked to its parent by "parent_id" (absent or null for a prompt)
A message has "message_id", "text", "role" ("prompter" or "assistant"), "lang", and may have
"rank" (0 = best among its ranked siblings; null when not ranked), "deleted", "review_result"
(false = failed review, i.e. spam), "synthetic" (written by a model) and more, which are ignored.
Exports may leave out fields that are null, so a missing rank is a null rank.

Only the first turn is used: a prompt (a message without parent) and its direct assistant replies.
A prompt or reply is skipped, and counted in the summary, when it is deleted, failed review, is
synthetic, has the wrong role, has empty text, is not in --lang, or (replies) has a null rank;
messages deeper in a conversation are counted as "not first turn", and a tree whose state is not
"ready_for_export" is skipped whole. Everything else wrong is an error naming FILE:LINE: a line
that is not JSON or not an OA object, a message without id, text, role or lang, an unknown role,
a rank that is not a non-negative integer, a message id that appears twice.

The usable prompts are split as the paper split them (its section 3.1), each going to at most one of
  ift.jsonl       {"id", "prompt", "response"}: --n-ift prompts (the paper: 3,200) with their rank-0
                  reply, the IFT seed, drawn from the prompts that have one;
  ranked.jsonl    {"id", "prompt", "replies": [{"id", "text", "rank"}, ...] best first}: --n-ranked
                  prompts with two or more ranked replies, not in the IFT set, held out to evaluate
                  the model as a reward model (the paper: 541);
  eft_pool.jsonl  the other prompts with two or more ranked replies, not in the IFT set either, in
                  ranked.jsonl's format: what the SFT baseline judges to build the EFT training data
                  (judge/eft.py; the paper kept 1,630 examples);
  valid.jsonl, heldout.jsonl   {"id", "prompt"}, only when --n-valid / --n-heldout ask for them: prompts
                  for checkpoint selection and for the head-to-head evaluation, drawn from the prompts
                  in none of the sets above (before the EFT pool takes the rest). The paper's own sets
                  came from elsewhere (253 validation and 256 test prompts "from various sources",
                  following Li et al. 2023a, Humpback); these stand in for them, from the same export.
The draws are seeded (--seed) by a hash of (seed, set, prompt id), so they do not depend on the file's
order, and each set keeps the file's order. A set asked for more prompts than qualify takes all of
them (the summary says how many it got).

EFT data, as the paper built it: a model judges every ranked reply of a prompt; the judgements are
kept only if `agrees_with_ranking(scores, ranks)`; then `rebalance(examples, seed, max_fraction)`
down-samples the most common scores so that none dominates (the paper's judge said 4 far too often).
"""
import argparse
import hashlib
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from judge.parse import parse_score
from model.errors import FormatError
from model.jsonl import check_output, iter_jsonl, write_jsonl_atomic

ROLES = ("prompter", "assistant")
SETS = ("ift", "ranked", "eft_pool", "valid", "heldout")  # the files written, NAME.jsonl (the last two if asked for)
READY = "ready_for_export"
N_IFT, N_RANKED = 3200, 541  # the paper's IFT seed and EFT evaluation sizes (its section 3.1)


@dataclass
class Message:
    id: str
    parent_id: str | None
    text: str | None
    role: str
    lang: str | None
    rank: int | None
    deleted: bool
    failed_review: bool
    synthetic: bool
    tree_state: str | None
    where: str            # FILE:LINE it was read from


def _message(node, parent_id, tree_state, where: str) -> Message:
    if not isinstance(node, dict):
        raise FormatError(f"{where}: a message must be a JSON object, got {type(node).__name__}")
    mid = node.get("message_id")
    if not isinstance(mid, str) or not mid:
        raise FormatError(f"{where}: message without a 'message_id'")
    if parent_id is not None and not isinstance(parent_id, str):
        raise FormatError(f"{where}: message {mid}: 'parent_id' must be a string or null")
    for key in ("text", "role", "lang"):
        if key not in node:
            raise FormatError(f"{where}: message {mid} has no '{key}'")
    if node["role"] not in ROLES:
        raise FormatError(f"{where}: message {mid} has role {node['role']!r}, expected 'prompter' or 'assistant'")
    if node["text"] is not None and not isinstance(node["text"], str):
        raise FormatError(f"{where}: message {mid}: 'text' must be a string")
    rank = node.get("rank")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 0):
        raise FormatError(f"{where}: message {mid} has rank {rank!r}, expected a non-negative integer or null")
    return Message(id=mid, parent_id=parent_id, text=node["text"], role=node["role"], lang=node["lang"],
                   rank=rank, deleted=node.get("deleted") is True, failed_review=node.get("review_result") is False,
                   synthetic=node.get("synthetic") is True, tree_state=tree_state, where=where)


def _tree_messages(tree: dict, where: str) -> list[Message]:
    """The messages of one tree line, parents before children; each reply's parent is the node it is nested in."""
    out, stack = [], [(tree["prompt"], None)]
    while stack:
        node, parent_id = stack.pop()
        m = _message(node, parent_id, tree.get("tree_state"), where)
        out.append(m)
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise FormatError(f"{where}: message {m.id}: 'replies' must be a list")
        stack.extend((r, m.id) for r in reversed(replies))
    return out


def read_messages(paths: Sequence) -> tuple[list[Message], int]:
    """Every message in the given export files, in file order, and the number of trees without a prompt."""
    messages, first_seen, empty_trees = [], {}, 0
    for path in paths:
        for lineno, row in iter_jsonl(path, allow_empty=False):
            where = f"{path}:{lineno}"
            if "message_id" in row:
                found = [_message(row, row.get("parent_id"), row.get("tree_state"), where)]
            elif "prompt" in row:
                if row["prompt"] is None:
                    empty_trees += 1
                    continue
                found = _tree_messages(row, where)
            else:
                raise FormatError(f"{where}: neither an Open Assistant message (no 'message_id') "
                                  f"nor a message tree (no 'prompt')")
            for m in found:
                if m.id in first_seen:
                    raise FormatError(f"{m.where}: message {m.id} appears twice (first at {first_seen[m.id]})")
                first_seen[m.id] = m.where
                messages.append(m)
    return messages, empty_trees


def _skip_reason(m: Message, role: str, lang: str) -> str | None:
    """Why a first-turn message cannot be used, or None."""
    if m.tree_state not in (None, READY):
        return f"tree {m.tree_state}"
    if m.deleted:
        return "deleted"
    if m.failed_review:
        return "failed review"
    if m.synthetic:
        return "synthetic"
    if m.role != role:
        return "wrong role"
    if not (m.text or "").strip():
        return "empty text"
    if m.lang != lang:
        return f"not {lang}"
    if role == "assistant" and m.rank is None:
        return "null rank"
    return None


def draw_key(prompt_id: str, seed: int, name: str) -> int:
    """A prompt's place in the seeded draw for set `name`: the first n of a set are those with the lowest keys."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}:{prompt_id}".encode()).digest()[:8], "big")


def first_turns(messages: list[Message], lang: str = "en") -> tuple[list[dict], Counter]:
    """Every usable first-turn prompt, in file order, as {"id", "prompt", "replies": [{"id", "text", "rank"},
    ...] best first} (its usable ranked replies, maybe none), and a Counter of what happened to every
    message except the usable prompts: keys start with "prompt" or "reply" (first-turn messages) or
    "message" (all others), e.g. "reply skipped: null rank"."""
    by_id = {m.id: m for m in messages}
    replies = defaultdict(list)
    counts = Counter()
    for m in messages:
        if m.parent_id is None:
            continue
        if m.parent_id not in by_id:
            counts["message skipped: parent not in input"] += 1
        elif by_id[m.parent_id].parent_id is not None:
            counts["message skipped: not first turn"] += 1
        else:
            replies[m.parent_id].append(m)
    rows = []
    for prompt in (m for m in messages if m.parent_id is None):
        reason = _skip_reason(prompt, "prompter", lang)
        if reason:
            counts[f"prompt skipped: {reason}"] += 1
            counts["reply skipped: prompt skipped"] += len(replies[prompt.id])
            continue
        ranked = []
        for r in replies[prompt.id]:
            reason = _skip_reason(r, "assistant", lang)
            counts[f"reply skipped: {reason}" if reason else "reply usable"] += 1
            if reason is None:
                ranked.append(r)
        ranked.sort(key=lambda r: r.rank)               # stable: equal ranks keep file order
        rows.append({"id": prompt.id, "prompt": prompt.text,
                     "replies": [{"id": r.id, "text": r.text, "rank": r.rank} for r in ranked]})
    return rows, counts


def _drawn(rows: list[dict], n: int, seed: int, name: str) -> set:
    """The ids of the n rows first in set `name`'s seeded draw."""
    return {r["id"] for r in sorted(rows, key=lambda r: draw_key(r["id"], seed, name))[:n]}


def build_sets(messages: list[Message], lang: str = "en", n_ift: int = N_IFT, n_ranked: int = N_RANKED,
               seed: int = 0, n_valid: int = 0, n_heldout: int = 0) -> tuple[dict[str, list[dict]], Counter]:
    """{"ift", "ranked", "eft_pool", "valid", "heldout"} rows (see the module doc; no prompt in two of them)
    and a Counter of what happened to every message, summing to len(messages) (first_turns' and "prompt to
    NAME.jsonl", "prompt unused: ...")."""
    rows, counts = first_turns(messages, lang)
    has_best = [r for r in rows if r["replies"] and r["replies"][0]["rank"] == 0]
    ift, ift_able = _drawn(has_best, n_ift, seed, "ift"), {r["id"] for r in has_best}
    rankable = [r for r in rows if len(r["replies"]) >= 2 and r["id"] not in ift]
    ranked = _drawn(rankable, n_ranked, seed, "ranked")
    taken = ift | ranked
    valid = _drawn([r for r in rows if r["id"] not in taken], n_valid, seed, "valid")
    taken |= valid
    heldout = _drawn([r for r in rows if r["id"] not in taken], n_heldout, seed, "heldout")
    sets = {name: [] for name in SETS}
    for row in rows:
        if row["id"] in ift:
            sets["ift"].append({"id": row["id"], "prompt": row["prompt"], "response": row["replies"][0]["text"]})
            counts["prompt to ift.jsonl"] += 1
        elif row["id"] in valid or row["id"] in heldout:
            name = "valid" if row["id"] in valid else "heldout"
            sets[name].append({"id": row["id"], "prompt": row["prompt"]})
            counts[f"prompt to {name}.jsonl"] += 1
        elif row["id"] in ranked or len(row["replies"]) >= 2:
            name = "ranked" if row["id"] in ranked else "eft_pool"
            sets[name].append(row)
            counts[f"prompt to {name}.jsonl"] += 1
        else:
            counts["prompt unused: " + ("not drawn for ift.jsonl" if row["id"] in ift_able else
                                        "no rank-0 reply and fewer than 2 ranked")] += 1
    return sets, counts


def ranked_prompts(messages: list[Message], lang: str = "en") -> tuple[list[dict], Counter]:
    """Every usable prompt with two or more ranked replies, in file order (a whole export read as a ranked
    evaluation set), and the counts (first_turns' and what happened to each usable prompt)."""
    rows, counts = first_turns(messages, lang)
    ranked = [r for r in rows if len(r["replies"]) >= 2]
    counts.update({"prompt ranked (2 or more ranked replies)": len(ranked),
                   "prompt unused: fewer than 2 ranked replies": len(rows) - len(ranked)})
    return ranked, +counts


# ---------------------------------------------------------------- EFT: agreement filter and rebalancing

def agrees_with_ranking(scores_by_reply: Sequence[float | None], ranks: Sequence[int]) -> bool:
    """Do a judge's scores of a prompt's replies agree with the human ranking?

    scores_by_reply[i] is the judge's score of reply i (None if it gave none), ranks[i] its human
    rank (0 = best). They agree when every pair of replies that the humans ordered (different
    ranks) is ordered the same way by the judge with a strict gap: rank_i < rank_j requires
    score_i > score_j, so a tie in scores where humans saw a difference is a disagreement. Replies
    with equal human ranks constrain nothing. A missing score, or no ordered pair at all (fewer than
    two replies, or all ranked equal), means no agreement.
    """
    if len(scores_by_reply) != len(ranks):
        raise ValueError(f"{len(scores_by_reply)} scores for {len(ranks)} ranks")
    if any(s is None for s in scores_by_reply):
        return False
    ordered_pairs = [(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]
    return bool(ordered_pairs) and all(scores_by_reply[i] > scores_by_reply[j] for i, j in ordered_pairs)


def rebalance(examples: list[dict], seed: int, max_fraction: float) -> list[dict]:
    """Down-sample the most common scores so that no score is more than `max_fraction` of the result.

    An example's score is the one its "judgement" ends with (judge/parse.py). Every score is capped
    at the same count K, the largest for which the capped counts satisfy the bound; scores with
    fewer than K examples keep them all. Which examples of a capped score survive is a seeded
    random choice; the survivors keep their input order. Raises ValueError if an example has no
    score, or if no cap can work (fewer than 1 / max_fraction distinct scores).
    """
    if not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")
    by_score = defaultdict(list)
    for i, ex in enumerate(examples):
        score = parse_score(ex["judgement"]).score
        if score is None:
            raise ValueError(f"example {i} ({ex.get('id', 'no id')}): its judgement has no score")
        by_score[score].append(i)
    counts = sorted((len(v) for v in by_score.values()), reverse=True)
    if not counts:
        return []
    for cap in range(counts[0], 0, -1):
        kept = [min(c, cap) for c in counts]
        if kept[0] <= max_fraction * sum(kept) + 1e-9:
            break
    else:
        raise ValueError(f"cannot rebalance: {len(counts)} distinct scores, so one of them is at least "
                         f"1/{len(counts)} of any subset, more than max_fraction={max_fraction}")
    rng = random.Random(seed)
    keep = set()
    for score in sorted(by_score):
        idx = by_score[score]
        keep.update(idx if len(idx) <= cap else rng.sample(idx, cap))
    return [ex for i, ex in enumerate(examples) if i in keep]


# ---------------------------------------------------------------- CLI

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="Open Assistant export files (.jsonl or .jsonl.gz)")
    parser.add_argument("--out-dir", required=True,
                        help="writes ift.jsonl, ranked.jsonl, eft_pool.jsonl (and valid.jsonl, heldout.jsonl) here")
    parser.add_argument("--lang", default="en", help="language tag of the prompts and replies to keep (default en)")
    parser.add_argument("--n-ift", type=int, default=N_IFT,
                        help="IFT prompts to draw (default %(default)s, the paper's)")
    parser.add_argument("--n-ranked", type=int, default=N_RANKED,
                        help="ranked prompts held out for evaluation (default %(default)s, the paper's); the other "
                             "ranked prompts outside the IFT set go to eft_pool.jsonl")
    parser.add_argument("--n-valid", type=int, default=0,
                        help="validation prompts for checkpoint selection, written to valid.jsonl (default 0: none; "
                             "the paper used 253)")
    parser.add_argument("--n-heldout", type=int, default=0,
                        help="test prompts for the head-to-head evaluation, written to heldout.jsonl (default 0: "
                             "none; the paper used 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    args = parser.parse_args(argv)
    asked = {"valid": args.n_valid, "heldout": args.n_heldout}
    written = [name for name in SETS if asked.get(name, 1) > 0]
    for flag, n in (("--n-ift", args.n_ift), ("--n-ranked", args.n_ranked), ("--n-valid", args.n_valid),
                    ("--n-heldout", args.n_heldout)):
        if n < 0:
            parser.error(f"{flag} must be 0 or more, got {n}")
    try:
        for name in written:
            check_output(Path(args.out_dir) / f"{name}.jsonl", {f"--input {path}": path for path in args.input},
                         flag="--out-dir")
        messages, empty_trees = read_messages(args.input)
        sets, counts = build_sets(messages, args.lang, args.n_ift, args.n_ranked, args.seed, args.n_valid,
                                  args.n_heldout)
        sets = {name: sets[name] for name in written}
        for name, rows in sets.items():
            write_jsonl_atomic(Path(args.out_dir) / f"{name}.jsonl", rows)
    except (FormatError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"read {len(messages)} messages" + (f"; skipped {empty_trees} trees without a prompt" if empty_trees else ""))
    for key, n in sorted(counts.items()):
        print(f"  {key}: {n}")
    for name, rows in sets.items():
        wanted = {"ift": args.n_ift, "ranked": args.n_ranked, **asked}.get(name)
        print(f"wrote {Path(args.out_dir) / f'{name}.jsonl'}: {len(rows)} prompts"
              + (f" of {wanted} asked for" if wanted is not None else ""))


if __name__ == "__main__":
    main()
