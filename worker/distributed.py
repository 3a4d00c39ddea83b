"""Sharding the simulation over processes with ``torch.distributed``.

Launched by ``torchrun --nproc-per-node N -m worker build ...`` (or
``--nnodes`` for several machines): every rank trains the same members
(rank 0's parameters are broadcast so all agree exactly), propagates its
contiguous shard of directions, and writes that shard to the run's work
directory; rank 0 assembles the shards, writes the manifest and flips the
pointer. Directions are independent, so the result equals a single-process
run up to float rounding. CPU runs use the gloo backend, GPUs nccl.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group torchrun describes; no-op for a plain run."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n_rows: int, rank: int, world: int) -> slice:
    """Contiguous, balanced share of ``n_rows`` for ``rank``."""
    base, extra = divmod(n_rows, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def broadcast_params(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Make every rank hold rank 0's parameters (in place)."""
    if rank_world()[1] > 1:
        for v in params.values():
            dist.broadcast(v, src=0)
    return params


def gather_rows(part: torch.Tensor, work: Path, tag: str) -> torch.Tensor | None:
    """Each rank writes its shard ``(r_k, p)``; rank 0 returns them stacked
    in rank order, other ranks ``None``."""
    rank, world = rank_world()
    if world == 1:
        return part
    path = work / f"{tag}.shard{rank}.pt"
    torch.save(part, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    barrier()
    out = torch.cat([torch.load(work / f"{tag}.shard{r}.pt", map_location=part.device)
                     for r in range(world)]) if rank == 0 else None
    barrier()
    return out


class Shard:
    """This process's part of a sharded text simulation (``rank`` of ``world``):
    its documents, the all-reduce of the curvature products, and the gather of
    its response rows to rank 0 through the run's work directory."""

    def __init__(self, work: Path):
        self.rank, self.world = rank_world()
        self.work = work

    def docs(self, n_docs: int) -> slice:
        return shard(n_docs, self.rank, self.world)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def all_agree(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def gather(self, part: torch.Tensor, tag: str) -> torch.Tensor | None:
        return gather_rows(part, self.work, tag)
