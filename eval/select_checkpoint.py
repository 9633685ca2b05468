"""Checkpoint selection, the paper's early stopping: which DPO checkpoint of iteration N becomes M_N.

    python eval/select_checkpoint.py --run runs/R --iter 3 --prompts valid.jsonl --judge checkpoints/judge
    python eval/select_checkpoint.py --run runs/R --iter 3 --prompts valid.jsonl --judge checkpoints/judge \
        --model-dir runs/R/iter3/dpo --promote runs/R/iter3/model      (what `make iteration SELECT=1` runs)

train/dpo.py writes the DPO model of iteration N to runs/R/iterN/model (or --model-dir) and plain
checkpoints along the way to runs/R/iterN/model.train/snapshots/step-000200/, step-000400/, ... Every
snapshot, and the final
model (named "final"), answers the validation prompts and is compared head to head with a baseline by
eval/head_to_head.py's procedure (same pairwise judge prompt, both orders, greedy by default). The
chosen checkpoint is the one that wins most often: the highest win %; equal win % go to the lower
loss %, then to the earlier checkpoint (less training, less drift towards long answers).

The baseline (--against):
  previous-model (default)  every checkpoint against the previous iteration's model M_{N-1}
                            (runs/R/iter{N-1}/model, or --previous). A fixed baseline makes the win %
                            of all checkpoints comparable, so "the one that wins most often" is well
                            defined, and M_{N-1} answers only once.
  previous-checkpoint       every checkpoint against the one saved before it (the first against
                            M_{N-1}), the literal reading of the paper's "against the previous
                            checkpoint". Win % then measure steps, not standing: a checkpoint that
                            beats its predecessor may still lose to one saved earlier.
Writes runs/R/iterN/selection.json: {"iter", "against", "baseline" (M_{N-1}'s path), "judge",
"self_judged" (the names of the compared models that are the judge, or null), "prompts",
"answer_sampling", "judge_sampling", "rule", "candidates": [{"name", "step" (null for final), "path",
"baseline" (the name of what it was compared with: "previous" or a checkpoint), and the counts and rates
of eval/head_to_head.py's summary: "win", "tie", "loss", "wins", ..., "mean_chars_a" (the checkpoint),
"mean_chars_b" (its baseline), ...}], "chosen": {"name", "step", "path"} or null}. It moves no
checkpoint, unless --promote DIR: then the chosen one (the final model when no comparison gave a verdict,
with a warning) is copied to DIR, as hard links where the file system allows, and replaces DIR only when
complete; "promoted" in selection.json says which. Answers and judgements are kept in
runs/R/iterN/selection.work/ (resumable; see eval/stages.py); each checkpoint answers once, whatever the
baseline. Runs under torchrun as the other stages do (data parallel, or --tp); rank 0 writes.
(The file is not called select.py: run as a script, eval/ comes first on the import path, and a
select.py there would stand in for Python's own `select` module, which torch imports.)
"""
import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from eval.head_to_head import judge_answers, same_checkpoint
from eval.stages import (ContestSettings, add_answer_args, add_limit_args, answer, contest_configs, limited, percent,
                         prepare_work_dir, sampling_settings, write_json)
from model.checkpoint import atomic_directory, verify
from model.errors import FormatError
from sample.generate import read_prompts
from sample.stage import StageConfig, is_rank_zero

RULE = "highest win %, then lowest loss %, then the earliest checkpoint"
# judge_answers' keys that are the same for every candidate
SHARED = ("a", "b", "judge", "judge_sampling", "pairwise_prompt", "tie_rule")
_STEP = re.compile(r"step-(\d+)")
AGAINST = ("previous-model", "previous-checkpoint")


@dataclass
class SelectSettings(ContestSettings):
    against: str = "previous-model"  # the baseline each checkpoint is compared with: one of AGAINST (see above)


def find_candidates(model_dir: Path) -> list[dict]:
    """The snapshots of a DPO run, by step, then its final model: [{"name", "step", "path"}]."""
    snapshots = []
    for path in (model_dir.parent / f"{model_dir.name}.train" / "snapshots").glob("step-*"):
        m = _STEP.fullmatch(path.name)
        if m and (path / "params.json").is_file():
            snapshots.append({"name": path.name, "step": int(m.group(1)), "path": str(path)})
    snapshots.sort(key=lambda c: c["step"])
    if (model_dir / "params.json").is_file():
        snapshots.append({"name": "final", "step": None, "path": str(model_dir)})
    return snapshots


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a checkpoint directory, hard-linking its files where possible (a snapshot is never written
    again, and a 70B checkpoint is 140 GB); dst is replaced only once the copy is complete."""
    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    verify(src)
    with atomic_directory(dst) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file():
                link_or_copy(f, tmp / f.name)


def choose(candidates: list[dict]) -> dict | None:
    """The candidate that wins most often (RULE); candidates are in training order. None if none has a win %."""
    rated = [(i, c) for i, c in enumerate(candidates) if c["win"] is not None]
    if not rated:
        return None
    return min(rated, key=lambda ic: (-ic[1]["win"], ic[1]["loss"], ic[0]))[1]


def compare_candidates(answering: StageConfig, judging: StageConfig, judge, prompts: list[dict], previous: Path,
                       candidates: list[dict], against: str, work: Path, tie_rule: str, seed: int = 0,
                       pairwise_prompt: str = ContestSettings.pairwise_prompt) -> None:
    """Every candidate answers the prompts and is judged against its baseline (M_{N-1}, or with
    previous-checkpoint the candidate before it); each candidate gets its baseline's name and the tally."""
    answers = {"previous": answer(answering, previous, prompts, work / "answers" / "previous.jsonl",
                                  desc="answering (previous model)")}
    baseline = {"name": "previous", "path": str(previous)}
    for c in candidates:
        answers[c["name"]] = answer(answering, c["path"], prompts, work / "answers" / f"{c['name']}.jsonl",
                                    desc=f"answering ({c['name']})")
        summary = judge_answers(judging, judge, prompts, answers[c["name"]], answers[baseline["name"]], c["path"],
                                baseline["path"], work / f"{c['name']}-vs-{baseline['name']}", tie_rule, seed,
                                pairwise_prompt)
        c.update(baseline=baseline["name"], **{k: v for k, v in summary.items() if k not in SHARED})
        if is_rank_zero():
            print(f"{c['name']} vs {baseline['name']}: win {percent(c['win'])} / tie {percent(c['tie'])} / loss "
                  f"{percent(c['loss'])} ({c['no_verdict']} without a verdict)", file=sys.stderr)
        if against == "previous-checkpoint":
            baseline = c


def promote(chosen: dict | None, candidates: list[dict], directory: Path) -> dict:
    """Copy the chosen candidate (the final model when none was chosen) to `directory`; what was promoted."""
    promoted = chosen or candidates[-1]
    if not chosen:
        print(f"warning: no comparison gave a verdict; promoting {promoted['name']}", file=sys.stderr)
    copy_checkpoint(Path(promoted["path"]), directory)
    return {"name": promoted["name"], "path": str(directory)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory (runs/RUN)")
    parser.add_argument("--iter", type=int, required=True, help="iteration N whose checkpoints to choose from")
    parser.add_argument("--prompts", required=True, help="validation prompts, JSONL {\"id\", \"prompt\"}")
    parser.add_argument("--judge", required=True, help="checkpoint of the judge")
    add_limit_args(parser)
    parser.add_argument("--previous", help="M_{N-1} (default: RUN/iter{N-1}/model)")
    parser.add_argument("--model-dir", help="the DPO run's output directory, whose snapshots are in MODEL_DIR.train/ "
                        "(default: RUN/iterN/model)")
    parser.add_argument("--promote", metavar="DIR", help="copy the chosen checkpoint to DIR (M_N)")
    parser.add_argument("--against", choices=AGAINST, default=SelectSettings.against,
                        help="the baseline each checkpoint is compared with (default %(default)s; see above)")
    add_answer_args(parser, SelectSettings())
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    answering, judging = contest_configs(args)
    iter_dir = Path(args.run) / f"iter{args.iter}"
    previous = Path(args.previous or Path(args.run) / f"iter{args.iter - 1}" / "model")
    try:
        if not (previous / "params.json").is_file():
            raise FormatError(f"{previous}: no checkpoint there (the previous model; name it with --previous)")
        model_dir = Path(args.model_dir or iter_dir / "model")
        candidates = find_candidates(model_dir)
        if not candidates:
            raise FormatError(f"{model_dir}.train/snapshots: no step-* checkpoints, and no final model")
        prompts = limited(read_prompts(args.prompts)[0], args.limit, args.last)
    except FormatError as e:
        sys.exit(f"error: {e}")
    settings = {"judge": str(args.judge), "prompts": str(args.prompts), "limit": args.limit, "last": args.last,
                "answer_sampling": sampling_settings(answering), "judge_sampling": sampling_settings(judging),
                "tie_rule": args.tie_rule, "pairwise_prompt": args.pairwise_prompt}
    work = prepare_work_dir(iter_dir / "selection.json", "eval/select_checkpoint.py",
                            {**settings, "previous": previous, "judge": Path(args.judge), "prompts": Path(args.prompts)})

    compare_candidates(answering, judging, args.judge, prompts, previous, candidates, args.against, work,
                       args.tie_rule, args.seed, args.pairwise_prompt)
    chosen = choose(candidates)
    if not is_rank_zero():
        return  # rank 0 promotes and writes
    judged_by = [name for name, path in [("previous", previous), *((c["name"], c["path"]) for c in candidates)]
                 if same_checkpoint(args.judge, path)]
    selection = {"iter": args.iter, "against": args.against, "baseline": str(previous), **settings,
                 "self_judged": judged_by or None, "prompt_ids": [p["id"] for p in prompts],
                 "rule": RULE, "candidates": candidates,
                 "chosen": chosen and {k: chosen[k] for k in ("name", "step", "path")}}
    if args.promote:
        try:
            selection["promoted"] = promote(chosen, candidates, Path(args.promote))
        except FormatError as e:  # --promote names a folder this project did not write
            sys.exit(f"error: {e}")
    write_json(iter_dir / "selection.json", selection)
    if judged_by:
        print(f"!!! SELF-JUDGED: the judge is {', '.join(judged_by)}, one of the compared models: its verdicts "
              "favour its own answers", file=sys.stderr)
    print(f"chosen: {chosen['name'] if chosen else 'none (no comparison gave a verdict)'}; "
          f"wrote {iter_dir / 'selection.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
