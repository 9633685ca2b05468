"""Evaluation: the model as a reward model and as an instruction follower, exports, and the run report.

  eval.metrics            pairwise accuracy, 5-best, exact match, Spearman, Kendall tau (pure functions)
  eval.reward_metrics     CLI: judge a human-ranked set with the model, report those metrics
  eval.pairwise           the pairwise judge prompt and its verdict parser
  eval.head_to_head       CLI: two models answer, a judge compares them in both orders: win / tie / loss
  eval.select_checkpoint  CLI: choose M_N among iteration N's DPO checkpoints by head to head
  eval.export             CLI: answers in AlpacaEval's and MT-Bench's formats
  eval.report             CLI: runs/RUN/report.md (and plots) from every iteration's files
  eval.stages             what the CLIs share: answering, sampling options, work folders

Files, per iteration N of a run (the names the report reads):
  runs/R/iterN/eval/reward_metrics.json   eval/reward_metrics.py --out
  runs/R/iterN/eval/head_to_head.json     eval/head_to_head.py --out, with --a M_N --b M_{N-1}
  runs/R/iterN/selection.json             eval/select_checkpoint.py
  runs/R/iterN/summary.json               the pipeline's statistics (keys listed in eval/report.py)
  runs/R/report.md, runs/R/plots/*.png    eval/report.py
Each CLI keeps the resumable outputs of its sampling stages in a folder beside its result, named like it
with ".work" for its suffix (eval/stages.py).
"""
