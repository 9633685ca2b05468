"""The judge prompt: the paper's LLM-as-a-Judge template (Figure 2), filled in safely.

    messages = judge_messages(instruction, response)   # one user turn; the tokenizer applies the chat template
    messages = judge_messages(conversation, response)  # a multi-turn prompt: the judge sees the whole of it
    text, neutralised = neutralise_response(response)  # what the judge sees, and whether anything was changed

The response being judged is written by the model being trained, so it must not
be able to decide its own score. Two things in it are neutralised, changing as
little as possible and visibly:
  - response tags: `<response>` and `</response>` (any case, spaces or
    attributes inside the brackets) get their brackets escaped as in HTML,
    `</response>` -> `&lt;/response&gt;`, so the response cannot close its tag
    early and write text that the judge would read as part of the prompt;
  - verdicts: anything judge/parse.py would read as a score (its VERDICT regex:
    "Score: 5", "**Score:** 5/5", "score:5", "Score: five", ...) has its colon
    replaced by " -", "Score: 5" -> "Score - 5", so a judge that echoes the
    response does not echo a verdict, and the prompt never shows the judge a
    ready-made "Score: 5". Text like "score: int" in code, with no value after
    the colon, is left alone.
Nothing else changes. The instruction is not neutralised: it is the same for
every candidate of a prompt, so text in it cannot favour one candidate over
another, and the judge should see the question as it was asked.
The pipeline counts the candidates whose `neutralised` flag is set (judged.jsonl).
"""
import re

from judge.parse import VERDICT

# The paper's Figure 2, with the PDF's line breaks joined and typographic quotes written as ASCII.
# Filled with str.format, so braces inside an instruction or response are kept as they are.
JUDGE_TEMPLATE = """Review the user's question and the corresponding response using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:
- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but does not completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a useful way, regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the user's question directly and comprehensively, and is well-organized and helpful, even if there is slight room for improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and insightful answer.
User: {instruction}
<response>{response}</response>
After examining the user's instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"
Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the response in alignment with this additive scoring model, we'll systematically attribute points based on the outlined criteria."""

_RESPONSE_TAG = re.compile(r"<\s*/?\s*response\b[^<>]*>", re.IGNORECASE)


def _escape_tag(m: re.Match) -> str:
    return "&lt;" + m.group(0)[1:-1] + "&gt;"


def _break_verdict(m: re.Match) -> str:
    """'Score: 5' -> 'Score - 5', 'score:5' -> 'score - 5' (and 'Verdict: 1' -> 'Verdict - 1'): the label's
    colon becomes ' -'."""
    before = m.string[m.start():m.start("colon")]
    after = m.string[m.end("colon"):m.end()]
    return before + (" -" if m.group("gap") else " - ") + after


def neutralise_text(text: str, verdict: re.Pattern = VERDICT, tag: re.Pattern = _RESPONSE_TAG) -> str:
    """`text` with every match of `tag` escaped and every match of `verdict` (a pattern with the groups
    "colon" and "gap", as judge/parse.py's VERDICT) broken. The pairwise judge (eval/pairwise.py) passes its
    own verdict and tag patterns."""
    return verdict.sub(_break_verdict, tag.sub(_escape_tag, text))


def neutralise_response(response: str) -> tuple[str, bool]:
    """`response` with response tags escaped and verdicts broken (see the module doc), and whether it changed."""
    text = neutralise_text(response)
    return text, text != response


def instruction_text(prompt: str | list[dict]) -> str:
    """What fills the template's "User: {instruction}": a prompt's text, or for a conversation (chat messages
    ending with the user turn being answered) its earlier turns, one "Role: content" block each, then that
    last turn. A one-turn conversation gives the paper's prompt exactly."""
    if isinstance(prompt, str):
        return prompt
    *earlier, last = prompt
    if not earlier:
        return last["content"]
    context = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in earlier)
    return f"[The conversation so far]\n{context}\n[The message the response answers]\n{last['content']}"


def judge_prompt(instruction: str | list[dict], response: str) -> str:
    """The judge template filled with the instruction (or conversation) as asked and the response neutralised."""
    return JUDGE_TEMPLATE.format(instruction=instruction_text(instruction), response=neutralise_response(response)[0])


def judge_messages(instruction: str | list[dict], response: str) -> list[dict]:
    """The judge prompt as a chat: a single user turn."""
    return [{"role": "user", "content": judge_prompt(instruction, response)}]
