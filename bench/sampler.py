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
3. `--llama-cpp`: the peer a CPU user would pick, llama.cpp through llama-cpp-python (a bench-only extra:
   `CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_OPENMP=OFF" pip install llama-cpp-python`,
   a source build of about 10 minutes on 2 cores), on the GGUF file the demo model was converted from
   (Q4_1 weights) and on an F32 and a BF16 copy of it written here, greedy at batch 1 and 16 (one sequence
   per prompt in one context, llama_decode on a batch of one token per sequence), against ours on the same
   prompts; `--only llama-cpp` runs this part alone.
4. CUDA only: batch 16 and 64 for random SmolLM2- and Llama-2-7B-shaped bf16 models, eager and compiled,
   against the bandwidth bound, with the number of compilations.
"""
import argparse
import importlib.metadata
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
from model.dtypes import resolve_dtype
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


def ours_greedy(net, prompts: list[list[int]], new_tokens: int) -> float:
    """Tokens/s of our engine decoding every prompt greedily for new_tokens, after a warm-up of its shapes."""
    sampler = Sampler(net, NoStop(), max_batch_size=len(prompts))
    sampler.generate(prompts, SamplingParams(temperature=0, max_new_tokens=8))
    _, seconds = timed(lambda: sampler.generate(prompts, SamplingParams(temperature=0, max_new_tokens=new_tokens)))
    return len(prompts) * new_tokens / seconds


_QUIET = None  # llama.cpp's log callback that drops its load-time messages


def plain_gguf(source: Path, out: Path, kind: str) -> Path:
    """A copy of a GGUF file with every 2-D weight dequantised to F32 or BF16 (1-D ones stay F32), for llama.cpp
    at the bytes per weight ours reads; the metadata (vocabulary, chat template) copied as it is."""
    import gguf
    qtype = {"F32": gguf.GGMLQuantizationType.F32, "BF16": gguf.GGMLQuantizationType.BF16}[kind]
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(out, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    writer.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "BF16": gguf.LlamaFileType.MOSTLY_BF16}[kind])
    for t in reader.tensors:
        weights = gguf.quants.dequantize(t.data, t.tensor_type).astype("float32")
        if weights.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(t.name, gguf.quants.quantize(weights, qtype), raw_dtype=qtype)  # bytes, shape from them
        else:
            writer.add_tensor(t.name, weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def llama_cpp_greedy(gguf: Path, prompts: list[list[int]], new_tokens: int, threads: int) -> float:
    """Tokens/s of llama.cpp decoding every prompt greedily for new_tokens (no stops), one sequence per prompt
    in one context, prompts prefilled in one llama_decode as ours are; timed after a warm-up run."""
    import numpy as np
    import llama_cpp as lc
    global _QUIET
    if _QUIET is None:  # kept alive: llama.cpp holds on to the callback
        _QUIET = lc.llama_log_callback(lambda level, text, user_data: None)
    lc.llama_log_set(_QUIET, None)
    lc.llama_backend_init()
    net = lc.llama_model_load_from_file(str(gguf).encode(), lc.llama_model_default_params())
    if not net:
        raise SystemExit(f"{gguf}: llama.cpp could not load it")
    rows, prefill = len(prompts), sum(map(len, prompts))
    params = lc.llama_context_default_params()
    params.n_seq_max, params.kv_unified = rows, True
    params.n_ctx = -(-(prefill + rows * new_tokens + rows) // 256) * 256
    params.n_batch = params.n_ubatch = max(512, prefill)
    params.n_threads = params.n_threads_batch = threads
    vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(net))
    batch = lc.llama_batch_init(params.n_batch, 0, rows)

    def decode(ctx, entries):  # (token, position, sequence, wants logits)
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        outputs = [i for i, e in enumerate(entries) if e[3]]
        return [int(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), shape=(vocab,)).argmax()) for i in outputs]

    def run(tokens):
        ctx = lc.llama_init_from_model(net, params)
        try:
            next_ids = decode(ctx, [(t, j, s, j == len(p) - 1) for s, p in enumerate(prompts) for j, t in enumerate(p)])
            for k in range(tokens - 1):
                next_ids = decode(ctx, [(t, len(p) + k, s, True) for s, (t, p) in enumerate(zip(next_ids, prompts))])
        finally:
            lc.llama_free(ctx)

    try:
        run(8)
        _, seconds = timed(lambda: run(new_tokens))
    finally:
        lc.llama_batch_free(batch)
        lc.llama_model_free(net)
    return rows * new_tokens / seconds


def llama_cpp_section(ckpt: Path, gguf_path: Path, dtype, new_tokens: int = 128) -> list[str]:
    """Ours against llama.cpp on the same prompts, greedy, at batch 1 and 16, on the same 2 threads."""
    net, tok = model.load(ckpt, dtype=dtype)
    seed = [json.loads(line) for line in (ROOT / "data/seed/ift.jsonl").read_text().splitlines()[:16]]
    prompts = [tok.encode_chat([{"role": "user", "content": r["prompt"]}]) for r in seed]
    threads = torch.get_num_threads()
    weights = sum(p.numel() for p in net.parameters())
    lines = [f"\nllama.cpp (llama-cpp-python {importlib.metadata.version('llama-cpp-python')}, {threads} threads) "
             f"against ours, greedy, {new_tokens} new tokens, no stops, the first 1 or 16 seed prompts "
             f"(prefill included); {gguf_path.name} and F32/BF16 copies of it:\n",
             "| engine | weights | weight MB read per step | batch 1 tok/s | batch 16 tok/s |", "|---|---|---|---|---|"]
    ours = [ours_greedy(net, prompts[:b], new_tokens) for b in (1, 16)]
    lines.append(f"| ours | {str(dtype).removeprefix('torch.')} | {weights * net.output_weight.element_size() / 1e6:.0f} | "
                 f"{ours[0]:.1f} | {ours[1]:.1f} |")
    del net
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("Q4_1", "BF16", "F32"):
            path = gguf_path if kind == "Q4_1" else plain_gguf(gguf_path, Path(tmp) / f"{kind}.gguf", kind)
            rates = [llama_cpp_greedy(path, prompts[:b], new_tokens, threads) for b in (1, 16)]
            lines.append(f"| llama.cpp | {kind} | {path.stat().st_size / 1e6:.0f} (file) | {rates[0]:.1f} | "
                         f"{rates[1]:.1f} |")
            print(lines[-1], flush=True)
    return lines


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
                        help="auto: the machine's fast dtype (see model/dtypes.py)")
    parser.add_argument("--baseline", default="daa4b46", help="commit whose sample/sampler.py is the baseline")
    parser.add_argument("--no-transformers", action="store_true", help="leave out transformers' generate")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    parser.add_argument("--llama-cpp", nargs="?", const="demo", metavar="GGUF",
                        help="also compare with llama.cpp (llama-cpp-python) on this GGUF file; default: the demo's")
    parser.add_argument("--only", choices=["llama-cpp"], help="run that part alone")
    a = parser.parse_args()
    device = torch.device(a.device)
    dtype = resolve_dtype(a.dtype, device)
    torch.manual_seed(0)
    if a.only == "llama-cpp" and not a.llama_cpp:
        a.llama_cpp = "demo"
    gguf_path = None
    if a.llama_cpp:
        from model.convert import demo_gguf_path
        gguf_path = Path(demo_gguf_path() if a.llama_cpp == "demo" else a.llama_cpp)
    command = " ".join(["python bench/sampler.py"] + sys.argv[1:])
    if a.only == "llama-cpp":
        lines = [f"\n## llama.cpp against the engine ({time.strftime('%Y-%m-%d')}, {machine(device)}, "
                 f"torch {torch.__version__})\n", f"`{command}`"] + llama_cpp_section(Path(a.model), gguf_path, dtype)
    else:
        lines = everything(a, command, device, dtype, gguf_path)
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_record:
        with open(ROOT / "bench/RESULTS.md", "a") as f:
            f.write(text)


def everything(a, command: str, device, dtype, gguf_path) -> list[str]:
    hf = None
    if not a.no_transformers:
        import transformers
        with tempfile.TemporaryDirectory() as hf_dir:
            export_hf(a.model, Path(hf_dir) / "hf")
            hf = transformers.LlamaForCausalLM.from_pretrained(Path(hf_dir) / "hf", dtype=dtype).to(device).eval()
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
    if gguf_path is not None:
        lines += llama_cpp_section(Path(a.model), gguf_path, dtype)
    if device.type == "cuda":
        lines += ["", "| model (random, bf16) | batch | compiled | tok/s | of the bandwidth bound | compilations |",
                  "|---|---|---|---|---|---|"]
        for r in gpu_decode(device):
            lines.append(f"| {r['model']} | {r['batch']} | {r['compiled']} | {r['tok_s']:.0f} | "
                         f"{100 * r['fraction_of_bound']:.0f}% | {r['compilations']} |")
    return lines


if __name__ == "__main__":
    main()
