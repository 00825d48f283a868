"""Data-parallel training with :mod:`torch.distributed` (torchrun, several GPUs / nodes).

The one loop in :mod:`mmsae.train.loop` is data-parallel when a process group is initialised
with more than one rank: every rank draws the same *global* batch (same seeded sampler),
computes the loss on its contiguous shard of ``batch_size / world_size`` pairs, and the
gradients are averaged with one all-reduce of a flat buffer before the model's
``before_optimizer_step`` hook, so every rank applies the same update as a single
process on the global batch. The dead-latent bookkeeping (``since_fired``) is merged
across ranks after each step (a latent fired if it fired on any shard), the MGSAE mask
uses global pair indices (:class:`mmsae.engine.sparse.HashMask` ``row_offset``) and the same salt
on every rank, so masks are those of the single-process run. Rank 0 logs and writes
checkpoints.

Not exactly single-process: AuxK normalises its residual by the *shard's* variance (as
any data-parallel implementation of that loss), so with dead latents present the AuxK
gradient differs slightly from the single-process one.

We all-reduce gradients explicitly rather than wrapping the model in
``nn.parallel.DistributedDataParallel`` because the loop calls ``model.training_loss``
(not ``forward``) and the sparse path builds its own autograd graph; one bucketed
all-reduce per step is what DDP would do for these four parameters anyway.

Launch (one process per GPU; CPU processes use gloo) with the command line of
:mod:`mmsae.train.cli`::

    torchrun --nproc_per_node 4 -m mmsae.train --data pairs.npy --preset mgsae \\
        --steps 25000 --batch-size 4096 --out runs/mgsae_ddp

With no torchrun environment the same command trains in one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "allreduce_grads", "sync_firing", "firing_buffers",
           "broadcast_model", "allreduce_stats", "shard_slice"]


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Initialise the default process group from torchrun's env vars (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT``) if there is more than one process;
    returns ``(rank, world_size)``. ``backend``: default nccl on CUDA, else gloo."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return rank(), world_size()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def shard_slice(global_batch: int) -> slice:
    """This rank's contiguous part of a global batch (``global_batch % world_size == 0``)."""
    ws, r = world_size(), rank()
    if global_batch % ws:
        raise ValueError(f"batch_size {global_batch} is not divisible by the world size {ws}")
    per = global_batch // ws
    return slice(r * per, (r + 1) * per)


@torch.no_grad()
def broadcast_model(model: torch.nn.Module, src: int = 0) -> None:
    """Make every rank hold rank ``src``'s parameters and buffers."""
    if not is_distributed():
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src)


@torch.no_grad()
def allreduce_grads(params) -> None:
    """Average gradients over ranks with one all-reduce of a flat buffer (None -> zeros)."""
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    off = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[off:off + n].view_as(p.grad))
        off += n


def firing_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """The ``since_fired`` counters of ``model`` and its sub-modules (e.g. one per SAE)."""
    return [m.since_fired for m in model.modules() if isinstance(getattr(m, "since_fired", None), torch.Tensor)]


@torch.no_grad()
def sync_firing(model: torch.nn.Module, before: list[torch.Tensor] | torch.Tensor | None) -> None:
    """Merge ``since_fired`` after a step taken on shards: a latent fired if it fired on any
    rank (counter 0), otherwise its counter grows by the *global* number of samples.
    ``before``: the counters (:func:`firing_buffers`, cloned) before the step."""
    if not is_distributed() or before is None:
        return
    bufs = firing_buffers(model)
    befores = [before] if torch.is_tensor(before) else list(before)
    for after, prev in zip(bufs, befores):
        fired = after == 0
        notfired = ~fired
        n_local = (after - prev)[notfired].max() if bool(notfired.any()) else after.new_zeros(())
        # one MAX all-reduce: fired on any rank; the shards are equal, so global samples = W * local
        packed = torch.cat([fired.to(torch.int64), n_local.reshape(1).to(torch.int64)])
        dist.all_reduce(packed, op=dist.ReduceOp.MAX)
        f, n = packed[:-1], packed[-1] * world_size()
        after.copy_(torch.where(f.bool(), torch.zeros_like(prev), prev + n))


@torch.no_grad()
def allreduce_stats(values: dict[str, float]) -> dict[str, float]:
    """Mean of scalar statistics over ranks (only at log steps)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}
