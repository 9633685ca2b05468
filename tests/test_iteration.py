"""`make iteration` on the tiny config: both iterations end to end, Make's file targets, and the
settings file. The tiny model's judgements are noise that never holds a "Score: X", so for
iteration 2 the test swaps in its own judge, the way a researcher would: by writing judged.jsonl."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make(tmp_path, base, *args, check=True, goal="iteration"):
    cmd = ["make", "-C", str(ROOT), goal, f"RUNS={tmp_path}", "RUN=t", "CONFIG=configs/tiny.yaml",
           f"SET=base_model={base}", f"PY={sys.executable}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def stub_judge(it: Path):
    """Score each candidate by its sample index: a pair per prompt, chosen = the last sample."""
    judged = [{**c, "judgements": ["stub"], "scores": [float(c["sample"])], "parse_errors": [None],
               "score": float(c["sample"]), "n_parsed": 1, "neutralised": False}
              for c in rows(it / "candidates.jsonl")]
    (it / "judged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in judged))


@pytest.mark.slow
def test_two_iterations_end_to_end(tmp_path, tiny_checkpoint):
    missing = make(tmp_path, tiny_checkpoint, "N=2", check=False)
    assert missing.returncode != 0 and "make iteration N=1 RUN=t" in missing.stdout + missing.stderr

    make(tmp_path, tiny_checkpoint, "N=1")
    it1 = tmp_path / "t" / "iter1"
    assert (it1 / "model" / "params.json").is_file() and (it1 / "model.train" / "metrics.jsonl").is_file()
    s1 = json.loads((it1 / "summary.json").read_text())
    assert s1["reward_metrics"]["n_prompts"] == 3 and "base_reward_metrics" in s1
    assert len(rows(it1 / "sft.jsonl")) == 161 + 180

    # iteration 2 up to the pairs, by stage name, with the judge swapped for our own (DPO and the evaluation
    # that follow are tests/test_iteration_resume.py's, with a judge that writes scores)
    it2 = tmp_path / "t" / "iter2"
    make(tmp_path, tiny_checkpoint, "N=2", goal="candidates")
    prompts, candidates = rows(it2 / "prompts.jsonl"), rows(it2 / "candidates.jsonl")
    assert 0 < len(prompts) <= 4 and len(candidates) == 2 * len(prompts) and not (it2 / "judged.jsonl").exists()
    stub_judge(it2)
    made = make(tmp_path, tiny_checkpoint, "N=2", goal="pairs")
    assert "judge/score.py" not in made.stdout and "train/dpo.py" not in made.stdout  # our judged.jsonl is used
    pairs = rows(it2 / "pairs.jsonl")
    assert len(pairs) == len(prompts) and all(p["chosen_sample"] == 1 for p in pairs)
    # everything asked for is there: a rerun would do nothing (a dry run says what it would do)
    again = make(tmp_path, tiny_checkpoint, "N=2", "-n", goal="pairs")
    assert ".py " not in again.stdout, again.stdout


def test_iteration_settings_are_checked(tmp_path):
    cmd = [sys.executable, str(ROOT / "configs/iteration.py"), str(ROOT / "configs/tiny.yaml")]
    ok = subprocess.run(cmd + ["generate.samples=3", "dpo.set.beta=0.2"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--samples 3" in ok.stdout and "--set beta=0.2" in ok.stdout
    bad = subprocess.run(cmd + ["genrate.samples=3"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown key 'genrate' (did you mean 'generate'?)" in bad.stderr


def test_named_targets(tmp_path, tiny_checkpoint):
    """`make baseline` is SFT on the IFT data alone, evaluated as a judge, into runs/RUN/baseline; a stage's
    name makes that stage and what it needs, nothing after it."""
    def commands(*goal):
        proc = subprocess.run(["make", "-n", "-C", str(ROOT), *goal, f"RUNS={tmp_path}", "RUN=t",
                               "CONFIG=configs/tiny.yaml", f"PY={sys.executable}", f"SET=base_model={tiny_checkpoint}"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.replace("\\\n", " ")
    run = tmp_path / "t"
    baseline = commands("baseline")
    assert f"judge/sft_data.py --ift data/seed/ift.jsonl --out {run}/baseline/sft.jsonl\n" in baseline
    assert f"--data {run}/baseline/sft.jsonl --out {run}/baseline/model" in baseline
    assert f"eval/reward_metrics.py --model {run}/baseline/model" in baseline and f"{run}/iter" not in baseline
    (run / "iter1" / "model").mkdir(parents=True)
    shutil.copy2(tiny_checkpoint / "params.json", run / "iter1" / "model" / "params.json")
    judged = commands("judged", "N=2")
    assert all(script in judged for script in ("self_instruct.py", "generate.py", "score.py"))
    assert not any(script in judged for script in ("pairs.py", "dpo.py", "train/sft.py"))


def _export(path: Path, n: int) -> Path:
    """A small Open Assistant trees export: n English prompts with two or three ranked replies (every third
    without a rank-0 reply), plus a German tree, a deleted prompt and a second turn, which are skipped."""
    def message(mid, text, role, lang="en", rank=None, replies=(), **extra):
        return {"message_id": mid, "text": text, "role": role, "lang": lang, "rank": rank, "replies": list(replies),
                **extra}
    trees = []
    for i in range(n):
        ranks = (1, 2) if i % 3 == 2 else (0, 1, 2)[: 2 + i % 2]
        replies = [message(f"a{i}-{r}", f"Answer {r} to question {i}.", "assistant", rank=r) for r in ranks]
        if i == 0:  # a second turn: not first turn, skipped
            replies[0]["replies"] = [message("deep", "And then?", "prompter")]
        trees.append(message(f"p{i}", f"Question {i}?", "prompter", replies=replies))
    trees.append(message("de", "Wie spät ist es?", "prompter", lang="de",
                         replies=[message("de-a", "Zwölf.", "assistant", lang="de", rank=0)]))
    trees.append(message("gone", "Deleted?", "prompter", deleted=True))
    path.write_text("".join(json.dumps({"message_tree_id": t["message_id"], "tree_state": "ready_for_export",
                                        "prompt": t}) + "\n" for t in trees))
    return path


def test_the_papers_data_path_in_make(tmp_path, tiny_checkpoint, score_writer):
    """make seed: IFT, the held-out ranked set, validation and test prompts and the EFT pool from an Open
    Assistant export, disjoint and of the sizes asked for; with eft_pool in the config, M1's EFT data is the SFT
    baseline's judgements of the pool (judge/eft.py), and M1 trains on IFT + that: planned, then run, from a
    base model that judges (conftest.py's score_writer)."""
    export = _export(tmp_path / "oasst.trees.jsonl", 30)
    seed_dir = tmp_path / "oasst"
    made = subprocess.run(["make", "-C", str(ROOT), "seed", f"OASST={export}", f"SEED_DIR={seed_dir}",
                           "SEED_ARGS=--n-ift 12 --n-ranked 5 --n-valid 2 --n-heldout 3", f"PY={sys.executable}"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    sets = {name: rows(seed_dir / f"{name}.jsonl") for name in ("ift", "ranked", "eft_pool", "valid", "heldout")}
    ids = {name: {r["id"] for r in rows_} for name, rows_ in sets.items()}
    assert {name: len(v) for name, v in ids.items()} == {"ift": 12, "ranked": 5, "eft_pool": 30 - 12 - 5 - 2 - 3,
                                                        "valid": 2, "heldout": 3}
    assert len(set().union(*ids.values())) == 30                                   # no prompt in two sets
    assert all(r["response"].startswith("Answer 0 ") for r in sets["ift"])  # the rank-0 reply

    config = tmp_path / "paper.yaml"
    config.write_text((ROOT / "configs/tiny.yaml").read_text() + f"ift: {seed_dir}/ift.jsonl\n"
                      f"eft_pool: {seed_dir}/eft_pool.jsonl\nranked: {seed_dir}/ranked.jsonl\n")
    plan = subprocess.run(["make", "-n", "-C", str(ROOT), "iteration", "N=1", f"RUNS={tmp_path}", "RUN=p",
                           f"CONFIG={config}", f"SET=base_model={tiny_checkpoint}", f"PY={sys.executable}"],
                          capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    run = tmp_path / "p"
    steps = [line for line in plan.stdout.replace("\\\n", " ").splitlines() if ".py " in line]
    expected = [f"judge/sft_data.py --ift {seed_dir}/ift.jsonl --out {run}/baseline/sft.jsonl",
                f"train/sft.py --config configs/sft-tiny.yaml --model {tiny_checkpoint} --data {run}/baseline/sft.jsonl",
                f"judge/eft.py --model {run}/baseline/model --pool {seed_dir}/eft_pool.jsonl --out {run}/baseline/eft.jsonl",
                f"--ift {seed_dir}/ift.jsonl --eft {run}/baseline/eft.jsonl --out {run}/iter1/sft.jsonl",
                f"--data {run}/iter1/sft.jsonl --out {run}/iter1/model"]
    assert [next(i for i, line in enumerate(steps) if want in line) for want in expected] == [0, 1, 2, 3, 4], steps
    assert all(f"--ranked {seed_dir}/ranked.jsonl" in line for line in steps if "reward_metrics.py" in line)

    # and run: the baseline, EFT by the baseline, M1 on IFT + EFT, M0 and M1 as judges with their intervals
    done = make(tmp_path, score_writer, "N=1", f"CONFIG={config}", "RUN=p",
                f"SET=base_model={score_writer} sft.set.max_steps=2 eft_judge.max_fraction=1.0")
    eft = rows(run / "baseline" / "eft.jsonl")
    assert eft and {r["id"].split("/")[0] for r in eft} <= ids["eft_pool"]          # "prompt id/reply id"
    assert len(rows(run / "iter1" / "sft.jsonl")) == 12 + len(eft)
    assert (run / "baseline" / "model" / "params.json").is_file() and "judge/eft.py" in done.stdout
    summary = json.loads((run / "iter1" / "summary.json").read_text())
    for key in ("base_reward_metrics", "reward_metrics"):
        assert summary[key]["n_prompts"] == 3 and "pairwise_accuracy" in summary[key]["intervals"]


def test_the_head_to_head_judge_is_a_setting(tmp_path):
    """head_to_head.judge names the judge (the paper: GPT-4); without it M_N judges itself (and says so)."""
    def head_to_head(*settings):
        proc = subprocess.run(["make", "-n", "-C", str(ROOT), "iteration", "N=2", f"RUNS={tmp_path}", "RUN=t",
                               "CONFIG=configs/tiny.yaml", f"PY={sys.executable}",
                               "SET=base_model=nowhere " + " ".join(settings)], capture_output=True, text=True)
        return next(line for line in proc.stdout.replace("\\\n", " ").splitlines() if "head_to_head.py" in line)
    assert f"--judge {tmp_path}/t/iter2/model " in head_to_head()
    named = head_to_head("head_to_head.judge=checkpoints/judge", "head_to_head.tie_rule=points")
    assert "--judge checkpoints/judge " in named and "--tie-rule points" in named


def test_the_external_set_is_judged_for_every_model(tmp_path, tiny_checkpoint):
    """external: a second ranked set; M0 and M_N are judged on it with external_metrics' settings, and the
    summaries hold it (without it they are told to leave out any file left from other settings)."""
    def plan(n, *settings):
        proc = subprocess.run(["make", "-n", "-C", str(ROOT), "iteration", f"N={n}", f"RUNS={tmp_path}", "RUN=t",
                               "CONFIG=configs/tiny.yaml", f"PY={sys.executable}",
                               f"SET=base_model={tiny_checkpoint} " + " ".join(settings)], capture_output=True, text=True)
        return [line for line in proc.stdout.replace("\\\n", " ").splitlines() if ".py " in line]
    ext = "data/external/humaneval.ranked.jsonl"
    steps = plan(1, f"external={ext}", "external_metrics.limit=5", "external_metrics.score=expected")
    judged = [line for line in steps if f"--ranked {ext}" in line]
    assert len(judged) == 2 and all("--limit 5" in line and "--score expected" in line for line in judged)
    assert {line.split("--model ")[1].split()[0] for line in judged} == {str(tiny_checkpoint), f"{tmp_path}/t/iter1/model"}
    assert any(f"--out {tmp_path}/t/iter0/eval/reward_metrics_external.json" in line for line in judged)
    summary = next(line for line in steps if "eval/summary.py" in line)
    assert "--no-external" not in summary
    steps = plan(2, f"external={ext}")
    assert [line.split("--model ")[1].split()[0] for line in steps if f"--ranked {ext}" in line] == [
        f"{tmp_path}/t/iter2/model"]
    assert not [line for line in plan(1) if f"--ranked {ext}" in line]
    assert "--no-external" in next(line for line in plan(1) if "eval/summary.py" in line)


def test_tensor_parallel_stages(tmp_path):
    """tp: true with NPROC > 1 puts every sampling stage, self-instruct and the evaluations too (checkpoint
    selection included), under torchrun with --tp."""
    scripts = ("self_instruct.py", "generate.py", "score.py", "reward_metrics.py", "head_to_head.py",
               "select_checkpoint.py")

    def commands(*settings):
        proc = subprocess.run(["make", "-n", "-C", str(ROOT), "iteration", "N=2", "SELECT=1", f"RUNS={tmp_path}",
                               "RUN=t", "CONFIG=configs/tiny.yaml", f"PY={sys.executable}",
                               "SET=base_model=nowhere " + " ".join(settings)], capture_output=True, text=True)
        return {script: line for line in proc.stdout.replace("\\\n", " ").splitlines()
                for script in scripts if script in line}
    parallel = commands("tp=true", "nproc=2")
    assert sorted(parallel) == sorted(scripts), parallel
    assert all("torchrun" in line and "--nproc_per_node=2" in line and line.endswith("--tp")
               for line in parallel.values()), parallel
    data_parallel = commands("nproc=2")
    assert "torchrun" not in data_parallel["self_instruct.py"] and "torchrun" in data_parallel["generate.py"]
    assert not any("--tp" in line for line in data_parallel.values())
    assert not any("--tp" in line for line in commands("tp=true").values())  # one process: nothing to split


def _iteration_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("iteration", ROOT / "configs/iteration.py")
    iteration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(iteration)
    return iteration


def _config_with(tmp_path, setting: str) -> Path:
    """configs/tiny.yaml with `setting` (section.key=value) written into the file, as a stranger may hand it."""
    import yaml
    values = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    key, value = setting.split("=", 1)
    *sections, last = key.split(".")
    node = values
    for section in sections:
        node = node.setdefault(section, {})
    try:
        node[last] = yaml.safe_load(value)
    except yaml.YAMLError:
        node[last] = value
    config = tmp_path / "given.yaml"
    config.write_text(yaml.safe_dump(values))
    return config


REFUSED = [
    ("base_model=$(shell touch INJECTED)", "base_model: .* has characters that make or the shell would read as code"),
    ("base_model=x;touch INJECTED", "base_model: .* has characters that make or the shell would read as code"),
    ("ift=`touch INJECTED`", "ift: .* has characters"),
    ("select.judge=a b", "select.judge: .* has characters"),
    ("generate.temperature=fast", r"generate.temperature: expected a finite number, got 'fast'"),
    ("generate.samples=2.5", "generate.samples: expected an integer, got 2.5"),
    ("select.enabled=maybe", "select.enabled: expected true or false, got 'maybe'"),
    ("nproc=true", "nproc: expected an integer, got True"),
    ("heldout=''", "heldout is empty"),
    ("pairs.rule=longest", "pairs.rule must be one of"),
    ("select.against=everyone", "select.against must be one of"),
    ("self_instruct.template=alpaca", r"self_instruct.template must be one of \[.demo., .self-instruct.\]"),
    ("dpo.set.lr=abc", r"dpo: .*dpo-tiny.yaml with overrides \['lr=abc'\]: lr: expected a finite number, got 'abc'"),
    ("dpo.set.lr=$(shell touch INJECTED)", "dpo: .*lr: expected a finite number"),
    ("sft.set.bta=0.2", r"sft: .*with overrides \['bta=0.2'\]: unknown key 'bta'"),
]


@pytest.mark.parametrize("setting,message", REFUSED, ids=[s for s, _ in REFUSED])
def test_settings_that_would_be_code_or_wrong_are_refused(tmp_path, setting, message):
    """configs/iteration.py checks every value's type, keeps make and shell syntax out of config.mk, and
    reads a trainer's `set:` as the trainer will: in a config file (what a stranger may hand you), and as
    an override."""
    iteration = _iteration_module()
    for path, overrides in ((_config_with(tmp_path, setting), []), (ROOT / "configs/tiny.yaml", [setting])):
        with pytest.raises(iteration.FormatError) as error:
            iteration.trainer_configs(iteration.load(str(path), overrides))
        assert re.search(message, str(error.value)) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize("setting,message", [REFUSED[0], REFUSED[4], REFUSED[-1]], ids=["code", "type", "trainer"])
def test_make_stops_on_a_refused_setting_before_any_stage(tmp_path, setting, message):
    """The CLI says it in one line, and make stops with it before running anything, even under `make -n`
    (which still expands config.mk)."""
    direct = subprocess.run([sys.executable, str(ROOT / "configs/iteration.py"), str(ROOT / "configs/tiny.yaml"),
                             setting], capture_output=True, text=True, cwd=ROOT)  # as an override
    assert direct.returncode != 0 and re.search(message, direct.stderr), direct.stderr
    assert len(direct.stderr.strip().splitlines()) == 1 and "Traceback" not in direct.stderr
    made = subprocess.run(["make", "-n", "-C", str(ROOT), "iteration", "N=2", f"RUNS={tmp_path}", "RUN=t",
                           f"CONFIG={_config_with(tmp_path, setting)}", f"PY={sys.executable}"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert made.returncode != 0 and "settings refused" in made.stderr and re.search(message, made.stderr)
    assert "python" not in made.stdout  # no stage was printed, let alone run
    assert not list(tmp_path.rglob("INJECTED")) and not (ROOT / "INJECTED").exists()


def test_make_and_shell_characters_in_trainer_settings_reach_the_trainer_as_text(tmp_path):
    """A `set:` string with $ and # (a valid value for no key, but think of a path) is escaped for make and
    quoted for the shell: config.mk reads back as the exact text."""
    iteration = _iteration_module()
    text = "a$(shell touch INJECTED)#b"
    (tmp_path / "Makefile").write_text(f"V := {iteration.make_escaped(text)}\nall:\n\t@printf '%s' '$(V)'\n")
    out = subprocess.run(["make", "-s", "-C", str(tmp_path)], capture_output=True, text=True)
    assert out.stdout == text and not (tmp_path / "INJECTED").exists()


def test_settings_per_iteration(tmp_path):
    """An `iterations:` entry changes the sections it names for that iteration only (the paper sized each
    iteration's data); overrides win over it; every entry is checked whichever iteration is made; the stamps of
    the per-iteration stages are kept per iteration, so making iteration 3 leaves iteration 2 up to date."""
    import yaml
    iteration = _iteration_module()
    values = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    values["iterations"] = {3: {"self_instruct": {"n_prompts": 7}, "dpo": {"set": {"lr": 3.0e-4}}}}
    config = tmp_path / "sized.yaml"
    config.write_text(yaml.safe_dump(values))
    base = values["self_instruct"]["n_prompts"]
    assert iteration.load(str(config), [], 2).self_instruct.n_prompts == base
    three = iteration.load(str(config), [], 3)
    assert three.self_instruct.n_prompts == 7 and three.dpo.set["lr"] == 3.0e-4
    assert three.dpo.config == "configs/dpo-tiny.yaml"                              # merged, not replaced
    assert iteration.load(str(config), ["self_instruct.n_prompts=9"], 3).self_instruct.n_prompts == 9
    assert iteration.load(str(config), ["iterations.3.self_instruct.n_prompts=8"], 3).self_instruct.n_prompts == 8
    for entry, message in [({1: {"self_instruct": {"n_prompts": 5}}}, r"iterations\.1: an iteration number is an integer"),
                           ({3: {"sft": {"config": "x"}}}, r"iterations\.3\.sft: only self_instruct, generate"),
                           ({4: {"generate": {"samples": "many"}}},
                            r"\(iterations\.4\): generate\.samples: expected an integer, got 'many'"),
                           ({4: {"dpo": {"set": {"lr": "abc"}}}}, r"\(iterations\.4\): dpo: .*lr: expected a finite")]:
        config.write_text(yaml.safe_dump({**values, "iterations": entry}))
        with pytest.raises(iteration.FormatError, match=message):
            iteration.load(str(config), [], 2)
    config.write_text(yaml.safe_dump(values))
    stamps = tmp_path / "settings"
    for n in (2, 3, 2):
        proc = subprocess.run([sys.executable, str(ROOT / "configs/iteration.py"), "--stamps", str(stamps),
                               "--iter", str(n), str(config)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert f"--n-prompts {7 if n == 3 else base} " in proc.stdout
    for stage in iteration.PER_ITERATION:
        assert (stamps / "iter2" / stage).is_file() and not (stamps / stage).exists()
    assert "--n-prompts 7 " in (stamps / "iter3" / "self_instruct").read_text()
    assert f"--n-prompts {base} " in (stamps / "iter2" / "self_instruct").read_text()
    assert (stamps / "iter2" / "self_instruct").stat().st_mtime == 0        # never changed: dated 1970
    assert (stamps / "sft").is_file() and (stamps / "reward_metrics").is_file()
    # a run from before the stamps moved to iterN/: a stage whose old stamp holds other settings is redone
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "generate").write_text("settings --samples 9\n")
    (legacy / "judge").write_text((stamps / "iter2" / "judge").read_text())
    proc = subprocess.run([sys.executable, str(ROOT / "configs/iteration.py"), "--stamps", str(legacy), "--iter", "2",
                           str(config)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (legacy / "iter2" / "generate").stat().st_mtime > 0 and (legacy / "iter2" / "judge").stat().st_mtime == 0


def test_the_papers_setting_shows_in_a_dry_run(tmp_path):
    """`make -n` on configs/llama2-70b.yaml, iteration 3 (its own sizes): the fixed prompt writer with Self-Instruct's
    template and filters, the paper's pair count, DPO long enough for several checkpoints, selection against the
    previous checkpoint by a named judge with the AlpacaEval prompt on its own validation prompts, and the head to
    head against both opponents, judged alike, every sampling stage tensor parallel."""
    base = tmp_path / "m0"
    for model in (base, tmp_path / "t" / "iter2" / "model"):
        model.mkdir(parents=True)
        (model / "params.json").write_text("{}")
    proc = subprocess.run(["make", "-n", "-C", str(ROOT), "iteration", "N=3", f"RUNS={tmp_path}", "RUN=t",
                           "CONFIG=configs/llama2-70b.yaml", f"PY={sys.executable}",
                           f"SET=base_model={base} ift=data/seed/ift.jsonl ranked=data/seed/ranked.trees.jsonl "
                           "heldout=data/seed/heldout.jsonl select.prompts=data/seed/eft.jsonl"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.replace("\\\n", " ")
    line = {script: next(x for x in out.splitlines() if script in x) for script in
            ("self_instruct.py", "pairs.py", "dpo.py", "select_checkpoint.py", "head_to_head_baseline.json")}
    assert "--model checkpoints/llama2-70b-chat" in line["self_instruct.py"]
    assert all(f in line["self_instruct.py"] for f in ("--template self-instruct", "--min-words 4", "--max-words 150",
                                                        "--n-prompts 8700", "--temperature 0.6", "--top-p 0.9"))
    assert "--max-pairs 6942" in line["pairs.py"] and "--set epochs=3" in line["dpo.py"]
    assert all(f in line["select_checkpoint.py"] for f in (
        "--against previous-checkpoint", "--judge checkpoints/llama2-70b-chat", "--pairwise-prompt alpacaeval",
        "--prompts data/seed/eft.jsonl", "--tie-rule both-orders"))
    vs_previous = next(x for x in out.splitlines() if "head_to_head.json" in x)
    for h2h in (vs_previous, line["head_to_head_baseline.json"]):
        assert "--judge checkpoints/llama2-70b-chat" in h2h and "--pairwise-prompt alpacaeval" in h2h
    assert f"--b {tmp_path}/t/baseline/model" in line["head_to_head_baseline.json"]
    sampling = [x for x in out.splitlines() if any(s in x for s in ("generate.py", "score.py", "reward_metrics.py",
                                                                     "head_to_head.py", "select_checkpoint.py"))]
    assert sampling and all("--nproc_per_node=8" in x and x.rstrip().endswith("--tp") for x in sampling)
