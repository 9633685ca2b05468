"""How every script joins torchrun's process group (model/distributed.py): on CUDA, NCCL for GPU tensors
and gloo for CPU tensors, bound to the rank's GPU, with a timeout that outlasts writing a 70B snapshot.
NCCL cannot run here, so these tests capture the arguments the sampling and training set-ups pass."""
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import sample.stage
import train.distributed
from model.distributed import TIMEOUT, backend


@pytest.fixture
def fake_cuda_rank(monkeypatch):
    """A torchrun environment (local rank 1 of 2) on a machine that says it has CUDA; returns the
    keyword arguments init_process_group got."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: calls.append({"backend": backend, **kwargs}))
    monkeypatch.setattr(dist, "get_rank", lambda *a: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    return calls


def check(call, device):
    assert call["backend"] == "cpu:gloo,cuda:nccl"       # a collective on a CPU tensor has a backend too
    assert call["device_id"] == device
    assert call["timeout"] >= timedelta(minutes=30)


def test_sampling_stages_join_with_a_cpu_backend_too(fake_cuda_rank, monkeypatch):
    monkeypatch.setattr(sample.stage.atexit, "register", lambda fn: None)
    rank, world, device = sample.stage.setup_distributed()
    assert (rank, world, device) == (1, 2, torch.device("cuda", 1))
    check(fake_cuda_rank[0], torch.device("cuda", 1))


def test_trainers_join_with_a_cpu_backend_too(fake_cuda_rank, monkeypatch):
    monkeypatch.setattr(train.distributed, "init_device_mesh", lambda device_type, shape: (device_type, shape))
    d = train.distributed.setup()
    assert (d.rank, d.world, d.device, d.mesh) == (1, 2, torch.device("cuda", 1), ("cuda", (2,)))
    check(fake_cuda_rank[0], torch.device("cuda", 1))


def test_one_cuda_process_gets_a_one_rank_group_of_the_same_kind(fake_cuda_rank, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(train.distributed, "init_device_mesh", lambda device_type, shape: (device_type, shape))
    train.distributed.setup()
    call = fake_cuda_rank[0]
    check(call, torch.device("cuda", 0))
    assert (call["rank"], call["world_size"]) == (0, 1)


def test_cpu_ranks_use_gloo():
    assert backend(torch.device("cpu")) == "gloo"
    assert TIMEOUT > timedelta(minutes=10)  # torch's default, too short for rank 0 to write a 70B snapshot
