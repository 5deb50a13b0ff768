"""torch.distributed (DDP) plumbing: process group, batch sharding, gathers, and agreement on stopping.

`batch_size` is the GLOBAL batch: every optimizer step consumes the same rows as a single process
would, split across ranks, and each rank's loss is scaled so the averaged gradient is exactly the
gradient of the global batch mean (also for a short last batch, and over all the batches that
gradient_accumulation_steps adds up to one step).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .runtime import process_ranks


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def leader(self) -> int:
        """The global rank of this host's local rank 0: torchrun gives each host's processes consecutive ranks
        (torch/distributed/elastic/agent/server/api.py, _assign_worker_ranks: base_global_rank + local_rank)."""
        return self.rank - self.local_rank

    @property
    def active(self) -> bool:
        return self.size > 1


def from_env() -> World:
    """This process's place among those torchrun started (one process when it started none)."""
    return World(*process_ranks())


def init(world: World, device: torch.device, timeout_s: int) -> None:
    """NCCL on GPUs, gloo on CPU; the timeout turns a dead peer into an error instead of a hang."""
    if world.active and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: np.ndarray, world: World, step_rows: int | None = None) -> tuple[np.ndarray, float]:
    """This rank's rows of a global batch and the factor that makes DDP's gradient mean the global mean.

    DDP averages gradients over ranks, so a rank holding n of N rows scales its mean loss by
    n * world / N. With gradient accumulation the batch is one of several whose gradients add up to an
    optimizer step of `step_rows` rows: N is then step_rows, so the step's gradient is the mean over all of
    them, not a mean of batch means. A rank left with no rows runs one row with factor 0 to keep DDP in step.
    """
    mine = rows[world.rank::world.size]
    if len(mine) == 0:
        return rows[:1], 0.0
    return mine, len(mine) * world.size / (step_rows or len(rows))


def gather_rows(values: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate each rank's [n_r, k] block in rank order (blocks may differ in length by one)."""
    if not world.active:
        return values
    counts = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(world.size)]
    dist.all_gather(counts, torch.tensor([len(values)], device=values.device))
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *values.shape[1:]), dtype=values.dtype, device=values.device)
    padded[:len(values)] = values
    blocks = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(blocks, padded)
    return torch.cat([block[:int(count.item())] for block, count in zip(blocks, counts)])


def all_reduce_sum(value: torch.Tensor, world: World) -> None:
    if world.active:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank if it is true on any: all ranks must stop at the same step."""
    if not world.active:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(value: object, world: World) -> list[object]:
    if not world.active:
        return [value]
    out: list[object] = [None] * world.size
    dist.all_gather_object(out, value)
    return out
