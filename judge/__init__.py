"""LLM-as-a-Judge: the judge prompt, the score parser, preference pairs, and the seed-data loaders.

  judge.prompt  JUDGE_TEMPLATE (the paper's Figure 2), judge_messages(), neutralise_response()
  judge.parse   parse_score(text) -> ParsedScore(score, reason)
  judge.pairs   judged.jsonl -> pairs.jsonl (library + CLI)
  judge.oasst   Open Assistant exports -> ift.jsonl, ranked.jsonl; the EFT agreement filter and rebalancing

Data formats (JSONL, one object a line); each is described here only:
  judged.jsonl    a candidate's fields (sample/generate.py: "id", "sample", "prompt", "response", and
                  "messages" for a multi-turn prompt, whose last turn "prompt" is) plus
                  "judgements": [raw judge outputs], "scores": [parsed score or null, one per judgement],
                  "parse_errors": [why each unparsed one failed (judge/parse.py's REASONS) or null],
                  "score": mean of the parsed scores or null, "n_parsed": int,
                  "neutralised": bool (the response held score-like text or response tags: judge/prompt.py).
                  A candidate whose judge prompt does not fit the context has no judgements and score null.
  pairs.jsonl     {"id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected",
                   "chosen_sample", "rejected_sample"}, and "messages" for a multi-turn prompt
  ift.jsonl       {"id", "prompt", "response"}
  ranked.jsonl    {"id", "prompt", "replies": [{"id", "text", "rank"}, ...]}   (best first, rank 0 = best)
  eft.jsonl       {"id", "instruction", "response", "judgement"}: the model's input is
                  judge_messages(instruction, response), its target the judgement ending in "Score: X"
"""


def formats(*names: str) -> str:
    """The entries of this docstring's "Data formats" for these file names, for a CLI's --help."""
    entries, current = {}, None
    for line in __doc__.split("Data formats", 1)[1].splitlines()[1:]:
        name = line[2:].split(" ", 1)[0] if line.startswith("  ") and not line.startswith("   ") else None
        if name:
            current = name
        if current:
            entries.setdefault(current, []).append(line)
    return "formats:\n" + "\n".join(line for name in names for line in entries[name])

