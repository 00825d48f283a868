"""Command line for one training run: ``python -m mmsae.train`` or, on several GPUs or
nodes, ``torchrun --nproc_per_node N -m mmsae.train --data pairs.npy --preset mgsae ...``
(data-parallel through :mod:`mmsae.train.distributed`; with no torchrun environment the
same command trains in one process)."""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

from ..data.load import load_paired
from ..models import build_model, registry
from . import distributed as ddp
from .loop import TrainConfig, train

__all__ = ["main"]


def _build(args: argparse.Namespace):
    """The model of ``--preset`` (a method's command-line name, :mod:`mmsae.models.registry`) at the paper's
    lambda and mask rate."""
    return build_model(registry.config_for(registry.by_cli(args.preset).name, d=args.d, m=args.m, k=args.k))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmsae.train",
                                description="Train one SAE on all torchrun processes (data-parallel).")
    p.add_argument("--data", required=True, help="paired embeddings (.npy (2,N,d) is memory-mapped)")
    p.add_argument("--preset", choices=[m.cli_name for m in registry.REGISTRY.values()], default="mgsae",
                   help="the method (its record in mmsae.models.registry)")
    p.add_argument("--d", type=int, default=None)
    p.add_argument("--m", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=25_000)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (pairs), split over ranks")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=None)
    p.add_argument("--out", default=None, help="checkpoint folder (rank 0 writes)")
    p.add_argument("--log-dir", default=None,
                   help="TensorBoard event files of the training statistics (rank 0 writes; needs tensorboard)")
    args = p.parse_args(argv)

    ddp.init_from_env(args.backend)
    data = load_paired(args.data, expect_normalized=False, mmap=True)
    if args.d is None:
        args.d = data.dim
    torch.manual_seed(args.seed)
    model = _build(args)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda" and ddp.is_distributed():
        dev = f"cuda:{torch.cuda.current_device()}"
    res = train(model, data, TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                         seed=args.seed, device=dev, checkpoint_dir=args.out, log_dir=args.log_dir,
                                         progress=ddp.rank() == 0))
    if ddp.rank() == 0:
        print(f"done: {res.steps_done} steps, {res.pairs_per_s:.0f} pairs/s over {ddp.world_size()} process(es)")
    if ddp.is_distributed():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
