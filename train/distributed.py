"""Processes, devices and the sharded model: FSDP2 applied from outside to the unchanged Transformer.

Under torchrun every block and then the root are sharded with `fully_shard` over a 1-D mesh of all
ranks (NCCL on CUDA, with gloo for CPU tensors; gloo on CPU: model/distributed.py). On CUDA the
sharded master weights stay fp32 while forward and backward run in `param_dtype` (bf16) and gradients
are reduced in fp32 (MixedPrecisionPolicy); a single CUDA process gets a one-rank group so that it uses
the same policy. On a CPU the weights (sharded or, in a single process, plain) and their gradients are
fp32, and a bf16 `param_dtype` runs forward and backward under bf16 autocast: the matrix products and
attention in bf16, the norms, the residual stream and the output's log-softmax in fp32 (on CUDA the
weights themselves, and so the residual stream, are bf16; the norms and the log-softmax are fp32 there
too). `auto` is bf16 on CUDA and on CPUs with native bf16, fp32 on other CPUs
(model/dtypes.py): one SFT step of the demo runs 2x faster in bf16 on an AVX512-BF16 CPU (bench/RESULTS.md).
The tests compare sharded runs against the single process in fp32.

The model is built on the meta device and filled from the checkpoint one layer at a time: rank 0
reads a layer and `set_model_state_dict(..., broadcast_from_rank0=True)` sends each rank its shard,
so no rank ever holds more than its shard plus one layer. Writing a plain checkpoint runs the
other way: one tensor at a time is all-gathered and rank 0 streams it into model.save.
"""
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

import kernels
import model
from model.checkpoint import read_params, read_tensors, verify, weight_files
from model.distributed import join_process_group
from model.dtypes import dtype_name, resolve_dtype

SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


@dataclass
class Dist:
    """This process's place among the ranks (named `group` where it is passed around)."""
    rank: int
    world: int
    device: torch.device
    mesh: Optional[object]  # the DeviceMesh FSDP shards over; None: a plain single-process model

    def barrier(self):
        if dist.is_initialized():
            dist.barrier()

    def all_reduce(self, values: list) -> torch.Tensor:
        """Sums over ranks of numbers or 0-dim tensors, as one float64 tensor on the device. Nothing is
        copied to the host: a caller reads all of a step's numbers with one .tolist()."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in values])
        if dist.is_initialized():
            dist.all_reduce(t)
        return t


def setup() -> Dist:
    """Join torchrun's process group if there is one; see the module doc."""
    cuda = torch.cuda.is_available()
    if "WORLD_SIZE" in os.environ:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        join_process_group(device)
    elif cuda:
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        join_process_group(device, store=dist.HashStore(), rank=0, world_size=1)
    else:
        return Dist(0, 1, torch.device("cpu"), None)
    world = dist.get_world_size()
    return Dist(dist.get_rank(), world, device, init_device_mesh(device.type, (world,)))


def teardown(group: Dist):
    """End a script's distributed run. Under torchrun, once every rank is past the last barrier and
    the output is written, the process ends with os._exit: letting the interpreter exit normally ran
    C++ destructors that aborted a gloo rank ("terminate called without an active exception") in
    about a third of 2-rank CPU runs, after all the work was done."""
    if dist.is_initialized():
        dist.barrier()  # let every rank finish its last collective before the group goes
        dist.destroy_process_group()
        if group.world > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


class LogProbModel(nn.Module):
    """The Transformer plus its output layer as log-probs of given tokens, never as (B, T, V) logits.

    It is the root FSDP unit, so the output weight is unsharded while forward runs.
    """

    def __init__(self, net: model.Transformer, compute_dtype: torch.dtype = torch.float32, autocast: bool = False):
        super().__init__()
        self.model = net
        self.compute_dtype = compute_dtype  # what forward and backward compute in
        self.autocast = autocast  # reach it by autocast over the fp32 weights (a CPU); else FSDP casts them, or fp32

    def forward(self, inputs, index, labels):
        """inputs (B, T), index (M,) flat positions into B * T, labels (M,) -> (M,) fp32 log p(label)."""
        weight = self.model.output_weight
        if not self.autocast:
            hidden = self.model(inputs, return_hidden=True)                  # (B, T, dim)
        else:
            with torch.autocast(inputs.device.type, dtype=self.compute_dtype):
                hidden = self.model(inputs, return_hidden=True)
            # the fused log-prob outside autocast, on bf16 inputs: its own fp32 softmax and accumulators
            hidden, weight = hidden.to(self.compute_dtype), weight.to(self.compute_dtype)
        return kernels.linear_logprob(hidden.flatten(0, 1)[index], weight, labels)


def apply_activation_checkpointing(net: model.Transformer):
    """Keep only each block's input for the backward and recompute the rest (same dropout masks)."""
    for layer in net.layers:
        checkpoint_activations(layer)


def apply_fsdp(net: LogProbModel, group: Dist, param_dtype: torch.dtype):
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in net.model.layers:
        fully_shard(layer, mesh=group.mesh, mp_policy=policy)
    fully_shard(net, mesh=group.mesh, mp_policy=policy)  # the root: embeddings, final norm, output


def reshard(net: nn.Module):
    """Free the gathered root parameters that a forward without backward leaves behind (FSDP keeps the
    root unsharded after forward, expecting the backward), and register the shards again."""
    if isinstance(net, FSDPModule):
        net.reshard()


def _layer_groups(names: list[str]) -> list[list[str]]:
    """Parameter names grouped by block ("layers.7.*"); every other tensor is a group of its own."""
    groups: dict[str, list[str]] = {}
    for name in names:
        key = ".".join(name.split(".")[:2]) if name.startswith("layers.") else name
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _load_sharded(net: LogProbModel, path, group: Dist):
    files = weight_files(path) if group.rank == 0 else {}
    handles = {}
    for layer_names in _layer_groups(list(net.model.state_dict())):
        tensors = {}
        if group.rank == 0:
            for name in layer_names:
                if files[name] not in handles:
                    handles[files[name]] = safe_open(files[name], framework="pt")
                tensors["model." + name] = handles[files[name]].get_tensor(name).float()
        set_model_state_dict(net, tensors, options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=True, strict=False))


def checkpoint_dtype(path) -> torch.dtype:
    """The dtype of a checkpoint's weights (of its first tensor)."""
    name, file = next(iter(weight_files(path).items()))
    with safe_open(file, framework="pt") as f:
        return SAFETENSORS_DTYPES.get(f.get_slice(name).get_dtype(), torch.float32)


def build(path, group: Dist, *, dropout: float, param_dtype: str, activation_checkpointing: bool,
          trainable: bool = True) -> LogProbModel:
    """The checkpoint at `path` as a LogProbModel on group.device, sharded when group.mesh is set; forward and
    backward compute in `param_dtype` (see the module doc; "auto" resolved in net.compute_dtype)."""
    verify(path)  # names and shapes, on every rank: a bad checkpoint is an error before any work
    args = read_params(path)
    args.dropout = dropout
    compute = resolve_dtype(param_dtype, group.device)
    on_cpu = group.device.type != "cuda"
    with torch.device("meta"):
        net = LogProbModel(model.Transformer(args), compute, autocast=on_cpu and compute != torch.float32)
    if group.rank == 0 and trainable:
        how = " (autocast over fp32 weights)" if net.autocast else ""
        print(f"{path}: forward and backward in {dtype_name(compute)}{how}", file=sys.stderr)
    net.requires_grad_(trainable)
    if activation_checkpointing:
        apply_activation_checkpointing(net.model)
    if group.mesh is None:
        net.load_state_dict({"model." + k: v.float() for k, v in read_tensors(path)}, assign=True)
        return net
    apply_fsdp(net, group, torch.float32 if on_cpu else compute)
    net.to_empty(device=group.device)
    _load_sharded(net, path, group)
    return net


def full_tensors(net: LogProbModel, dtype: torch.dtype):
    """Yield (name, whole tensor on the device) for the Transformer's weights, a collective on every rank.
    Each shard is cast to `dtype` before the gather: a bf16 save gathers half the bytes of the fp32
    masters. (Rank 0's model.save copies each to the CPU as it writes; the other ranks drop theirs.)"""
    for name, t in net.model.state_dict().items():
        t = t.detach().to(dtype)
        yield name, t.full_tensor() if isinstance(t, DTensor) else t


def save_plain(directory, net: LogProbModel, args: model.ModelArgs, tokenizer, dtype: torch.dtype, group: Dist):
    """A checkpoint directory in the project's format, written atomically by rank 0."""
    tensors = full_tensors(net, dtype)
    if group.rank == 0:
        model.save(directory, args, tensors, tokenizer)
    else:
        for _ in tensors:  # take part in the gathers
            pass
    group.barrier()
