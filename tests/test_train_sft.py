"""train/sft.py and what it shares with DPO (config, data, run directory): which tokens carry loss,
the loss against an independent computation, memorisation, resumable output layout, bad input."""
import json
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

import model
from model.convert import byte_level_tokenizer
from train import sft
from train.config import DPOConfig, SFTConfig, load_config
from train.data import Sequence, collate, read_sft, response_tokens
from train.distributed import LogProbModel
from train.loop import lr_at


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's ops are too small to split; on a busy machine two threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


WORDS = "the model judges its own answers and learns from pairs of chosen rejected responses".split()


def sentence(g, n):
    return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=g).tolist())


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_sft(capsys, *args):
    """train/sft.py's main in this process: (exit code, stderr)."""
    try:
        sft.main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def metrics(out):
    path = out.parent / (out.name + ".train") / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- config


def test_config_reads_yaml_overrides_and_names_typos(tmp_path):
    cfg = load_config(SFTConfig, "configs/sft.yaml")
    assert (cfg.lr, cfg.final_lr, cfg.batch_size, cfg.dropout) == (5.5e-6, 1.1e-6, 16, 0.1)  # the paper's
    dpo = load_config(DPOConfig, "configs/dpo.yaml", ["lr=2e-6", "reference=live", "activation_checkpointing=true"])
    assert (dpo.lr, dpo.final_lr, dpo.beta, dpo.reference, dpo.activation_checkpointing) == \
        (2e-6, 1e-7, 0.1, "live", True)
    for name in ("sft-tiny", "dpo-tiny"):
        load_config(DPOConfig if name.startswith("dpo") else SFTConfig, f"configs/{name}.yaml")
    (tmp_path / "c.yaml").write_text("lr: 1e-5\nfinal_lrr: 1e-6\n")
    with pytest.raises(model.FormatError, match=r"c.yaml: unknown key 'final_lrr' \(did you mean 'final_lr'\?\)"):
        load_config(SFTConfig, tmp_path / "c.yaml")
    with pytest.raises(model.FormatError, match=r"sft.yaml with overrides \['beta=0.2'\]: unknown key 'beta'"):
        load_config(SFTConfig, "configs/sft.yaml", ["beta=0.2"])
    with pytest.raises(model.FormatError, match=r"\['batch_size=many'\]: batch_size: expected an integer, got 'many'"):
        load_config(SFTConfig, "configs/sft.yaml", ["batch_size=many"])
    with pytest.raises(model.FormatError, match=r"batch_size 16 must be a multiple of micro_batch_size 3"):
        load_config(SFTConfig, "configs/sft.yaml", ["micro_batch_size=3"])


def test_schedule_warms_up_then_decays_to_the_final_lr():
    cfg = SFTConfig(lr=1.0, final_lr=0.1, warmup_steps=2)
    lrs = [lr_at(s, cfg, 10) for s in range(10)]
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 4 / 7)).item()))


# ---------------------------------------------------------------- which tokens carry loss


def test_response_tokens_end_with_the_end_of_turn(sp_model_file):
    from model.tokenizer import SentencePieceTokenizer
    user = [{"role": "user", "content": "what is the score"}]
    sp = SentencePieceTokenizer(sp_model_file)
    prompt, reply = response_tokens(sp, user, "ten points")
    assert prompt == sp.encode_chat(user) and reply[-1] == sp.eos_id        # Llama-2: the answer ends in EOS
    assert prompt + reply == sp.encode_chat(user + [{"role": "assistant", "content": "ten points"}], False)
    bpe = byte_level_tokenizer()
    prompt, reply = response_tokens(bpe, user, "hello")
    assert prompt == bpe.encode_chat(user) and reply == bpe.encode("hello") + [bpe.eos_id]  # <|im_end|>, no "\n"


def test_long_examples_keep_their_prompt_and_are_counted(tmp_path, tiny_checkpoint):
    tok = model.load_tokenizer(tiny_checkpoint)
    rows = [{"prompt": "the model", "response": "judges its own answers " * 20},
            {"prompt": "pairs of " * 40, "response": "score"}, {"prompt": "own", "response": "  "},
            {"messages": [{"role": "user", "content": "score"}], "response": "ten"}]
    examples, report = read_sft([write_jsonl(tmp_path / "d.jsonl", rows)], tok, 40)
    prompt, _ = response_tokens(tok, [{"role": "user", "content": "the model"}], "x")
    assert len(examples) == 2 and len(examples[0].tokens) == 40 and examples[0].tokens[:len(prompt)] == prompt
    assert examples[0].n_prompt == len(prompt) and report.truncated == 1
    assert "2 of 4 kept, 1 of them cut" in str(report) and "d.jsonl:2" in str(report) and "d.jsonl:3" in str(report)


def test_only_response_tokens_carry_loss(tiny_checkpoint):
    """The loss is the mean NLL of the response tokens (checked against cross-entropy on full logits),
    and no gradient reaches the output at the positions that predict prompt tokens."""
    net, tok = model.load(tiny_checkpoint)
    lm = LogProbModel(net)
    seqs = []
    for prompt, response in (("the model judges", "its own answers"), ("pairs of chosen", "score")):
        p, r = response_tokens(tok, [{"role": "user", "content": prompt}], response)
        seqs.append(Sequence(p + r, len(p)))
    batch = collate(seqs, tok.pad_id, "cpu")
    hidden = []

    def keep(module, inputs, out):
        out.retain_grad()
        hidden.append(out)
    hook = net.norm.register_forward_hook(keep)
    loss = -lm(batch.inputs, batch.index, batch.labels).sum() / len(batch.labels)
    hook.remove()
    loss.backward()
    T = batch.inputs.shape[1]
    targets = torch.full((len(seqs), T), -100)
    for b, s in enumerate(seqs):
        targets[b, s.n_prompt - 1:len(s.tokens) - 1] = torch.tensor(s.tokens[s.n_prompt:])
    with torch.no_grad():
        expected = F.cross_entropy(net(batch.inputs).flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    grad = hidden[0].grad.norm(dim=-1)                                       # (B, T)
    assert ((grad != 0) == (targets != -100)).all()


@pytest.mark.parametrize("param_dtype", ["bfloat16", "auto"])
def test_cpu_bf16_autocast_keeps_fp32_weights_and_tracks_float64(tiny_checkpoint, monkeypatch, param_dtype):
    """param_dtype bfloat16 on a CPU (and auto, on a CPU that has native bf16): the block products run in bf16
    over fp32 weights, gradients come back fp32, and log-probs and gradients stay within bf16's rounding of a
    float64 computation of the same step (within 1.5x the error of the whole model cast to bf16); fp32 stays 1e-5
    close to it."""
    from train.distributed import Dist, build
    monkeypatch.setattr("model.dtypes.cpu_has_fast_bf16", lambda: True)
    tok = model.load_tokenizer(tiny_checkpoint)
    seqs = []
    for prompt, response in (("the model judges its own", "answers and learns from pairs"), ("pairs of", "score")):
        p, r = response_tokens(tok, [{"role": "user", "content": prompt}], response)
        seqs.append(Sequence(p + r, len(p)))
    batch = collate(seqs, tok.pad_id, "cpu")
    cpu = Dist(0, 1, torch.device("cpu"), None)

    def step(net):
        seen = []
        hook = net.model.layers[0].attention.wq.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        logp = net(batch.inputs, batch.index, batch.labels)
        hook.remove()
        (-logp.sum()).backward()
        grads = torch.cat([p.grad.flatten().double() for p in net.parameters()])
        return logp.detach().double(), grads, seen[0]

    exact = build(tiny_checkpoint, cpu, dropout=0.0, param_dtype="float32", activation_checkpointing=False).double()
    want, want_grad, _ = step(exact)
    # bf16's rounding: the same step with the whole model cast to bf16 (weights too, as FSDP does on CUDA)
    plain = LogProbModel(model.load(tiny_checkpoint, dtype=torch.bfloat16)[0])
    logp, grad, _ = step(plain)
    bf16_error, bf16_grad_error = (logp - want).abs().max() / want.abs().max(), (grad - want_grad).norm() / want_grad.norm()
    for name, dtype, tol, grad_tol in (("float32", torch.float32, 1e-5, 1e-5),
                                       (param_dtype, torch.bfloat16, 1.5 * bf16_error, 1.5 * bf16_grad_error)):
        net = build(tiny_checkpoint, cpu, dropout=0.0, param_dtype=name, activation_checkpointing=False)
        assert net.compute_dtype == dtype
        logp, grad, product_dtype = step(net)
        assert product_dtype == dtype and all(p.dtype == p.grad.dtype == torch.float32 for p in net.parameters())
        assert (logp - want).abs().max() <= tol * want.abs().max()
        assert (grad - want_grad).norm() <= grad_tol * want_grad.norm()
        if dtype == torch.bfloat16:
            assert (logp - want).abs().max() > 1e-5 * want.abs().max()  # it did compute in bf16
    monkeypatch.setattr("model.dtypes.cpu_has_fast_bf16", lambda: False)  # emulated bf16: auto stays fp32
    net = build(tiny_checkpoint, cpu, dropout=0.0, param_dtype="auto", activation_checkpointing=False)
    assert net.compute_dtype == torch.float32 and not net.autocast


# ---------------------------------------------------------------- the CLI


def test_sft_memorises_and_writes_the_run_directory(tmp_path, tiny_checkpoint, capsys):
    g = torch.Generator().manual_seed(0)
    data = write_jsonl(tmp_path / "ift.jsonl", [{"id": i, "prompt": sentence(g, 4), "response": sentence(g, 6)}
                                                for i in range(4)])
    eft = write_jsonl(tmp_path / "eft.jsonl", [{"id": "e", "prompt": "score it", "response": "four points"}] * 4)
    out = tmp_path / "m1"
    code, err = run_sft(capsys, "--config", "configs/sft-tiny.yaml", "--model", tiny_checkpoint, "--data", data, eft,
                        "--out", out, "--set", "epochs=12", "dropout=0", "lr=3e-3", "save_every=6")
    assert code == 0, err
    losses = [m["loss"] for m in metrics(out)]
    assert len(losses) == 24 and losses[-1] < 0.1 * losses[0]
    assert set(metrics(out)[0]) >= {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"}
    train_dir = tmp_path / "m1.train"
    assert sorted(p.name for p in (train_dir / "snapshots").iterdir()) == [f"step-{s:06d}" for s in (6, 12, 18, 24)]
    assert json.loads((train_dir / "state" / "meta.json").read_text())["step"] == 24
    assert load_config(SFTConfig, train_dir / "config.yaml").lr == 3e-3
    trained, _ = model.load(out)
    last, _ = model.load(train_dir / "snapshots" / "step-000024")
    for (name, a), b in zip(trained.state_dict().items(), last.state_dict().values()):
        assert torch.equal(a, b), name
    assert json.loads((out / "params.json").read_text()) == json.loads((tiny_checkpoint / "params.json").read_text())

    code, err = run_sft(capsys, "--config", "configs/sft-tiny.yaml", "--model", tiny_checkpoint, "--data", data,
                        "--out", out)
    assert code == 1 and f"error: {out} exists: pass --resume" in err
    code, err = run_sft(capsys, "--config", "configs/sft-tiny.yaml", "--model", tiny_checkpoint, "--data", data, eft,
                        "--out", out, "--resume", "--set", "epochs=12", "dropout=0.1", "lr=3e-3", "save_every=6")
    assert code == 1 and "the run being resumed had other settings (dropout: 0.0 -> 0.1)" in err


@pytest.mark.parametrize("args,message", [
    (["--set", "lrr=1e-5"], r"error: .*\['lrr=1e-5'\]: unknown key 'lrr' \(did you mean 'lr'\?\)"),
    (["--model", "nowhere"], r"error: nowhere/params.json: no such file \(is nowhere a checkpoint directory\?\)"),
    (["--data", "BAD"], r"error: .*d.jsonl:2: \"response\" must be a string"),
    (["--data", "EMPTY"], r"error: .*d.jsonl: 0 usable examples are fewer than one batch"),
    (["--set", "lr=1e30", "save_every=1", "epochs=3"],
     r"error: step 2: the loss \(.*\) or its gradient norm \(.*\) is not finite; stopped before updating the "
     r"weights: the last good training state, .*state \(step 1\), is kept"),
])
def test_bad_input_is_one_clear_message(tmp_path, tiny_checkpoint, capsys, args, message):
    rows = [{"prompt": "the model", "response": "judges"}] * 4
    if "BAD" in args:
        rows = [rows[0], {"prompt": "own", "response": 3}]
    if "EMPTY" in args:
        rows = [{"prompt": "the model", "response": " "}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    args = [str(tmp_path / "d.jsonl") if a in ("BAD", "EMPTY") else a for a in args]
    defaults = {"--model": str(tiny_checkpoint), "--data": str(tmp_path / "d.jsonl")}
    argv = ["--config", "configs/sft-tiny.yaml", "--out", tmp_path / "out"] + \
        [x for k, v in defaults.items() if k not in args for x in (k, v)] + args
    code, err = run_sft(capsys, *argv)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.search(message, lines[0]), err
    assert "Traceback" not in err


def test_a_run_is_not_resumed_across_an_edit_of_its_code(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """The training state records the digest of the trainer's code (model/sources.py): --resume after an edit
    is refused by name, with what to remove; a new micro_batch_size is accepted (memory and speed only)."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "the model", "response": "judges its own answers"},
                                              {"prompt": "pairs of", "response": "chosen rejected"}])
    args = ["--config", "configs/sft-tiny.yaml", "--model", tiny_checkpoint, "--data", data, "--out", tmp_path / "m",
            "--set", "max_steps=1", "batch_size=2", "micro_batch_size=2", "save_every=1", "dropout=0"]
    code, err = run_sft(capsys, *args)
    assert code == 0, err
    shutil.rmtree(tmp_path / "m")  # as if it had stopped before writing the final model
    code, err = run_sft(capsys, *args[:-3], "micro_batch_size=1", "save_every=1", "dropout=0", "--resume")
    assert code == 0, err
    monkeypatch.setattr(sft, "code_digest", lambda script: "edited")
    shutil.rmtree(tmp_path / "m")
    code, err = run_sft(capsys, *args, "--resume")
    assert code == 1 and "used another code" in err and f"remove {tmp_path / 'm.train'}" in err
