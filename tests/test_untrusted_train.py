"""The trainers against untrusted input: settings that would make the weights NaN are refused before training,
weights that turn NaN or inf are never saved, a resume may lower the lr as the divergence message advises,
and a crafted training state is refused without running what its pickles name (train/config.py,
train/loop.py)."""
import dataclasses
import io
import math
import os
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model
from model.errors import FormatError
from test_train_dpo import metrics, one_thread, run_dpo, write_pairs  # noqa: F401 (an autouse fixture)
from train import loop
from train.config import DPOConfig, load_config
from train.distributed import Dist

ROOT = Path(__file__).resolve().parents[1]


def error_line(err: str) -> str:
    """The one error line of a failed run (and no traceback)."""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("override,message", [
    ("lr=nan", "lr: expected a finite number, got 'nan'"),
    ("lr=inf", "lr: expected a finite number, got 'inf'"),
    ("lr=.inf", "lr: expected a finite number, got inf"),
    ("lr=0", "lr must be a finite number > 0, got 0.0"),
    ("final_lr=0.01", "final_lr must be in [0, lr] = [0, 0.001], got 0.01"),
    ("final_lr=nan", "final_lr: expected a finite number, got 'nan'"),
    ("grad_clip=nan", "grad_clip: expected a finite number, got 'nan'"),
    ("grad_clip=inf", "grad_clip: expected a finite number, got 'inf'"),
    ("weight_decay=nan", "weight_decay: expected a finite number, got 'nan'"),
    ("weight_decay=1000", "weight_decay must be below 1 / lr = 1000, got 1000.0"),
    ("adam_beta1=1", "adam_beta1 must be in [0, 1), got 1.0"),
    ("adam_beta2=nan", "adam_beta2: expected a finite number, got 'nan'"),
    ("adam_beta2=-0.1", "adam_beta2 must be in [0, 1), got -0.1"),
    ("adam_eps=0", "adam_eps must be a finite number > 0, got 0.0"),
    ("adam_eps=inf", "adam_eps: expected a finite number, got 'inf'"),
    ("dropout=nan", "dropout: expected a finite number, got 'nan'"),
    ("beta=nan", "beta: expected a finite number, got 'nan'"),
    ("beta=inf", "beta: expected a finite number, got 'inf'"),
    ("loss_options={label_smoothing: .nan}", "loss_options.label_smoothing: expected a finite number, got nan"),
    ("loss_options={label_smoothing: 0.7}", "label_smoothing must be in [0, 0.5)"),
    ("activation_checkpointing=maybe", "activation_checkpointing: expected true or false, got 'maybe'"),
    ("batch_size=2.5", "batch_size: expected an integer, got 2.5"),
    ("max_steps=true", "max_steps: expected an integer, got True"),
])
def test_settings_that_are_not_finite_or_out_of_range_are_refused_by_name(override, message):
    with pytest.raises(FormatError) as refused:
        load_config(DPOConfig, "configs/dpo-tiny.yaml", [override])
    assert message in str(refused.value)


def test_a_config_built_in_code_is_checked_as_one_read_from_a_file():
    """The file loader refuses a non-finite number before validate() sees it; a config made in Python (a
    script of one's own) meets validate() alone, which refuses them too."""
    for key, value, message in (("lr", math.nan, "lr must be a finite number > 0, got nan"),
                                ("grad_clip", math.inf, "grad_clip must be a finite number >= 0, got inf"),
                                ("beta", math.nan, "beta must be a finite number > 0, got nan"),
                                ("dropout", math.nan, "dropout must be in [0, 1), got nan")):
        with pytest.raises(ValueError) as refused:
            DPOConfig(**{key: value}).validate()
        assert str(refused.value) == message


def test_an_infinite_lr_is_one_line_before_any_training(tmp_path, tiny_checkpoint, capsys):
    """It used to train one step, save a model that is NaN everywhere, and exit 0."""
    out = tmp_path / "m"
    code, err = run_dpo(capsys, tiny_checkpoint, write_pairs(tmp_path / "pairs.jsonl", 8), out,
                        "lr=inf", "max_steps=1")
    assert code == 1 and "lr: expected a finite number, got 'inf'" in error_line(err)
    assert not out.exists() and not out.with_name("m.train").exists()


# ---------------------------------------------------------------- weights checked before every save


def test_weights_finite_is_false_for_any_nan_or_inf_but_not_for_large_finite_weights():
    d = Dist(0, 1, torch.device("cpu"), None)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.fill_(3e38)  # its squared norm is inf: a norm-based check would call it broken
        assert loop.weights_finite(net, d)
        for bad in (math.nan, math.inf, -math.inf):
            net[1].bias[1] = bad
            assert not loop.weights_finite(net, d)


def with_a_nan_embedding_row(tiny_checkpoint, directory: Path) -> Path:
    """The tiny checkpoint with NaN in the last row of its embedding: in rank 1's shard of two."""
    net, tokenizer = model.load(tiny_checkpoint)
    with torch.no_grad():
        net.tok_embeddings.weight[-1] = math.nan
    model.save_model(directory, net, tokenizer)
    return directory


def test_an_input_checkpoint_with_nan_weights_is_refused_by_name(tmp_path, tiny_checkpoint, capsys):
    broken = with_a_nan_embedding_row(tiny_checkpoint, tmp_path / "broken")
    code, err = run_dpo(capsys, broken, write_pairs(tmp_path / "pairs.jsonl", 8), tmp_path / "m", "max_steps=1")
    assert code == 1 and error_line(err) == f"error: {broken}: its weights hold NaN or inf; nothing can be " \
                                            "trained from them"
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("max_steps", [1, 3])
def test_weights_that_turn_non_finite_are_never_saved(tmp_path, tiny_checkpoint, capsys, monkeypatch, max_steps):
    """The first update leaves a NaN weight (as an overflow would) while its loss and gradient were finite.
    That model used to be saved with exit 0 (one step), or saved as the training state that the NaN loss of
    step 2 then called "the last good training state" (three steps)."""
    real_step = loop._step

    def overflowing(cfg, net, optimizer, d, step, plan, micro_step):
        record = real_step(cfg, net, optimizer, d, step, plan, micro_step)
        with torch.no_grad():
            net.model.norm.weight[0] = math.nan
        return record
    monkeypatch.setattr(loop, "_step", overflowing)
    out = tmp_path / "m"
    code, err = run_dpo(capsys, tiny_checkpoint, write_pairs(tmp_path / "pairs.jsonl", 16), out,
                        f"max_steps={max_steps}", "save_every=1")
    assert code == 1
    assert error_line(err) == ("error: step 1: the updated weights hold NaN or inf (the loss and gradient norm were "
                               "finite); nothing of this step is saved: no training state was saved yet; start "
                               "again with --resume and a lower lr (--set lr=... final_lr=...)")
    train_dir = out.with_name("m.train")
    assert not out.exists() and not (train_dir / "state").exists() and not (train_dir / "snapshots").exists()


def test_a_resume_may_lower_the_lr_as_the_divergence_message_advises(tmp_path, tiny_checkpoint, capsys,
                                                                     monkeypatch):
    """Step 3 reports a NaN loss (as a diverging run would); following the message's advice, a resume with a
    lower lr continues from the step-2 state, notes the change and schedules the remaining steps by the new lr.
    Settings that would change the data, the steps or the optimizer state are still refused."""
    pairs, out = write_pairs(tmp_path / "pairs.jsonl", 16), tmp_path / "m"
    settings = ["max_steps=4", "save_every=2", "dropout=0"]
    real_step = loop._step

    def diverging(cfg, net, optimizer, d, step, plan, micro_step):
        record = real_step(cfg, net, optimizer, d, step, plan, micro_step)
        return {**record, "loss": math.nan} if step == 2 else record
    monkeypatch.setattr(loop, "_step", diverging)
    code, err = run_dpo(capsys, tiny_checkpoint, pairs, out, *settings)
    assert code == 1
    assert re.search(r"error: step 3: the loss \(nan\) .* is not finite; stopped before updating the weights: the "
                     r"last good training state, .*m\.train/state \(step 2\), is kept; continue from it with "
                     r"--resume and a lower lr \(--set lr=\.\.\. final_lr=\.\.\.\)", error_line(err))
    monkeypatch.setattr(loop, "_step", real_step)

    code, err = run_dpo(capsys, tiny_checkpoint, pairs, out, *settings, "beta=0.2", "lr=5e-4", resume=True)
    assert code == 1 and ("the run being resumed had other settings (beta: 0.1 -> 0.2); resume with the same "
                          "config (only lr, final_lr, grad_clip, micro_batch_size may change)") in error_line(err)
    code, err = run_dpo(capsys, tiny_checkpoint, pairs, out, *settings, "lr=5e-4", "final_lr=5e-5", "grad_clip=0.5",
                        resume=True)
    assert code == 0, err
    assert "note: resuming with other settings (lr: 0.001 -> 0.0005; final_lr: 0.0001 -> 5e-05; grad_clip: " \
           "1.0 -> 0.5)" in err
    new = load_config(DPOConfig, "configs/dpo-tiny.yaml", [*settings, "lr=5e-4", "final_lr=5e-5", "grad_clip=0.5"])
    logged = metrics(out)
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    assert [m["lr"] for m in logged[2:]] == [loop.lr_at(step, new, 4) for step in (2, 3)]
    trained, _ = model.load(out)
    assert all(torch.isfinite(t).all() for t in trained.state_dict().values())


# ---------------------------------------------------------------- a crafted training state


class RunsCommand:
    """Pickles as a call of os.system: what a crafted state file would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def trained_state(tmp_path, tiny_checkpoint, capsys) -> tuple[Path, Path, Path]:
    """(pairs file, --out, its training state) of a finished two-step run."""
    pairs, out = write_pairs(tmp_path / "pairs.jsonl", 8), tmp_path / "m"
    code, err = run_dpo(capsys, tiny_checkpoint, pairs, out, "max_steps=2", "save_every=1")
    assert code == 0, err
    return pairs, out, out.with_name("m.train") / "state"


def test_a_crafted_metadata_file_is_refused_not_run(tmp_path, tiny_checkpoint, capsys):
    pairs, out, state = trained_state(tmp_path, tiny_checkpoint, capsys)
    marker = tmp_path / "it-ran"
    (state / ".metadata").write_bytes(pickle.dumps(RunsCommand(f"touch {shlex.quote(str(marker))}")))
    code, err = run_dpo(capsys, tiny_checkpoint, pairs, out, "max_steps=2", "save_every=1", resume=True)
    assert not marker.exists()
    assert code == 1 and error_line(err) == (f"error: {state / '.metadata'}: not a training state's metadata, and "
                                             f"not unpickled further: it names {os.system.__module__}.system, "
                                             "which dcp.save does not write there")


def test_damaged_metadata_is_one_line(tmp_path, tiny_checkpoint, capsys):
    pairs, out, state = trained_state(tmp_path, tiny_checkpoint, capsys)
    for damaged in ((state / ".metadata").read_bytes()[:200], pickle.dumps({"storage_data": {}})):
        (state / ".metadata").write_bytes(damaged)
        code, err = run_dpo(capsys, tiny_checkpoint, pairs, out, "max_steps=2", "save_every=1", resume=True)
        assert code == 1 and error_line(err).startswith(f"error: {state / '.metadata'}: not a training state's "
                                                        "metadata")


def test_a_crafted_optimizer_entry_in_a_shard_is_refused_not_run(tmp_path, tiny_checkpoint, capsys):
    """dcp keeps the optimizer's param_groups as pickled bytes in the shard and unpickled them with
    weights_only=False: the lr entry pointed at a pickle that calls os.system."""
    pairs, out, state = trained_state(tmp_path, tiny_checkpoint, capsys)
    marker = tmp_path / "it-ran"
    metadata = pickle.loads((state / ".metadata").read_bytes())  # written by the run above
    index = next(i for i in metadata.storage_data if i.fqn == "optim.param_groups.0.lr")
    payload = io.BytesIO()
    torch.save(RunsCommand(f"touch {shlex.quote(str(marker))}"), payload)
    shard = state / metadata.storage_data[index].relative_path
    offset = shard.stat().st_size
    with shard.open("ab") as file:
        file.write(payload.getvalue())
    metadata.storage_data[index] = dataclasses.replace(metadata.storage_data[index], offset=offset,
                                                       length=len(payload.getvalue()))
    (state / ".metadata").write_bytes(pickle.dumps(metadata))
    code, err = run_dpo(capsys, tiny_checkpoint, pairs, out, "max_steps=2", "save_every=1", resume=True)
    assert not marker.exists()
    assert code == 1 and error_line(err) == (f"error: {state}: cannot be read as this run's training state: "
                                             "optim.param_groups.0.lr: not plain data that "
                                             "torch.load(weights_only=True) reads, so not unpickled further")


# ---------------------------------------------------------------- under FSDP


@pytest.mark.slow
def test_two_ranks_refuse_together(tmp_path, tiny_checkpoint, capsys):
    """A 2-rank run stops with one line, no rank left waiting at a collective (the run ends well inside the
    timeout): an input checkpoint whose NaN weight lies in rank 1's shard only, and a crafted .metadata on
    --resume. (A rank that says it second may already have been stopped by torchrun when the first
    exited, and two ranks writing at once can share a line of the output, so the test asks for the
    message from at least one rank.)"""
    pairs, out, state = trained_state(tmp_path, tiny_checkpoint, capsys)  # one process; two ranks resume it

    def errors_of_two_ranks(checkpoint, out, resume=False) -> str:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "train/dpo.py"), "--config", "configs/dpo-tiny.yaml", "--model", str(checkpoint),
               "--pairs", str(pairs), "--out", str(out), "--set", "max_steps=2", "save_every=1"]
        proc = subprocess.run(cmd + ["--resume"] * resume, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode != 0
        return proc.stderr

    broken = with_a_nan_embedding_row(tiny_checkpoint, tmp_path / "broken")
    refused = f"{broken}: its weights hold NaN or inf; nothing can be trained from them"
    errors = errors_of_two_ranks(broken, tmp_path / "nan")
    assert re.search(rf"rank \d: error: {re.escape(refused)}", errors), errors[-2000:]
    marker = tmp_path / "it-ran"
    (state / ".metadata").write_bytes(pickle.dumps(RunsCommand(f"touch {shlex.quote(str(marker))}")))
    errors = errors_of_two_ranks(tiny_checkpoint, out, resume=True)
    assert re.search(rf"rank \d: error: {re.escape(str(state / '.metadata'))}: not a training state's metadata",
                     errors), errors[-2000:]
    assert not marker.exists()
