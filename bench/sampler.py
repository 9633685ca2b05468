"""Sampler throughput: ours against transformers' generate, and the judge workload with and without
prefix sharing. A benchmark, not a test: it prints a table and appends it to bench/RESULTS.md.

    python bench/sampler.py                    # the demo model (make model), fp32 on CPU
    python bench/sampler.py --device cuda      # also batch-1 decode of a Llama-2-7B-shaped model in bf16

1. Greedy decoding of 128 new tokens (stop tokens ignored, so both sides write exactly 128) for the
   same chat prompts at batch sizes 1 and 16, SmolLM2-135M weights in both: ours loaded from our
   checkpoint, transformers' LlamaForCausalLM from its export-hf copy (left padding, KV cache on).
2. The judge workload of one self-rewarding iteration in miniature: 8 prompts x 4 candidate answers,
   each judged 3 times (T 0.7, top-p 0.9) with the full LLM-as-a-Judge prompt; the same sampler with
   prefix sharing + fan-out, and with every row prefilled on its own. Same seeds, same outputs.
3. CUDA only: batch-1 decode tokens/s for a random Llama-2-7B-shaped model in bf16 against the
   memory-bandwidth bound (weight bytes / measured device copy bandwidth).
"""
import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import model
from judge.prompt import judge_messages
from model.convert import export_hf
from sample.sampler import Sampler, SamplingParams

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What is the capital of France?", "Write a haiku about autumn.", "Explain photosynthesis simply.",
    "Give me three tips for better sleep.", "How do I reverse a list in Python?", "What causes rain?",
    "Summarise the plot of Romeo and Juliet.", "Why is the sky blue?", "Suggest a name for a cat.",
    "What is 17 times 23?", "How do vaccines work?", "Write a limerick about a judge.",
    "What is the difference between weather and climate?", "How can I learn to cook?",
    "Describe a sunset in two sentences.", "What are prime numbers?",
]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def until_stop(ids: list[int], stop_ids: list[int]) -> list[int]:
    return ids[:next((k for k, t in enumerate(ids) if t in stop_ids), len(ids))]


def bench_vs_transformers(ckpt: Path, device, batch_sizes, new_tokens: int) -> list[dict]:
    import transformers
    net, tok = model.load(ckpt, device=device)
    with tempfile.TemporaryDirectory() as hf_dir:
        export_hf(ckpt, Path(hf_dir) / "hf")
        hf = transformers.LlamaForCausalLM.from_pretrained(Path(hf_dir) / "hf", dtype=torch.float32).to(device).eval()
    rows = []
    for bs in batch_sizes:
        prompts = [tok.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS[:bs]]
        sampler = Sampler(net, tok, max_batch_size=bs)
        sampler.stop_ids = torch.tensor([], dtype=torch.long)  # write exactly new_tokens per row
        params = SamplingParams(temperature=0, max_new_tokens=new_tokens)
        sampler.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=4))  # warm-up
        outs, ours_s = timed(lambda: sampler.generate(prompts, params))
        assert all(c.n_tokens == new_tokens for [c] in outs)

        width = max(map(len, prompts))
        ids = torch.tensor([[tok.pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = (torch.arange(width, device=device)[None, :] >= torch.tensor(
            [width - len(p) for p in prompts], device=device)[:, None]).long()
        kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                      do_sample=False, pad_token_id=tok.pad_id, use_cache=True)
        with torch.no_grad():
            hf.generate(ids[:1], **{**kwargs, "attention_mask": mask[:1], "max_new_tokens": 4, "min_new_tokens": 4})
            hf_out, hf_s = timed(lambda: hf.generate(ids, **kwargs))
        assert hf_out.shape[1] == width + new_tokens
        # transformers' min_new_tokens bans stop tokens, ours just keeps going past them: compare our
        # answer up to its first stop token with as many of transformers' tokens
        answers = [until_stop(c.token_ids, tok.stop_ids) for [c] in outs]
        same = sum(hf_out[i, width:width + len(a)].tolist() == a for i, a in enumerate(answers))
        n = bs * new_tokens
        rows.append({"batch": bs, "ours_tok_s": n / ours_s, "hf_tok_s": n / hf_s, "ratio": hf_s / ours_s,
                     "greedy_rows_identical": f"{same}/{bs}"})
    return rows


def judge_workload(ckpt: Path, device, batch_size: int) -> dict:
    net, tok = model.load(ckpt, device=device)
    seed_rows = [json.loads(line) for line in (ROOT / "data/seed/ift.jsonl").read_text().splitlines()[:8]]
    # 4 candidates per prompt: the seed answer, and shortened / padded versions of it
    prompts = []
    for row in seed_rows:
        answer = row["response"]
        words = answer.split()
        for cand in (answer, " ".join(words[: len(words) // 2]), " ".join(words[: len(words) // 4]),
                     answer + " I hope this helps! Let me know if you have any other questions."):
            prompts.append(tok.encode_chat(judge_messages(row["prompt"], cand)))
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=100)
    seeds = [[3 * i + j for j in range(3)] for i in range(len(prompts))]
    result = {"judge_prompts": len(prompts), "judgements": 3 * len(prompts),
              "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts), "batch_rows": batch_size}
    outs = {}
    for share in (True, False):
        sampler = Sampler(net, tok, max_batch_size=batch_size, share_prefix=share)
        outs[share], seconds = timed(lambda: sampler.generate(prompts, params, n=3, seeds=seeds))
        key = "shared" if share else "unshared"
        result[f"{key}_s"] = seconds
        result[f"{key}_judgements_s"] = 3 * len(prompts) / seconds
    result["speedup"] = result["unshared_s"] / result["shared_s"]
    result["new_tokens"] = sum(c.n_tokens for cs in outs[True] for c in cs)
    result["outputs_identical"] = sum(a.token_ids == b.token_ids for x, y in zip(outs[True], outs[False])
                                      for a, b in zip(x, y))
    return result


def bench_7b_decode(device) -> dict:
    """Batch-1 decode of a random Llama-2-7B-shaped model in bf16, against the bandwidth bound."""
    args = model.PRESETS["llama2-7b"]
    with torch.device(device):
        net = model.Transformer(args).to(torch.bfloat16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    buf = torch.empty(2**30, dtype=torch.uint8, device=device)  # copy bandwidth: read + write 1 GiB
    out = torch.empty_like(buf)
    for _ in range(3):
        out.copy_(buf)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        out.copy_(buf)
    torch.cuda.synchronize()
    bandwidth = 2 * 20 * buf.numel() / (time.perf_counter() - start)
    del buf, out

    class NoStop:
        stop_ids, pad_id = [], 0

        def decode(self, ids):
            return ""

    result = {"weight_GB": weight_bytes / 1e9, "copy_bandwidth_GB_s": bandwidth / 1e9,
              "bound_tok_s": bandwidth / weight_bytes}
    for compile in (False, True):
        sampler = Sampler(net, NoStop(), max_batch_size=1, compile=compile)
        params = SamplingParams(temperature=0, max_new_tokens=128)
        sampler.generate([[1, 2, 3]], SamplingParams(temperature=0, max_new_tokens=16))  # warm-up / compile
        torch.cuda.synchronize()
        _, seconds = timed(lambda: (sampler.generate([[1, 2, 3, 4]], params), torch.cuda.synchronize()))
        key = "compiled" if compile else "eager"
        result[f"{key}_tok_s"] = 128 / seconds
        result[f"{key}_fraction_of_bound"] = 128 / seconds / result["bound_tok_s"]
    return result


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
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--judge-batch-size", type=int, default=24, help="rows per batch in the judge workload")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    a = parser.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    lines = [f"\n## Sampler ({time.strftime('%Y-%m-%d')}, {machine(device)}, torch {torch.__version__})\n",
             f"`python bench/sampler.py --device {a.device}`; model: {a.model} (fp32 on CPU)\n",
             "| batch | ours tok/s | transformers tok/s | ours / transformers | greedy answers identical |",
             "|---|---|---|---|---|"]
    for r in bench_vs_transformers(Path(a.model), device, (1, 16), a.new_tokens):
        lines.append(f"| {r['batch']} | {r['ours_tok_s']:.1f} | {r['hf_tok_s']:.1f} | {r['ratio']:.2f}x | "
                     f"{r['greedy_rows_identical']} |")
        print(lines[-1], flush=True)
    j = judge_workload(Path(a.model), device, a.judge_batch_size)
    lines += ["", f"Judge workload: {j['judge_prompts']} judge prompts (mean {j['mean_prompt_tokens']:.0f} tokens) "
              f"x 3 samples, T 0.7, top-p 0.9, up to 100 new tokens, {j['batch_rows']} rows per batch; "
              f"{j['new_tokens']} tokens generated; {j['outputs_identical']}/{j['judgements']} judgements "
              "identical between the two modes.", "",
              "| mode | seconds | judgements/s |", "|---|---|---|",
              f"| prefix sharing + fan-out | {j['shared_s']:.1f} | {j['shared_judgements_s']:.2f} |",
              f"| every row prefilled alone | {j['unshared_s']:.1f} | {j['unshared_judgements_s']:.2f} |",
              f"| speed-up | {j['speedup']:.2f}x | |"]
    if device.type == "cuda":
        d = bench_7b_decode(device)
        lines += ["", f"Llama-2-7B shape, bf16, batch 1, 128 new tokens: weights {d['weight_GB']:.2f} GB, copy "
                  f"bandwidth {d['copy_bandwidth_GB_s']:.0f} GB/s, bound {d['bound_tok_s']:.1f} tok/s; eager "
                  f"{d['eager_tok_s']:.1f} tok/s ({100 * d['eager_fraction_of_bound']:.0f}%), compiled "
                  f"{d['compiled_tok_s']:.1f} tok/s ({100 * d['compiled_fraction_of_bound']:.0f}%)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_record:
        with open(ROOT / "bench/RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
