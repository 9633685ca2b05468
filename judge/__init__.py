"""LLM-as-a-Judge: the judge prompt, the score parser, preference pairs, and the seed-data loaders.

  judge.prompt  JUDGE_TEMPLATE (the paper's Figure 2), judge_messages(), neutralise_response()
  judge.parse   parse_score(text) -> ParsedScore(score, reason)
  judge.pairs   judged.jsonl -> pairs.jsonl (library + CLI)
  judge.oasst   Open Assistant exports -> ift.jsonl, ranked.jsonl; the EFT agreement filter and rebalancing

Data formats (JSONL, one object a line):
  judged.jsonl    {"id", "sample", "prompt", "response",
                   "judgements": [raw judge outputs], "scores": [parsed score or null, one per judgement],
                   "score": mean of the parsed scores or null, "n_parsed": int,
                   "neutralised": bool (the response held score-like text or response tags)}
  pairs.jsonl     {"id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected",
                   "chosen_sample", "rejected_sample"}
  ift.jsonl       {"id", "prompt", "response"}
  ranked.jsonl    {"id", "prompt", "replies": [{"id", "text", "rank"}, ...]}   (best first, rank 0 = best)
  eft.jsonl       {"id", "instruction", "response", "judgement"}: the model's input is
                  judge_messages(instruction, response), its target the judgement ending in "Score: X"
"""
