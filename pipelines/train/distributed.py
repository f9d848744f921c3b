"""Single process or torchrun/DDP: the process's place in the job and the per-epoch sampler."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Rank and world of this process; ``device`` is CUDA (one GPU per process) when present."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None = None) -> DistEnv:
    """Join the torchrun job described by ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (nccl on GPU,
    gloo on CPU), or run alone. ``device`` forces ``cpu`` or ``cuda``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None:   # "cuda" without CUDA: one clear line (UserError), not a traceback
        from vcorr.pipelines.runtime import resolve_device
        device = resolve_device(device).type
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistEnv(rank, world, local, dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class EpochSampler(torch.utils.data.Sampler[int]):
    """This rank's share of a permutation that depends only on (seed, epoch).

    The permutation is padded by wrapping to a multiple of ``world_size`` (as
    ``DistributedSampler`` does) and dealt round-robin, so all ranks run the same number of
    steps; with ``n`` divisible by the world size every sample is seen exactly once per epoch.
    ``skip`` drops this rank's first samples: a resumed epoch continues where it stopped.
    ``weights`` (one per sample) make the epoch n draws with replacement instead, sample i
    with probability ``weights[i] / sum(weights)`` (class-balanced sampling).
    """

    def __init__(self, n: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, skip: int = 0,
                 weights: np.ndarray | None = None) -> None:
        self.n, self.seed, self.epoch, self.shuffle = n, seed, epoch, shuffle
        self.rank, self.world_size, self.skip = rank, world_size, skip
        self.weights = weights

    def rank_indices(self) -> list[int]:
        if self.weights is not None:
            # n draws with replacement, each index with probability weights / sum (a
            # class-balanced epoch); the same (seed, epoch) gives the same draws everywhere.
            p = np.asarray(self.weights, np.float64)
            order = np.random.default_rng([self.seed, self.epoch, 11]).choice(
                self.n, size=self.n, replace=True, p=p / p.sum())
        elif self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = -(-self.n // self.world_size) * self.world_size
        order = np.resize(order, total)  # wraps around to pad
        return order[self.rank::self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.skip:])

    def __len__(self) -> int:
        return max(0, -(-self.n // self.world_size) - self.skip)


def barrier() -> None:
    """Wait for every rank (nothing when alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (identity when alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
