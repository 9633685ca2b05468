"""The self-rewarding loop's settings: one YAML file per setting (tiny, smollm2-135m, llama2-7b, ...),
read into the dataclasses below and turned into Make variables for `make iteration`.

    python configs/iteration.py configs/smollm2-135m.yaml generate.samples=2 judge.samples=1 > runs/demo/config.mk
    python configs/iteration.py --stamps runs/demo/settings --iter 2 configs/smollm2-135m.yaml ...  (as make does)

Each stage's section is the settings dataclass its script defines (sample/generate.py's GenerateSettings
for `generate:`, ...), whose defaults are the only ones: the script's flags take them, a section leaves
out what it does not change, and every field becomes the flag of the same name (--max-new-tokens for
max_new_tokens), so everything a stage runs with is visible in runs/RUN/config.mk. Unknown sections or
keys are errors that name them, and so is a value of the wrong type (`generate.temperature: fast`,
`select.enabled: maybe`): model/settings.py reads the file. `section.key=value` arguments (VALUE read as
YAML) override the file, and `make iteration ... SET="generate.samples=2 dpo.set.lr=5e-7"` passes them
through. A trainer's `set:` keys are checked against its config (train/config.py) here, before any stage
runs. An `iterations:` mapping changes sections for one iteration N >= 2 (--iter N) and leaves the others as
the file has them, as the paper sized each iteration's data:
    self_instruct: {n_prompts: 4000}
    iterations: {3: {self_instruct: {n_prompts: 7000}}, 4: {dpo: {set: {lr: 5.0e-7}}}}
Only the sections of the iterations that build their own data may change (PER_ITERATION); the SFT stages and
the reward-model evaluation are the run's. The values become Make variables, so nothing in them may be code for
make or the shell: text may hold only letters, digits and `_ . / + @ -`, and every value is escaped for make.
With --stamps DIR it also writes DIR/<stage>, each stage's own settings and a digest of its code, touched only
when they change, for the Makefile's stage targets to depend on (DIR/iterN/<stage> for those of ITERATION_STAMPS).
"""
import copy
import hashlib
import json
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

from eval.head_to_head import HeadToHeadSettings
from eval.pairwise import PAIRWISE_PROMPTS
from eval.reward_metrics import RewardMetricsSettings
from eval.select_checkpoint import AGAINST, SelectSettings
from eval.stages import TIE_RULES
from judge.eft import EFTSettings
from judge.expected import SCORE_MODES
from judge.pairs import RULES, PairSettings
from judge.score import JudgeSettings
from model.errors import FormatError
from model.settings import apply_overrides, from_mapping, read_yaml
from model.sources import code_digest
from sample.generate import GenerateSettings
from sample.self_instruct import TEMPLATES, SelfInstructSettings
from train.config import DPOConfig, SFTConfig, TrainConfig, load_config

# what text must be to be written into make and a shell unquoted: nothing either would interpret
SAFE_TEXT = re.compile(r"[A-Za-z0-9_./+@-]*")


@dataclass
class SelfInstruct(SelfInstructSettings):
    model: str = ""             # the prompt writer (--model): a fixed checkpoint (the paper: Llama-2-Chat 70B);
                                # empty = M_{N-1}, the model being improved


@dataclass
class SFTTrainer:
    config: str = "configs/sft.yaml"  # the trainer's YAML (train/config.py)
    set: dict = field(default_factory=dict)  # its keys overridden here


@dataclass
class DPOTrainer:
    config: str = "configs/dpo.yaml"
    set: dict = field(default_factory=dict)


OPPONENTS = ("previous", "baseline", "both")


@dataclass
class HeadToHead(HeadToHeadSettings):
    """M_N against M_{N-1} and/or the SFT baseline on the held-out prompts. The fields past HeadToHeadSettings'
    are the Makefile's."""
    judge: str = ""             # the judge's checkpoint (the paper: GPT-4); empty = M_N, self-judged (flagged)
    opponents: str = "previous"  # one of OPPONENTS: M_{N-1}, the SFT baseline (runs/RUN/baseline,
                                # made if missing; M1 too is compared with it), or both, as the paper did


@dataclass
class Select(SelectSettings):
    """Checkpoint selection (the paper's early stopping): M_N is the DPO snapshot that wins most often
    head to head against M_{N-1}, not the last one. `make iteration SELECT=1` or enabled: true. The fields
    past SelectSettings' are the Makefile's: which judge, which prompts."""
    enabled: bool = False
    judge: str = ""             # the judge's checkpoint (the paper: Claude 2); empty = M_{N-1}, self-judged
    prompts: str = ""           # validation prompts (the paper: 253); empty = the LAST `limit` held-out prompts,
    limit: int = 0              #   apart from the head-to-head's first head_to_head.limit when both fit


@dataclass
class Iteration:
    base_model: str             # M0, a checkpoint directory
    ift: str = "data/seed/ift.jsonl"
    eft: str = "data/seed/eft.jsonl"           # M1's EFT examples, written beforehand (the demo's seed)...
    eft_pool: str = ""          # ...or, as the paper built them, by the SFT baseline judging these ranked prompts
                                # (judge/oasst.py's eft_pool.jsonl) into runs/RUN/baseline/eft.jsonl, `eft` unused
    ranked: str = "data/seed/ranked.trees.jsonl"   # human-ranked replies: the reward-model evaluation
    external: str = ""          # a second ranked set nobody in the project wrote (data/external/): M0, M1 and every
                                # later model are judged on it too, with external_metrics' settings; empty = none
    heldout: str = "data/seed/heldout.jsonl"       # prompts for head-to-head (JSONL with "prompt")
    seed: int = 0
    nproc: int = 1              # processes per stage under torchrun (1: plain python)
    tp: bool = False            # sampling stages under torchrun: one model split over the ranks (a 70B in bf16
                                # does not fit one GPU) instead of a copy per rank (data parallel); without
                                # it, self-instruct runs as one process
    self_instruct: SelfInstruct = field(default_factory=SelfInstruct)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    pairs: PairSettings = field(default_factory=PairSettings)
    eft_judge: EFTSettings = field(default_factory=EFTSettings)  # how the baseline judges the EFT pool
    sft: SFTTrainer = field(default_factory=SFTTrainer)
    dpo: DPOTrainer = field(default_factory=DPOTrainer)
    reward_metrics: RewardMetricsSettings = field(default_factory=RewardMetricsSettings)
    external_metrics: RewardMetricsSettings = field(default_factory=RewardMetricsSettings)
    head_to_head: HeadToHead = field(default_factory=HeadToHead)
    select: Select = field(default_factory=Select)


# the sections an `iterations:` entry may change: the stages of the iterations that build their own data (N >= 2).
# M0, M1, the SFT baseline and the reward-model evaluation are the run's, the same for every model. Their stamps
# go to DIR/iterN/, a set per iteration, so that making iteration 3 with its own sizes leaves iteration 2 up to date.
PER_ITERATION = ("self_instruct", "generate", "judge", "pairs", "dpo", "select", "head_to_head")
# the stamps under DIR/iterN/: those sections' stages, and the choice of comparisons the iteration's summary holds
ITERATION_STAMPS = PER_ITERATION + ("opponents",)
# the settings that name one of a few choices: (section, key, the choices)
CHOICES = (("pairs", "rule", sorted(RULES)), ("head_to_head", "tie_rule", TIE_RULES), ("select", "tie_rule", TIE_RULES),
           ("head_to_head", "pairwise_prompt", PAIRWISE_PROMPTS), ("select", "pairwise_prompt", PAIRWISE_PROMPTS),
           ("select", "against", AGAINST), ("head_to_head", "opponents", OPPONENTS),
           ("self_instruct", "template", TEMPLATES), ("judge", "score", SCORE_MODES),
           ("reward_metrics", "score", SCORE_MODES), ("external_metrics", "score", SCORE_MODES))


def unsafe_text(settings, where: str) -> None:
    """Refuse any text setting, nested sections included, that make or the shell would read as code."""
    for f in fields(settings):
        value, key = getattr(settings, f.name), f"{where}{' ' if where.endswith(':') else '.'}{f.name}"
        if is_dataclass(value):
            unsafe_text(value, key)
        elif isinstance(value, str) and not SAFE_TEXT.fullmatch(value):
            raise FormatError(f"{key}: {value!r} has characters that make or the shell would read as code; text "
                              "here may hold letters, digits and _ . / + @ - only")


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` written over it, mappings merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def iteration_entries(values: dict, path: str) -> dict[int, dict]:
    """The file's `iterations:` mapping, checked: {N: {section: {key: value}}} for N >= 2 and the sections of
    PER_ITERATION only. (A SET override spells N as text: iterations.3.self_instruct.n_prompts=7000.)"""
    entries = values.pop("iterations", None) or {}
    if not isinstance(entries, dict):
        raise FormatError(f"{path}: iterations: expected a mapping of iteration numbers to sections")
    checked_entries = {}
    for n, changes in entries.items():
        number = int(n) if isinstance(n, str) and n.isdigit() else n
        if not isinstance(number, int) or isinstance(number, bool) or number < 2:
            raise FormatError(f"{path}: iterations.{n}: an iteration number is an integer, 2 or more (the "
                              "iterations that build their own data)")
        if not isinstance(changes, dict):
            raise FormatError(f"{path}: iterations.{n}: expected a mapping of sections")
        for section in changes:
            if section not in PER_ITERATION:
                raise FormatError(f"{path}: iterations.{n}.{section}: only {', '.join(PER_ITERATION)} may change "
                                  "from one iteration to the next")
        checked_entries[number] = merged(checked_entries.get(number, {}), changes)
    return checked_entries


def load(path: str, overrides: list[str], iteration: int | None = None) -> Iteration:
    """The run's settings from its YAML file and section.key=value overrides, every value checked; for
    `iteration` N, with the file's `iterations: {N: ...}` entry written over the sections it names (the
    overrides win over both)."""
    values = read_yaml(path)
    values = apply_overrides(values, [o for o in overrides if o.startswith("iterations.")])
    entries = iteration_entries(values, path)

    def resolved(changes: dict, where: str) -> Iteration:
        with_overrides = apply_overrides(merged(copy.deepcopy(values), changes),
                                         [o for o in overrides if not o.startswith("iterations.")])
        if "base_model" not in with_overrides:
            raise FormatError(f"{path}: base_model is required")
        return check(from_mapping(Iteration, with_overrides, where), where)
    for n, changes in entries.items():  # every entry is checked, not only this iteration's, its trainer too
        where = f"{path} (iterations.{n}):"
        try:
            trainer_configs(resolved(changes, where))
        except FormatError as e:
            raise FormatError(str(e) if str(e).startswith(where) else f"{where} {e}") from None
    return resolved(entries.get(iteration, {}), f"{path}:")


def check(cfg: Iteration, where: str) -> Iteration:
    """What from_mapping's types do not say: text make and the shell take as it is, the choices, the paths."""
    path = where.removesuffix(":")
    unsafe_text(cfg, where)
    for key in ("base_model", "ift", "ranked", "heldout"):
        if not getattr(cfg, key):
            raise FormatError(f"{path}: {key} is empty")
    for section, key, allowed in CHOICES:
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise FormatError(f"{path}: {section}.{key} must be one of {list(allowed)}, got {value!r}")
    return cfg


def trainer_configs(cfg: Iteration) -> dict[str, TrainConfig]:
    """Each trainer's config file with its `set:` overrides, read and checked as the trainer will read them."""
    resolved = {}
    for name, trainer, config_class in (("sft", cfg.sft, SFTConfig), ("dpo", cfg.dpo, DPOConfig)):
        try:
            resolved[name] = load_config(config_class, trainer.config, overrides_list(trainer))
        except FormatError as e:
            raise FormatError(f"{name}: {e}") from None
    return resolved


def flags(settings, cls=None, outputs_only: bool = False) -> str:
    """The fields of `cls` (by default settings' own class) as its script's flags: --max-new-tokens 512 ...;
    outputs_only leaves out the speed-only ones (the class's speed_only)."""
    cls = cls or type(settings)
    skip = getattr(cls, "speed_only", ()) if outputs_only else ()
    return " ".join(f"--{f.name.replace('_', '-')} {shlex.quote(str(getattr(settings, f.name)))}"
                    for f in fields(cls) if f.name not in skip)


def overrides_list(trainer) -> list[str]:
    """A trainer's `set:` mapping as KEY=VALUE overrides, values as JSON (which the trainers read as YAML:
    a mapping such as loss_options, or a bool, survives the trip)."""
    # (a value YAML read as something JSON has not, a date say, goes as its text, for the trainer to refuse)
    return [f"{k}={v if isinstance(v, str) else json.dumps(v, default=str)}" for k, v in trainer.set.items()]


def overrides(trainer) -> str:
    """A trainer's `set:` mapping as its --set key=value arguments."""
    items = overrides_list(trainer)
    return ("--set " + " ".join(shlex.quote(item) for item in items)) if items else ""


def variables(cfg: Iteration) -> dict:
    """The Make variables the stages run with, by name."""
    return {
        "BASE_MODEL": cfg.base_model, "IFT": cfg.ift, "EFT": cfg.eft, "EFT_POOL": cfg.eft_pool,
        "EFT_ARGS": flags(cfg.eft_judge), "RANKED": cfg.ranked,
        "HELDOUT": cfg.heldout, "SEED": cfg.seed, "NPROC": cfg.nproc, "TP": int(cfg.tp),
        "SI_MODEL": cfg.self_instruct.model, "SI_ARGS": flags(cfg.self_instruct, SelfInstructSettings),
        "GEN_ARGS": flags(cfg.generate), "JUDGE_ARGS": flags(cfg.judge), "PAIRS_ARGS": flags(cfg.pairs),
        "SFT_CONFIG": cfg.sft.config, "SFT_SET": overrides(cfg.sft),
        "DPO_CONFIG": cfg.dpo.config, "DPO_SET": overrides(cfg.dpo),
        "RM_ARGS": flags(cfg.reward_metrics), "EXTERNAL": cfg.external, "EXT_ARGS": flags(cfg.external_metrics), "H2H_ARGS": flags(cfg.head_to_head, HeadToHeadSettings),
        "H2H_JUDGE": cfg.head_to_head.judge, "H2H_OPPONENTS": cfg.head_to_head.opponents,
        "SELECT_ENABLED": int(cfg.select.enabled), "SELECT_JUDGE": cfg.select.judge,
        "SELECT_PROMPTS": cfg.select.prompts, "SELECT_LIMIT": cfg.select.limit,
        "SELECT_ARGS": flags(cfg.select, SelectSettings),
    }


def make_escaped(value) -> str:
    """A value as make reads it back unchanged on the right of `:=` ($ and # are make's)."""
    text = str(value)
    if "\n" in text or "\r" in text or text.endswith("\\"):
        raise FormatError(f"{text!r}: a line break or trailing backslash cannot go into a make variable")
    return text.replace("$", "$$").replace("#", "\\#")


def make_variables(cfg: Iteration) -> str:
    return "".join(f"{k} := {make_escaped(v)}\n" for k, v in variables(cfg).items())


def trainer_digest(config: TrainConfig) -> str:
    """A trainer's resolved settings (its YAML with the set: keys applied) less the speed-only ones, which
    change memory and speed but not the model (train/config.py)."""
    resolved = {k: v for k, v in asdict(config).items() if k not in config.speed_only}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


# The scripts whose code decides each stage's output (model/sources.py adds every project module they import):
# editing judge/prompt.py redoes the judgements and the SFT data that embed its template, and nothing else.
STAGE_SCRIPTS = {
    "sft_data": ("judge/sft_data.py",),
    "baseline_data": ("judge/sft_data.py",),
    "eft": ("judge/eft.py",),
    "sft": ("train/sft.py",),
    "self_instruct": ("sample/self_instruct.py",),
    "generate": ("sample/generate.py",),
    "judge": ("judge/score.py",),
    "pairs": ("judge/pairs.py",),
    "dpo": ("train/dpo.py",),
    "select": ("eval/select_checkpoint.py",),
    "reward_metrics": ("eval/reward_metrics.py",),
    "external_metrics": ("eval/reward_metrics.py",),
    "head_to_head": ("eval/head_to_head.py",),
    "summary": ("eval/summary.py",),
    "opponents": ("eval/summary.py",),
}


def stage_records(cfg: Iteration, trainers: dict[str, TrainConfig]) -> dict[str, str]:
    """What each stage's outputs depend on besides its input files, one text per stage: its settings and
    the digest of the code that runs it. Not the number of processes, tensor parallelism, or the speed-only
    settings (batch sizes of the samplers, micro-batch sizes of the trainers): the outputs do not depend
    on them."""
    def lines(**values) -> str:
        return "".join(f"{k} {v}\n" for k, v in values.items())
    seed = cfg.seed
    records = {
        "sft_data": lines(ift=cfg.ift, eft=cfg.eft_pool and "baseline/eft.jsonl" or cfg.eft),
        "baseline_data": lines(ift=cfg.ift),  # the baseline's: IFT alone, so an EFT change leaves it be
        "eft": lines(pool=cfg.eft_pool, seed=seed, settings=flags(cfg.eft_judge, outputs_only=True)),
        "sft": lines(trainer=trainer_digest(trainers["sft"])),
        "self_instruct": lines(writer=cfg.self_instruct.model, ift=cfg.ift, seed=seed,
                               settings=flags(cfg.self_instruct, SelfInstructSettings, outputs_only=True)),
        "generate": lines(seed=seed, settings=flags(cfg.generate, outputs_only=True)),
        "judge": lines(seed=seed, settings=flags(cfg.judge, outputs_only=True)),
        "pairs": lines(settings=flags(cfg.pairs)),
        "dpo": lines(trainer=trainer_digest(trainers["dpo"])),
        "select": lines(judge=cfg.select.judge, prompts=cfg.select.prompts, limit=cfg.select.limit,
                        heldout=cfg.heldout, seed=seed, settings=flags(cfg.select, SelectSettings, outputs_only=True)),
        "reward_metrics": lines(ranked=cfg.ranked, seed=seed, settings=flags(cfg.reward_metrics, outputs_only=True)),
        "external_metrics": lines(ranked=cfg.external, seed=seed,
                                  settings=flags(cfg.external_metrics, outputs_only=True)),
        "head_to_head": lines(heldout=cfg.heldout, seed=seed, judge=cfg.head_to_head.judge,
                              settings=flags(cfg.head_to_head, HeadToHeadSettings, outputs_only=True)),
        "summary": lines(external=cfg.external),  # whether the summaries hold the external set's metrics
        "opponents": lines(opponents=cfg.head_to_head.opponents),  # which comparisons the summary holds
    }
    return {stage: text + f"code {code_digest(*STAGE_SCRIPTS[stage])}\n" for stage, text in records.items()}


def write_stamps(directory: str, records: dict[str, str], legacy: str | None = None) -> None:
    """DIR/<stage> for every stage, rewritten only when its text changes: the Makefile's stage targets
    depend on them, so a changed setting makes exactly the outputs it affects out of date. A first record is
    no change (dated 1970, it makes nothing out of date), unless `legacy`/<stage>, where a run made before the
    stamps moved kept it, holds other settings or code: then it is dated now, and what it stamps is redone."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    for stage, text in records.items():
        path = Path(directory) / stage
        if path.is_file() and path.read_text() == text:
            continue
        tmp = path.with_name(f".{stage}.tmp")
        tmp.write_text(text)
        old = Path(legacy) / stage if legacy else None
        if not path.is_file() and not (old and old.is_file() and old.read_text() != text):
            os.utime(tmp, (0, 0))
        tmp.replace(path)


def main():
    args = sys.argv[1:]
    stamps = iteration = None
    while len(args) >= 2 and args[0] in ("--stamps", "--iter"):
        if args[0] == "--stamps":
            stamps = args[1]
        elif not args[1].isdigit():
            sys.exit(f"error: --iter {args[1]!r}: expected an iteration number")
        else:
            iteration = int(args[1])
        args = args[2:]
    if not args or args[0] in ("-h", "--help"):
        sys.exit(__doc__)
    try:
        cfg = load(args[0], args[1:], iteration)
        trainers = trainer_configs(cfg)
        if stamps:
            records = stage_records(cfg, trainers)
            write_stamps(stamps, {k: v for k, v in records.items() if k not in ITERATION_STAMPS})
            write_stamps(f"{stamps}/iter{iteration or 0}", {k: v for k, v in records.items()
                                                             if k in ITERATION_STAMPS}, legacy=stamps)
        print(make_variables(cfg), end="")
    except (OSError, FormatError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
