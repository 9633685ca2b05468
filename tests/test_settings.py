"""model/settings.py, the one loader of settings files, and the rule it serves: each stage's settings are
a dataclass whose defaults its CLI takes, and the loop's config passes every field as the flag of the same
name (configs/iteration.py)."""
import shlex
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from model.errors import FormatError
from model.settings import apply_overrides, from_mapping, parse_yaml, read_yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "configs"))
import iteration  # noqa: E402  (configs/ is a folder of files, not a package)


def test_yaml_reads_exponent_floats_as_yaml_1_2_does():
    # YAML 1.2's core schema: "1e-6" is a float; PyYAML's YAML 1.1 resolver makes it text
    assert parse_yaml("[1e-6, 5E+3, -2.5e-1, 1.0e-5, .5, 3, 0x10, true, 1e5x, v1e5]") == \
        [0.000001, 5000.0, -0.25, 0.00001, 0.5, 3, 16, True, "1e5x", "v1e5"]
    assert parse_yaml("lr: 1e-6\n") == {"lr": 1e-6}
    import yaml
    assert yaml.safe_load("1e-6") == "1e-6"  # PyYAML's own loader is left as it was
    with pytest.raises(yaml.YAMLError):  # still the safe loader: no Python objects
        parse_yaml("!!python/object/apply:os.system ['true']")


@dataclass
class Inner:
    rate: float = 0.5
    name: str = "x"


@dataclass
class Outer:
    steps: int = 3
    on: bool = False
    inner: Inner = field(default_factory=Inner)
    extra: dict = field(default_factory=dict)


def test_from_mapping_fills_defaults_and_checks_every_value():
    cfg = from_mapping(Outer, {"steps": 5, "inner": {"rate": 2}}, "f.yaml:")
    assert cfg == Outer(steps=5, inner=Inner(rate=2.0)) and isinstance(cfg.inner.rate, float)
    cases = [({"step": 1}, "f.yaml: unknown key 'step' (did you mean 'steps'?)"),
             ({"zzz": 1}, "f.yaml: unknown key 'zzz'; known keys: steps, on, inner, extra"),
             ({"inner": {"rat": 1}}, "f.yaml: inner: unknown key 'rat' (did you mean 'rate'?)"),
             ({"inner": 3}, "f.yaml: inner: expected a mapping of Inner keys, not int"),
             ({"steps": 2.0}, "f.yaml: steps: expected an integer, got 2.0"),
             ({"steps": True}, "f.yaml: steps: expected an integer, got True"),
             ({"on": 1}, "f.yaml: on: expected true or false, got 1"),
             ({"inner": {"rate": "1e-3"}}, "f.yaml: inner.rate: expected a finite number, got '1e-3'"),
             ({"inner": {"rate": float("nan")}}, "f.yaml: inner.rate: expected a finite number, got nan"),
             ({"extra": [1]}, "f.yaml: extra: expected a mapping, got [1]")]
    for values, message in cases:
        with pytest.raises(FormatError) as error:
            from_mapping(Outer, values, "f.yaml:")
        assert str(error.value) == message


def test_overrides_and_files(tmp_path):
    values = apply_overrides({"inner": {"name": "y"}}, ["steps=4", "inner.rate=1e-2", "inner.name=`a`", "on=true"])
    assert values == {"inner": {"name": "`a`", "rate": 0.01}, "steps": 4, "on": True}  # not YAML: the text
    for bad in ("steps", "=3", "inner..rate=1"):
        with pytest.raises(FormatError, match="expected KEY=VALUE"):
            apply_overrides({}, [bad])
    with pytest.raises(FormatError, match="override 'steps.x=1': steps is not a section"):
        apply_overrides({"steps": 3}, ["steps.x=1"])
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    with pytest.raises(FormatError, match="list.yaml: expected a mapping"):
        read_yaml(tmp_path / "list.yaml")
    with pytest.raises(FormatError, match="bad.yaml: not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    with pytest.raises(FormatError, match="none.yaml: no such config file"):
        read_yaml(tmp_path / "none.yaml")


def _changed(settings, parser):
    """settings with every field moved off its default, to a value the flag accepts."""
    changes = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            changes[f.name] = not value
        elif isinstance(value, int):
            changes[f.name] = value + 2
        elif isinstance(value, float):
            changes[f.name] = 0.25 if value != 0.25 else 0.5
        else:  # text: another of the flag's choices
            action = next(a for a in parser._actions if a.dest == f.name)
            changes[f.name] = next((c for c in action.choices if c != value), value)
    return type(settings)(**changes)


def stage_parsers():
    from eval import head_to_head, reward_metrics, select_checkpoint
    from judge import eft, pairs, score
    from sample import generate, self_instruct
    return [  # (the script's parser, its settings class, the flags it requires)
        (self_instruct.build_parser, self_instruct.SelfInstructSettings, "--model m --seed-prompts s --out o"),
        (generate.build_parser, generate.GenerateSettings, "--model m --prompts p --out o"),
        (score.build_parser, score.JudgeSettings, "--model m --candidates c --out o"),
        (pairs.build_parser, pairs.PairSettings, "--judged j --out o"),
        (eft.build_parser, eft.EFTSettings, "--model m --pool p --out o"),
        (reward_metrics.build_parser, reward_metrics.RewardMetricsSettings, "--model m --ranked r --out o"),
        (head_to_head.build_parser, head_to_head.HeadToHeadSettings, "--a a --b b --judge j --prompts p --out o"),
        (select_checkpoint.build_parser, select_checkpoint.SelectSettings, "--run r --iter 2 --prompts p --judge j"),
    ]


@pytest.mark.parametrize("build_parser, cls, required", stage_parsers(), ids=lambda x: getattr(x, "__name__", ""))
def test_each_stage_takes_its_defaults_and_the_configs_flags_from_one_dataclass(build_parser, cls, required):
    from sample.generate import settings_from_args
    parser = build_parser()
    assert settings_from_args(cls, parser.parse_args(shlex.split(required))) == cls()  # the CLI's defaults
    changed = _changed(cls(), parser)
    given = parser.parse_args(shlex.split(required) + shlex.split(iteration.flags(changed)))
    assert settings_from_args(cls, given) == changed  # every field is a flag of the same name


def test_the_loops_sections_are_the_stages_settings():
    """Each section of the loop's config is a stage's own settings class (or one that adds the Makefile's
    wiring to it), so a default exists once."""
    from eval.head_to_head import HeadToHeadSettings
    from eval.reward_metrics import RewardMetricsSettings
    from eval.select_checkpoint import SelectSettings
    from judge.eft import EFTSettings
    from judge.pairs import PairSettings
    from judge.score import JudgeSettings
    from sample.generate import GenerateSettings
    from sample.self_instruct import SelfInstructSettings
    sections = {f.name: f.default_factory for f in fields(iteration.Iteration) if callable(f.default_factory)}
    expected = {"self_instruct": SelfInstructSettings, "generate": GenerateSettings, "judge": JudgeSettings,
                "pairs": PairSettings, "eft_judge": EFTSettings, "reward_metrics": RewardMetricsSettings,
                "head_to_head": HeadToHeadSettings, "select": SelectSettings}
    for name, cls in expected.items():  # the class itself, or one that only adds fields to it (the wiring)
        assert sections[name] is cls or sections[name].__bases__ == (cls,), name
        assert all(getattr(sections[name](), f.name) == f.default for f in fields(cls)), name


def test_stage_records_leave_out_the_speed_only_settings(tmp_path):
    def records(*overrides):
        cfg = iteration.load(str(ROOT / "configs/tiny.yaml"), list(overrides))
        return iteration.stage_records(cfg, iteration.trainer_configs(cfg))
    base = records()
    faster = records("generate.batch_size=3", "judge.batch_size=5", "head_to_head.batch_size=2",
                     "reward_metrics.batch_size=7", "select.batch_size=9", "eft_judge.batch_size=11",
                     "external_metrics.batch_size=13",
                     "dpo.set.micro_batch_size=2",
                     "nproc=4", "tp=true")
    assert faster == base
    # self-instruct's batch decides its requests (each shows the prompts kept in earlier batches)
    changed = records("self_instruct.batch_size=3", "judge.samples=5", "dpo.set.beta=0.2")
    assert {k for k in base if changed[k] != base[k]} == {"self_instruct", "judge", "dpo"}


@pytest.mark.parametrize("name", ["tiny", "smollm2-135m", "smollm2-135m-judge", "llama2-7b", "llama2-70b",
                                  "llama3.1-8b"])
def test_every_shipped_loop_config_reads_for_each_iteration(name):
    """configs/*.yaml as `make iteration` reads them, N=1 to 3, their trainer configs with their `set:` keys too."""
    path = str(ROOT / "configs" / f"{name}.yaml")
    for n in (1, 2, 3):
        cfg = iteration.load(path, [], n)
        trainers = iteration.trainer_configs(cfg)
        assert trainers["sft"].batch_size % trainers["sft"].micro_batch_size == 0
    if name == "llama3.1-8b":  # the paper's batch of 16 over one node's 8 ranks, and the paper's sizes per iteration
        assert trainers["dpo"].batch_size == 16 and trainers["dpo"].epochs == 3 and not cfg.tp and cfg.nproc == 8
        assert (iteration.load(path, [], 2).pairs.max_pairs, cfg.pairs.max_pairs) == (3964, 6942)
