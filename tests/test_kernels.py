"""kernels/: the Triton kernels and the PyTorch references against float64 computations written here.

Each behaviour test runs twice, backend "torch" (the reference, always) and "triton" (the kernel:
compiled on CUDA, or on CPU through Triton's interpreter). The interpreter must be switched on before
the kernels are decorated at import, so in an ordinary CPU run `test_kernels_under_triton_interpreter`
reruns this file's Triton cases in a child process with TRITON_INTERPRET=1.
Every tensor torch.empty hands out is poisoned (NaN) first, so an element a kernel forgets to write fails.
"""
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kernels
from kernels.backend import INTERPRETED
from kernels.linear_logprob import linear_logprob_reference
from kernels.logprob import logprob_reference

TRITON_DEVICE = "cpu" if INTERPRETED else "cuda" if torch.cuda.is_available() else None
needs_triton = pytest.mark.skipif(TRITON_DEVICE is None, reason="no CUDA device and TRITON_INTERPRET unset; "
                                  "test_kernels_under_triton_interpreter runs these cases on CPU")
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def fresh_inputs_and_poisoned_buffers(request, monkeypatch):
    """Different random inputs for every test case (seeded from its name, so a failure reproduces),
    and NaN in every float buffer from torch.empty / torch.empty_like until someone writes it."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *args, **kw: poison(empty(*args, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *args, **kw: poison(empty_like(*args, **kw)))


def device_of(backend):
    return TRITON_DEVICE if backend == "triton" else "cpu"


def rel_err(ours, truth):
    ours, truth = ours.double().cpu(), truth.double().cpu()
    return ((ours - truth).norm() / truth.norm()).item()


def random_labels(N, V, ignore_index=-100):
    """Labels in [0, V) with about a quarter of the positions, scattered, set to ignore_index."""
    labels = torch.randint(V, (N,))
    labels[torch.rand(N) < 0.25] = ignore_index
    labels[N // 2] = ignore_index
    return labels


# ---- float64 ground truth, written independently of kernels/ ----

def logprob_float64(logits, labels, ignore_index=-100):
    valid = labels != ignore_index
    all_logps = torch.log_softmax(logits.double(), dim=-1)                     # (N, V)
    rows = torch.arange(len(labels), device=labels.device)
    return torch.where(valid, all_logps[rows, labels.clamp(min=0)], 0.0)


# ---- token log-prob ----

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("N,V", [(47, 123), (9, 5000), (64, 256), (16, 32000)])  # odd, 2 blocks, round, Llama-2
def test_logprob(backend, dtype, N, V):
    logits = (3 * torch.randn(N, V)).to(dtype).to(device_of(backend)).requires_grad_()
    labels = random_labels(N, V).to(logits.device)
    grad_out = torch.randn(N, device=logits.device)
    logp = kernels.logprob(logits, labels, backend=backend)
    logp.backward(grad_out)

    logits64 = logits.detach().double().requires_grad_()
    truth = logprob_float64(logits64, labels)
    truth.backward(grad_out.double())
    assert logp.dtype == torch.float32 and logits.grad.dtype == dtype
    assert rel_err(logp, truth) < TOL[torch.float32]     # fp32 accumulation, whatever the input dtype
    assert rel_err(logits.grad, logits64.grad) < TOL[dtype]
    ignored = labels == -100
    assert (logp[ignored] == 0).all() and (logits.grad[ignored] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprob_strided_rows_and_other_ignore_index(backend):
    wide = torch.randn(47, 130, device=device_of(backend))
    logits = wide[:, :123].requires_grad_()        # rows 130 apart: a view, as from a padded vocabulary
    labels = random_labels(47, 123, ignore_index=-1).to(logits.device)
    logp = kernels.logprob(logits, labels, ignore_index=-1, backend=backend)
    logp.sum().backward()
    logits64 = logits.detach().double().requires_grad_()
    truth = logprob_float64(logits64, labels, ignore_index=-1)
    truth.sum().backward()
    assert rel_err(logp, truth) < 1e-5 and rel_err(logits.grad, logits64.grad) < 1e-5


# ---- linear log-prob ----

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("N,V,D,chunk_size", [(47, 123, 31, None), (47, 123, 31, 16), (256, 512, 64, 64)],
                         ids=["odd-default-chunk", "odd-3-chunks", "round-4-chunks"])
def test_linear_logprob(backend, dtype, N, V, D, chunk_size):
    device = device_of(backend)
    hidden = torch.randn(N, D).to(dtype).to(device).requires_grad_()
    weight = (2 * torch.randn(V, D) / D ** 0.5).to(dtype).to(device).requires_grad_()   # logits ~ N(0, 4)
    labels = random_labels(N, V).to(device)
    grad_out = torch.randn(N, device=device)
    logp = kernels.linear_logprob(hidden, weight, labels, chunk_size=chunk_size, backend=backend)
    logp.backward(grad_out)

    hidden64, weight64 = (t.detach().double().requires_grad_() for t in (hidden, weight))
    truth = logprob_float64(hidden64 @ weight64.T, labels)
    truth.backward(grad_out.double())
    # bf16: the kernels see logits rounded to bf16 by the matmul, so the forward is bf16-accurate too.
    assert rel_err(logp, truth) < TOL[dtype]
    assert rel_err(hidden.grad, hidden64.grad) < TOL[dtype]
    assert rel_err(weight.grad, weight64.grad) < TOL[dtype]
    assert (logp[labels == -100] == 0).all() and (hidden.grad[labels == -100] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_logprob_bf16_weight_gradient_does_not_degrade_with_chunks(backend):
    """The weight gradient is summed over chunks in fp32: with bf16 weights, 64 chunks are about as accurate
    as one (a bf16 running sum was 2-3x worse at 32-64 chunks)."""
    device = device_of(backend)
    N, V, D = 2048, 1000, 64
    hidden = torch.randn(N, D).bfloat16().to(device)
    weight = (torch.randn(V, D) / D ** 0.5).bfloat16().to(device)
    labels = random_labels(N, V).to(device)
    grad_out = torch.randn(N, device=device)
    weight64 = weight.double().requires_grad_()
    logprob_float64(hidden.double() @ weight64.T, labels).backward(grad_out.double())
    errors = {}
    for n_chunks in (1, 64):
        w = weight.clone().requires_grad_()
        kernels.linear_logprob(hidden, w, labels, chunk_size=N // n_chunks, backend=backend).backward(grad_out)
        assert w.grad.dtype == torch.bfloat16
        errors[n_chunks] = rel_err(w.grad, weight64.grad)
    assert errors[64] < 1.3 * errors[1] and errors[1] < 5e-3, errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_logprob_frozen_weight(backend):
    device = device_of(backend)
    hidden = torch.randn(40, 24, device=device, requires_grad=True)
    weight = torch.randn(77, 24, device=device) / 24 ** 0.5
    labels = random_labels(40, 77).to(device)
    kernels.linear_logprob(hidden, weight, labels, chunk_size=16, backend=backend).sum().backward()
    hidden64 = hidden.detach().double().requires_grad_()
    logprob_float64(hidden64 @ weight.double().T, labels).sum().backward()
    assert weight.grad is None and rel_err(hidden.grad, hidden64.grad) < 1e-5


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op returns while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_linear_logprob_torch_path_never_makes_full_logits():
    N, V, D, chunk = 512, 1000, 16, 64
    hidden = torch.randn(N, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=True)
    with LargestTensor() as largest:
        kernels.linear_logprob(hidden, weight, random_labels(N, V), chunk_size=chunk, backend="torch").sum().backward()
    assert largest.numel == chunk * V           # one chunk's logits; (N, V) would be 8x that


# ---- per-sequence log-probs ----

@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_against_a_loop(average):
    """Tokens in shuffled order, a fifth of them in no sequence (-1), one sequence empty: sums (or means) per
    sequence against a Python loop in float64, and the gradient reaches exactly the tokens of a sequence."""
    g = torch.Generator().manual_seed(0)
    token_logps = (-3 * torch.rand(47, generator=g)).requires_grad_()
    seq_ids = torch.randint(5, (47,), generator=g)
    seq_ids[seq_ids == 4] = 5                                   # sequence 4 has no tokens
    seq_ids[torch.rand(47, generator=g) < 0.2] = -1
    out = kernels.sequence_logps(token_logps, seq_ids, 6, average)
    for s in range(6):
        mine = [float(x) for x, i in zip(token_logps.detach().double(), seq_ids) if i == s]
        want = (sum(mine) / len(mine) if average else sum(mine)) if mine else 0.0
        assert abs(float(out[s]) - want) < 1e-5
    weights = torch.arange(1.0, 7.0)
    (out * weights).sum().backward()
    counts = torch.bincount(seq_ids[seq_ids >= 0], minlength=6).float()
    for t in range(47):
        s = int(seq_ids[t])
        want = 0.0 if s < 0 else float(weights[s] / (counts[s] if average else 1))
        assert abs(float(token_logps.grad[t]) - want) < 1e-6


# ---- the references' own gradients, and the dispatcher ----

def test_references_pass_gradcheck():
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 4, -100, 2, 1, 3])
    assert torch.autograd.gradcheck(lambda x: logprob_reference(x, labels), (logits,))

    hidden = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, w: linear_logprob_reference(h, w, labels), (hidden, weight))
    # and the chunked PyTorch path, whose backward is written by hand (chunks of 4 and 2 tokens)
    assert torch.autograd.gradcheck(
        lambda h, w: kernels.linear_logprob(h, w, labels, chunk_size=4, backend="torch"), (hidden, weight))


def test_backend_dispatch():
    logits, labels = torch.randn(4, 9, requires_grad=True), torch.tensor([1, -100, 8, 0])
    assert (type(kernels.logprob(logits, labels).grad_fn).__name__ == "LogProbBackward") == INTERPRETED
    assert type(kernels.logprob(logits, labels, backend="torch").grad_fn).__name__ != "LogProbBackward"
    with pytest.raises(ValueError, match="backend"):
        kernels.logprob(logits, labels, backend="cuda")
    if not INTERPRETED:
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            kernels.logprob(logits, labels, backend="triton")


def test_bad_inputs_raise():
    logits, labels = torch.randn(4, 9), torch.tensor([1, -100, 8, 0])
    with pytest.raises(ValueError, match="labels"):
        kernels.logprob(logits, labels.float())
    with pytest.raises(ValueError, match="weight"):
        kernels.linear_logprob(torch.randn(4, 3), torch.randn(9, 5), labels)
    with pytest.raises(ValueError, match="seq_ids"):
        kernels.sequence_logps(torch.randn(6), torch.tensor([0.0, 1, 2, 0, 1, 2]), 3)


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="this is the child process")
def test_kernels_under_triton_interpreter():
    """The "triton" cases above, run by the Triton interpreter on CPU tensors in a child process."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "triton and not interpreter"],
        env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=Path(__file__).parents[1],
        capture_output=True, text=True, timeout=900, check=False)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print("interpreter run:", summary)
    assert result.returncode == 0 and "skipped" not in summary, result.stdout[-6000:] + result.stderr[-3000:]


@pytest.mark.parametrize("interpret", ["1", "0"])
def test_triton_without_knobs(tmp_path, interpret):
    """Triton before 3.4 (3.2 is what torch 2.6 pins) has no `triton.knobs`: kernels imports, and reads
    TRITON_INTERPRET as that Triton's jit decorator does."""
    stub = tmp_path / "triton"
    stub.mkdir()
    (stub / "__init__.py").write_text('__version__ = "3.2.0"\n')
    script = ("import torch, kernels, train.dpo, sample.sampler\n"
              "from kernels.backend import INTERPRETED, use_triton\n"
              "print(INTERPRETED, use_triton(torch.zeros(1), 'auto'))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])]),
           "TRITON_INTERPRET": interpret}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = "True True" if interpret == "1" else "False False"
    assert proc.stdout.strip() == expected


def test_without_triton_installed():
    """Where Triton cannot be installed (macOS, Windows), kernels and the trainers still import and run the
    references; asking for the Triton backend says why it cannot."""
    script = """
import math, sys
sys.modules["triton"] = None          # `import triton` now raises ImportError, as on a machine without it
import torch, kernels, train.dpo, train.sft
from kernels.linear_logprob import linear_logprob_reference
g = torch.Generator().manual_seed(0)
hidden, weight = torch.randn(37, 16, generator=g), torch.randn(53, 16, generator=g)
labels = torch.randint(53, (37,), generator=g)
labels[::5] = -100
torch.testing.assert_close(kernels.linear_logprob(hidden, weight, labels, chunk_size=8),
                           linear_logprob_reference(hidden, weight, labels))
seq_ids = torch.randint(-1, 4, (37,), generator=g)
ref = torch.randn(4, generator=g)
token_logps = kernels.logprob(hidden @ weight.T, labels)
from train.losses import preference_loss
loss, _ = preference_loss(kernels.sequence_logps(token_logps, seq_ids, 4), ref, 0.1)
pi = [float(token_logps[seq_ids == s].sum()) for s in range(4)]        # 2 pairs: chosen 0, 1; rejected 2, 3
z = [(pi[i] - pi[i + 2]) - float(ref[i] - ref[i + 2]) for i in range(2)]
expected = sum(math.log1p(math.exp(-0.1 * zi)) for zi in z) / 2       # -logsigmoid(beta z), averaged
assert abs(float(loss) - expected) < 1e-5 * max(1.0, expected), (float(loss), expected)
try:
    kernels.logprob(hidden @ weight.T, labels, backend="triton")
except ValueError as e:
    print(e)
assert "triton" not in sys.modules or sys.modules["triton"] is None
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Triton is not installed" in proc.stdout
