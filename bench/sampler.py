"""Sampling engine throughput, side by side in one run: ours against the sampler it replaced (read from
git) and against transformers' generate, on the demo's own workloads. A benchmark, not a test: it prints
tables and appends them to bench/RESULTS.md.

    python bench/sampler.py                            # the demo model (make model), the machine's fast dtype
    python bench/sampler.py --dtype float32 --baseline daa4b46
    python bench/sampler.py --device cuda              # also 7B-shaped decode against the bandwidth bound

1. The real workloads of one demo iteration: the candidate stage (24 seed prompts x 4 samples, T 0.7,
   top-p 0.9, up to 160 new tokens, natural stops) and the judge stage (those 96 answers x 3 judgements
   with the full LLM-as-a-Judge prompt, up to 120 new tokens), batch 16 and 24 as in
   configs/smollm2-135m.yaml. Ours, the baseline sampler (the --baseline commit's sample/sampler.py,
   which ran a batch until its last row finished), and transformers' LlamaForCausalLM.generate on the
   export-hf copy of the same weights (batches of the same size, left-padded, the same dtype,
   stopping at the end-of-turn token). Tokens/s count generated tokens.
2. Greedy batch-16 decode of 128 tokens (no stops) against the machine's bounds: memory bandwidth
   ((weight bytes + KV bytes read per step) / the read bandwidth of a large tensor sum) and arithmetic
   (2 x parameters x rows flops per step / the rate of a large matrix product in the same dtype).
3. CUDA only: batch 16 and 64 for random SmolLM2- and Llama-2-7B-shaped bf16 models, eager and compiled,
   against the bandwidth bound, with the number of compilations.
"""
import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import model
from judge.prompt import judge_messages
from model.convert import export_hf
from sample.stage import resolve_dtype
from sample.sampler import Sampler, SamplingParams

ROOT = Path(__file__).resolve().parents[1]


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def baseline_sampler(commit: str):
    """sample/sampler.py as it was at `commit`, imported as a module of its own."""
    source = subprocess.run(["git", "show", f"{commit}:sample/sampler.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_sampler.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_sampler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hf_generate(hf, tok, prompts: list[list[int]], n: int, params: SamplingParams, batch_size: int, device):
    """transformers' generate over the prompts' n copies in batches of batch_size rows, left-padded:
    (completions as token lists up to the first stop token, tokens generated)."""
    rows = [p for p in prompts for _ in range(n)]
    outs, tokens = [], 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[tok.pad_id] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=params.max_new_tokens,
                              do_sample=params.temperature > 0, temperature=params.temperature or None,
                              top_p=params.top_p, top_k=0, eos_token_id=tok.stop_ids, pad_token_id=tok.pad_id)
        for r in range(len(batch)):
            new = out[r, width:].tolist()
            cut = next((k for k, t in enumerate(new) if t in tok.stop_ids), len(new))
            outs.append(new[:cut])
            tokens += cut
    return outs, tokens


def workloads(ckpt: Path, device, dtype, baseline, hf) -> list[dict]:
    net, tok = model.load(ckpt, device=device, dtype=dtype)
    seed = [json.loads(line) for line in (ROOT / "data/seed/ift.jsonl").read_text().splitlines()[:24]]
    answer_prompts = [tok.encode_chat([{"role": "user", "content": r["prompt"]}]) for r in seed]
    answer = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=160)
    judge = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=120)
    results = []
    engine = Sampler(net, tok, max_batch_size=16)
    engine.generate(answer_prompts[:2], SamplingParams(temperature=0.7, max_new_tokens=8))  # warm-up
    candidates, seconds = timed(lambda: engine.generate(answer_prompts, answer, n=4))
    texts = [(r["prompt"], c.text) for r, cs in zip(seed, candidates) for c in cs]
    judge_prompts = [tok.encode_chat(judge_messages(q, a)) for q, a in texts]
    tasks = [("candidates (24 x 4, <= 160 tokens)", answer_prompts, 4, answer, 16),
             ("judge (96 x 3, <= 120 tokens)", judge_prompts, 3, judge, 24)]
    for name, prompts, n, params, batch in tasks:
        row = {"workload": name, "batch": batch,
               "prompt_tokens": sum(map(len, prompts)) / len(prompts)}
        for label, make in (("ours", lambda: Sampler(net, tok, max_batch_size=batch)),
                            ("baseline", lambda: baseline.Sampler(net, tok, max_batch_size=batch))):
            sampler = make()
            outs, seconds = timed(lambda: sampler.generate(prompts, params, n=n))
            row[f"{label}_tokens"] = sum(c.n_tokens for cs in outs for c in cs)
            row[f"{label}_tok_s"] = row[f"{label}_tokens"] / seconds
            row[f"{label}_s"] = seconds
            row[f"{label}_outs"] = [c.token_ids for cs in outs for c in cs]
        if name.startswith("candidates"):  # the engine with more slots: short prompts leave room for 64 rows
            sampler = Sampler(net, tok, max_batch_size=64)
            outs, seconds = timed(lambda: sampler.generate(prompts, params, n=n))
            row["ours64_tok_s"] = sum(c.n_tokens for cs in outs for c in cs) / seconds
        if hf is not None:
            hf_generate(hf, tok, prompts[:1], 1, SamplingParams(temperature=0.7, max_new_tokens=4), 1, device)  # warm-up
            (_, tokens), seconds = timed(lambda: hf_generate(hf, tok, prompts, n, params, batch, device))
            row.update(hf_tokens=tokens, hf_tok_s=tokens / seconds, hf_s=seconds)
        row["identical"] = sum(a == b for a, b in zip(row.pop("ours_outs"), row.pop("baseline_outs")))
        row["rows"] = len(prompts) * n
        results.append(row)
        print(row, flush=True)
    return results


def read_bandwidth(device) -> float:
    """Bytes per second a large sum reads."""
    x = torch.ones(2 ** 28, dtype=torch.float32, device=device)  # 1 GiB
    for _ in range(2):
        x.sum()
    _, seconds = timed(lambda: [x.sum() for _ in range(5)])
    return 5 * x.numel() * 4 / seconds


def matmul_rate(device, dtype) -> float:
    """Flops per second of a large matrix product."""
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    for _ in range(2):
        a @ a
    _, seconds = timed(lambda: [a @ a for _ in range(5)])
    return 5 * 2 * 2048 ** 3 / seconds


class NoStop:
    stop_ids, pad_id = [], 0

    def decode(self, ids):
        return ""


def greedy_decode(ckpt: Path, device, dtype, batch: int = 16, new_tokens: int = 128) -> dict:
    net, tok = model.load(ckpt, device=device, dtype=dtype)
    seed = [json.loads(line) for line in (ROOT / "data/seed/ift.jsonl").read_text().splitlines()[:batch]]
    prompts = [tok.encode_chat([{"role": "user", "content": r["prompt"]}]) for r in seed]
    sampler = Sampler(net, NoStop(), max_batch_size=batch)
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens)
    sampler.generate(prompts, SamplingParams(temperature=0, max_new_tokens=8))  # warm-up, the same shapes
    _, seconds = timed(lambda: sampler.generate(prompts, params))
    tok_s = batch * new_tokens / seconds
    args = net.args
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    mean_cached = sum(map(len, prompts)) / batch + new_tokens / 2
    kv_bytes = batch * mean_cached * args.n_layers * 2 * args.n_kv_heads * args.head_dim * net.output_weight.element_size()
    bandwidth, rate = read_bandwidth(device), matmul_rate(device, dtype)
    bound = bandwidth / (weight_bytes + kv_bytes) * batch
    flop_bound = rate / (2 * net.num_params()) * batch
    return {"tok_s": tok_s, "bandwidth_GB_s": bandwidth / 1e9, "weight_MB": weight_bytes / 1e6,
            "kv_MB": kv_bytes / 1e6, "bound_tok_s": bound, "fraction_of_bound": tok_s / bound,
            "matmul_GFLOPS": rate / 1e9, "flop_bound_tok_s": flop_bound, "fraction_of_flop_bound": tok_s / flop_bound}


def gpu_decode(device) -> list[dict]:
    """Random bf16 models, batches 16 and 64, eager and compiled, against the bandwidth bound."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    bandwidth = read_bandwidth(device)
    rows = []
    for name in ("smollm2-135m", "llama2-7b"):
        args = model.PRESETS[name]
        with torch.device(device):
            net = model.Transformer(args).to(torch.bfloat16).eval()
        weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
        for batch in (16, 64):
            for compile in (False, True):
                torch._dynamo.reset()
                counters.clear()
                sampler = Sampler(net, NoStop(), max_batch_size=batch, compile=compile)
                prompts = [[1 + (i * 7 + j) % 100 for j in range(32)] for i in range(batch)]
                params = SamplingParams(temperature=0, max_new_tokens=128)
                sampler.generate(prompts, params)  # warm-up: exactly the shapes timed
                _, seconds = timed(lambda: sampler.generate(prompts, params))
                tok_s = batch * 128 / seconds
                kv = batch * 96 * args.n_layers * 2 * args.n_kv_heads * args.head_dim * 2
                bound = bandwidth / (weight_bytes + kv) * batch
                rows.append({"model": name, "batch": batch, "compiled": compile, "tok_s": tok_s,
                             "fraction_of_bound": tok_s / bound,
                             "compilations": counters["stats"]["unique_graphs"] if compile else 0})
                print(rows[-1], flush=True)
        del net
        torch.cuda.empty_cache()
    return rows


def machine(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return f"{cpu}, {torch.get_num_threads()} threads"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "checkpoints/smollm2-135m"), help="checkpoint (make model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="auto: the machine's fast dtype (see sample/generate.py's resolve_dtype)")
    parser.add_argument("--baseline", default="daa4b46", help="commit whose sample/sampler.py is the baseline")
    parser.add_argument("--no-transformers", action="store_true", help="leave out transformers' generate")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    a = parser.parse_args()
    device = torch.device(a.device)
    dtype = resolve_dtype(a.dtype, device)
    torch.manual_seed(0)
    hf = None
    if not a.no_transformers:
        import transformers
        with tempfile.TemporaryDirectory() as hf_dir:
            export_hf(a.model, Path(hf_dir) / "hf")
            hf = transformers.LlamaForCausalLM.from_pretrained(Path(hf_dir) / "hf", dtype=dtype).to(device).eval()
    command = " ".join(["python bench/sampler.py"] + sys.argv[1:])
    lines = [f"\n## Sampling engine ({time.strftime('%Y-%m-%d')}, {machine(device)}, torch {torch.__version__}, "
             f"{str(dtype).removeprefix('torch.')})\n", f"`{command}`; model: {a.model}; baseline: the sampler "
             f"of commit {a.baseline}\n",
             "| workload | rows | batch | mean prompt tokens | ours tok/s | baseline tok/s | transformers tok/s "
             "| ours / baseline | ours / transformers | rows identical to the baseline |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = workloads(Path(a.model), device, dtype, baseline_sampler(a.baseline), hf)
    for r in rows:
        hf_cells = (f"{r['hf_tok_s']:.1f}", f"{r['ours_tok_s'] / r['hf_tok_s']:.2f}x") if hf else ("-", "-")
        lines.append(f"| {r['workload']} | {r['rows']} | {r['batch']} | {r['prompt_tokens']:.0f} | "
                     f"{r['ours_tok_s']:.1f} | {r['baseline_tok_s']:.1f} | {hf_cells[0]} | "
                     f"{r['ours_tok_s'] / r['baseline_tok_s']:.2f}x | {hf_cells[1]} | {r['identical']}/{r['rows']} |")
    lines += [f"\nThe candidate workload with 64 slots (ours): {r['ours64_tok_s']:.1f} tok/s."
              for r in rows if "ours64_tok_s" in r]
    g = greedy_decode(Path(a.model), device, dtype)
    lines += ["", f"Greedy decode, batch 16, 128 new tokens: {g['tok_s']:.1f} tok/s. Bandwidth bound: "
              f"({g['weight_MB']:.0f} MB weights + {g['kv_MB']:.0f} MB KV per step) / {g['bandwidth_GB_s']:.1f} GB/s "
              f"read = {g['bound_tok_s']:.0f} tok/s, so {100 * g['fraction_of_bound']:.0f}% of it; arithmetic bound: "
              f"{g['matmul_GFLOPS']:.0f} GFLOP/s (a 2048^3 product) = {g['flop_bound_tok_s']:.0f} tok/s, so "
              f"{100 * g['fraction_of_flop_bound']:.0f}% of it."]
    if device.type == "cuda":
        lines += ["", "| model (random, bf16) | batch | compiled | tok/s | of the bandwidth bound | compilations |",
                  "|---|---|---|---|---|---|"]
        for r in gpu_decode(device):
            lines.append(f"| {r['model']} | {r['batch']} | {r['compiled']} | {r['tok_s']:.0f} | "
                         f"{100 * r['fraction_of_bound']:.0f}% | {r['compilations']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_record:
        with open(ROOT / "bench/RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
