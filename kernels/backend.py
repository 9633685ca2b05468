"""Which implementation a public kernel function runs: the Triton kernel or the PyTorch reference.

`backend="auto"` picks Triton for CUDA tensors, and for CPU tensors when Triton's interpreter is on
(`TRITON_INTERPRET=1`, read here when `kernels` is imported, and by Triton when it decorates the
kernels in kernels/*_triton.py on their first use: set it before either). Everything else gets the
reference, and everything does where Triton is not installed (it has Linux wheels only).
"""
import os

import torch

try:
    import triton
except ImportError:  # Triton ships Linux wheels only: elsewhere (macOS, Windows) the references run
    triton = None


def _interpreted() -> bool:
    """Whether Triton will run our kernels in its interpreter, decided the way the installed Triton decides
    it: from 3.4 on through `triton.knobs` (which also accepts "true", "on", ...); before, its `jit`
    decorator compares the variable with "1" (Triton 3.2 and 3.3, which torch 2.6 and 2.7 pin)."""
    if triton is None:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.getenv("TRITON_INTERPRET", "0") == "1"


# Read once, as Triton itself does when it decorates our kernels at import time.
INTERPRETED = _interpreted()

BACKENDS = ("auto", "triton", "torch")


def use_triton(tensor: torch.Tensor, backend: str) -> bool:
    """True to run the Triton kernel on `tensor`'s device, False for the PyTorch reference."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if triton is None:
        if backend == "triton":
            raise ValueError("backend='triton': Triton is not installed (it has wheels for Linux only)")
        return False
    runnable = tensor.is_cuda or (INTERPRETED and tensor.device.type == "cpu")
    if backend == "triton" and not runnable:
        raise ValueError(f"the Triton kernels need CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
                         f"before `kernels` is imported; got a tensor on {tensor.device}")
    return runnable


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """The references compute in fp32, or in float64 when given float64 (for gradcheck)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
