"""Build data/seed/eft.jsonl and data/seed/ranked.trees.jsonl from the hand-written seed text.

  python data/seed/make_seed.py            # rewrites both files; the output depends only on --seed

Reads ift.jsonl (prompts with good answers), source/ranked_answers.jsonl (the ranked set's
prompts with good answers) and source/wrong_answers.jsonl (plausible but wrong answers, each with
a one-line correction), all hand-written. Every lower-quality answer is one of these, made from a
good answer, each with the score the judge prompt's additive rubric gives it:
  5 good       the hand-written answer as it is
  4 polite     the same answer between a chatty opener and closer: complete, but not concise
  3 blog       the same answer inside blog filler and a promotional sign-off: useful, unfocused
  2 half       a list answer cut mid-item after about half of its points: substantial, incomplete
  1 wrong      the hand-written wrong answer: on topic, but its main claim is false
  1 fragment   the first few words of a list answer: relevant, next to no information
  0 off-topic  the good answer to a prompt of another category
Only list answers with a short introduction (no code in it) are cut, so that the cut really
removes part of the answer. eft.jsonl: 30 examples of each score, made from IFT prompts, each
with a short justification in the rubric's terms ending in "Score: X". ranked.trees.jsonl: every
ranked prompt with its good answer (rank 0) and 2 or 3 degraded ones of different scores,
ranked by score, in the Open Assistant trees format; replies are in shuffled order.

eft_contrast.jsonl (not the quick demo's: configs/smollm2-135m-judge.yaml trains on it) is the EFT set made
contrastive: every IFT prompt appears with its good answer and with each degradation that can be made from it,
so that what tells a score from another is the response, never the question. Beyond the kinds above, which
for it are made from any answer (not only lists):
  2 cut        any answer of 40 words or more cut mid-sentence after about half of its words
  1 fragment   the first few words of any answer of 40 words or more
  0 other      the good answer to another prompt of the same category (as hard as off-topic gets)
No score is more than 30% of it.
"""
import argparse
import random
import re
import sys
from pathlib import Path

from judge.parse import parse_score
from model.errors import FormatError
from model.jsonl import read_jsonl, write_jsonl_atomic

SEED_DIR = Path(__file__).resolve().parent
PER_SCORE = 30          # EFT examples per score
N_WRONG_EFT = 20        # of the 30 score-1 examples, how many are wrong answers (the rest fragments)

POLITE_OPENERS = ["Great question! I'd be happy to help you with this.",
                  "Sure! This is something a lot of people wonder about, so let me explain.",
                  "Thanks for asking. Here is what you need to know.",
                  "Of course! Let me walk you through it."]
POLITE_CLOSERS = ["I hope this helps! Let me know if you have any other questions.",
                  "Feel free to ask if anything is unclear. I'm always happy to help!",
                  "Hopefully that answers your question. Don't hesitate to follow up if you want to know more!"]
BLOG_OPENERS = ["# Everything You Need to Know\n\nIn today's busy world, questions like this come up all the time, "
                "and the internet is full of conflicting advice. We've been writing about topics like this for "
                "over ten years, so grab a cup of coffee and settle in!",
                "Have you ever found yourself wondering about this? You're not alone! Thousands of our readers "
                "ask us similar things every week. Before we get to the answer, don't forget to subscribe to our "
                "newsletter for more tips like these.",
                "## The Ultimate Guide (Updated for This Year)\n\nWelcome back to the blog! Today's topic is one "
                "of our most requested ever. Whether you're a complete beginner or a seasoned pro, there's "
                "something here for you, so let's dive right in."]
BLOG_CLOSERS = ["Thanks for reading! If you found this post useful, share it with your friends and leave a "
                "comment below. This post may contain affiliate links.",
                "That's all for today! Follow us on social media for daily tips, and check out our other popular "
                "articles: \"10 Life Hacks You Wish You Knew Sooner\" and \"Why Everyone Is Talking About "
                "Minimalism\".",
                "Did you enjoy this article? Rate it with the stars below and sign up for our free weekly "
                "newsletter. See you in the next post!"]

JUDGEMENTS = {
    "good": [
        "The response is relevant and answers the question directly and completely. It is accurate, well "
        "organized and written from an assistant's perspective, and it contains no filler or off-topic "
        "material. It reflects good knowledge of the subject and is tailored to what was asked, so it earns "
        "all five points.",
        "The answer opens with \"{start}\" and goes straight to the point. It covers everything the user "
        "asked, is correct, clearly structured and concise, with nothing extraneous. This is an expert, "
        "helpful assistant response that meets all five criteria.",
        "Relevant: yes. Substantial: it covers the whole question. Useful: it answers it clearly and "
        "correctly. Assistant perspective: it is direct, well organized and helpful. Fifth point: it is "
        "concise and precise, without extraneous information. All five points are earned.",
        "This response resolves the user's question fully and accurately. It is focused, easy to follow and "
        "free of padding, and the details it adds are genuinely useful rather than filler. I cannot see "
        "anything to improve, so it deserves the full score."],
    "polite": [
        "The response is relevant and answers the question correctly and completely, in a clear assistant "
        "voice. However, it opens with \"{opener}\" and ends with a closing remark that add nothing, so it is "
        "not as concise as it could be. That costs the fifth point.",
        "The core answer is accurate, complete and well organized, which earns the first four points. The "
        "fifth point is withheld because of the generic pleasantries at the beginning and end (\"{opener}\"), "
        "which are extraneous to the question.",
        "Relevant, substantial, useful and written from an assistant's perspective: the content fully answers "
        "the question. The filler before and after the answer (\"{opener}\") leaves slight room for "
        "improvement in conciseness, so it falls just short of an impeccably tailored response."],
    "blog": [
        "The response does contain a correct answer to the question, which earns the first three points. But "
        "it is wrapped in blog-style material, starting with \"{opener}\" and ending with a promotional "
        "sign-off, so it is not a direct, well-organized assistant answer.",
        "Buried in the middle of this response is a useful answer that covers the basic elements of the "
        "question. The surrounding text (\"{opener}\") reads like a blog post and has nothing to do with the "
        "question, so the response is not focused or clearly written from an assistant's perspective. Three "
        "points.",
        "The answer is relevant and useful, but the introduction and the closing ask the reader to subscribe, "
        "share or read other articles. These blog and search-result elements make the response unfocused, so "
        "it cannot get the fourth or fifth point."],
    "half": [
        "The response is relevant and starts well, but it breaks off mid-sentence at \"{end}\". It covers a "
        "substantial part of the question without completing the answer, so it earns two points.",
        "The response addresses a good part of the question, but it is cut off (\"{end}\") before it finishes, "
        "leaving the rest of the answer missing. Relevant and partly useful, but incomplete.",
        "This starts as a reasonable answer but stops abruptly after \"{end}\". Because the remaining points "
        "are never given, the user does not get a complete answer to the question. Two points: relevance and "
        "a substantial partial answer."],
    "wrong": [
        "The response is on topic, but it is wrong: {correction} Since its main claim is incorrect, it only "
        "earns the point for relevance.",
        "Although it addresses the question, the response gives incorrect information: {correction} A user "
        "relying on it would be misled, so beyond relevance it earns nothing."],
    "fragment": [
        "The response is relevant but stops after a few words (\"{start}\"), so it gives almost no useful "
        "information and does not answer the question. One point for relevance.",
        "The response begins on topic but ends after a single unfinished phrase (\"{start}\"). It provides only "
        "a trace of related information and none of the substance the user needs."],
    "off-topic": [
        "The response does not address the question at all: it is about something unrelated (\"{start}\"). "
        "None of the criteria are met.",
        "This response answers a different question entirely (it begins \"{start}\") and contains nothing "
        "relevant to what the user asked. No points can be awarded.",
        "The user's question is not addressed. The response talks about an unrelated topic (\"{start}\"), so "
        "it is not even relevant."],
    "other": [
        "The response answers a different question from the one asked: it begins \"{start}\", which is not what "
        "the user wants to know. It is on a related subject at best, and none of the criteria are met.",
        "This is an answer to another question. The user asked something else, and the response (\"{start}\") "
        "never addresses it, so it earns no points, however well written it is."],
}
SCORE = {"good": 5, "polite": 4, "blog": 3, "half": 2, "cut": 2, "wrong": 1, "fragment": 1, "off-topic": 0,
         "other": 0}
CONTRAST_MIN_WORDS = 40   # answers this long can be cut, or reduced to a fragment, whatever their form
LIST_ITEM = re.compile(r"^(?:- |\d+\. )", re.MULTILINE)


def category(item: dict) -> str:
    return item["id"].split("-")[1]


def list_items(text: str) -> list[re.Match] | None:
    """The list items of an answer that is a list after a short introduction without code, else None."""
    items = list(LIST_ITEM.finditer(text))
    intro = text[:items[0].start()] if items else ""
    if len(items) < 3 or len(intro.split()) > 25 or "`" in intro:
        return None
    return items


def cut_after_words(text: str, start: int, n_words: int) -> str:
    """text up to the n-th word after `start`, extended past words that end a sentence and list markers."""
    words = list(re.finditer(r"\S+", text[start:]))
    i = min(n_words, len(words)) - 1
    while i < len(words) - 1 and (words[i].group()[-1] in ".!?" or words[i].group() == "-"):
        i += 1
    return text[:start + words[i].end()]


def half(text: str) -> str:
    items = list_items(text)
    keep = len(items) // 2                       # complete items kept; the next one is cut mid-way
    start = items[keep].start()
    item_words = len(text[start:items[keep + 1].start() if keep + 1 < len(items) else None].split())
    return cut_after_words(text, start, max(2, item_words // 2))


def fragment(text: str) -> str:
    """The first words of a list answer, ending inside its introduction or its first item."""
    items = list_items(text)
    first_item = text[items[0].start():items[1].start()]
    return cut_after_words(text, 0, min(6, len(text[:items[0].start()].split()) + len(first_item.split()) // 2))


def quote(text: str, n_words: int = 6, from_end: bool = False) -> str:
    """A few words of `text` for a judgement: markdown and code fences dropped, double quotes made single."""
    words = re.sub(r"```\w*|[#*`]", " ", text).replace('"', "'").split()
    if len(words) <= n_words:
        return " ".join(words)
    return "..." + " ".join(words[-n_words:]) if from_end else " ".join(words[:n_words]) + "..."


def degrade(kind: str, item: dict, rng: random.Random, wrong: dict, pool: list[dict]) -> tuple[str, dict]:
    """A response of the given kind for `item`, and the slots its judgement can quote."""
    text = item["response"]
    if kind == "cut":
        cut = cut_after_words(text, 0, len(text.split()) // 2)
        return cut, {"end": quote(cut, 5, from_end=True)}
    if kind == "fragment" and not list_items(text):
        cut = cut_after_words(text, 0, 6)
        return cut, {"start": quote(cut, 12)}
    if kind == "other":
        other = rng.choice([o for o in pool if category(o) == category(item) and o["id"] != item["id"]])
        return other["response"], {"start": quote(other["response"])}
    if kind == "good":
        return text, {"start": quote(text)}
    if kind in ("polite", "blog"):
        openers, closers = (POLITE_OPENERS, POLITE_CLOSERS) if kind == "polite" else (BLOG_OPENERS, BLOG_CLOSERS)
        opener = rng.choice(openers)
        return f"{opener}\n\n{text}\n\n{rng.choice(closers)}", {"opener": quote(opener, 8)}
    if kind == "half":
        cut = half(text)
        return cut, {"end": quote(cut, 5, from_end=True)}
    if kind == "fragment":
        cut = fragment(text)
        return cut, {"start": quote(cut, 12)}
    if kind == "wrong":
        return wrong[item["id"]]["response"], {"correction": wrong[item["id"]]["correction"]}
    assert kind == "off-topic"
    other = rng.choice([o for o in pool if category(o) != category(item)])
    return other["response"], {"start": quote(other["response"])}


def judgement(kind: str, slots: dict, rng: random.Random) -> str:
    return rng.choice(JUDGEMENTS["half" if kind == "cut" else kind]).format(**slots) + f"\nScore: {SCORE[kind]}"


def kinds_for(item: dict, wrong: dict) -> list[str]:
    """The degradations that can be made honestly from this item."""
    kinds = ["polite", "blog", "off-topic"]
    items = list_items(item["response"])
    if items:
        kinds.append("half")
        if len(item["response"][items[0].start():items[1].start()].split()) >= 8:
            kinds.append("fragment")      # a first item long enough that a few words of it say little
    if item["id"] in wrong:
        kinds.append("wrong")
    return kinds


def make_eft(ift: list[dict], wrong: dict, rng: random.Random) -> list[dict]:
    """PER_SCORE examples of each score from the IFT prompts, spreading the use of each prompt."""
    quota = {"good": PER_SCORE, "polite": PER_SCORE, "blog": PER_SCORE, "half": PER_SCORE,
             "wrong": N_WRONG_EFT, "fragment": PER_SCORE - N_WRONG_EFT, "off-topic": PER_SCORE}
    uses = {item["id"]: 0 for item in ift}
    examples = []
    for kind in ("wrong", "half", "fragment", "good", "polite", "blog", "off-topic"):   # scarcest first
        eligible = [item for item in ift if kind == "good" or kind in kinds_for(item, wrong)]
        eligible.sort(key=lambda item: (uses[item["id"]], rng.random()))
        for item in eligible[:quota[kind]]:
            uses[item["id"]] += 1
            response, slots = degrade(kind, item, rng, wrong, ift)
            examples.append({"instruction": item["prompt"], "response": response,
                             "judgement": judgement(kind, slots, rng)})
    assert len(examples) == sum(quota.values()), "not enough eligible prompts for the EFT quotas"
    rng.shuffle(examples)
    return [{"id": f"eft-{i:03d}", **ex} for i, ex in enumerate(examples, start=1)]


def contrast_kinds(item: dict, wrong: dict, pool: list[dict]) -> list[str]:
    """Every degradation eft_contrast.jsonl makes of this item (one example each, plus the good answer)."""
    kinds = ["good", "polite", "blog", "off-topic"]
    long_enough = len(item["response"].split()) >= CONTRAST_MIN_WORDS
    if list_items(item["response"]):
        kinds.append("half")
    elif long_enough:
        kinds.append("cut")
    if item["id"] in wrong:
        kinds.append("wrong")
    elif long_enough or "fragment" in kinds_for(item, wrong):
        kinds.append("fragment")
    if any(category(o) == category(item) and o["id"] != item["id"] for o in pool):
        kinds.append("other")
    return kinds


def make_eft_contrast(ift: list[dict], wrong: dict, rng: random.Random) -> list[dict]:
    """Each IFT prompt with its good answer and each degradation contrast_kinds makes of it, shuffled."""
    examples = []
    for item in ift:
        for kind in contrast_kinds(item, wrong, ift):
            response, slots = degrade(kind, item, rng, wrong, ift)
            examples.append({"instruction": item["prompt"], "response": response,
                             "judgement": judgement(kind, slots, rng)})
    rng.shuffle(examples)
    return [{"id": f"eftc-{i:04d}", **ex} for i, ex in enumerate(examples, start=1)]


def oa_message(message_id: str, parent_id, text: str, role: str, rank, replies: list) -> dict:
    return {"message_id": message_id, "parent_id": parent_id, "text": text, "role": role, "lang": "en",
            "review_count": 3, "review_result": True, "deleted": False, "rank": rank, "synthetic": False,
            "replies": replies}


def make_ranked_trees(ranked: list[dict], wrong: dict, rng: random.Random) -> list[dict]:
    """One Open Assistant tree per ranked prompt: the good answer and 2 or 3 worse ones, of distinct scores."""
    trees = []
    for i, item in enumerate(ranked):
        options = kinds_for(item, wrong)
        if "wrong" in options and "fragment" in options:     # both score 1: keep one, so ranks are strict
            options.remove("fragment")
        kinds = ["good"] + rng.sample(options, 2 + i % 2)
        made = [(SCORE[k], degrade(k, item, rng, wrong, ranked)[0]) for k in kinds]
        by_score = sorted(made, key=lambda m: -m[0])
        rng.shuffle(made)
        tree_id = f"seed-{item['id']}"
        replies = [oa_message(f"{tree_id}-r{j}", tree_id, text, "assistant",
                              by_score.index((score, text)), [])
                   for j, (score, text) in enumerate(made, start=1)]
        trees.append({"message_tree_id": tree_id, "tree_state": "ready_for_export",
                      "prompt": oa_message(tree_id, None, item["prompt"], "prompter", None, replies),
                      "origin": "self-rewarding seed set"})
    return trees


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-dir", default=str(SEED_DIR), help="where the seed files are (default: this folder)")
    parser.add_argument("--out-dir", help="where to write eft.jsonl and ranked.trees.jsonl (default: --seed-dir)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0, which made the shipped files)")
    a = parser.parse_args(argv)
    seed_dir, out_dir = Path(a.seed_dir), Path(a.out_dir or a.seed_dir)
    try:
        ift = read_jsonl(seed_dir / "ift.jsonl", ("id", "prompt", "response"))
        ranked = read_jsonl(seed_dir / "source" / "ranked_answers.jsonl", ("id", "prompt", "response"))
        wrong = {w["id"]: w for w in read_jsonl(seed_dir / "source" / "wrong_answers.jsonl",
                                                ("id", "response", "correction"))}
    except FormatError as e:
        sys.exit(f"error: {e}")
    rng = random.Random(a.seed)
    eft = make_eft(ift, wrong, rng)
    for ex in eft:
        assert parse_score(ex["judgement"]).score is not None, ex
    trees = make_ranked_trees(ranked, wrong, rng)
    contrast = make_eft_contrast(ift, wrong, random.Random(f"contrast/{a.seed}"))
    for ex in contrast:
        assert parse_score(ex["judgement"]).score is not None, ex
    write_jsonl_atomic(out_dir / "eft.jsonl", eft)
    write_jsonl_atomic(out_dir / "ranked.trees.jsonl", trees)
    write_jsonl_atomic(out_dir / "eft_contrast.jsonl", contrast)
    print(f"wrote {out_dir / 'eft.jsonl'} ({len(eft)} examples), {out_dir / 'ranked.trees.jsonl'} "
          f"({len(trees)} prompts) and {out_dir / 'eft_contrast.jsonl'} ({len(contrast)} examples)")


if __name__ == "__main__":
    main()
