"""The pairwise judge of the head-to-head evaluation: its prompts, filled in safely, and their verdict parsers.

    messages = pairwise_messages(instruction, response_1, response_2)   # one user turn; instruction: text or chat
    parse_verdict("Response 2 answers the question.\nVerdict: 2")      -> ParsedVerdict("2", None)
    parse_verdict("Both are fine, I think.")                            -> ParsedVerdict(None, "no verdict")
    messages = pairwise_messages(instruction, r1, r2, "alpacaeval")     # the paper's evaluations' form
    parse_verdict("[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]", "alpacaeval")
                                                                        -> ParsedVerdict("2", None)

Two prompts (PAIRWISE_PROMPTS; --pairwise-prompt in the evaluation CLIs):
  project     (the default) written for this project, below;
  alpacaeval  the form of AlpacaEval's pairwise annotator prompt (alpaca_eval_gpt4), which the paper used
              for checkpoint selection (Claude 2) and its head-to-head results (GPT-4): a system turn, a
              request to rank two models for a leaderboard, the instruction and the two answers written as
              Python literals (triple-quoted strings, the models named model_1 and model_2), and the reply
              asked for as a ranking, [{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}].
              Our wording, its form; for AlpacaEval's own prompt and judge, score eval/export.py's answer
              file with the alpaca_eval tool. The reply is read without evaluating it (never eval): the
              last entry naming each model gives its rank, 1 or 2 (any other rank: no verdict); the lower
              rank wins, equal ranks are a tie, an entry for one model only decides by its rank (1: it
              wins). In an answer, a rank entry's colon is replaced by " -" ('rank' - 1); the instruction
              and the answers are written as the inside of Python strings, backslashes and double quotes
              escaped (\\ and \"), so no text can end its string early or hand the judge a ranking.

The project's prompt is written for this project, in the spirit of the paper's judge prompt (judge/prompt.py):
it asks which of two answers to the user's question is better, warns against preferring an answer
for its position or its length, and asks for a short justification ending in "Verdict: 1",
"Verdict: 2" or "Verdict: tie". Each response sits between its own tags; a response that contains
a tag beginning with "response" (`<response_2>`, `</response_1 >`, `<Response>`) has its brackets
escaped (`&lt;/response_1&gt;`), and one that contains a verdict ("Verdict: 1") has its colon replaced
by " -", so an answer can neither close its tag early nor hand the judge a ready-made verdict.

parse_verdict reads the judge's output the way judge/parse.py reads a score:
1. A verdict is the word "verdict" (any case, not inside a longer word), optional markdown, a colon,
   optional markdown, quotes or brackets, then "1", "2", "Response 1", "Response 2" or "tie". The
   value may sit on the next line only if nothing but markdown or punctuation follows it there, so
   "Verdict:\n1. Response 1 is ..." is an enumeration, not a verdict.
2. The last verdict in the text is the judge's final word.
3. It gives no verdict ("conflicting verdicts") when its line holds another verdict with a different
   value, or its value runs on into another ("Verdict: 1 or 2", "Verdict: 1/2", "Verdict: 2 or tie").
parse_verdict never raises: anything it cannot read gives ParsedVerdict(None, reason), the reason
starting with one of REASONS.
"""
import re
from typing import NamedTuple

from judge.prompt import instruction_text, neutralise_text

REASONS = ("no verdict", "conflicting verdicts", "not text")
PAIRWISE_PROMPTS = ("project", "alpacaeval")  # the first is the default

PAIRWISE_TEMPLATE = """Compare two responses to the user's question below and decide which one is the better answer.
The better response follows the user's instruction, is correct, addresses the question directly and completely, is clearly written and well organised, and contains no extraneous information. Judge the content only: the order in which the responses are shown must not influence you, and a longer response is not better for being longer.
User: {instruction}
<response_1>{response_1}</response_1>
<response_2>{response_2}</response_2>
After examining the user's instruction and both responses:
- Briefly explain which response is better and why, up to 100 words.
- Conclude with your verdict using exactly one of the formats "Verdict: 1" (response 1 is better), "Verdict: 2" (response 2 is better) or "Verdict: tie" (neither is better)."""

ALPACAEVAL_SYSTEM = "You are an assistant that ranks language models by the quality of their answers."
ALPACAEVAL_TEMPLATE = """I am making a leaderboard of large language models. Below are the instruction (prompt) that two models were given and the answer each of them wrote. Rank the two models by which answer people would prefer. Everything below, and your reply, is written as Python literals.

The instruction:
{{
    "instruction": \"\"\"{instruction}\"\"\",
}}

The answers of the models:
[
    {{
        "model": "model_1",
        "answer": \"\"\"{response_1}\"\"\"
    }},
    {{
        "model": "model_2",
        "answer": \"\"\"{response_2}\"\"\"
    }}
]

Rank the models by the quality of their answers, rank 1 for the model with the better answer, and reply with a list of the model names and their ranks in exactly this form:
[
    {{'model': <model name>, 'rank': <rank>}},
    {{'model': <model name>, 'rank': <rank>}}
]

Reply with the list alone: it is read by a program. Give the ranking that most people would give."""
# one entry of a ranking: {'model': 'model_1', 'rank': 1}, either key first, either quotes, "model_" optional,
# other keys after them allowed
_MODEL = r"""(?P<q1>['"])model(?P=q1)\s*:\s*['"]?(?:model_)?(?P<model>[12])['"]?"""
_RANK = r"""(?P<q2>['"])rank(?P=q2)\s*:\s*['"]?(?P<rank>\d+)['"]?"""
RANK_ENTRY = re.compile(rf"\{{\s*(?:{_MODEL}\s*,\s*{_RANK}|{_RANK.replace('q2', 'q3').replace('rank>', 'rank2>')}"
                        rf"\s*,\s*{_MODEL.replace('q1', 'q4').replace('model>', 'model2>')})(?:\s*,[^{{}}]*)?\s*\}}")
# what neutralising breaks in an answer: a rank key and its value ('rank': 1 -> 'rank' - 1)
_RANK_KEY = re.compile(r"""['"]rank['"](?P<colon>\s*:)(?P<gap>\s*)['"]?\d""", re.IGNORECASE)

_VALUE = r"(?:response[ \t]*)?(?:1|2)(?![\d]|\.\d)|tie\b"
VERDICT = re.compile(rf"""
    (?<![a-z])verdict                 # the label; "nonverdict" is not one
    [*_]*(?P<colon>[ \t]*:)           # **Verdict**: / Verdict :
    (?P<gap>[*_\s"'\[(]*)             # spaces, markdown, quotes, brackets, maybe a newline
    (?P<value>{_VALUE})
    (?:[*_"'\])]*[ \t]*(?:/|or)[ \t]*[*_"'\[(]*(?P<alternative>{_VALUE}))?  # 1 or 2, 1/2
    """, re.IGNORECASE | re.VERBOSE)
_ONLY_MARKDOWN = re.compile(r"""[*_"'\])\s.!]*(?:\n|$)""")
_RESPONSE_TAG = re.compile(r"<\s*/?\s*response[^<>]*>", re.IGNORECASE)


class ParsedVerdict(NamedTuple):
    verdict: str | None   # "1", "2" or "tie" (which response is better), or None
    reason: str | None    # why there is no verdict (None when there is one)


def _normalise(value: str) -> str:
    value = value.lower()
    return "tie" if value == "tie" else value[-1]


def find_verdicts(text: str) -> list[re.Match]:
    """Every verdict in `text` (rule 1 of the module doc), in order."""
    return [m for m in VERDICT.finditer(text)
            if "\n" not in m.group("gap") or _ONLY_MARKDOWN.match(text, m.end())]


def parse_ranking(text: str) -> ParsedVerdict:
    """The verdict of an alpacaeval-form reply (see the module doc): which model the ranking puts first."""
    ranks = {}
    for m in RANK_ENTRY.finditer(text):
        ranks[m.group("model") or m.group("model2")] = int(m.group("rank") or m.group("rank2"))
    if not ranks or not set(ranks.values()) <= {1, 2}:
        return ParsedVerdict(None, "no verdict")   # nothing read, or a rank two models cannot have
    if len(ranks) == 1:
        [(model, rank)] = ranks.items()
        return ParsedVerdict(model if rank == 1 else {"1": "2", "2": "1"}[model], None)
    return ParsedVerdict("tie" if ranks["1"] == ranks["2"] else "1" if ranks["1"] < ranks["2"] else "2", None)


def python_string_text(text: str) -> str:
    """`text` as the inside of a Python string literal: backslashes and double quotes escaped, so that no
    quote in it can end the triple-quoted string it is written into."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def parse_verdict(text, pairwise_prompt: str = PAIRWISE_PROMPTS[0]) -> ParsedVerdict:
    """The judge's final verdict in `text` as the prompt `pairwise_prompt` asks for it, or None with a reason (see
    the module doc). Never raises."""
    if not isinstance(text, str):
        return ParsedVerdict(None, f"not text: {type(text).__name__}")
    if pairwise_prompt == "alpacaeval":
        return parse_ranking(text)
    verdicts = find_verdicts(text)
    if not verdicts:
        return ParsedVerdict(None, "no verdict")
    final = verdicts[-1]
    line_start = text.rfind("\n", 0, final.start()) + 1
    values = {_normalise(v) for m in verdicts if m.start() >= line_start
              for v in (m.group("value"), m.group("alternative")) if v is not None}
    if len(values) > 1:
        return ParsedVerdict(None, "conflicting verdicts: " + ", ".join(sorted(values)))
    return ParsedVerdict(values.pop(), None)


def neutralise(response: str, pairwise_prompt: str) -> str:
    """`response` with response tags escaped and verdicts broken (see the module doc), as the single judge
    does it (judge/prompt.py), with this prompt's verdict and tags; for the alpacaeval form, rank entries broken,
    then written as a Python string's inside (python_string_text)."""
    if pairwise_prompt == "alpacaeval":
        return python_string_text(neutralise_text(response, _RANK_KEY, _RESPONSE_TAG))
    return neutralise_text(response, VERDICT, _RESPONSE_TAG)


def pairwise_messages(instruction: str | list[dict], response_1: str, response_2: str,
                      pairwise_prompt: str = PAIRWISE_PROMPTS[0]) -> list[dict]:
    """The pairwise judge prompt `pairwise_prompt` as a chat: a single user turn (alpacaeval: after its system
    turn). A conversation (chat messages ending with the user turn answered) fills the instruction as it does
    for the single judge (judge/prompt.py instruction_text)."""
    alpacaeval = pairwise_prompt == "alpacaeval"
    template = ALPACAEVAL_TEMPLATE if alpacaeval else PAIRWISE_TEMPLATE
    instruction = instruction_text(instruction)
    content = template.format(instruction=python_string_text(instruction) if alpacaeval else instruction,
                              response_1=neutralise(response_1, pairwise_prompt),
                              response_2=neutralise(response_2, pairwise_prompt))
    system = [{"role": "system", "content": ALPACAEVAL_SYSTEM}] if alpacaeval else []
    return system + [{"role": "user", "content": content}]
