"""Tensor-parallel sampling for models that do not fit one GPU (Llama-2-70B in bf16 is 138 GB).

Megatron-style, applied from outside to the unchanged model: in every block the query/key/value
projections and the FFN's w1/w3 are split by output rows (whole attention heads, and FFN columns,
per rank: "column parallel"), wo and w2 by input columns ("row parallel"), whose partial outputs
are summed over ranks with one all-reduce each. Embedding, norms and output head are replicated.
Each rank reads only its own slices of the checkpoint (safetensors slicing), so no rank ever
holds the whole model.

    torchrun --nproc_per_node=8 sample/generate.py --tp --model checkpoints/llama2-70b ...
"""
import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn

from model.checkpoint import checkpoint_tokenizer, verify, weight_files
from model.llama import Transformer

# the dimension of each weight that is split over ranks: 0 = output rows, 1 = input columns
SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "wo": 1, "w2": 1}


def _all_reduce_output(module, inputs, output):
    dist.all_reduce(output)
    return output


def broadcast_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Every rank takes rank 0's sampled tokens. Ranks compute the same logits only up to the order of
    their reductions; a token drawn differently on one rank would give the ranks batches of different
    shapes (a row stops on one rank only), and the next all-reduce would hang."""
    dist.broadcast(tokens, src=0)
    return tokens


def shard_plan(model: Transformer) -> dict[str, int]:
    """{parameter name: split dimension} for every parameter that is split."""
    return {name: SPLIT_DIM[name.split(".")[-2]] for name, _ in model.named_parameters()
            if name.split(".")[-2] in SPLIT_DIM}


def apply_tensor_parallel(model: Transformer, world: int) -> Transformer:
    """Shrink the split layers to one rank's shard (their weights are filled in afterwards)
    and add the all-reduces. Works on a model built on the meta device."""
    args = model.args
    if args.n_kv_heads % world or args.hidden_dim % world:
        raise ValueError(f"tensor parallel over {world} ranks needs n_kv_heads ({args.n_kv_heads}) and the "
                         f"FFN width ({args.hidden_dim}) to divide by {world}")
    for layer in model.layers:
        attn, ff = layer.attention, layer.feed_forward
        attn.n_heads //= world
        attn.n_kv_heads //= world
        for linear, dim in ((attn.wq, 0), (attn.wk, 0), (attn.wv, 0), (attn.wo, 1),
                            (ff.w1, 0), (ff.w3, 0), (ff.w2, 1)):
            shape = list(linear.weight.shape)
            shape[dim] //= world
            linear.weight = nn.Parameter(torch.empty(shape, device=linear.weight.device,
                                                     dtype=linear.weight.dtype), requires_grad=False)
            if linear.bias is not None:  # the q, k, v biases of Qwen2: split with their output rows
                linear.bias = nn.Parameter(torch.empty(shape[0], device=linear.bias.device, dtype=linear.bias.dtype),
                                           requires_grad=False)
        attn.wo.register_forward_hook(_all_reduce_output)
        ff.w2.register_forward_hook(_all_reduce_output)
    return model


def load_tensor_parallel(path, device, dtype):
    """(model shard, tokenizer) for this rank of the default process group."""
    rank, world = dist.get_rank(), dist.get_world_size()
    args = verify(path)
    with torch.device("meta"):
        net = Transformer(args)
    plan = shard_plan(net)
    by_file: dict = {}
    for name, file in weight_files(path).items():
        by_file.setdefault(file, []).append(name)
    state = {}
    for file, names in by_file.items():
        with safe_open(file, framework="pt") as f:
            for name in names:
                full = f.get_slice(name)
                if name not in plan:
                    tensor = full[:]
                else:
                    size = full.get_shape()[plan[name]] // world
                    part = slice(rank * size, (rank + 1) * size)
                    tensor = full[part] if plan[name] == 0 else full[:, part]
                state[name] = tensor.to(device=device, dtype=dtype)
    apply_tensor_parallel(net, world).load_state_dict(state, assign=True)
    return net.eval(), checkpoint_tokenizer(path, args)
