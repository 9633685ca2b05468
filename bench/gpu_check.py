"""The GPU paths, checked in one run on one CUDA device: an estimated 6 minutes on an H100/H200 (it has not
run on one yet); --minutes (7.5) bounds it.

    PYTHONPATH=. python3 bench/gpu_check.py --out gpu_check.json      # what `make gpu-check` runs

It needs the repository, torch and Triton, and the packages our modules import that transformers brings
with it (safetensors, numpy, PyYAML, tqdm; tokenizers for the trainer check, pytest for the kernel
tests), none of our extras: every model has random weights made on the device, nothing is downloaded. Each check prints one line, `PASS name: numbers`, `FAIL name: reason`
or `NOT RUN name: reason` (an optional module is missing); a check that raises fails alone and the
others still run. The last line counts them, and --out gets every number, the environment and each
check's status as JSON. Exit code 1 if a check failed; 2 if there is no CUDA device (nothing runs).

  environment     device, versions, which of our packages and of the optional modules import
  kernel_tests    tests/test_kernels.py with the Triton kernels compiled for the GPU (a child pytest)
  logprob_int64   kernels.logprob on N x V > 2**31 bf16 logits, rows past 2**31 against fp32
  logprob_speed   logprob against eager and compiled log_softmax + gather; bytes/s against a copy
  linear_logprob  time, TFLOP/s against a matmul, peak memory against eager and Liger-Kernel
  attention       the SDPA kernel model.llama.attend runs for training, prefill and decode, MHA and GQA
  flash_attn      the model's flash-attn forward against SDPA's math kernel (when flash_attn imports)
  sampler         decode tokens/s of SmolLM2- and Llama-2-7B-shaped models against the bandwidth bound
  trainer         train/dpo.py on one NCCL rank: peak memory against train/plan.py, kill and --resume
Each check's docstring says what it runs, its sizes and its time.
"""
import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `kernels` is the package, not bench/kernels.py beside this file
# Our packages are imported inside the checks: one that does not import fails the checks that need it, not the run.

GiB = 2 ** 30
PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"
OURS = ("model", "kernels", "sample.sampler", "train.dpo")
MODULES = ("triton", "safetensors", "tokenizers", "sentencepiece", "tqdm", "yaml", "numpy", "transformers", "pytest",
           "flash_attn", "liger_kernel")
SDPA_OPS = {"aten::_scaled_dot_product_flash_attention": "flash",
            "aten::_scaled_dot_product_efficient_attention": "efficient",
            "aten::_scaled_dot_product_cudnn_attention": "cudnn",
            "aten::_scaled_dot_product_attention_math": "math",
            "aten::_scaled_dot_product_flash_attention_for_cpu": "flash_cpu"}
ATTENTION_SHAPES = {"MHA 32/32x128": (32, 32, 128), "GQA 64/8x128": (64, 8, 128), "SmolLM2 9/3x64": (9, 3, 64)}


@dataclass(frozen=True)
class Sizes:
    repeats: int            # timed runs per measurement (the median is reported)
    big_logprob: tuple      # (N, V) with N * V > 2**31: offsets past int32
    logprob_tokens: int     # N for the logprob timings
    vocabs: tuple           # V for logprob and linear_logprob: Llama-2's and Llama-3's
    linear_tokens: int
    linear_dim: int
    compile: bool           # also time torch.compile of the eager code
    attention_batch: int
    attention_len: int      # T = S for training and prefill
    decode_batch: int
    decode_len: int         # S for decode, T = 1
    sampler_models: tuple   # model.PRESETS names
    sampler_batches: tuple
    prompt_len: int
    new_tokens: int
    trainer_model: dict     # ModelArgs of the trainer's checkpoint (and of the flash-attn forward)
    trainer_seq_len: int    # max_seq_len; every row is cut to it
    trainer_steps: int      # a training state is saved every 2
    kernel_tests: str       # pytest -k expression for tests/test_kernels.py


GPU = Sizes(repeats=10, big_logprob=(17000, 128256), logprob_tokens=16384, vocabs=(32000, 128256),
            linear_tokens=8192, linear_dim=4096, compile=True,
            attention_batch=2, attention_len=1024, decode_batch=8, decode_len=4096,
            sampler_models=("smollm2-135m", "llama2-7b"), sampler_batches=(1, 16, 64), prompt_len=128,
            new_tokens=128, trainer_model=dict(dim=2048, n_layers=8, n_heads=16, n_kv_heads=4, vocab_size=32000,
                                               max_seq_len=1024),
            trainer_seq_len=512, trainer_steps=4, kernel_tests="not interpreter")
# --cpu-smoke: the same code at sizes a CPU runs in seconds (and one kernel test, for the child pytest's plumbing)
CPU_SMOKE = Sizes(repeats=1, big_logprob=(300, 1000), logprob_tokens=256, vocabs=(1000,), linear_tokens=256,
                  linear_dim=64, compile=False, attention_batch=2, attention_len=16,
                  decode_batch=2, decode_len=32, sampler_models=("tiny",), sampler_batches=(1, 2), prompt_len=8,
                  new_tokens=8, trainer_model=dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512,
                                                   multiple_of=16, max_seq_len=256),
                  trainer_seq_len=96, trainer_steps=6, kernel_tests="bad_inputs")


@dataclass
class Context:
    device: torch.device
    dtype: torch.dtype      # bf16 on CUDA, fp32 on the CPU smoke run
    sizes: Sizes
    tmp: Path
    deadline: float         # time.monotonic() by which the whole run must be over

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def time_left(self, limit: float) -> float:
        """Seconds a child process may take: `limit`, or less when the run's deadline is nearer."""
        return max(1.0, min(limit, self.deadline - time.monotonic()))


class NotRun(Exception):
    """The check cannot run here: a module is missing, or it needs CUDA."""


class CheckFailed(Exception):
    """The check ran and something in it is wrong."""


def expect(failures: list[str]):
    if failures:
        raise CheckFailed("; ".join(failures))


# ---------------------------------------------------------------- measuring

def free_memory(ctx: Context):
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


def timed(ctx: Context, fn):
    """(fn(), wall seconds), the device synchronised before and after."""
    if ctx.cuda:
        torch.cuda.synchronize()
    began = time.perf_counter()
    out = fn()
    if ctx.cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - began


def time_ms(ctx: Context, fn) -> float:
    """Median milliseconds of fn() by CUDA events (bench/kernels.py); one wall-clock call on the CPU."""
    if ctx.cuda:
        from bench.kernels import cuda_median_ms
        return cuda_median_ms(fn, ctx.sizes.repeats)
    return 1000 * timed(ctx, fn)[1]


def peak_gib(ctx: Context, fn):
    """fn()'s peak CUDA memory above what was allocated before it, in GiB; None on the CPU."""
    if not ctx.cuda:
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / GiB


def bandwidth(ctx: Context):
    """Bytes/s of a device-to-device copy (bench/kernels.py), the bound of a memory-bound kernel; None on the CPU."""
    from bench.kernels import copy_bandwidth
    return copy_bandwidth(ctx.device) if ctx.cuda else None


def fwd_bwd(ctx: Context, fn, inputs) -> dict:
    """Median time and peak memory of fn(*inputs).sum().backward()."""
    from bench.kernels import run_once

    def step():
        run_once(fn, inputs, "fwd+bwd")
    return {"ms": time_ms(ctx, step), "peak_gib": peak_gib(ctx, step)}


def optional_fwd_bwd(ctx: Context, kernel: str, name: str, inputs):
    """fwd_bwd of bench/kernels.py's variant `name`, or why it did not run: a comparison that is not ours
    (torch.compile, Liger-Kernel) reports its failure rather than failing the check."""
    from bench.kernels import variant
    try:
        return fwd_bwd(ctx, variant(kernel, name), inputs)
    except ImportError as error:
        return f"NOT RUN (no module {error.name})"
    except Exception as error:  # noqa: BLE001 -- see the docstring
        return f"error: {last_line(str(error))[:200]}"


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in fp32."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def rel_errors(fn, reference, inputs) -> list[float]:
    """Relative errors of fn's output and of its sum's gradients (inputs that require them) against reference's."""
    def outputs_and_grads(f):
        out = f(*inputs)
        out.sum().backward()
        grads = [t.grad for t in inputs if t.requires_grad]
        for t in inputs:
            t.grad = None
        return [out.detach(), *grads]
    return [rel_error(x, y) for x, y in zip(outputs_and_grads(fn), outputs_and_grads(reference))]


def show(x, spec=".0f") -> str:
    """A number, or "-" for one the CPU smoke run does not measure."""
    return "-" if x is None else format(x, spec)


def show_ms(row) -> str:
    """An optional comparison's time, or why it has none."""
    return f"{row['ms']:.2f} ms" if isinstance(row, dict) else row


def ratio(a, b):
    return None if a is None or b is None else a / b


def random_model(args, device, dtype):
    """A Transformer with normal(0, 0.02) matrices and unit norms, allocated and filled on `device` in `dtype`
    (Transformer.init_weights fills on the CPU from a CPU generator: minutes for 7B)."""
    import model
    with torch.device("meta"):
        net = model.Transformer(args)
    net = net.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return net.eval()


def sdpa_backends(fn) -> list[str]:
    """The SDPA kernels fn() ran (names from SDPA_OPS, in the order they ran), read from the profiler's op names."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=False) as prof:
        fn()
    return list(dict.fromkeys(SDPA_OPS[e.name] for e in prof.events() if e.name in SDPA_OPS))


def child_env(ctx: Context) -> dict:
    """A child process's environment: the repository importable, Triton compiling rather than interpreting,
    and on the CPU smoke run no GPU, even where there is one."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if not ctx.cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def require_triton(ctx: Context, tensor: torch.Tensor) -> None:
    """On CUDA the kernels' "auto" backend must pick Triton: a check of the PyTorch reference against eager proves
    nothing about the kernels."""
    from kernels.backend import use_triton
    if ctx.cuda and not use_triton(tensor, "auto"):
        raise CheckFailed("the Triton kernels would not run on this CUDA tensor (is Triton installed?)")


def last_line(text: str) -> str:
    lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------- the checks

def import_status(name: str) -> str:
    """'ok VERSION', or why `import name` failed."""
    try:
        module = importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 -- a broken install raises more than ImportError
        return traceback.format_exception_only(error)[-1].strip()
    return f"ok {getattr(module, '__version__', '')}".strip()


def check_environment(ctx, numbers):
    """1. The device, the versions, what imports (all of our packages must). ~10 s: transformers is slow to import."""
    numbers.update(python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), device="CPU")
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        numbers.update(device=props.name, capability=f"{props.major}.{props.minor}",
                       memory_gib=props.total_memory / GiB, device_count=torch.cuda.device_count())
    numbers["modules"] = {name: import_status(name) for name in MODULES}
    numbers["ours"] = {name: import_status(name) for name in OURS}
    expect([f"import {name}: {status}" for name, status in numbers["ours"].items() if not status.startswith("ok")])
    missing = [name for name, status in numbers["modules"].items() if not status.startswith("ok")]
    where = f" (sm {numbers['capability']}, {numbers['memory_gib']:.0f} GiB)" if ctx.cuda else ""
    triton = numbers["modules"]["triton"].removeprefix("ok ")
    return (f"{numbers['device']}{where}; torch {torch.__version__}, triton {triton}, CUDA {numbers['cuda']}, "
            f"cuDNN {numbers['cudnn']}, python {numbers['python']}; "
            f"not importable: {', '.join(missing) or 'none'}")


def check_kernel_tests(ctx, numbers):
    """2. tests/test_kernels.py with the Triton kernels compiled for the GPU, not interpreted, in a child pytest.
    ~1 min (mostly Triton compiling), stopped at 3."""
    if importlib.util.find_spec("pytest") is None:
        raise NotRun("no module pytest")
    command = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "tests/test_kernels.py",
               "-k", ctx.sizes.kernel_tests]
    try:
        done = subprocess.run(command, cwd=ROOT, env=child_env(ctx), capture_output=True, text=True,
                              timeout=ctx.time_left(180))
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"pytest did not finish in {ctx.time_left(180):.0f} s") from None
    numbers["summary"] = last_line(done.stdout)
    found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", numbers["summary"])
    numbers.update({word: int(n) for n, word in found})
    numbers["report"] = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR", "SKIPPED"))]
    if done.returncode or not numbers.get("passed"):
        numbers["output_tail"] = (done.stdout + done.stderr)[-4000:]
        raise CheckFailed(f"pytest exit code {done.returncode}: {numbers['summary'] or last_line(done.stderr)}")
    if ctx.cuda and numbers.get("skipped"):  # on a GPU every case runs: a skip means Triton did not
        raise CheckFailed(f"{numbers['summary']}: {'; '.join(numbers['report'])[:300]}")
    return numbers["summary"]


def check_logprob_int64(ctx, numbers):
    """3a. kernels.logprob on bf16 logits of N x V = 17000 x 128256 > 2**31 elements, where int32 offsets wrap:
    the first, middle and last 64 rows (the last past element 2**31) against log_softmax in fp32 + gather, forward
    and backward. ~15 s, 13 GiB (the 4.4 GB logits, their fp32 randn and their gradient)."""
    import kernels
    from bench.kernels import make_inputs
    from kernels.logprob import logprob_reference
    N, V = ctx.sizes.big_logprob
    logits, labels = make_inputs("logprob", N, V, 0, ctx.dtype, ctx.device)                # (N, V), (N,)
    require_triton(ctx, logits)
    grad = torch.randn(N, device=ctx.device)                                                # d loss / d logp
    logp = kernels.logprob(logits, labels)                                                  # (N,)
    logp.backward(grad)
    rows = torch.cat([torch.arange(64), torch.arange(N // 2 - 32, N // 2 + 32), torch.arange(N - 64, N)])
    rows = rows.to(ctx.device)
    picked = logits.detach()[rows].float().requires_grad_()                                 # (192, V) fp32
    reference = logprob_reference(picked, labels[rows])
    reference.backward(grad[rows])
    numbers.update(elements=N * V, logp_max_error=(logp.detach()[rows] - reference).abs().max().item(),
                   grad_max_error=(logits.grad[rows].float() - picked.grad).abs().max().item())
    expect([f"{key} {numbers[key]:.2e}, more than {tol}"
            for key, tol in (("logp_max_error", 1e-3), ("grad_max_error", 1e-2)) if not numbers[key] <= tol])
    return (f"N x V = {N} x {V} = {N * V:.3g}; on 192 rows max |logp - fp32| {numbers['logp_max_error']:.1e}, "
            f"max |grad - fp32| {numbers['grad_max_error']:.1e}")


def check_logprob_speed(ctx, numbers):
    """3b. logprob fwd+bwd at N 16384, V 32000 and 128256, bf16: the fused kernel (which must agree with eager
    and beat it) against eager log_softmax + gather and torch.compile of it; its bytes/s (the logits read twice,
    their gradient written once) against a copy's. ~1.5 min, most of it compiling."""
    from bench.kernels import make_inputs, variant
    copy = bandwidth(ctx)
    numbers["copy_gb_s"] = ratio(copy, 1e9)
    N, failures, parts = ctx.sizes.logprob_tokens, [], []
    for V in ctx.sizes.vocabs:
        inputs = make_inputs("logprob", N, V, 0, ctx.dtype, ctx.device)                     # (N, V), (N,)
        require_triton(ctx, inputs[0])
        errors = rel_errors(variant("logprob", "fused"), variant("logprob", "eager"), inputs)  # logp, grad
        fused, eager = (fwd_bwd(ctx, variant("logprob", name), inputs) for name in ("fused", "eager"))
        compiled = optional_fwd_bwd(ctx, "logprob", "compile", inputs) if ctx.sizes.compile else "NOT RUN (CPU)"
        fused["gb_s"] = 3 * N * V * ctx.dtype.itemsize / fused["ms"] / 1e6
        fused["of_copy"] = ratio(fused["gb_s"] * 1e9, copy)
        numbers[f"V={V}"] = {"rel_errors": errors, "fused": fused, "eager": eager, "compile": compiled}
        if max(errors) > 1e-2:
            failures.append(f"V={V}: fused against eager, relative errors {errors}")
        if ctx.cuda and fused["ms"] >= eager["ms"]:
            failures.append(f"V={V}: fused {fused['ms']:.2f} ms, not faster than eager {eager['ms']:.2f} ms")
        parts.append(f"V={V}: fused {fused['ms']:.2f} ms ({fused['gb_s']:.0f} GB/s, {show(fused['of_copy'], '.0%')} of "
                     f"copy), eager {eager['ms']:.2f} ms, compile {show_ms(compiled)}")
        del inputs
        free_memory(ctx)
    expect(failures)
    return "; ".join(parts)


def check_linear_logprob(ctx, numbers):
    """3c. linear_logprob fwd+bwd at N 8192, D 4096, V 32000 and 128256, bf16: time and TFLOP/s (4 matmuls of
    2 N V D flops fused, which recomputes the logits backward; 3 eager and Liger) against a plain bf16 matmul, and
    peak memory, which must be below eager's; Liger-Kernel's fused linear cross-entropy when installed. ~20 s."""
    from bench.kernels import make_inputs, variant
    N, D = ctx.sizes.linear_tokens, ctx.sizes.linear_dim
    failures, parts = [], []
    for V in ctx.sizes.vocabs:
        inputs = make_inputs("linear_logprob", N, V, D, ctx.dtype, ctx.device)             # (N, D), (V, D), (N,)
        require_triton(ctx, inputs[0])
        hidden, weight = inputs[0].detach(), inputs[1].detach()
        flop = 2 * N * V * D                                                               # one (N, D) x (D, V) matmul
        matmul_tflop_s = flop / time_ms(ctx, lambda: hidden @ weight.T) / 1e9
        errors = rel_errors(variant("linear_logprob", "fused"), variant("linear_logprob", "eager"), inputs)
        row = numbers[f"V={V}"] = {"matmul_tflop_s": matmul_tflop_s, "rel_errors": errors,
                                   "fused": fwd_bwd(ctx, variant("linear_logprob", "fused"), inputs),
                                   "eager": fwd_bwd(ctx, variant("linear_logprob", "eager"), inputs),
                                   "liger": optional_fwd_bwd(ctx, "linear_logprob", "liger", inputs)}
        for name, matmuls in (("fused", 4), ("eager", 3), ("liger", 3)):
            if isinstance(row[name], dict):
                row[name]["tflop_s"] = matmuls * flop / row[name]["ms"] / 1e9
                row[name]["of_matmul"] = row[name]["tflop_s"] / matmul_tflop_s
        fused, eager = row["fused"], row["eager"]
        if max(errors) > 2e-2:
            failures.append(f"V={V}: fused against eager, relative errors {errors}")
        if ctx.cuda and fused["peak_gib"] >= eager["peak_gib"]:
            failures.append(f"V={V}: fused peak {fused['peak_gib']:.2f} GiB, not below eager's {eager['peak_gib']:.2f}")
        liger = row["liger"]
        liger = f"{liger['ms']:.1f} ms, {show(liger['peak_gib'], '.2f')} GiB" if isinstance(liger, dict) else liger
        parts.append(f"V={V}: fused {fused['ms']:.1f} ms ({fused['of_matmul']:.0%} of a matmul's "
                     f"{matmul_tflop_s:.0f} TFLOP/s), {show(fused['peak_gib'], '.2f')} GiB; "
                     f"eager {eager['ms']:.1f} ms, {show(eager['peak_gib'], '.2f')} GiB; liger {liger}")
        del inputs, hidden, weight
        free_memory(ctx)
    expect(failures)
    return "; ".join(parts)


def attention_cases(ctx, n_heads, n_kv_heads, head_dim) -> dict:
    """{mode: (q, k, v, mask)}: training (causal, no mask), prefill (a padding mask, T = S), decode (T = 1)."""
    from model import attention_mask
    sizes, device = ctx.sizes, ctx.device

    def qkv(B, T, S):  # (B, n_heads, T, head_dim), and (B, n_kv_heads, S, head_dim) twice
        return [torch.randn(B, heads, length, head_dim, device=device, dtype=ctx.dtype)
                for heads, length in ((n_heads, T), (n_kv_heads, S), (n_kv_heads, S))]
    B, T, S = sizes.attention_batch, sizes.attention_len, sizes.decode_len
    valid = torch.ones(B, T, dtype=torch.bool, device=device)
    valid[0, :T // 4] = False                                                               # row 0 left-padded
    decode_valid = torch.ones(sizes.decode_batch, S, dtype=torch.bool, device=device)
    decode_valid[0, :S // 4] = False
    return {"training": (*qkv(B, T, T), None),
            "prefill": (*qkv(B, T, T), attention_mask(valid, torch.arange(T, device=device))),  # (B, 1, T, T)
            "decode": (*qkv(sizes.decode_batch, 1, S),
                       attention_mask(decode_valid, torch.tensor([S - 1], device=device)))}   # (B, 1, 1, S)


def check_attention(ctx, numbers):
    """4. model.llama.attend in bf16, for training (causal, forward and backward; T = S = 1024, batch 2), prefill
    (a padding mask, T = S = 1024) and decode (T = 1, S = 4096, batch 8), MHA 32/32 and GQA 64/8 heads of 128
    and SmolLM2's 9/3 of 64. The SDPA kernel each ran must be a fused one; forced to the fused kernels each case
    must run and agree with the math kernel within 1e-2 (on the CPU: the default kernel, whatever it is). ~15 s."""
    import model.llama
    from torch.nn.attention import SDPBackend, sdpa_kernel
    attend = model.llama.attend
    fused_only = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    failures, by_mode, worst = [], {}, 0.0
    for shape, heads in ATTENTION_SHAPES.items():
        for mode, (q, k, v, mask) in attention_cases(ctx, *heads).items():
            if mode == "training":
                q, k, v = (t.requires_grad_() for t in (q, k, v))
                backends = sdpa_backends(lambda: attend(q, k, v, mask).sum().backward())
            else:
                backends = sdpa_backends(lambda: attend(q, k, v, mask))
            case = numbers[f"{shape} {mode}"] = {"backends": backends}
            by_mode.setdefault(mode, []).append("+".join(backends) or "none")
            if not backends or (ctx.cuda and "math" in backends):
                failures.append(f"{shape} {mode} ran {backends or 'no SDPA kernel'}")
            with torch.no_grad():
                with sdpa_kernel([SDPBackend.MATH]):
                    reference = attend(q, k, v, mask)                                     # (B, n_heads, T, head_dim)
                try:
                    with sdpa_kernel(fused_only) if ctx.cuda else contextlib.nullcontext():
                        out = attend(q, k, v, mask)
                except RuntimeError as error:
                    failures.append(f"{shape} {mode}: the fused kernels refuse it ({last_line(str(error))[:120]})")
                    continue
            case["max_error_vs_math"] = (out.float() - reference.float()).abs().max().item()
            worst = max(worst, case["max_error_vs_math"])
            if not torch.allclose(out.float(), reference.float(), atol=1e-2, rtol=1e-2):
                failures.append(f"{shape} {mode}: max |fused - math| {case['max_error_vs_math']:.2e}")
    expect(failures)
    kernels_run = "; ".join(f"{mode} {', '.join(names)}" for mode, names in by_mode.items())
    return f"{kernels_run} (for {', '.join(ATTENTION_SHAPES)}); max |fused - math| {worst:.1e}"


def check_flash_attn(ctx, numbers):
    """7. model/llama.py's flash-attn path (a training forward: no mask, no cache) on the trainer's model shape
    (GQA 16/4 heads, 8 layers), T 1024, bf16, against the same attention through SDPA's math kernel (given as a
    causal mask, which flash-attn does not take). ~10 s."""
    if not ctx.cuda:
        raise NotRun("CUDA only")
    import model
    import model.llama
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if model.llama.flash_attn_func is None:
        raise NotRun("no module flash_attn (the model runs SDPA)")
    args = model.ModelArgs(**ctx.sizes.trainer_model)
    net = random_model(args, ctx.device, ctx.dtype)
    T = ctx.sizes.attention_len
    tokens = torch.randint(args.vocab_size, (ctx.sizes.attention_batch, T), device=ctx.device)
    with torch.no_grad():
        numbers["sdpa_backends"] = sdpa_backends(lambda: net(tokens, return_hidden=True))  # none: flash-attn ran
        flash = net(tokens, return_hidden=True)                                            # (B, T, dim)
        with sdpa_kernel([SDPBackend.MATH]):
            reference = net(tokens, mask=torch.ones(T, T, dtype=torch.bool, device=ctx.device).tril(),
                            return_hidden=True)
    numbers["rel_error"] = rel_error(flash, reference)
    expect(([f"SDPA ran ({numbers['sdpa_backends']}), not flash-attn"] if numbers["sdpa_backends"] else [])
           + ([] if numbers["rel_error"] <= 1e-2 else [f"relative error {numbers['rel_error']:.2e}, above 1e-2"]))
    return f"relative error of the final hidden states {numbers['rel_error']:.1e}"


class StubTokenizer:
    """What Sampler asks of a tokenizer. Its one stop id lies outside the vocabulary: every row runs to the end."""
    pad_id = 0

    def __init__(self, vocab_size: int):
        self.stop_ids = [vocab_size]

    def decode(self, ids) -> str:
        return ""


def check_sampler(ctx, numbers):
    """5. sample/sampler.py, greedy, random bf16 SmolLM2-135M- and Llama-2-7B-shaped models: decode tokens/s
    at batch 1, 16 and 64 (prompts of 128 tokens, 128 new ones; a prefill-only run timed and subtracted) against
    the bound B x copy bandwidth / (the weights + the KV cache, all read each step), and peak memory; then the
    largest batch with the decode step compiled (CUDA graphs), warmed up with the very shapes it is timed on,
    with the number of compilations it took. ~2 min."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    import model
    from sample.sampler import Sampler, SamplingParams
    sizes, copy = ctx.sizes, bandwidth(ctx)
    failures, parts = [], []
    gen = torch.Generator().manual_seed(0)

    def greedy(max_new_tokens):
        return SamplingParams(temperature=0, top_p=1, max_new_tokens=max_new_tokens)
    for preset in sizes.sampler_models:
        args = model.PRESETS[preset]
        net = random_model(args, ctx.device, ctx.dtype)
        # a step reads every weight but the embedding table, of which B rows (all of it when tied: it is the output)
        weight_bytes = sum(p.nbytes for p in net.parameters())
        weight_bytes -= 0 if args.tie_embeddings else net.tok_embeddings.weight.nbytes
        rows = []
        # (compiled on CUDA only: CPU compilation takes longer than the smoke run's whole budget)
        runs = [(B, False) for B in sizes.sampler_batches] + [(sizes.sampler_batches[-1], True)] * ctx.cuda
        for B, compile in runs:
            torch._dynamo.reset()
            counters.clear()
            sampler = Sampler(net, StubTokenizer(args.vocab_size), max_batch_size=B, compile=compile)
            prompts = torch.randint(args.vocab_size, (B, sizes.prompt_len), generator=gen).tolist()
            sampler.generate(prompts, greedy(sizes.new_tokens))            # warm-up: the shapes timed below
            _, prefill_s = timed(ctx, lambda: sampler.generate(prompts, greedy(1)))           # and the first token
            if ctx.cuda:
                torch.cuda.reset_peak_memory_stats()
            outs, total_s = timed(ctx, lambda: sampler.generate(prompts, greedy(sizes.new_tokens)))
            n_tokens = sum(c.n_tokens for [c] in outs)
            cache_bytes = (2 * args.n_layers * B * args.n_kv_heads * (sizes.prompt_len + sizes.new_tokens) * args.head_dim
                           * ctx.dtype.itemsize)
            name = f"{preset} batch {B}" + (" compiled" if compile else "")
            row = numbers[name] = {
                "tokens": n_tokens, "prefill_s": prefill_s, "total_s": total_s,
                "decode_tok_s": B * (sizes.new_tokens - 1) / (total_s - prefill_s),
                "bound_tok_s": ratio(B * copy, weight_bytes + cache_bytes) if copy else None,
                "weights_gib": weight_bytes / GiB, "cache_gib": cache_bytes / GiB,
                "peak_gib": torch.cuda.max_memory_allocated() / GiB if ctx.cuda else None,
                "compilations": counters["stats"]["unique_graphs"] if compile else None}
            row["of_bound"] = ratio(row["decode_tok_s"], row["bound_tok_s"])
            if n_tokens != B * sizes.new_tokens:
                failures.append(f"{name}: {n_tokens} tokens, not {B} x {sizes.new_tokens}")
            rows.append(f"{B}{' compiled' if compile else ''}: {row['decode_tok_s']:.0f} tok/s "
                        f"({show(row['of_bound'], '.0%')} of {show(row['bound_tok_s'])}), peak "
                        f"{show(row['peak_gib'], '.1f')} GiB" + (f", {row['compilations']} compilations" if compile else ""))
        parts.append(f"{preset} at batch " + ", ".join(rows))
        del net, sampler
        free_memory(ctx)
    expect(failures)
    return "; ".join(parts)


def write_pairs(path: Path, n_pairs: int, n_words: int) -> Path:
    """pairs.jsonl: short prompts, and answers long enough to be cut to max_seq_len (so every row is that long)."""
    words = "the model judges its own answers and learns from pairs of chosen and rejected responses".split()
    gen = torch.Generator().manual_seed(0)

    def text(n):
        return " ".join(words[i] for i in torch.randint(len(words), (n,), generator=gen).tolist())
    rows = [{"id": i, "prompt": text(4), "chosen": text(n_words), "rejected": text(n_words)} for i in range(n_pairs)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_metrics(out: Path) -> list[dict]:
    """OUT.train/metrics.jsonl's complete lines (a killed run may leave a torn last one)."""
    text = Path(f"{out}.train", "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


# train/dpo.py's main in a child process that prints its peak CUDA memory as it ends (dpo.py does not report it)
DPO_RUNNER = ("import sys, torch\nfrom train import dpo\ntry:\n    dpo.main(sys.argv[1:])\nfinally:\n"
              "    print('peak_allocated', torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0)")


def check_trainer(ctx, numbers):
    """6. train/dpo.py in child processes on a random GQA model (dim 2048, 8 layers, 0.5B parameters) and 16 pairs
    cut to 512 tokens: 4 steps of 2 pairs, bf16, activation checkpointing, a state saved every 2 steps, on the
    one-rank NCCL group train/distributed.py makes for a lone CUDA process. (a) It trains, with a peak memory of
    at most 1.25 x train/plan.py's figure + 1 GiB; (b) --resume of the finished run says it is complete and changes
    nothing; (c) another run, SIGKILLed as soon as its first state is saved and then resumed, logs the steps and
    metrics of (a). ~2.5 min: four runs, each loading the model and most writing 6 GB states."""
    if importlib.util.find_spec("tokenizers") is None:
        raise NotRun("no module tokenizers (for the checkpoint's byte-level BPE)")
    import model
    from model.convert import byte_level_tokenizer
    from train.plan import plan as memory_plan
    sizes, tmp = ctx.sizes, ctx.tmp
    args = model.ModelArgs(**sizes.trainer_model)
    model.save_model(tmp / "checkpoint", random_model(args, ctx.device, ctx.dtype), byte_level_tokenizer())
    free_memory(ctx)
    write_pairs(tmp / "pairs.jsonl", n_pairs=16, n_words=150)
    settings = [f"max_steps={sizes.trainer_steps}", "save_every=2", "batch_size=2", "micro_batch_size=1",
                f"max_seq_len={sizes.trainer_seq_len}", "activation_checkpointing=true", "lr=1e-4", "final_lr=1e-5"]
    if not ctx.cuda:  # the CPU smoke checks the plumbing: fp32, not the bf16 autocast a CPU's auto may choose
        settings.append("param_dtype=float32")

    def command(out, resume=False):
        return [sys.executable, "-c", DPO_RUNNER, "--config", "configs/dpo.yaml", "--model", str(tmp / "checkpoint"),
                "--pairs", str(tmp / "pairs.jsonl"), "--out", str(out), *["--resume"] * resume, "--set", *settings]

    def run(out, resume=False):
        name = f"{out.name}{' --resume' * resume}"
        began = time.perf_counter()
        done = subprocess.run(command(out, resume), cwd=ROOT, env=child_env(ctx), capture_output=True, text=True,
                              timeout=ctx.time_left(600))
        numbers[f"{name} seconds"] = time.perf_counter() - began
        if done.returncode:
            raise CheckFailed(f"train/dpo.py --out {name}: exit code {done.returncode}: {last_line(done.stderr)}")
        return done

    # (a) an uninterrupted run
    first, steps = run(tmp / "a"), list(range(1, sizes.trainer_steps + 1))
    metrics = read_metrics(tmp / "a")
    numbers["losses"] = [m["loss"] for m in metrics]
    failures = [] if [m["step"] for m in metrics] == steps else [f"run a logged steps {[m['step'] for m in metrics]}"]
    planned = memory_plan(args, gpus=1, micro_batch=2, seq_len=sizes.trainer_seq_len, compute_bytes=ctx.dtype.itemsize,
                          dropout=True).total_checkpointed
    peak = int(re.search(r"peak_allocated (\d+)", first.stdout).group(1)) if ctx.cuda else None
    numbers.update(plan_gib=planned / GiB, peak_gib=ratio(peak, GiB), peak_over_plan=ratio(peak, planned))
    if peak is not None and peak > 1.25 * planned + GiB:
        failures.append(f"peak {peak / GiB:.2f} GiB, above 1.25 x plan {planned / GiB:.2f} GiB + 1 GiB")
    # (b) --resume of the finished run
    again = run(tmp / "a", resume=True)
    if "already complete" not in again.stderr or read_metrics(tmp / "a") != metrics:
        failures.append(f"--resume of the finished run: {last_line(again.stderr)}")
    shutil.rmtree(tmp / "a.train")  # its states (6 GB each) are done with: the disk may be small
    # (c) killed once its first state is saved (mid-step or mid-save: wherever it is by then), then resumed
    state = tmp / "b.train" / "state" / "meta.json"
    with open(tmp / "b.log", "w") as log:
        child = subprocess.Popen(command(tmp / "b"), cwd=ROOT, env=child_env(ctx), stdout=log, stderr=log)
        deadline = time.monotonic() + ctx.time_left(600)
        while child.poll() is None and not state.is_file() and time.monotonic() < deadline:
            time.sleep(0.02)
        child.kill()
        child.wait()
    saved = [p for p in (state, tmp / "b.train" / ".state.old" / "meta.json") if p.is_file()]  # see save_state
    killed_at = numbers["killed_at_step"] = json.loads(saved[0].read_text())["step"] if saved else 0
    if child.returncode != -signal.SIGKILL or not killed_at < sizes.trainer_steps:
        failures.append(f"run b was not stopped mid-run (exit code {child.returncode}, its state at step "
                        f"{killed_at}): {last_line((tmp / 'b.log').read_text())}")
    before = [m for m in read_metrics(tmp / "b") if m["step"] <= killed_at]
    run(tmp / "b", resume=True)
    resumed = read_metrics(tmp / "b")
    numbers["resumed_losses"] = [m["loss"] for m in resumed]
    # the steps before the state are not run again (their lines, timings included, are kept), the others match (a)
    same = resumed[:killed_at] == before and all(math.isclose(m[key], n[key], rel_tol=2e-2)
                                                 for m, n in zip(resumed, metrics) for key in ("loss", "grad_norm"))
    if [m["step"] for m in resumed] != steps or not (tmp / "b").is_dir() or not same:
        failures.append(f"killed at step {killed_at} and resumed: losses {numbers['resumed_losses']}, "
                        f"uninterrupted {numbers['losses']}")
    expect(failures)
    return (f"{sizes.trainer_steps} steps in {numbers['a seconds']:.0f} s, losses "
            f"{', '.join(f'{x:.4f}' for x in numbers['losses'])}; peak {show(numbers['peak_gib'], '.1f')} GiB = "
            f"{show(numbers['peak_over_plan'], '.2f')} x plan {numbers['plan_gib']:.2f} GiB (limit 1.25 x + 1 GiB); "
            f"--resume when complete: ok; killed at step {numbers['killed_at_step']}, resumed: the same metrics")


CHECKS = (check_environment, check_kernel_tests, check_logprob_int64, check_logprob_speed, check_linear_logprob,
          check_attention, check_flash_attn, check_sampler, check_trainer)


def run_check(check, ctx: Context) -> dict:
    """Run one check and print its line; {"status", "line", "seconds", "numbers"}."""
    name, numbers = check.__name__.removeprefix("check_"), {}
    began = time.perf_counter()
    try:
        if time.monotonic() > ctx.deadline:
            raise NotRun("the run's time budget (--minutes) was spent before it")
        status, line = PASS, check(ctx, numbers)
    except NotRun as reason:
        status, line = NOT_RUN, str(reason)
    except CheckFailed as reason:
        status, line = FAIL, str(reason)
    except Exception as error:  # noqa: BLE001 -- one failing check must not stop the others
        status, line = FAIL, traceback.format_exception_only(error)[-1].strip()
        numbers["traceback"] = traceback.format_exc()
    free_memory(ctx)
    seconds = time.perf_counter() - began
    print(f"{status} {name}: {line} [{seconds:.0f} s]", flush=True)
    return {"status": status, "line": line, "seconds": seconds, "numbers": numbers}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json",
                        help="the JSON report, rewritten after every check (default %(default)s)")
    parser.add_argument("--minutes", type=float, default=7.5,
                        help="the whole run's budget: child processes are stopped by it, and checks that would "
                             "start after it are not run (default %(default)s)")
    # For tests/test_gpu_check.py: every check on the CPU at tiny sizes, to catch API mistakes before a GPU is lent.
    parser.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if not a.cpu_smoke and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
              "nothing was run", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    began = time.perf_counter()
    deadline = time.monotonic() + 60 * a.minutes
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        if a.cpu_smoke:
            ctx = Context(torch.device("cpu"), torch.float32, CPU_SMOKE, Path(tmp), deadline)
        else:
            ctx = Context(torch.device("cuda", 0), torch.bfloat16, GPU, Path(tmp), deadline)
            torch.cuda.set_device(ctx.device)
        for check in CHECKS:  # the report is rewritten after each check: a run stopped from outside keeps its numbers
            results[check.__name__.removeprefix("check_")] = run_check(check, ctx)
            counts = {status: sum(r["status"] == status for r in results.values()) for status in (PASS, FAIL, NOT_RUN)}
            write_report(Path(a.out), {"mode": "cpu-smoke" if a.cpu_smoke else "cuda",
                                       "seconds": time.perf_counter() - began, "counts": counts,
                                       "environment": results["environment"]["numbers"], "sizes": asdict(ctx.sizes),
                                       "checks": results})
    print(f"gpu_check: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[NOT_RUN]} not run in "
          f"{time.perf_counter() - began:.0f} s; every number in {a.out}")
    return 1 if counts[FAIL] else 0


def write_report(path: Path, report: dict) -> None:
    """The JSON report, replaced whole (a kill mid-write leaves the previous one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
