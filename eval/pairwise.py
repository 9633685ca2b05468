"""The pairwise judge of the head-to-head evaluation: its prompt, filled in safely, and its verdict parser.

    messages = pairwise_messages(instruction, response_1, response_2)   # one user turn; instruction: text or chat
    parse_verdict("Response 2 answers the question.\nVerdict: 2")      -> ParsedVerdict("2", None)
    parse_verdict("Both are fine, I think.")                            -> ParsedVerdict(None, "no verdict")

The prompt is written for this project, in the spirit of the paper's judge prompt (judge/prompt.py):
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

PAIRWISE_TEMPLATE = """Compare two responses to the user's question below and decide which one is the better answer.
The better response follows the user's instruction, is correct, addresses the question directly and completely, is clearly written and well organised, and contains no extraneous information. Judge the content only: the order in which the responses are shown must not influence you, and a longer response is not better for being longer.
User: {instruction}
<response_1>{response_1}</response_1>
<response_2>{response_2}</response_2>
After examining the user's instruction and both responses:
- Briefly explain which response is better and why, up to 100 words.
- Conclude with your verdict using exactly one of the formats "Verdict: 1" (response 1 is better), "Verdict: 2" (response 2 is better) or "Verdict: tie" (neither is better)."""

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


def parse_verdict(text) -> ParsedVerdict:
    """The judge's final verdict in `text`, or None with a reason (see the module doc). Never raises."""
    if not isinstance(text, str):
        return ParsedVerdict(None, f"not text: {type(text).__name__}")
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


def neutralise(response: str) -> str:
    """`response` with response tags escaped and verdicts broken (see the module doc), as the single judge
    does it (judge/prompt.py), with this prompt's verdict and tags."""
    return neutralise_text(response, VERDICT, _RESPONSE_TAG)


def pairwise_messages(instruction: str | list[dict], response_1: str, response_2: str) -> list[dict]:
    """The pairwise judge prompt as a chat: a single user turn. A conversation (chat messages ending with the
    user turn answered) fills "User:" as it does for the single judge (judge/prompt.py instruction_text)."""
    content = PAIRWISE_TEMPLATE.format(instruction=instruction_text(instruction), response_1=neutralise(response_1),
                                       response_2=neutralise(response_2))
    return [{"role": "user", "content": content}]
