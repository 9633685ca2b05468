"""judge/oasst.py: the Open Assistant loader on fixtures in both released formats, the IFT / ranked split,
the EFT agreement filter and rebalancing."""
import copy
import gzip
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from judge.oasst import agrees_with_ranking, build_sets, draw_key, ranked_prompts, read_messages, rebalance
from model.errors import FormatError
from model.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def msg(mid, text, role, rank=None, lang="en", replies=(), **extra):
    """A message node as the full export writes it: every field present, nulls included."""
    return {"message_id": mid, "parent_id": None, "user_id": f"user-{mid}", "created_date": "2023-02-05T14:23:50+00:00",
            "text": text, "role": role, "lang": lang, "review_count": 3, "review_result": True, "deleted": False,
            "rank": rank, "synthetic": False, "model_name": None, "detoxify": None, "emojis": {"+1": 2},
            "replies": list(replies), "labels": {"quality": {"value": 0.75, "count": 3}}, **extra}


def tree(root, state="ready_for_export"):
    return {"message_tree_id": root["message_id"], "tree_state": state, "prompt": root, "origin": "fixture"}


def fixture_trees() -> list[dict]:
    """Ten trees covering the loader's cases; the comment on each says what must happen to it."""
    follow_up = msg("p1b", "And of Italy?", "prompter", rank=0, replies=[
        msg("a1b1", "Rome.", "assistant", rank=0), msg("a1b2", "Milan.", "assistant", rank=1)])
    minimal = {"message_id": "p8", "text": "Name a prime number.", "role": "prompter", "lang": "en",   # exclude_none
               "replies": [{"message_id": "a8b", "text": "9 is prime.", "role": "assistant", "lang": "en",
                            "rank": 1},
                           {"message_id": "a8a", "text": "2 is the smallest prime.", "role": "assistant",
                            "lang": "en", "rank": 0},
                           {"message_id": "a8c", "text": "Is 1 prime?", "role": "prompter", "lang": "en"}]}
    return [
        # T1: IFT or ranked (two ranked replies, rank 0 among them); an unranked and a deleted reply; a second turn
        tree(msg("p1", "What is the capital of France?", "prompter", replies=[
            msg("a1", "Paris is the capital of France.", "assistant", rank=0, replies=[follow_up]),
            msg("a2", "It is Lyon.", "assistant", rank=1),
            msg("a3", "France's capital is Paris.", "assistant", rank=None),
            msg("a4", "[deleted reply]", "assistant", rank=None, deleted=True)])),
        # T2: German prompt
        tree(msg("p2", "Was ist die Hauptstadt von Deutschland?", "prompter", lang="de", replies=[
            msg("a2a", "Berlin.", "assistant", rank=0, lang="de"),
            msg("a2b", "Bonn.", "assistant", rank=1, lang="de")])),
        # T3: deleted prompt
        tree(msg("p3", "spam spam", "prompter", deleted=True, replies=[msg("a3a", "Hello.", "assistant", rank=0)])),
        # T4: ranked only: its rank-0 reply is synthetic, two human replies ranked 1 and 2 are left
        tree(msg("p4", "How do I boil an egg?", "prompter", replies=[
            msg("a4a", "Boil it for 7 minutes.", "assistant", rank=0, synthetic=True, model_name="oasst-sft"),
            msg("a4c", "Put it in water.", "assistant", rank=2),
            msg("a4b", "Lower it into boiling water for 6 to 7 minutes.", "assistant", rank=1)])),
        # T5: IFT only: one usable ranked reply, the other failed review
        tree(msg("p5", "Tell me a joke.", "prompter", replies=[
            msg("a5a", "Why did the chicken cross the road?", "assistant", rank=0),
            msg("a5b", "buy cheap watches", "assistant", rank=1, review_result=False)])),
        # T6: empty prompt text
        tree(msg("p6", "   ", "prompter", replies=[msg("a6a", "Hm?", "assistant", rank=0)])),
        # T7: a tree that was not finished
        tree(msg("p7", "Explain DNS.", "prompter", replies=[msg("a7a", "DNS maps names.", "assistant", rank=0)]),
             state="aborted_low_grade"),
        # T8: the minimal export style (null fields left out); a prompter reply at the first turn
        tree(minimal),
        # T9: its rank-0 reply is Spanish and its rank-2 reply empty: one usable ranked reply, so unused
        tree(msg("p9", "Say hello.", "prompter", replies=[
            msg("a9a", "Hola.", "assistant", rank=0, lang="es"), msg("a9b", "Hello!", "assistant", rank=1),
            msg("a9c", "", "assistant", rank=2)])),
        # T10: a prompt written by the assistant role
        tree(msg("p10", "I am an assistant.", "assistant", replies=[])),
    ]


EXPECTED_COUNTS = Counter({
    "prompt to ift.jsonl": 3,                 # p1, p5, p8: every prompt with a rank-0 reply (n_ift >= 3)
    "prompt to ranked.jsonl": 1,              # p4: two ranked replies, not in the IFT set
    "prompt unused: no rank-0 reply and fewer than 2 ranked": 1,       # p9
    "prompt skipped: not en": 1, "prompt skipped: deleted": 1, "prompt skipped: empty text": 1,
    "prompt skipped: tree aborted_low_grade": 1, "prompt skipped: wrong role": 1,
    "reply usable": 8,                        # a1 a2 | a4b a4c | a5a | a8a a8b | a9b
    "reply skipped: null rank": 1, "reply skipped: deleted": 1, "reply skipped: synthetic": 1,
    "reply skipped: failed review": 1, "reply skipped: not en": 1, "reply skipped: empty text": 1,
    "reply skipped: wrong role": 1, "reply skipped: prompt skipped": 5,   # a2a a2b a3a a6a a7a
    "message skipped: not first turn": 3,     # p1b a1b1 a1b2
})                                            # 10 prompts + 20 first-turn replies + 3 deeper messages = 33


def flatten(trees: list[dict]) -> list[dict]:
    """The messages export of the same trees: one message a line, linked by parent_id, no nesting."""
    out = []

    def visit(node, parent_id, t):
        m = {k: v for k, v in node.items() if k != "replies"}
        m.update(parent_id=parent_id, message_tree_id=t["message_tree_id"], tree_state=t["tree_state"])
        out.append(m)
        for r in node.get("replies") or []:
            visit(r, node["message_id"], t)
    for t in trees:
        visit(t["prompt"], None, t)
    return out


def write_lines(path: Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load(paths, **kwargs):
    messages, empty = read_messages(paths)
    return (*build_sets(messages, **kwargs), len(messages), empty)


def test_trees_format(tmp_path):
    path = write_lines(tmp_path / "x.trees.jsonl", fixture_trees() + [{"message_tree_id": "t", "prompt": None}])
    sets, counts, n_messages, empty_trees = load([path], n_ift=10)
    assert counts == EXPECTED_COUNTS and sum(counts.values()) == n_messages == 33 and empty_trees == 1
    assert sets["ift"] == [{"id": "p1", "prompt": "What is the capital of France?",
                            "response": "Paris is the capital of France."},
                           {"id": "p5", "prompt": "Tell me a joke.", "response": "Why did the chicken cross the road?"},
                           {"id": "p8", "prompt": "Name a prime number.", "response": "2 is the smallest prime."}]
    assert sets["ranked"] == [{"id": "p4", "prompt": "How do I boil an egg?", "replies": [
        {"id": "a4b", "text": "Lower it into boiling water for 6 to 7 minutes.", "rank": 1},
        {"id": "a4c", "text": "Put it in water.", "rank": 2}]}]
    assert sets["eft_pool"] == []  # p1 and p8 are ranked too, but in the IFT set: never in two sets


def test_messages_format_gz_in_any_order_gives_the_same_sets(tmp_path):
    trees = fixture_trees()
    tree_sets = load([write_lines(tmp_path / "x.trees.jsonl", trees)], n_ift=10)[0]
    messages = flatten(trees)
    for m in messages:                        # the minimal export leaves null fields out, parent_id included
        if m["message_id"] == "p8":
            del m["parent_id"]
    random.Random(0).shuffle(messages)        # children may come before their parents
    messages.append({"message_id": "orphan", "parent_id": "not-in-this-file", "text": "Hi", "role": "assistant",
                     "lang": "en", "rank": 0})
    path = write_lines(tmp_path / "x.messages.jsonl.gz", messages)
    sets, counts, n_messages, _ = load([path], n_ift=10)
    assert counts == EXPECTED_COUNTS + Counter({"message skipped: parent not in input": 1})
    assert n_messages == 34
    for name in ("ift", "ranked", "eft_pool"):
        assert sorted(sets[name], key=lambda r: r["id"]) == sorted(tree_sets[name], key=lambda r: r["id"])


def test_the_seeded_split(tmp_path):
    path = write_lines(tmp_path / "x.trees.jsonl", fixture_trees())
    sets = load([path], n_ift=0, n_ranked=10)[0]                    # a whole export as an evaluation set
    assert sets["ift"] == sets["eft_pool"] == [] and [r["id"] for r in sets["ranked"]] == ["p1", "p4", "p8"]
    assert ranked_prompts(read_messages([path])[0])[0] == sets["ranked"]
    # the paper's split on a larger export: IFT drawn first, then the held-out ranked prompts from the rest,
    # the other ranked prompts to the EFT pool; no prompt in two sets, the sizes asked for, in file order
    trees = [tree(msg(f"q{i}", f"Question {i}?", "prompter", replies=[
        msg(f"q{i}a", "A good answer.", "assistant", rank=0), msg(f"q{i}b", "A worse one.", "assistant", rank=1)]))
        for i in range(200)]
    trees += [tree(msg(f"n{i}", f"Unranked {i}?", "prompter", replies=[  # no rank-0 reply: never IFT
        msg(f"n{i}a", "One.", "assistant", rank=1), msg(f"n{i}b", "Two.", "assistant", rank=2)])) for i in range(20)]
    big = write_lines(tmp_path / "big.trees.jsonl", trees)
    sets, counts, _, _ = load([big], n_ift=120, n_ranked=30, seed=0)
    ids = {name: [r["id"] for r in rows] for name, rows in sets.items()}
    assert (len(ids["ift"]), len(ids["ranked"]), len(ids["eft_pool"])) == (120, 30, 70)
    assert not (set(ids["ift"]) & set(ids["ranked"]) or set(ids["ift"]) & set(ids["eft_pool"])
                or set(ids["ranked"]) & set(ids["eft_pool"]))
    assert all(i.startswith("q") for i in ids["ift"]) and counts["prompt to eft_pool.jsonl"] == 70
    order = [t["prompt"]["message_id"] for t in trees]
    assert all(ids[name] == sorted(ids[name], key=order.index) for name in ids)
    # the draw: the lowest keys of a hash of (seed, set, id), so the file's order does not matter
    expected = sorted((i for i in order if i.startswith("q")), key=lambda i: draw_key(i, 0, "ift"))[:120]
    assert set(ids["ift"]) == set(expected)
    shuffled = write_lines(tmp_path / "shuffled.trees.jsonl", random.Random(1).sample(trees, len(trees)))
    again = load([shuffled], n_ift=120, n_ranked=30, seed=0)[0]
    assert all({r["id"] for r in again[n]} == set(ids[n]) for n in ids)
    other = load([big], n_ift=120, n_ranked=30, seed=1)[0]
    assert {r["id"] for r in other["ift"]} != set(ids["ift"])
    few = load([big], n_ift=500, n_ranked=500)[0]  # asked for more than there is: all of it
    assert (len(few["ift"]), len(few["ranked"]), len(few["eft_pool"])) == (200, 20, 0)
    # validation and test prompts, when asked for: from the prompts in neither IFT nor ranked, before the EFT pool
    sets = load([big], n_ift=120, n_ranked=30, seed=0, n_valid=15, n_heldout=25)[0]
    held = {name: {r["id"] for r in sets[name]} for name in sets}
    assert {name: len(held[name]) for name in held} == {"ift": 120, "ranked": 30, "eft_pool": 30, "valid": 15,
                                                       "heldout": 25}
    assert held["ift"] == set(ids["ift"]) and held["ranked"] == set(ids["ranked"])   # the same draws as before
    assert sum(map(len, held.values())) == len(set().union(*held.values()))          # no prompt in two sets
    assert set(sets["valid"][0]) == {"id", "prompt"} and sets["heldout"][0]["prompt"].startswith(("Question", "Unr"))


def test_other_language(tmp_path):
    path = write_lines(tmp_path / "x.trees.jsonl", fixture_trees())
    sets, counts, _, _ = load([path], lang="de", n_ift=10)
    assert [r["id"] for r in sets["ift"]] == ["p2"] and counts["prompt skipped: not de"] == 5


def test_cli(tmp_path):
    path = write_lines(tmp_path / "x.trees.jsonl.gz", fixture_trees())
    run = subprocess.run([sys.executable, str(ROOT / "judge" / "oasst.py"), "--input", str(path),
                          "--out-dir", str(tmp_path / "out"), "--n-ift", "1", "--n-ranked", "1"],
                         capture_output=True, text=True, check=True)
    assert "read 33 messages" in run.stdout and "reply skipped: null rank: 1" in run.stdout
    assert "ift.jsonl: 1 prompts of 1 asked for" in run.stdout and "ranked.jsonl: 1 prompts of 1 asked for" in run.stdout
    sizes = {name: len(read_jsonl(tmp_path / "out" / f"{name}.jsonl")) for name in ("ift", "ranked", "eft_pool")}
    assert sizes["ift"] == sizes["ranked"] == 1 and sizes["eft_pool"] in (1, 2)  # p1 p4 p8 rankable, one maybe IFT
    assert not (tmp_path / "out" / "valid.jsonl").exists()                        # not asked for: not written
    run = subprocess.run([sys.executable, str(ROOT / "judge" / "oasst.py"), "--input", str(path),
                          "--out-dir", str(tmp_path / "more"), "--n-ift", "1", "--n-ranked", "1", "--n-valid", "1",
                          "--n-heldout", "1"], capture_output=True, text=True, check=True)
    assert "valid.jsonl: 1 prompts of 1 asked for" in run.stdout and "heldout.jsonl: 1 prompts of 1" in run.stdout
    help_text = subprocess.run([sys.executable, str(ROOT / "judge" / "oasst.py"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--n-ift" in help_text and "--n-ranked" in help_text and "messages.jsonl" in help_text


def bad(tree_edit=None, message_edit=None):
    """A one-tree file and a one-message file, each edited to be wrong."""
    t = tree(msg("p", "Question?", "prompter", replies=[msg("a", "Answer.", "assistant", rank=0)]))
    m = flatten([copy.deepcopy(t)])[1]
    if tree_edit:
        tree_edit(t)
    if message_edit:
        message_edit(m)
    return t, m


@pytest.mark.parametrize("edit, message", [
    (lambda n: n.pop("text"), "message a has no 'text'"),
    (lambda n: n.pop("role"), "message a has no 'role'"),
    (lambda n: n.pop("lang"), "message a has no 'lang'"),
    (lambda n: n.pop("message_id"), "message without a 'message_id'"),
    (lambda n: n.update(role="user"), "message a has role 'user', expected 'prompter' or 'assistant'"),
    (lambda n: n.update(rank="first"), "message a has rank 'first', expected a non-negative integer or null"),
    (lambda n: n.update(rank=-1), "message a has rank -1"),
    (lambda n: n.update(rank=1.5), "message a has rank 1.5"),
    (lambda n: n.update(rank=True), "message a has rank True"),
    (lambda n: n.update(text=["Answer."]), "message a: 'text' must be a string"),
])
def test_bad_messages_in_both_formats(tmp_path, edit, message):
    t, m = bad(tree_edit=lambda t: edit(t["prompt"]["replies"][0]), message_edit=edit)
    trees = write_lines(tmp_path / "x.trees.jsonl", [tree(msg("ok", "Fine.", "prompter")), t])
    with pytest.raises(FormatError, match=r"x\.trees\.jsonl:2: " + message.replace("(", r"\(").replace(")", r"\)")):
        read_messages([trees])
    messages = write_lines(tmp_path / "x.messages.jsonl", [flatten([t])[0], m])
    with pytest.raises(FormatError, match=r"x\.messages\.jsonl:2: "):
        read_messages([messages])


def test_bad_files(tmp_path):
    good = json.dumps(tree(msg("p", "Q?", "prompter")))
    cases = [
        (good + '\n{"message_tree_id": "x", "prompt": {"message_id": \n' + good + "\n", r"x\.jsonl:2: not valid JSON"),
        (good + '\n{"message_tree_id": "x", "pro', r"x\.jsonl:2: the last line is cut off"),
        ('{"thread_id": "t", "thread": []}\n', r"x\.jsonl:1: neither an Open Assistant message"),
        ('{"message_tree_id": "t", "prompt": {"message_id": "p", "text": "Q", "role": "prompter", "lang": "en", '
         '"replies": {"a": 1}}}\n', r"x\.jsonl:1: message p: 'replies' must be a list"),
        ('{"message_id": "m", "parent_id": 7, "text": "Q", "role": "prompter", "lang": "en"}\n',
         r"x\.jsonl:1: message m: 'parent_id' must be a string or null"),
        ('{"message_tree_id": "t", "prompt": "Q?"}\n', r"x\.jsonl:1: a message must be a JSON object, got str"),
    ]
    for content, message in cases:
        (tmp_path / "x.jsonl").write_text(content)
        with pytest.raises(FormatError, match=message):
            read_messages([tmp_path / "x.jsonl"])


def test_a_message_in_two_files_is_an_error(tmp_path):
    trees = write_lines(tmp_path / "a.trees.jsonl", fixture_trees()[:2])
    messages = write_lines(tmp_path / "b.messages.jsonl", flatten(fixture_trees()[1:2]))
    with pytest.raises(FormatError, match=r"b\.messages\.jsonl:1: message p2 appears twice \(first at .*a\.trees"):
        read_messages([trees, messages])


def test_cli_reports_bad_input_in_one_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"message_id": "m", "text": "Q", "lang": "en"}\n')
    run = subprocess.run([sys.executable, str(ROOT / "judge" / "oasst.py"), "--input", str(tmp_path / "x.jsonl"),
                          "--out-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr == f"error: {tmp_path / 'x.jsonl'}:1: message m has no 'role'\n"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- EFT: agreement and rebalancing

@pytest.mark.parametrize("scores, ranks, agrees", [
    ([5, 3, 1], [0, 1, 2], True),
    ([4.5, 4.0], [0, 3], True),            # only the order of ranks matters
    ([1, 4], [1, 0], True),                # replies need not be listed best first
    ([4, 1], [1, 0], False),
    ([3, 5, 1], [0, 1, 2], False),         # one inverted pair is enough to disagree
    ([5, 3, 3], [0, 1, 2], False),         # a tie where the humans saw a difference
    ([4, 4, 1], [0, 0, 1], True),          # humans tied the first two: no constraint between them
    ([4, 5, 1], [0, 0, 1], True),
    ([4, 5, 4], [0, 0, 1], False),
    ([5, None, 1], [0, 1, 2], False),      # a judgement that gave no score
    ([5], [0], False),                     # nothing to compare
    ([3, 3], [0, 0], False),
    ([], [], False),
])
def test_agrees_with_ranking(scores, ranks, agrees):
    assert agrees_with_ranking(scores, ranks) is agrees


def test_agrees_with_ranking_needs_one_score_per_rank():
    with pytest.raises(ValueError, match="2 scores for 3 ranks"):
        agrees_with_ranking([1, 2], [0, 1, 2])


def eft_examples(counts: dict) -> list[dict]:
    examples = [{"id": f"{score}-{i}", "judgement": f"Justified.\nScore: {score}"}
                for score, n in counts.items() for i in range(n)]
    random.Random(0).shuffle(examples)
    return examples


def score_counts(examples):
    return Counter(int(e["id"].split("-")[0]) for e in examples)


def test_rebalance_caps_the_most_common_scores():
    examples = eft_examples({4: 60, 3: 20, 5: 10, 2: 10})
    kept = rebalance(examples, seed=0, max_fraction=0.3)
    # the largest cap K with K <= 0.3 * (min(60, K) + min(20, K) + 10 + 10) is K = 15
    assert score_counts(kept) == {4: 15, 3: 15, 5: 10, 2: 10}
    assert [e["id"] for e in kept] == [e["id"] for e in examples if e in kept]     # input order kept
    assert rebalance(examples, seed=0, max_fraction=0.3) == kept                   # seeded
    assert rebalance(examples, seed=1, max_fraction=0.3) != kept


def test_rebalance_down_samples_only_a_dominant_score():
    examples = eft_examples({4: 10, 0: 3, 1: 3, 2: 3, 3: 3, 5: 3})
    kept = rebalance(examples, seed=0, max_fraction=0.3)
    assert score_counts(kept) == {4: 6, 0: 3, 1: 3, 2: 3, 3: 3, 5: 3}             # 6 / 21 <= 0.3, 7 / 22 is not
    assert rebalance(examples, seed=0, max_fraction=1.0) == examples
    balanced = eft_examples({s: 5 for s in range(6)})
    assert rebalance(balanced, seed=0, max_fraction=0.2) == balanced


def test_rebalance_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="2 distinct scores"):
        rebalance(eft_examples({4: 5, 3: 5}), seed=0, max_fraction=0.3)
    with pytest.raises(ValueError, match="example 1 .*no score"):
        rebalance([{"judgement": "Score: 4"}, {"judgement": "Great answer!"}], seed=0, max_fraction=0.5)
    with pytest.raises(ValueError, match="max_fraction"):
        rebalance([], seed=0, max_fraction=0)
    assert rebalance([], seed=0, max_fraction=0.3) == []
