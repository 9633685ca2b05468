"""Read the judge's verdict, "Score: X", out of its own output text.

    parse_score("...clear and correct, but a little long.\nScore: 4")  -> ParsedScore(score=4.0, reason=None)
    parse_score("I would give it four points.")                        -> ParsedScore(score=None, reason="no score")

The rule, in order:
1. A *verdict* is the word "score" (any case, not inside a longer word: "Total
   score" counts, "underscore" does not), optional markdown emphasis (`**Score**:`,
   `**Score:**`, `__Score__:`), a colon, then a value: a number (`4`, `4.5`,
   `**4**`, `4/5`, `4 out of 5`, a sum `1 + 1 + 1 = 3`) or a number spelled out
   (`four`). The value may
   sit on the line below the colon only if nothing but markdown follows it there
   ("**Score:**\n4"), so "Score:\n1. Relevance..." is an enumeration, not a verdict.
   Text like "Score: <total points>" or "the score: it depends" is no verdict and
   is ignored.
2. The last verdict in the text is the judge's final word: a judge that
   revises itself ("Score: 3 ... on reflection, Score: 4") is taken at 4.
3. That final verdict gives no score when
   - "conflicting scores": the line it starts on holds another verdict with a
     different value ("Score: 3, Score: 4"), its value runs on into a second
     value ("Score: 3 or 4", "Score: 3-4", "Score: 3 to 4", "Score: 3, 4"), or
     a sum disagrees with its stated total ("Score: 1 + 1 + 1 = 4");
   - "spelled out": the value is a word ("Score: four");
   - "another scale": it gives a denominator other than MAX_SCORE ("Score: 8/10", "7 out of 10");
   - "out of range": the number is outside [0, MAX_SCORE] ("Score: 6", "Score: -1").
   Otherwise the score is the number (a float; 4.5 is allowed).

`parse_score` never raises: anything it cannot read gives ParsedScore(None, reason).
The reason starts with one of REASONS, optionally followed by ": detail", so a
summary can count reason.split(":")[0].
"""
import re
from typing import NamedTuple

# The top of the judge prompt's scale (judge/prompt.py: the paper's additive 5-point system, 0 to 5 points).
# A prompt with another scale changes it here; judge/pairs.py, the summaries and the report read it from here.
MAX_SCORE = 5

REASONS = ("no score", "conflicting scores", "spelled out", "another scale", "out of range", "not text")

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_VALUE = rf"{_NUMBER}|(?:{'|'.join(NUMBER_WORDS)})\b"

# One verdict. Shared with judge/prompt.py, which breaks every match of it in a response.
VERDICT = re.compile(rf"""
    (?<![a-z])score                    # the label; "underscore" is not one
    [*_]*(?P<colon>[ \t]*:)            # **Score**: / Score :
    (?P<gap>[*_\s]*)                   # spaces, markdown, maybe a newline
    (?P<value>{_VALUE})
    (?P<terms>(?:[ \t]*\+[ \t]*\d+(?:\.\d+)?)+)?                          # 1 + 1 + 1
    (?:[ \t]*=[ \t]*(?P<total>\d+(?:\.\d+)?))?                              # = 3
    (?:[*_]*[ \t]*(?:/|out[ \t]+of)[ \t]*(?P<denominator>\d+(?:\.\d+)?))?   # 4/5, 4 out of 5
    (?:[*_]*[ \t]*(?:-|\u2013|\u2014|or|to|and|,)[ \t]*[*_]*(?P<alternative>{_NUMBER}))?  # 3-4, 3 or 4
    """, re.IGNORECASE | re.VERBOSE)
_ONLY_MARKDOWN = re.compile(r"[*_ \t.]*(?:\n|$)")


class ParsedScore(NamedTuple):
    score: float | None   # the judge's score in [0, MAX_SCORE], or None
    reason: str | None    # why there is no score (None when there is one)


def _number(value: str) -> float | str:
    """A verdict's value as a float, or the lower-cased word if it is spelled out."""
    try:
        return float(value)
    except ValueError:
        return value.lower()


def _values(verdict: re.Match) -> list[float | str]:
    """What a verdict states: its value (a sum added up), then its total and its alternative if it has them."""
    value = _number(verdict.group("value"))
    if verdict.group("terms") and not isinstance(value, str):
        value += sum(float(t) for t in re.findall(r"\d+(?:\.\d+)?", verdict.group("terms")))
    return [value] + [float(verdict.group(g)) for g in ("total", "alternative") if verdict.group(g) is not None]


def find_verdicts(text: str) -> list[re.Match]:
    """Every verdict in `text` (rule 1 of the module doc), in order."""
    verdicts = []
    for m in VERDICT.finditer(text):
        if "\n" in m.group("gap") and not _ONLY_MARKDOWN.match(text, m.end()):
            continue  # "Score:\n1. The response is relevant..." is a list, not a verdict
        verdicts.append(m)
    return verdicts


def parse_score(text) -> ParsedScore:
    """The judge's final score in `text`, or None with a reason (see the module doc). Never raises."""
    if not isinstance(text, str):
        return ParsedScore(None, f"not text: {type(text).__name__}")
    verdicts = find_verdicts(text)
    if not verdicts:
        return ParsedScore(None, "no score")
    final = verdicts[-1]
    value = _values(final)[0]

    line_start = text.rfind("\n", 0, final.start()) + 1
    values = [v for m in verdicts if m.start() >= line_start for v in _values(m)]
    if len(set(values)) > 1:
        shown = (v if isinstance(v, str) else f"{v:g}" for v in values)
        return ParsedScore(None, "conflicting scores: " + ", ".join(shown))

    if isinstance(value, str):
        return ParsedScore(None, f"spelled out: {final.group('value')!r}")
    denominator = final.group("denominator")
    if denominator is not None and float(denominator) != MAX_SCORE:
        return ParsedScore(None, f"another scale: {final.group(0).strip()!r}")
    if not 0 <= value <= MAX_SCORE:
        return ParsedScore(None, f"out of range: {value:g}")
    return ParsedScore(value, None)
