"""Data-parallel training over torch.distributed: the few points where the ranks of one run must agree.

A data-parallel run (engine/sweep.py starts one as a Ray Train TorchTrainer when `--workers-per-run` > 1; nothing
here imports Ray) runs the same training code in W processes joined by a torch.distributed process group.
engine/training.py calls these helpers; without a process group, or with a group of one process, every helper
returns its input untouched, so a plain run is bit for bit what it was without them.

How the W ranks of a run share the work:
- batches: every rank draws the same shuffled permutation from the run's generator (same seed, same draws) and
  trains on its contiguous shard of each global batch (`shard`); shards differ in size by at most one sample;
- gradients: DistributedDataParallel averages them over the ranks at every step (`data_parallel`), so the
  parameters stay identical on every rank;
- augmentation: drawn from a per-rank generator (`rank_generator`), so the shared generator keeps drawing the
  same permutations everywhere however many random numbers a rank's augmentation takes;
- centroids: per-rank sums of the layer vectors, summed over the ranks (`all_reduce_sum`);
- radii: every rank gathers the distances of the whole global batch (`gather_shards`) and takes the quantile of
  those, the exact quantile a single process computes on that batch, identical on every rank (a mean of per-rank
  quantiles would be neither);
- epoch loss: the mean over ranks (`all_reduce_mean`), so the curves and the divergence check agree everywhere;
- BatchNorm buffers: DDP copies rank 0's into every rank before each forward; `broadcast_state` copies them once
  more at the end of a stage, so every rank leaves it holding exactly rank 0's model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def active() -> bool:
    """True inside a process group of more than one process (a data-parallel run)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that reads and writes the results store."""
    return rank() == 0


def shard_sizes(n: int) -> list[int]:
    """Samples of each rank's shard of a global batch of n (what `Tensor.tensor_split(world_size())` gives)."""
    w = world_size()
    return [n // w + (r < n % w) for r in range(w)]


def shard(idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a global batch of indices (all of it without a process group)."""
    return idx.tensor_split(world_size())[rank()] if active() else idx


def rank_generator(generator: torch.Generator) -> torch.Generator:
    """A generator of this rank's own for augmentation, seeded by one draw from the shared `generator` (which
    therefore stays in step on every rank); `generator` itself without a process group."""
    if not active():
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=generator.device).manual_seed(seed + rank())


class _Call(nn.Module):
    """forward(x) = fn(x), registering `owner` so DDP sees the parameters `fn` uses (e.g. encoder.features)."""

    def __init__(self, owner: nn.Module, fn: Callable):
        super().__init__()
        self.owner, self.fn = owner, fn

    def forward(self, x: torch.Tensor):
        return self.fn(x)


def data_parallel(module: nn.Module, forward: Callable | None = None) -> Callable:
    """`forward` (default: `module` itself) with `module`'s gradients averaged over the ranks at every backward;
    `forward` unchanged without a process group. `static_graph`: every step uses the same parameters, which lets
    some sit out (stage 2 stops at the deepest selected layer; a model's extra heads may skip stage 1) with no
    per-step search for them; their gradients stay None, so Adam leaves them alone as in one process."""
    forward = module if forward is None else forward
    if not active():
        return forward
    device = next(module.parameters()).device
    wrapped = module if forward is module else _Call(module, forward)
    return DistributedDataParallel(wrapped, device_ids=[device] if device.type == "cuda" else None, static_graph=True)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `t` over the ranks (a new tensor; `t` itself without a process group)."""
    if not active():
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The elementwise mean of `t` over the ranks (`t` itself without a process group)."""
    return all_reduce_sum(t) / world_size() if active() else t


def gather_shards(t: torch.Tensor, n: int) -> torch.Tensor:
    """(..., n): every rank's (..., n_r) shard of a global batch of n, concatenated in rank order along the last
    dimension, i.e. the tensor one process would have computed on the whole batch (detached: for statistics)."""
    if not active():
        return t
    sizes = shard_sizes(n)
    assert t.shape[-1] == sizes[rank()], (t.shape, sizes)
    padded = torch.nn.functional.pad(t.detach(), (0, max(sizes) - t.shape[-1]))  # all_gather needs equal shapes
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[..., :size] for p, size in zip(parts, sizes, strict=True)], dim=-1)


def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers (BatchNorm running statistics) into every rank, in place."""
    if not active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s picklable `obj` on every rank (`obj` itself without a process group)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
