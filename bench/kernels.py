"""Benchmark of kernels/: the fused log-probs against the unfused `log_softmax + gather`, time and peak memory.

On CUDA (the issue's table): for N tokens, V in {32000, 49152}, D = 4096, bf16, forward and
forward+backward of
  logprob         logits (N, V) -> (N,): fused Triton kernel, eager PyTorch, torch.compile of the eager
                  code, Liger-Kernel's cross-entropy (if installed); with achieved bytes/s against the
                  device's measured copy bandwidth, the bound for this memory-bound kernel;
  linear_logprob  hidden (N, D), weight (V, D) -> (N,): the same four, Liger's fused linear cross-entropy.
Time is the median of --repeats runs (CUDA events); peak memory is torch.cuda.max_memory_allocated()
above what was allocated before the call (so it includes the gradients a backward makes).

On CPU there are no compiled kernels, so it compares the references behind `backend="torch"`:
linear_logprob's chunked path against the naive one that makes (N, V) logits (fp32 by default).
Each measurement runs in a fresh process with glibc's mmap threshold fixed at 64 KiB, so every large
buffer is its own mapping that goes back to the OS when freed; peak memory is then the peak resident
set size (VmHWM, after resetting it through /proc/self/clear_refs) above the resident size once the
inputs exist, measured on the first call; time is the fastest of --repeats further calls. Forward
runs under torch.no_grad (a reference-model pass).

    python bench/kernels.py                                   # the device's default table
    python bench/kernels.py --tokens 2048 --vocab 32000 49152 --dim 576 --repeats 3
"""
import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere
from kernels import linear_logprob, logprob
from kernels.linear_logprob import linear_logprob_reference
from kernels.logprob import logprob_reference

MODES = ("fwd", "fwd+bwd")


def make_inputs(kernel, N, V, D, dtype, device):
    """Random inputs with a tenth of the tokens ignored; logits around N(0, 4)."""
    gen = torch.Generator(device=device).manual_seed(0)
    labels = torch.randint(V, (N,), generator=gen, device=device)
    labels[torch.rand(N, generator=gen, device=device) < 0.1] = -100
    if kernel == "logprob":
        logits = torch.randn(N, V, generator=gen, device=device).mul_(2).to(dtype).requires_grad_()
        return logits, labels
    hidden = torch.randn(N, D, generator=gen, device=device).to(dtype).requires_grad_()
    weight = torch.randn(V, D, generator=gen, device=device).mul_(2 / D ** 0.5).to(dtype).requires_grad_()
    return hidden, weight, labels


def variant(kernel, name):
    """fn(*inputs) -> something whose sum is the sum of the tokens' log-probs (up to sign)."""
    if kernel == "logprob":
        naive = logprob_reference                                       # log_softmax(fp32) + gather
        if name == "fused":
            return logprob
    else:
        naive = linear_logprob_reference                                  # all (N, V) logits at once
        if name == "fused":
            return linear_logprob
        if name == "chunked":                                            # the same loop in PyTorch (CPU)
            return functools.partial(linear_logprob, backend="torch")
    if name == "eager":
        return naive
    if name == "compile":
        return torch.compile(naive)
    if name == "liger":  # returns -sum(log-probs), Liger's cross-entropy with reduction="sum"
        import liger_kernel.transformers as liger
        if kernel == "logprob":
            return liger.LigerCrossEntropyLoss(reduction="sum")
        loss = liger.LigerFusedLinearCrossEntropyLoss(reduction="sum")
        return lambda hidden, weight, labels: loss(weight, hidden, labels)
    raise ValueError(name)


def run_once(fn, inputs, mode):
    if mode == "fwd":
        with torch.no_grad():
            fn(*inputs)
        return
    fn(*inputs).sum().backward()
    for t in inputs:
        t.grad = None


# ---- CPU: one measurement per child process ----

def proc_status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_cpu(job):
    """In the child: peak resident memory of the first call, then the fastest of `repeats` more (the
    minimum, as timeit advises: on a shared machine interference only ever adds time)."""
    inputs = make_inputs(job["kernel"], job["N"], job["V"], job["D"], getattr(torch, job["dtype"]), "cpu")
    fn = variant(job["kernel"], job["variant"])
    baseline = proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")                    # VmHWM := VmRSS
    run_once(fn, inputs, job["mode"])
    peak = proc_status_kib("VmHWM") - baseline
    times = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        run_once(fn, inputs, job["mode"])
        times.append(time.perf_counter() - start)
    return {"peak_mib": peak / 1024, "ms": 1000 * min(times)}


def cpu_rows(args):
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    env.pop("TRITON_INTERPRET", None)
    for V in args.vocab:
        for mode in MODES:
            for name in ("eager", "chunked"):
                job = {"kernel": "linear_logprob", "variant": name, "mode": mode, "N": args.tokens[0], "V": V,
                       "D": args.dim, "dtype": args.dtype, "repeats": args.repeats}
                child = subprocess.run([sys.executable, __file__, "--measure", json.dumps(job)], env=env,
                                       capture_output=True, text=True, check=False)
                if child.returncode:
                    raise RuntimeError(f"measurement {job} failed:\n{child.stderr[-3000:]}")
                rows.append({**job, **json.loads(child.stdout.splitlines()[-1])})
                print(format_row(rows[-1]), flush=True)
    return rows


# ---- CUDA ----

def copy_bandwidth(device):
    """Bytes/s of a large device-to-device copy (read + write), the bound for a memory-bound kernel."""
    src = torch.empty(2**28, dtype=torch.bfloat16, device=device)   # 512 MiB
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), 10)
    return 2 * src.numel() * src.element_size() / (ms / 1000)


def cuda_median_ms(fn, repeats):
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cuda_rows(args):
    names = ["fused", "eager"] + (["compile"] if args.compile else [])
    try:
        import liger_kernel.transformers  # noqa: F401
        names.append("liger")
    except ImportError:
        print("Liger-Kernel not installed: no liger rows")
    bandwidth = copy_bandwidth("cuda")
    print(f"measured copy bandwidth: {bandwidth / 1e9:.0f} GB/s")
    dtype = getattr(torch, args.dtype)
    rows = []
    for kernel in ("logprob", "linear_logprob"):
        for N in args.tokens:
            for V in args.vocab:
                for mode in MODES:
                    # Fresh per mode: Liger's cross-entropy (last in `names`) overwrites its logits with gradients.
                    inputs = make_inputs(kernel, N, V, args.dim, dtype, "cuda")
                    for name in names:
                        row = {"kernel": kernel, "variant": name, "mode": mode, "N": N, "V": V, "D": args.dim,
                               "dtype": args.dtype}
                        try:
                            step = functools.partial(run_once, variant(kernel, name), inputs, mode)
                            row["ms"] = cuda_median_ms(step, args.repeats)
                            torch.cuda.synchronize()
                            torch.cuda.reset_peak_memory_stats()
                            before = torch.cuda.memory_allocated()
                            step()
                            torch.cuda.synchronize()
                            row["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
                            del step
                        except Exception as error:  # noqa: BLE001 -- an optional comparison must not end the table
                            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:60]}"
                        if kernel == "logprob" and "ms" in row:
                            # Bytes the logits force: read once forward; read again and a gradient written backward.
                            passes = 1 if mode == "fwd" else 3
                            row["gb_s"] = passes * N * V * dtype.itemsize / (row["ms"] / 1000) / 1e9
                            row["of_copy"] = row["gb_s"] * 1e9 / bandwidth
                        rows.append(row)
                        print(format_row(row), flush=True)
                    del inputs
                    torch.cuda.empty_cache()
    return rows


# ---- the table ----

HEADER = (f"{'kernel':15} {'N':>6} {'V':>6} {'D':>5} {'mode':8} {'variant':8} {'time ms':>9} {'peak MiB':>9} "
          f"{'GB/s':>6} {'of copy':>7}")


def format_row(row):
    name = f"{row['kernel']:15} {row['N']:6} {row['V']:6} {row['D']:5} {row['mode']:8} {row['variant']:8}"
    if "error" in row:
        return f"{name} {row['error']}"
    gb_s = f" {row['gb_s']:6.0f} {row['of_copy']:7.0%}" if "gb_s" in row else ""
    return f"{name} {row['ms']:9.1f} {row['peak_mib']:9.1f}{gb_s}"


def targets(rows):
    """The issue's targets, fused against eager, one line per shape."""
    found = {(r["kernel"], r["N"], r["V"], r["mode"], r["variant"]): r for r in rows if "error" not in r}
    lines = []
    for (kernel, N, V, mode, name), fused in found.items():
        eager = found.get((kernel, N, V, mode, "eager"))
        if name not in ("fused", "chunked") or mode != "fwd+bwd" or eager is None:
            continue
        line = (f"{kernel} ({name}) N={N} V={V} fwd+bwd: peak {fused['peak_mib'] / eager['peak_mib']:.3f} of eager, "
                f"speed {eager['ms'] / fused['ms']:.2f}x eager")
        if "of_copy" in fused:
            line += f", {fused['of_copy']:.0%} of copy bandwidth"
        lines.append(line)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", help="N = B x T (default: 16384 on CUDA, 2048 on CPU)")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 49152], help="V (default: 32000 49152)")
    parser.add_argument("--dim", type=int, help="D for linear_logprob (default: 4096 on CUDA, 576 on CPU)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="(default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--repeats", type=int,
                        help="timed runs per row: the median is reported on CUDA, the fastest on CPU (default: 10, 3)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    parser.add_argument("--cpu", action="store_true", help="the CPU table even when CUDA is available")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one CPU measurement, JSON out
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_cpu(json.loads(args.measure))))
        return
    cuda = torch.cuda.is_available() and not args.cpu
    args.tokens = args.tokens or [16384 if cuda else 2048]
    args.dim = args.dim or (4096 if cuda else 576)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.repeats = args.repeats or (10 if cuda else 3)
    device = (torch.cuda.get_device_name() if cuda else
              f"CPU, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"device: {device}; torch {torch.__version__}")
    if not cuda and len(args.tokens) > 1:
        parser.error("the CPU table takes one --tokens value")
    print(HEADER)
    rows = cuda_rows(args) if cuda else cpu_rows(args)
    print(f"\n== summary ({device}, {args.dtype}) ==")
    print(HEADER)
    for row in rows:
        print(format_row(row))
    for line in targets(rows):
        print(line)


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, ValueError, OSError) as error:
        sys.exit(f"bench/kernels.py: {error}")
