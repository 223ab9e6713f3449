"""The process group of data-parallel runs under ``torchrun`` (``docs/distributed.md``): joining
and leaving it, and collectives that fail with :class:`DistributedError` after ``timeout``
seconds instead of hanging. Every rank runs the same program on the same global minibatch and
takes its slice (:func:`shard`); noise streams are keyed by :func:`derive_seed`; evaluation
splits its blocks over the ranks (:func:`owns`) and gathers them exactly (:func:`sum_across`),
so that the results do not depend on the number of processes. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from pyro_vae.errors import ConfigError, PyroVAEError

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "DistributedError", "World", "barrier", "collective_error",
           "derive_seed", "init_process_group", "launched", "owns", "process_group", "shard",
           "sum_across"]

DEFAULT_TIMEOUT_SECONDS = 300.0  # how long a collective waits for the other ranks


class DistributedError(PyroVAEError, RuntimeError):
    """A collective operation failed or timed out: another rank died, or cannot be reached."""


class World(NamedTuple):
    """This process's place in the process group."""

    rank: int  # 0 .. world_size − 1, across all nodes
    world_size: int  # number of processes
    local_rank: int  # index on this node (the GPU it uses under nccl)
    backend: str  # "gloo" (CPU) or "nccl" (GPU)
    device: torch.device  # where collective tensors live: cpu for gloo, cuda:local_rank for nccl
    timeout: float  # seconds a collective waits

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (it sets ``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_process_group(
    *, device: str = "cpu", timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> World:
    """Join the process group that torchrun's environment variables describe: gloo for
    ``device`` cpu, nccl for cuda (each rank then uses GPU ``LOCAL_RANK``).

    :param timeout: seconds any collective waits for the other ranks before it fails.
    :raises ConfigError: if the environment lacks a variable or the GPUs are too few.
    :raises DistributedError: if the rendezvous fails.
    """
    if not timeout > 0:
        raise ConfigError(f"the distributed timeout must be positive, got {timeout}")
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if v not in os.environ]
    if missing:
        raise ConfigError(f"distributed mode needs the environment variables that torchrun "
                          f"sets; missing: {', '.join(missing)}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = torch.device(device).type
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} needs GPU {local_rank}, but this node "
                              f"has {torch.cuda.device_count()}; use --nproc-per-node "
                              f"{torch.cuda.device_count()} or fewer")
        torch.cuda.set_device(local_rank)
        backend, collective_device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, collective_device = "gloo", torch.device("cpu")
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as e:
        raise DistributedError(
            f"could not join the process group at {os.environ['MASTER_ADDR']}:"
            f"{os.environ['MASTER_PORT']} as rank {os.environ['RANK']} of "
            f"{os.environ['WORLD_SIZE']}: {_first_line(e)}"
        ) from None
    return World(dist.get_rank(), dist.get_world_size(), local_rank, backend,
                 collective_device, float(timeout))


@contextlib.contextmanager
def process_group(
    *, device: str = "cpu", timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> Iterator[World | None]:
    """Under torchrun: join the process group, yield its :class:`World`, leave it on exit.
    Otherwise yield ``None`` (one process, nothing to join)."""
    if not launched():
        yield None
        return
    world = init_process_group(device=device, timeout=timeout)
    try:
        yield world
    except BaseException:
        dist.destroy_process_group()  # no barrier: a peer may be dead
        raise
    # free a DDP reducer left in a reference cycle, then leave together, not under a busy peer
    gc.collect()
    try:
        barrier(world)
    finally:
        dist.destroy_process_group()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def collective_error(world: World, what: str, error: BaseException) -> DistributedError:
    """The error to raise when a collective operation ``what`` failed with ``error``."""
    return DistributedError(
        f"rank {world.rank} of {world.world_size}: {what} failed ({_first_line(error)}). "
        f"Another process has probably died or stalled; its own output says why. Collectives "
        f"wait at most {world.timeout:g} s (train --dist-timeout)."
    )


def derive_seed(seed: int, *indices: int) -> int:
    """A 63-bit seed for the stream ``(seed, *indices)``, e.g. (seed, step, rank) or
    (seed, chunk): distinct tuples give unrelated streams (NumPy's SeedSequence hashing)."""
    entropy = [int(seed) % 2**64, *(int(i) for i in indices)]
    low, high = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return (int(high) << 31 | int(low)) % 2**63


def shard(x: torch.Tensor, world: World) -> torch.Tensor:
    """Rank ``world.rank``'s contiguous slice of the global minibatch ``x`` (rows); sizes
    differ by at most one, and a rank gets no rows when ``x`` has fewer than ``world_size``."""
    return torch.tensor_split(x, world.world_size)[world.rank]


def owns(world: World | None, index: int) -> bool:
    """Whether this rank computes chunk ``index`` (all of them in one process)."""
    return world is None or index % world.world_size == world.rank


def sum_across(values: torch.Tensor, world: World | None) -> torch.Tensor:
    """The sum of ``values`` over the ranks (``values`` itself in one process), on the CPU: with
    each entry filled by one rank and zero on the others, an exact gather."""
    if world is None:
        return values
    gathered = values.to(world.device)
    try:
        dist.all_reduce(gathered)
    except RuntimeError as e:
        raise collective_error(world, "gathering evaluation results", e) from None
    return gathered.cpu()


def barrier(world: World | None) -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if world is None:
        return
    try:
        dist.barrier()
    except RuntimeError as e:
        raise collective_error(world, "waiting for the other ranks", e) from None
