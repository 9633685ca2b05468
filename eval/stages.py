"""What the evaluation CLIs share: answering prompts with a checkpoint, their sampling options, their files.

    args = parser.parse_args()                                  # after add_answer_args(parser, defaults)
    answering, judging = contest_configs(args)                  # two StageConfigs: the CLI's flags end here
    work = prepare_work_dir(args.out, "eval/head_to_head.py", {"a": Path(args.a), ...})
    rows = answer(answering, "runs/R/iter2/model", prompts, work / "answers_a.jsonl")

Every eval CLI writes one result file (--out) and keeps the resumable outputs of its sampling stages
in the folder beside it named like it with ".work" for its suffix (`head_to_head.json` ->
`head_to_head.work/`): rerun the same command after a crash and it goes on where it stopped;
delete the folder to start over. The folder's settings.json records which CLI made it, with which
settings: a CLI refuses a folder, or an --out beside it, that it did not make, and removes and starts
over only a folder of its own made with other settings. Sampling goes through sample/stage.py's
run_stage, so it is batched, prefix-shared and seeded exactly as the loop's own stages, and every CLI
runs under torchrun as they do (data parallel, or with --tp one model split over the ranks): all ranks
run every stage in turn, each stage returns its rows on every rank, and rank 0 alone writes results.
"""
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch.distributed as dist

from eval.pairwise import PAIRWISE_PROMPTS
from model.errors import FormatError
from model.jsonl import write_json_atomic as write_json
from sample.generate import (add_decoding_args, add_running_args, chat_ids, non_negative_float, non_negative_int,
                             positive_int, probability, running_config, sample_rows)
from sample.stage import Request, StageConfig, is_rank_zero, run_stage, setup_distributed
from sample.resume import ELSEWHERE, check_owned, read_record


TIE_RULES = ("both-orders", "points")  # how a prompt's two verdicts make its outcome (eval/head_to_head.py)


@dataclass
class ContestSettings:
    """An evaluation where models answer (greedy, by default) and a judge compares the answers: the settings of
    add_answer_args' flags of the same names, and their only defaults."""
    temperature: float = 0.0        # the answers: 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 512       # answer length limit
    judge_temperature: float = 0.0  # the judge: greedy too
    judge_top_p: float = 1.0
    judge_max_new_tokens: int = 256
    tie_rule: str = "both-orders"   # one of TIE_RULES: the paper's, a win needs both orders (eval/head_to_head.py)
    pairwise_prompt: str = PAIRWISE_PROMPTS[0]  # one of eval/pairwise.py's (alpacaeval: the paper's evaluations')
    batch_size: int = 16            # rows decoded together
    speed_only: ClassVar[tuple[str, ...]] = ("batch_size",)  # the settings that do not change the outputs


def work_dir(out) -> Path:
    """Where a CLI whose result is `out` keeps its intermediate files (see the module doc)."""
    out = Path(out)
    return out.with_name(out.stem + ".work")


def check_work_dir(out: Path, stage: str, settings: dict) -> None:
    """Refuse OUT's work folder, or an OUT beside it, if `stage` (the CLI) did not make it; start the
    folder over if a run with other settings made it (its stage files would be reused for the wrong
    models); record the settings in a new one. Path values are compared resolved. (The stages inside
    also check the checkpoints' contents and their inputs: see sample/resume.py.)"""
    work, out = work_dir(out), Path(out)
    record = {"stage": stage, **{k: str(v.resolve()) if isinstance(v, Path) else v for k, v in settings.items()}}
    path = work / "settings.json"
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise FormatError(f"{work} is not a folder of this CLI's: {ELSEWHERE}")
    check_owned([out, *(sorted(work.iterdir()) if work.is_dir() else [])], path)
    old = read_record(path, stage, work)
    if old == record:
        return
    if old is not None:
        differ = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
        print(f"{work}: made by a run with other settings ({', '.join(differ)} differ); starting it over",
              file=sys.stderr)
        shutil.rmtree(work)
    write_json(path, record)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def percent(x, digits: int = 1) -> str:
    """A fraction as a percentage for people; "-" for None or anything that is not a number."""
    return f"{100 * x:.{digits}f}%" if is_number(x) else "-"


def is_interval(x) -> bool:
    """Is x an interval as the result files hold one, [low, high] of numbers?"""
    return isinstance(x, list) and len(x) == 2 and all(is_number(v) for v in x)


def with_interval(x, interval, digits: int = 1, as_percent: bool = True) -> str:
    """A value and its 95% interval for people: "46.7% [30.0, 63.3]" (or "0.253 [0.101, 0.388]")."""
    def show(v):
        return f"{100 * v:.{digits}f}" if as_percent else f"{v:.3f}"
    if not is_number(x):
        return "-"
    value = f"{show(x)}%" if as_percent else show(x)
    if not is_interval(interval):
        return value
    return f"{value} [{show(interval[0])}, {show(interval[1])}]"


def number(x, fmt: str = ".0f") -> str:
    """A number for people; "-" for None or anything that is not a number."""
    return format(x, fmt) if is_number(x) else "-"


def prepare_work_dir(out, stage: str, settings: dict) -> Path:
    """OUT's work folder, after check_work_dir on rank 0, before any rank reads the folder (under torchrun:
    every rank joins the process group here, once for all the CLI's stages). A folder it refuses is one
    line on stderr and exit status 1 (torchrun then stops the other ranks)."""
    _, world, _ = setup_distributed()
    if is_rank_zero():
        try:
            check_work_dir(out, stage, settings)
        except FormatError as e:
            sys.exit(f"error: {e}")
    if world > 1:
        dist.barrier()
    return work_dir(out)


def add_limit_args(parser, what: str = "prompts", limit: int = 0) -> None:
    """--limit N / --last N: evaluate on the first or the last N of the file's prompts (0 or absent: all);
    `limit` is the CLI's default for --limit (its settings class's)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--limit", type=non_negative_int, default=limit, metavar="N", help=f"only the first N {what} (0: all)")
    g.add_argument("--last", type=non_negative_int, default=0, metavar="N", help=f"only the last N {what} (0: all)")


def limited(rows: list, limit: int, last: int) -> list:
    """The rows that --limit or --last keep."""
    if limit:
        return rows[:limit]
    return rows[-last:] if last else rows


def add_answer_args(parser, defaults: ContestSettings, judge: bool = True) -> None:
    """Sampling options for CLIs that run several models: the contestants answer with --temperature etc.
    (greedy by default), the judge decides with --judge-temperature etc. (greedy by default)."""
    add_decoding_args(parser.add_argument_group("answers"), defaults.temperature, defaults.top_p,
                      defaults.max_new_tokens)
    if judge:
        g = parser.add_argument_group("judge")
        g.add_argument("--judge-temperature", type=non_negative_float, default=defaults.judge_temperature,
                       help="0 = greedy (default %(default)s)")
        g.add_argument("--judge-top-p", type=probability, default=defaults.judge_top_p, help="default %(default)s")
        g.add_argument("--judge-max-new-tokens", type=positive_int, default=defaults.judge_max_new_tokens,
                       help="default %(default)s")
        g.add_argument("--pairwise-prompt", choices=PAIRWISE_PROMPTS, default=defaults.pairwise_prompt,
                       help="the pairwise judge's prompt (default %(default)s; alpacaeval: the form of AlpacaEval's, "
                            "which the paper's evaluations used; eval/pairwise.py)")
        g.add_argument("--tie-rule", choices=TIE_RULES, default=defaults.tie_rule,
                       help="both-orders (default, the paper's): a win needs both orders' verdicts, an inconsistent "
                            "pair is a tie; points: +1/-1 per order, so a win and a tie is a win")
    g = parser.add_argument_group("running")
    g.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                   help="rows decoded together (default %(default)s)")
    add_running_args(g)


def contest_configs(args, judge: bool = True) -> tuple[StageConfig, StageConfig | None]:
    """add_answer_args' options as the StageConfig the contestants answer with and the one the judge decides
    with (None when the CLI has no judge); each stage replaces model and out."""
    running = dict(batch_size=args.batch_size, **running_config(args))
    answering = StageConfig(model="", out="", temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            max_new_tokens=args.max_new_tokens, **running)
    judging = (StageConfig(model="", out="", temperature=args.judge_temperature, top_p=args.judge_top_p, top_k=0,
                           max_new_tokens=args.judge_max_new_tokens, **running)
               if judge else None)
    return answering, judging


def sampling_settings(config: StageConfig) -> dict:
    """A stage's sampling options, as written into a result file."""
    return {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k,
            "max_new_tokens": config.max_new_tokens, "seed": config.seed, "greedy": config.temperature == 0}


def too_long_row(request: Request) -> dict:
    """The row written for a prompt that does not fit the model's context: an empty answer, marked."""
    fields = request.fields
    prompt = fields["prompt"] if "prompt" in fields else fields["messages"][-1]["content"]
    return {**fields, "prompt": prompt, "sample": 0, "response": "", "finish_reason": "too long", "n_tokens": 0}


def answer(config: StageConfig, model, prompts: list[dict], out, desc: str = "answering") -> list[dict]:
    """One answer per prompt ({"id", "prompt"} or {"id", "messages"}) from checkpoint `model`, sampled as
    `config` says, resumably into `out`, in sample/generate.py's output format (sample 0), in prompt order
    (on every torchrun rank). A prompt too long for the context gets too_long_row."""
    def requests(tokenizer):
        return [Request(p["id"], p, chat_ids(tokenizer, p), [(p["id"], 0)]) for p in prompts]

    rows, _, _ = run_stage(replace(config, model=str(model), out=str(out)), "eval/stages.py answers", requests,
                           sample_rows, 1, desc=desc, on_too_long=too_long_row)
    return rows
