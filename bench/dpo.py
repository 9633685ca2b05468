"""One DPO optimizer step: this project's trainer step against the same step written the usual way with
transformers. A benchmark, not a test: it prints a table and appends it to bench/RESULTS.md.

    python bench/dpo.py                          # the demo model (make model), fp32 on CPU
    python bench/dpo.py --pairs 4 --response-len 256 --device cuda --dtype bfloat16

The step, the same on every side: a batch of pairs (prompt + chosen, prompt + rejected, right-padded
to one length) through one forward, per-sequence log-probs summed over the response tokens, the DPO
loss (beta 0.1) against reference log-probs computed beforehand, backward, gradient clipping and an
AdamW step. The same weights, token ids and lengths for all.
  ours        train/dpo.py's micro-step: our Transformer to final hidden states, kernels.linear_logprob
              (chunked: never the (tokens, vocab) logits), kernels.sequence_logps, the sigmoid DPO loss
  ours-logits our Transformer's full logits, then log_softmax/gather: what the fused log-prob saves
  hf          transformers' LlamaForCausalLM (from export-hf) with attention_mask, logits.log_softmax(-1)
              gathered at the labels, masked sums, the DPO formula: TRL's classic concatenated_forward /
              get_batch_logps. (TRL itself is not used: its current release needs datasets, pandas and
              pyarrow and no longer has concatenated_forward.)
Each side runs in its own process. Time is the median of --repeats steps after one warm-up step (which
also creates the optimizer state). Memory is the step's peak above the memory held just before it:
on CPU the peak resident set size (VmHWM, reset through /proc/self/clear_refs before the step) minus
the resident size before it, with glibc's mmap threshold fixed at 64 KiB so that freed tensors leave
the resident set; on CUDA torch.cuda.max_memory_allocated minus memory_allocated.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `kernels` is the package, not bench/kernels.py beside this file
import kernels  # noqa: E402
import model  # noqa: E402
from model.convert import export_hf  # noqa: E402
from train.data import Sequence  # noqa: E402
from train.distributed import LogProbModel  # noqa: E402

VARIANTS = ("ours", "ours-logits", "hf")
BETA = 0.1


def make_batch(vocab_size: int, pairs: int, prompt_len: int, response_len: int) -> list[tuple[Sequence, Sequence]]:
    """Random token ids; rejected answers 3/4 as long as the chosen ones, so rows carry padding."""
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, vocab_size, (n,), generator=g).tolist()
    out = []
    for _ in range(pairs):
        prompt = ids(prompt_len)
        out.append((Sequence(prompt + ids(response_len), prompt_len),
                    Sequence(prompt + ids(response_len * 3 // 4), prompt_len)))
    return out


def status_kb(field: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))


def step_fn(variant: str, directory: Path, device, dtype):
    """(the model, one step's function: pairs, ref logps -> (loss, policy logps (2B,)))."""
    if variant == "hf":
        import transformers
        net = transformers.LlamaForCausalLM.from_pretrained(directory / "hf", dtype=dtype).to(device)

        def logps(pairs):
            seqs = [c for c, _ in pairs] + [r for _, r in pairs]
            T = max(len(s.tokens) for s in seqs)
            ids = torch.zeros(len(seqs), T, dtype=torch.long)
            mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
            for b, s in enumerate(seqs):
                ids[b, :len(s.tokens)] = torch.tensor(s.tokens)
                mask[b, :len(s.tokens)] = 1
                labels[b, s.n_prompt:len(s.tokens)] = torch.tensor(s.tokens[s.n_prompt:])
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            logits = net(input_ids=ids, attention_mask=mask).logits[:, :-1]        # (2B, T-1, V)
            labels = labels[:, 1:]
            keep = labels != -100
            per_token = torch.gather(logits.log_softmax(-1), 2, labels.where(keep, 0)[..., None])[..., 0]
            return (per_token * keep).sum(-1)                                      # (2B,)
    else:
        from train.dpo import pair_batch
        net = model.load(directory / "ours", device=device, dtype=dtype)[0]
        lm = LogProbModel(net)

        def logps(pairs):
            B = len(pairs)
            batch = pair_batch(pairs, range(B), 0, device)
            if variant == "ours":
                token_logps = lm(batch.inputs, batch.index, batch.labels)
            else:
                logits = net(batch.inputs).flatten(0, 1)[batch.index]              # (M, V)
                token_logps = logits.float().log_softmax(-1).gather(1, batch.labels[:, None])[:, 0]
            return kernels.sequence_logps(token_logps, batch.seq_ids, 2 * B)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-6)

    def step(pairs, ref):
        policy = logps(pairs)
        B = len(pairs)
        z = (policy[:B] - policy[B:]) - (ref[:B] - ref[B:])
        loss = -F.logsigmoid(BETA * z).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item(), policy.detach()
    return net, step


def measure(variant: str, directory: Path, device_name: str, dtype_name: str, repeats: int) -> dict:
    """Runs in its own process: warm-up step, then `repeats` timed steps."""
    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    pairs = [tuple(Sequence(*s) for s in pair) for pair in json.loads((directory / "pairs.json").read_text())]
    ref = torch.load(directory / "ref.pt").to(device)
    net, step = step_fn(variant, directory, device, dtype)
    first_loss, policy = step(pairs, ref)
    tokens = sum(len(s.tokens) for pair in pairs for s in pair)
    seconds, peaks = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set size
            before = status_kb("VmRSS") * 1024
        began = time.perf_counter()
        step(pairs, ref)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - began)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else status_kb("VmHWM") * 1024
        peaks.append(peak - before)
    seconds.sort()
    return {"variant": variant, "tokens": tokens, "seconds": seconds[len(seconds) // 2],
            "tokens_per_s": tokens / seconds[len(seconds) // 2], "step_peak_bytes": max(peaks),
            "first_loss": first_loss, "policy_logps": policy.tolist()}


def machine(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return f"{cpu}, {torch.get_num_threads()} threads"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "checkpoints/smollm2-135m"), help="checkpoint (make model)")
    parser.add_argument("--pairs", type=int, default=2, help="pairs in the batch (2x sequences)")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--response-len", type=int, default=192, help="chosen length; rejected is 3/4 of it")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads (default %(default)s; 1 is steadier on a busy machine)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    parser.add_argument("--measure", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.dir), args.device, args.dtype, args.repeats)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        net, tok = model.load(args.model)
        model.save_model(tmp / "ours", net, tok)
        export_hf(tmp / "ours", tmp / "hf")
        pairs = make_batch(net.args.vocab_size, args.pairs, args.prompt_len, args.response_len)
        (tmp / "pairs.json").write_text(json.dumps([[[s.tokens, s.n_prompt] for s in pair] for pair in pairs]))
        with torch.no_grad():  # reference log-probs: the initial model's, as train/dpo.py caches them
            from train.dpo import pair_batch
            batch = pair_batch(pairs, range(len(pairs)), 0, "cpu")
            logps = LogProbModel(net.eval())(batch.inputs, batch.index, batch.labels)
            torch.save(kernels.sequence_logps(logps, batch.seq_ids, 2 * len(pairs)), tmp / "ref.pt")
        del net
        results = {}
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--measure", variant, "--dir", str(tmp), "--device", args.device,
                   "--dtype", args.dtype, "--repeats", str(args.repeats), "--threads", str(args.threads)]
            # glibc's mmap threshold fixed at 64 KiB: freed tensors leave the resident set instead of staying
            # in the heap, where they would hide the next step's peak
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
            if proc.returncode:
                sys.exit(f"bench/dpo.py: the {variant} run failed:\n{proc.stderr[-3000:]}")
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{variant}: {results[variant]['tokens_per_s']:.0f} tokens/s, step peak "
                  f"{results[variant]['step_peak_bytes'] / 2**20:.0f} MiB", flush=True)

    ours, peer = results["ours"], results["hf"]
    agree = max(abs(x - y) for x, y in zip(ours["policy_logps"], peer["policy_logps"]))
    device = torch.device(args.device)
    lines = [f"\n## DPO step ({time.strftime('%Y-%m-%d')}, {machine(device)}, torch {torch.__version__})\n",
             f"`python bench/dpo.py --pairs {args.pairs} --prompt-len {args.prompt_len} --response-len {args.response_len} "
             f"--device {args.device} --dtype {args.dtype} --threads {args.threads}`; model: {args.model}; "
             f"{ours['tokens']} real tokens per step ({2 * args.pairs} sequences); median of {args.repeats} steps after a "
             f"warm-up step. Policy log-probs of ours and transformers agree within {agree:.1e}.\n",
             "| step | tokens/s | step peak memory (MiB) | tokens/s vs hf | memory vs hf |", "|---|---|---|---|---|"]
    for variant in VARIANTS:
        r = results[variant]
        lines.append(f"| {variant} | {r['tokens_per_s']:.0f} | {r['step_peak_bytes'] / 2**20:.0f} | "
                     f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x | "
                     f"{r['step_peak_bytes'] / peer['step_peak_bytes']:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_record:
        with open(ROOT / "bench/RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
