"""train/dpo.py: the loss against the formula and an independent log-prob computation, reward accuracy on
a clear preference set, cached vs live reference, the reference cache's key, bad pairs, and resuming
after a real kill."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kernels
import model
from train import dpo
from train.data import read_pairs, step_batches
from train.losses import preference_loss

ROOT = Path(__file__).resolve().parents[1]
GOOD = "helpful assistant answers the question".split()
BAD = "pairs of rejected responses score points".split()


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's ops are too small to split; on a busy machine two threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def words(g, vocab, n):
    return " ".join(vocab[i] for i in torch.randint(len(vocab), (n,), generator=g).tolist())


def write_pairs(path, n, seed=0):
    """Pairs whose chosen answers use one set of words and whose rejected ones use another."""
    g = torch.Generator().manual_seed(seed)
    rows = [{"id": i, "prompt": words(g, GOOD + BAD, 4), "chosen": words(g, GOOD, 5), "rejected": words(g, BAD, 5),
             "score_chosen": 5, "score_rejected": 1} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_dpo(capsys, checkpoint, pairs, out, *settings, resume=False):
    """train/dpo.py's main in this process: (exit code, stderr)."""
    argv = ["--config", "configs/dpo-tiny.yaml", "--model", checkpoint, "--pairs", pairs, "--out", out]
    argv += ["--resume"] * resume + (["--set", *settings] if settings else [])
    try:
        dpo.main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def metrics(out):
    path = Path(f"{out}.train") / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loss_is_the_formula_on_hand_computed_values():
    """Two pairs laid out as the trainer lays them out: token log-probs, sequence sums, the DPO loss."""
    token_logps = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.5, -0.25, -4.0])
    seq_ids = torch.tensor([0, 0, 1, 2, -1, 3, 3])            # chosen 0, 1; rejected 2, 3; -1 a prompt token
    ref = torch.tensor([-2.5, -1.0, -2.0, -5.0])               # ref chosen 0, 1, ref rejected 0, 1
    # pair 0: policy chosen -3, rejected -3; z = 0 - (-2.5 + 2) = 0.5
    # pair 1: policy chosen -0.5, rejected -4.25; z = 3.75 - (-1 + 5) = -0.25
    expected = (math.log1p(math.exp(-0.05)) + math.log1p(math.exp(0.025))) / 2  # -log sigmoid(beta z), beta 0.1
    loss, m = preference_loss(kernels.sequence_logps(token_logps, seq_ids, 4), ref, beta=0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["rewards_chosen"].tolist() == pytest.approx([-0.05, 0.05])
    assert m["rewards_rejected"].tolist() == pytest.approx([-0.1, 0.075])
    assert m["accuracy"].tolist() == [1.0, 0.0]


def sequence_logp(net, seq) -> float:
    """Sum of log p(response token) from the full logits: the plain way, independent of the kernels."""
    tokens = torch.tensor(seq.tokens)
    with torch.no_grad():
        logp = F.log_softmax(net(tokens[None, :-1])[0].double(), dim=-1)         # (T - 1, V)
    picked = logp.gather(1, tokens[1:, None])[:, 0]
    return picked[seq.n_prompt - 1:].sum().item()


@pytest.fixture(scope="module")
def qwen2_checkpoint(tmp_path_factory, tiny_checkpoint):
    """The tiny model with Qwen2's biases on q, k and v (random, like the rest of it)."""
    from dataclasses import replace
    net, tok = model.load(tiny_checkpoint)
    out = tmp_path_factory.mktemp("qwen2") / "model"
    model.save_model(out, model.Transformer(replace(net.args, qkv_bias=True)).init_weights(std=0.3, seed=0), tok)
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_trainer_loss_matches_an_independent_computation(tmp_path, tiny_checkpoint, qwen2_checkpoint, capsys, family):
    """Step 2's logged loss and rewards, recomputed from the step-1 snapshot (policy) and the input model
    (reference) with log_softmax/gather and the DPO formula written out here; for Llama and for Qwen2's biased
    projections, whose biases are trained too."""
    tiny_checkpoint = qwen2_checkpoint if family == "qwen2" else tiny_checkpoint
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", 8)
    code, err = run_dpo(capsys, tiny_checkpoint, pairs_file, tmp_path / "m2", "max_steps=2", "save_every=1",
                        "dropout=0", "lr=1e-2")
    assert code == 0, err
    ref, tok = model.load(tiny_checkpoint)
    policy, _ = model.load(tmp_path / "m2.train" / "snapshots" / "step-000001")
    pairs, _ = read_pairs(pairs_file, tok, 256)
    beta, losses, margins, accurate = 0.1, [], [], []
    for i in step_batches(len(pairs), 4, 2, seed=0)[1]:
        (pc, pr), (rc, rr) = [[sequence_logp(net, s) for s in pairs[i]] for net in (policy, ref)]
        z = (pc - pr) - (rc - rr)
        losses.append(-math.log(1 / (1 + math.exp(-beta * z))))
        margins.append(beta * z)
        accurate.append(float(beta * (pc - rc) > beta * (pr - rr)))
    logged = metrics(tmp_path / "m2")[1]
    assert logged["loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)
    assert logged["margins"] == pytest.approx(sum(margins) / 4, rel=1e-4)
    assert logged["accuracy"] == sum(accurate) / 4
    if family == "qwen2":
        assert policy.args.qkv_bias and not torch.equal(policy.layers[0].attention.wq.bias,
                                                        ref.layers[0].attention.wq.bias)


def test_reward_accuracy_rises_on_a_clear_preference_set(tmp_path, tiny_checkpoint, capsys):
    code, err = run_dpo(capsys, tiny_checkpoint, write_pairs(tmp_path / "pairs.jsonl", 16), tmp_path / "m2",
                        "epochs=4", "dropout=0.1", "save_every=100")
    assert code == 0, err
    logged = metrics(tmp_path / "m2")
    assert len(logged) == 16 and logged[0]["accuracy"] < 0.9
    assert sum(m["accuracy"] for m in logged[-4:]) / 4 > 0.9
    assert logged[-1]["margins"] > logged[0]["margins"] and logged[-1]["loss"] < logged[0]["loss"]
    assert "reward accuracy" in err


def test_cached_and_live_reference_agree_and_the_cache_is_keyed(tmp_path, tiny_checkpoint, capsys):
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", 8)
    settings = ["max_steps=3", "dropout=0", "batch_size=2", "micro_batch_size=1", "save_every=100"]
    for reference in ("cached", "live"):
        code, err = run_dpo(capsys, tiny_checkpoint, pairs_file, tmp_path / reference, *settings,
                            f"reference={reference}")
        assert code == 0, err
    cached, live = metrics(tmp_path / "cached"), metrics(tmp_path / "live")
    assert [m["loss"] for m in cached] == pytest.approx([m["loss"] for m in live], rel=1e-5, abs=1e-6)
    assert cached[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)  # dropout 0: policy == reference at step 1
    assert not (tmp_path / "live.train" / "ref_logps.pt").exists()
    a, _ = model.load(tmp_path / "cached")
    b, _ = model.load(tmp_path / "live")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=name)

    # the cache is used when its key matches (tampered values show through) ...
    cache = torch.load(tmp_path / "cached.train" / "ref_logps.pt")
    cache["logps"][:, 0] += 10.0
    (tmp_path / "again.train").mkdir()
    torch.save(cache, tmp_path / "again.train" / "ref_logps.pt")
    code, err = run_dpo(capsys, tiny_checkpoint, pairs_file, tmp_path / "again", *settings, resume=True)
    assert code == 0 and "recomputing" not in err
    assert metrics(tmp_path / "again")[0]["loss"] > 1.0
    # ... and recomputed for other pairs
    write_pairs(pairs_file, 9)
    shutil.rmtree(tmp_path / "cached")
    shutil.rmtree(tmp_path / "cached.train" / "state")
    code, err = run_dpo(capsys, tiny_checkpoint, pairs_file, tmp_path / "cached", *settings, resume=True)
    assert code == 0 and "was computed for other pairs, model or settings; recomputing" in err


def test_bad_pairs_are_skipped_and_counted_or_refused(tmp_path, tiny_checkpoint, capsys):
    rows = [{"prompt": "the model", "chosen": "helpful answers", "rejected": "pairs of"},
            {"prompt": "own", "chosen": "", "rejected": "score"},
            {"prompt": "own", "chosen": "score", "rejected": "score"},
            {"prompt": "own", "chosen": "helpful " * 300, "rejected": "score"}] + \
           [{"prompt": f"question {i}", "chosen": "helpful", "rejected": "rejected"} for i in range(3)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, err = run_dpo(capsys, tiny_checkpoint, path, tmp_path / "m", "max_steps=1", "batch_size=4")
    assert code == 0, err
    assert (f"5 of 7 kept, 1 of them cut to max_seq_len; skipped 1: empty chosen or rejected ({path}:2); "
            f"skipped 1: chosen == rejected ({path}:3)") in err

    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "own", "chosen": ["a"], "rejected": "b"}) + "\n")
    code, err = run_dpo(capsys, tiny_checkpoint, path, tmp_path / "n")
    assert code == 1 and f'error: {path}:2: "chosen" must be a string' in err
    path.write_text(json.dumps({"prompt": "own", "chosen": "a"}) + "\n")
    code, err = run_dpo(capsys, tiny_checkpoint, path, tmp_path / "n")
    assert code == 1 and f"error: {path}:1: missing field 'rejected'" in err
    code, err = run_dpo(capsys, tmp_path / "missing", path, tmp_path / "n")
    assert code == 1 and "missing/params.json: no such file" in err
    code, err = run_dpo(capsys, tiny_checkpoint, path, tmp_path / "n", "loss_type=ipo", "loss_options={label_smoothing: 0.1}")
    assert code == 1 and "loss_options: ipo takes no options; got label_smoothing" in err


@pytest.mark.slow
def test_resume_after_a_kill_continues_the_same_trajectory(tmp_path, tiny_checkpoint, capsys):
    """SIGKILL a run after its first training states, resume it: the same metrics and weights as a run
    never stopped (dropout on, so the RNG state must come back too)."""
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", 16)
    settings = ["max_steps=60", "save_every=4", "dropout=0.1"]
    code, err = run_dpo(capsys, tiny_checkpoint, pairs_file, tmp_path / "whole", *settings)
    assert code == 0, err

    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "train/dpo.py"), "--config", "configs/dpo-tiny.yaml", "--model",
           str(tiny_checkpoint), "--pairs", str(pairs_file), "--out", str(out), "--set", *settings]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    meta = tmp_path / "killed.train" / "state" / "meta.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not meta.exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(meta.read_text())["step"]
    assert 4 <= killed_at < 60 and not out.exists(), "the kill should land after a checkpoint, before the end"

    code, err = run_dpo(capsys, tiny_checkpoint, pairs_file, out, *settings, resume=True)
    assert code == 0, err
    whole, resumed = metrics(tmp_path / "whole"), metrics(out)
    assert [m["step"] for m in resumed] == list(range(1, 61))
    for a, b in zip(whole, resumed):
        for key in ("loss", "accuracy", "margins", "grad_norm", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)
    x, _ = model.load(tmp_path / "whole")
    y, _ = model.load(out)
    for (name, p), q in zip(x.state_dict().items(), y.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_metrics_are_read_once_per_step_not_per_micro_batch(tmp_path, tiny_checkpoint, capsys):
    """A micro-step leaves its loss and metrics on the device: the number of tensor-to-host reads
    (aten._local_scalar_dense, what .item() runs) in a run does not grow with the number of micro-batches
    per step, and the metrics equal those of the run with fewer, larger micro-batches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountHostReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                type(self).count += 1
            return func(*args, **(kwargs or {}))

    pairs = write_pairs(tmp_path / "pairs.jsonl", 8)
    counts, metrics = {}, {}
    for micro in (1, 4):  # 4 micro-batches a step, then 1
        CountHostReads.count = 0
        with CountHostReads():
            # a small lr: Adam's first steps follow the gradient's sign, which a different summation order
            # can flip where a gradient is near 0, and at the tiny config's 1e-3 that alone parts the runs
            code, err = run_dpo(capsys, tiny_checkpoint, pairs, tmp_path / f"m{micro}", "batch_size=4",
                                f"micro_batch_size={micro}", "dropout=0.0", "lr=1e-6", "final_lr=1e-7")
        assert code == 0, err
        counts[micro] = CountHostReads.count
        metrics[micro] = [json.loads(line) for line in (tmp_path / f"m{micro}.train" / "metrics.jsonl").open()]
    assert counts[1] == counts[4], counts
    for small, large in zip(metrics[1], metrics[4]):
        assert small["tokens"] == large["tokens"] and isinstance(small["tokens"], int)
        for key in ("loss", "accuracy", "margins", "grad_norm"):
            assert math.isclose(small[key], large[key], rel_tol=1e-4, abs_tol=1e-6), (key, small, large)
