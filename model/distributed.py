"""Joining torchrun's process group: one way for every script, sampling and training alike.

On CUDA the group has two backends, NCCL for CUDA tensors and gloo for CPU tensors, so that a
collective on a CPU tensor (a count, an object list, a barrier's token) works as well as one on
the GPU; NCCL alone has no CPU implementation. The group is bound to this rank's GPU (`device_id`),
and a rank waits up to TIMEOUT in a collective: long enough for rank 0 to write a Llama-2-70B
snapshot (138 GB in bf16) while the others wait at the barrier after it, which torch's default
of 10 minutes is not on a slow shared filesystem.
"""
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(minutes=60)


def backend(device: torch.device) -> str:
    """The process group's backend for ranks whose tensors live on `device`."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def join_process_group(device: torch.device, **kwargs) -> None:
    """dist.init_process_group for a rank on `device` (torchrun's environment, or kwargs such as a
    store, rank and world_size for a group made by hand)."""
    dist.init_process_group(backend(device), timeout=TIMEOUT,
                            device_id=device if device.type == "cuda" else None, **kwargs)
