"""The self-rewarding loop's settings: one YAML file per setting (tiny, smollm2-135m, llama2-7b, ...),
read into the dataclasses below and turned into Make variables for `make iteration`.

    python configs/iteration.py configs/smollm2-135m.yaml generate.n=2 judge.samples=1 > runs/demo/config.mk
    python configs/iteration.py --stamps runs/demo/settings configs/smollm2-135m.yaml ...  (as make does)

Unknown sections or keys are errors that name them, and so is a value of the wrong type
(`generate.temperature: fast`, `select.enabled: maybe`); `section.key=value` arguments (VALUE read as
YAML) override the file, and `make iteration ... SET="generate.n=2 dpo.set.lr=5e-7"` passes them
through. A trainer's `set:` keys are checked against its config (train/config.py) here, before any
stage runs. The values become Make variables, so nothing in them may be code for make or the shell:
paths may hold only letters, digits and `_ . / + @ -`, and every value is escaped for make. Each stage's settings become the flags of its script (see the Makefile), so everything a
stage runs with is visible in runs/RUN/config.mk. With --stamps DIR it also writes DIR/<stage>, each
stage's own settings, touched only when they change, for the Makefile's stage targets to depend on.
"""
import hashlib
import json
import math
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from judge.pairs import RULES
from model.errors import FormatError
from model.sources import code_digest
from train.config import DPOConfig, SFTConfig, load_config

# what a path may hold to be written into make and a shell unquoted: nothing either would interpret
SAFE_TEXT = re.compile(r"[A-Za-z0-9_./+@-]*")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # a decimal number, as YAML 1.1 may leave it in text


@dataclass
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    batch_size: int = 16


@dataclass
class SelfInstruct(Sampling):
    n_prompts: int = 200        # new prompts per iteration
    temperature: float = 0.6    # the paper's
    max_new_tokens: int = 128
    model: str = ""             # a fixed prompt writer (the paper: Llama-2-Chat 70B); empty = M_{t}


@dataclass
class Generate(Sampling):
    n: int = 4                  # candidates per prompt


@dataclass
class Judge(Sampling):
    samples: int = 3            # judgements per candidate, averaged
    max_new_tokens: int = 256


@dataclass
class Pairs:
    rule: str = "best_vs_worst"  # judge/pairs.py's RULES
    min_gap: float = 0.0


@dataclass
class Trainer:
    config: str = ""            # a trainer YAML (configs/sft.yaml, configs/dpo.yaml)
    set: dict = field(default_factory=dict)  # its keys overridden here


@dataclass
class Eval(Sampling):
    samples: int = 3            # judgements per reply for the reward-model metrics
    max_new_tokens: int = 256
    answer_max_new_tokens: int = 512  # head-to-head answers (greedy); max_new_tokens bounds every judgement
    ranked_limit: int = 0       # judge only the first K prompts of the ranked set (0 = all)
    heldout_limit: int = 0      # head-to-head on the first K held-out prompts (0 = all)


@dataclass
class Select:
    """Checkpoint selection (the paper's early stopping): M_N is the DPO snapshot that wins most often
    head to head against M_{N-1}, not the last one. `make iteration SELECT=1` or enabled: true."""
    enabled: bool = False
    judge: str = ""             # the judge's checkpoint (the paper: Claude 2); empty = M_{N-1}, self-judged
    prompts: str = ""           # validation prompts (the paper: 253); empty = the LAST `limit` held-out prompts,
    limit: int = 0              #   apart from the head-to-head's first eval.heldout_limit when both fit
    against: str = "previous-model"  # or previous-checkpoint (see eval/select_checkpoint.py)
    max_new_tokens: int = 512
    judge_max_new_tokens: int = 256
    batch_size: int = 16


@dataclass
class Iteration:
    base_model: str             # M0, a checkpoint directory
    ift: str = "data/seed/ift.jsonl"
    eft: str = "data/seed/eft.jsonl"
    ranked: str = "data/seed/ranked.trees.jsonl"   # human-ranked replies: the reward-model evaluation
    heldout: str = ""           # prompts for head-to-head (JSONL with "prompt"); empty: the ranked set's prompts
    seed: int = 0
    nproc: int = 1              # processes per stage under torchrun (1: plain python)
    tp: bool = False            # sampling stages under torchrun: one model split over the ranks (a 70B in bf16
                                # does not fit one GPU) instead of a copy per rank (data parallel); without
                                # it, self-instruct runs as one process
    self_instruct: SelfInstruct = field(default_factory=SelfInstruct)
    generate: Generate = field(default_factory=Generate)
    judge: Judge = field(default_factory=Judge)
    pairs: Pairs = field(default_factory=Pairs)
    sft: Trainer = field(default_factory=lambda: Trainer("configs/sft.yaml"))
    dpo: Trainer = field(default_factory=lambda: Trainer("configs/dpo.yaml"))
    eval: Eval = field(default_factory=Eval)
    select: Select = field(default_factory=Select)


def from_dict(cls, values: dict, where: str):
    """cls(**values), recursively, with an error naming any key cls does not have."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else None
        key = f"{where}{' ' if where.endswith(':') else '.'}{name}"  # "FILE: section.key"
        kwargs[name] = from_dict(type(default), value, key) if is_dataclass(default) else checked(known[name].type, value, key)
    return cls(**kwargs)


def checked(kind, value, where: str):
    """value as a setting of type `kind` (bool, int, float, str, dict), or an error naming the key."""
    if kind is float and isinstance(value, str) and NUMBER.fullmatch(value.strip()):  # YAML 1.1 reads 1e-6 as text
        value = float(value)
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) if kind is float
          else isinstance(value, kind))
    if not ok:
        raise ValueError(f"{where}: expected {'a finite number' if kind is float else kind.__name__}, got {value!r}")
    if kind is str and not SAFE_TEXT.fullmatch(value):
        raise ValueError(f"{where}: {value!r} has characters that make or the shell would read as code; a path "
                         "here may hold letters, digits and _ . / + @ - only")
    return value


def check_trainers(cfg: "Iteration") -> None:
    """Each trainer's config file and its `set:` overrides, read as the trainer will read them."""
    for name, trainer, config_class in (("sft", cfg.sft, SFTConfig), ("dpo", cfg.dpo, DPOConfig)):
        try:
            load_config(config_class, trainer.config, overrides_list(trainer))
        except FormatError as e:
            raise ValueError(f"{name}: {e}") from None


def load(path: str, overrides: list[str]) -> Iteration:
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected section.key=value")
        *parents, last = key.split(".")
        node = values
        for p in parents:
            node = node.setdefault(p, {})
        try:
            node[last] = yaml.safe_load(value)
        except yaml.YAMLError:  # not YAML (a backquote, say): the text as typed, checked as any other
            node[last] = value
    if "base_model" not in values:
        raise ValueError(f"{path}: base_model is required")
    cfg = from_dict(Iteration, values, f"{path}:")
    if not cfg.base_model:
        raise ValueError(f"{path}: base_model is empty")
    check_trainers(cfg)
    if cfg.pairs.rule not in RULES:
        raise ValueError(f"{path}: pairs.rule must be one of {sorted(RULES)} (judge/pairs.py), got {cfg.pairs.rule!r}")
    return cfg


# torchrun takes "--n" for an abbreviation of its own options: generate.py's --n has a long name too
FLAG_NAMES = {"n": "num-samples"}


def flags(stage, skip=()) -> str:
    """A stage's settings as its script's flags: --max-new-tokens 512 ..."""
    return " ".join(f"--{FLAG_NAMES.get(f.name, f.name.replace('_', '-'))} {shlex.quote(str(getattr(stage, f.name)))}"
                    for f in fields(stage) if f.name not in skip)


def overrides_list(trainer: Trainer) -> list[str]:
    """A trainer's `set:` mapping as KEY=VALUE overrides, values as JSON (which the trainers read as YAML:
    a mapping such as loss_options, or a bool, survives the trip)."""
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in trainer.set.items()]


def overrides(trainer: Trainer) -> str:
    """A trainer's `set:` mapping as its --set key=value arguments."""
    items = overrides_list(trainer)
    return ("--set " + " ".join(shlex.quote(item) for item in items)) if items else ""


def variables(cfg: Iteration) -> dict:
    """The Make variables the stages run with, by name."""
    return {
        "BASE_MODEL": cfg.base_model, "IFT": cfg.ift, "EFT": cfg.eft, "RANKED": cfg.ranked,
        "HELDOUT": cfg.heldout, "SEED": cfg.seed, "NPROC": cfg.nproc,
        "SI_MODEL": cfg.self_instruct.model, "SI_ARGS": flags(cfg.self_instruct, skip=("model",)),
        "TP": int(cfg.tp),
        "GEN_ARGS": flags(cfg.generate), "JUDGE_ARGS": flags(cfg.judge),
        "PAIRS_ARGS": flags(cfg.pairs),
        "SFT_CONFIG": cfg.sft.config, "SFT_SET": overrides(cfg.sft),
        "DPO_CONFIG": cfg.dpo.config, "DPO_SET": overrides(cfg.dpo),
        "EVAL_ARGS": flags(cfg.eval, skip=("ranked_limit", "heldout_limit", "answer_max_new_tokens")),
        "H2H_ARGS": f"--max-new-tokens {cfg.eval.answer_max_new_tokens} --judge-max-new-tokens "
                    f"{cfg.eval.max_new_tokens} --batch-size {cfg.eval.batch_size}",
        "EVAL_RANKED_LIMIT": cfg.eval.ranked_limit, "EVAL_HELDOUT_LIMIT": cfg.eval.heldout_limit,
        "SELECT_ENABLED": int(bool(cfg.select.enabled)), "SELECT_JUDGE": cfg.select.judge,
        "SELECT_PROMPTS": cfg.select.prompts, "SELECT_LIMIT": cfg.select.limit,
        "SELECT_ARGS": flags(cfg.select, skip=("enabled", "judge", "prompts", "limit")),
    }


def make_escaped(value) -> str:
    """A value as make reads it back unchanged on the right of `:=` ($ and # are make's)."""
    text = str(value)
    if "\n" in text or "\r" in text or text.endswith("\\"):
        raise ValueError(f"{text!r}: a line break or trailing backslash cannot go into a make variable")
    return text.replace("$", "$$").replace("#", "\\#")


def make_variables(cfg: Iteration) -> str:
    return "".join(f"{k} := {make_escaped(v)}\n" for k, v in variables(cfg).items())


def file_digest(path: str) -> str:
    """A file's content: editing configs/dpo.yaml must make the models trained with it stale."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else ""


def trainer_digest(config_class, trainer: Trainer) -> str:
    """The resolved trainer settings (its YAML with the set: keys applied), less micro_batch_size, which
    changes memory and speed but not the model (train/config.py)."""
    resolved = asdict(load_config(config_class, trainer.config, overrides_list(trainer)))
    resolved.pop("micro_batch_size")
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


# The scripts whose code decides each stage's output (model/sources.py adds every project module they import):
# editing judge/prompt.py redoes the judgements and the SFT data that embed its template, and nothing else.
STAGE_SCRIPTS = {
    "sft_data": ("judge/sft_data.py",),
    "sft": ("train/sft.py",),
    "self_instruct": ("sample/self_instruct.py",),
    "generate": ("sample/generate.py",),
    "judge": ("judge/score.py",),
    "pairs": ("judge/pairs.py",),
    "dpo": ("train/dpo.py",),
    "select": ("eval/select_checkpoint.py",),
    "reward_metrics": ("eval/reward_metrics.py",),
    "head_to_head": ("eval/head_to_head.py",),
    "summary": ("eval/summary.py",),
}


def stage_settings(cfg: Iteration) -> dict[str, str]:
    """What each stage's outputs depend on besides its input files, one text per stage: its settings and
    the digest of the code that runs it. Not the number of processes, tensor parallelism, batch sizes of
    the samplers or micro-batch sizes of the trainers: the outputs do not depend on them."""
    v = variables(cfg)

    def pick(*keys, batch_size=False):
        text = "".join(f"{k} := {value}\n" for k, value in v.items() if k in keys)
        # the sampler's outputs do not depend on its batch size (self-instruct's requests do)
        return text if batch_size else re.sub(r" ?--batch-size \S+", "", text)
    evaluation = ("RANKED", "HELDOUT", "EVAL_ARGS", "H2H_ARGS", "EVAL_RANKED_LIMIT", "EVAL_HELDOUT_LIMIT", "SEED")
    settings = {
        "sft_data": pick("IFT", "EFT"),
        "sft": f"trainer {trainer_digest(SFTConfig, cfg.sft)}\n",
        "self_instruct": pick("SI_MODEL", "SI_ARGS", "IFT", "SEED", batch_size=True),
        "generate": pick("GEN_ARGS", "SEED"),
        "judge": pick("JUDGE_ARGS", "SEED"),
        "pairs": pick("PAIRS_ARGS"),
        "dpo": f"trainer {trainer_digest(DPOConfig, cfg.dpo)}\n",
        "select": pick("SELECT_JUDGE", "SELECT_PROMPTS", "SELECT_LIMIT", "SELECT_ARGS", "HELDOUT", "SEED"),
        "reward_metrics": pick(*evaluation),
        "head_to_head": pick(*evaluation),
        "summary": "",
    }
    return {stage: text + f"code {code_digest(*STAGE_SCRIPTS[stage])}\n" for stage, text in settings.items()}


def write_stamps(directory: str, cfg: Iteration) -> None:
    """DIR/<stage> for every stage, rewritten only when its text changes: the Makefile's stage targets
    depend on them, so a changed setting makes exactly the outputs it affects out of date."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    for stage, text in stage_settings(cfg).items():
        path = Path(directory) / stage
        if path.is_file() and path.read_text() == text:
            continue
        tmp = path.with_name(f".{stage}.tmp")
        tmp.write_text(text)
        if not path.is_file():  # a first record is no change: dated 1970, it makes nothing out of date
            os.utime(tmp, (0, 0))
        tmp.replace(path)


def main():
    args = sys.argv[1:]
    stamps = None
    if len(args) >= 2 and args[0] == "--stamps":
        stamps, args = args[1], args[2:]
    if not args or args[0] in ("-h", "--help"):
        sys.exit(__doc__)
    try:
        cfg = load(args[0], args[1:])
        if stamps:
            write_stamps(stamps, cfg)
        print(make_variables(cfg), end="")
    except (OSError, ValueError, TypeError, yaml.YAMLError, FormatError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
