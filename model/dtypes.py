"""Dtype names and the machine's fast dtype, for the samplers and the trainers alike.

`auto` is bf16 where bf16 products are native and fast (every CUDA GPU the project targets; CPUs with AMX
tiles or AVX512-BF16, where a bf16 product runs 2-4x faster than an fp32 one: bench/RESULTS.md), and fp32 on
other CPUs, where torch emulates bf16 and it would be slower than fp32.
"""
import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX tiles or AVX512-BF16), as torch's kernels see it."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def resolve_dtype(name: str, device) -> torch.dtype:
    """A dtype name ("auto", "float32", "bfloat16", "float16") as the torch dtype to compute in on `device`."""
    if name == "auto":
        device = torch.device(device)
        fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
        return torch.bfloat16 if fast else torch.float32
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
