"""Data-parallel training and evaluation with PyTorch's own engine, :mod:`torch.distributed`.

Launch the ordinary ``train`` command with ``torchrun``; every process (rank) runs the same
program and one model is trained::

    torchrun --nproc-per-node 2 -m pyro_vae train --estimator meanfield --epochs 10 --out runs/ddp

What a rank does (see ``docs/distributed.md``):

* **Data.** Every rank seeds the permutation generator identically, so all ranks see the same
  global minibatch of ``batch_size`` images (binarized with the shared generator, so the data
  are exactly those of a one-process run with the same seed); rank ``r`` takes the ``r``-th of
  ``world_size`` contiguous slices of it (:func:`shard`). The slices are disjoint and cover
  every epoch's permutation.
* **Loss and gradient.** :class:`LossModule` computes the estimator's
  ``Objective.differentiable_loss`` on the local slice; it is wrapped in
  :class:`torch.nn.parallel.DistributedDataParallel`, whose backward pass all-reduces the
  gradients of every parameter of the VAE (encoder, decoder and a learned likelihood scale).
  DDP *averages* over ranks, so each rank back-propagates ``world_size`` × its local loss: the
  averaged gradient is then the gradient of the global-minibatch loss (−ELBO summed over the
  global batch), the same as in one process.
* **Optimizer.** Pyro's SVI steps through its param store and per-parameter optimizers, which
  know nothing of DDP, so distributed mode steps one :class:`torch.optim.Adam` over all the
  VAE's parameters with Pyro's differentiable loss (:class:`DistributedTrainer`). Adam's update
  is the same as that of ``pyro.optim.Adam`` (one torch Adam per parameter) with the same
  hyperparameters; Pyro optimizer states and this one's are not interchangeable.
* **Noise.** Before step ``k`` rank ``r`` seeds torch's generator from ``(seed, k, r)``
  (:func:`derive_seed`): ranks draw independent posterior samples, and a resumed run draws the
  same ones as an uninterrupted run with the same number of processes.
* **Evaluation.** :func:`map_rows` splits per-datapoint work into chunks, each with its own
  seed derived from its index, computes each rank's chunks and gathers the values (an exact
  all-reduce: every entry has one non-zero contribution), so the result does not depend on
  the number of processes. The per-epoch test ELBO of :func:`pyro_vae.training.fit` and
  :func:`estimate_log_px` use it.
* **Files.** Only rank 0 writes checkpoints and metrics. Collectives time out after
  ``timeout`` seconds (:func:`init_process_group`), and a failed collective raises
  :class:`DistributedError`, so a dead rank ends the run with a message instead of a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from pyro import poutine
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro_vae.errors import CheckpointError, ConfigError, PyroVAEError

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "DistributedError",
    "DistributedTrainer",
    "LossModule",
    "World",
    "barrier",
    "check_resumable",
    "current_world",
    "derive_seed",
    "estimate_log_px",
    "init_process_group",
    "launched",
    "map_rows",
    "process_group",
    "shard",
]

DEFAULT_TIMEOUT_SECONDS = 300.0  # how long a collective waits for the other ranks
_joined_with = {"timeout": DEFAULT_TIMEOUT_SECONDS}  # the timeout the process group was given


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
    """Join the process group described by torchrun's environment variables (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo for ``device`` cpu,
    nccl for cuda (each rank then uses GPU ``LOCAL_RANK``).

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
    _joined_with["timeout"] = float(timeout)
    return World(dist.get_rank(), dist.get_world_size(), local_rank, backend,
                 collective_device, float(timeout))


def current_world() -> World | None:
    """The :class:`World` of the initialized default process group, or ``None``."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    backend = dist.get_backend()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
              else torch.device("cpu"))
    return World(dist.get_rank(), dist.get_world_size(), local_rank, backend, device,
                 _joined_with["timeout"])


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
    # A normal exit: free what may still hold the group (a DDP reducer in a reference cycle),
    # then leave together, so that no rank tears its connections down under a peer still
    # using them.
    gc.collect()
    try:
        barrier(world)
    finally:
        dist.destroy_process_group()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _collective_failed(world: World, what: str, error: BaseException) -> DistributedError:
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


class LossModule(nn.Module):
    """``forward(x)`` = the objective's differentiable loss on ``x`` (−ELBO summed over the
    rows, in nats; times ``scale``): the module that :class:`DistributedDataParallel` wraps,
    so that its backward pass all-reduces the gradient of every parameter of the VAE.

    With ``scale ≠ 1`` the loss is that of :meth:`Objective.differentiable_loss` with
    ``num_data``, for a global batch other than ``x``: Pyro estimators run under
    :func:`pyro.poutine.scale`, which scales every site's log-density just as ``num_data``
    does in one process (inside IWAE's log-mean-exp, where it is not a plain factor);
    hand-written and JIT-compiled estimators, which are linear in it, are multiplied.
    """

    def __init__(self, objective):
        super().__init__()
        self.vae = objective.vae
        self.objective = objective

    def forward(self, x: torch.Tensor, context=None, scale: float = 1.0) -> torch.Tensor:
        if x.shape[0] == 0:
            # No rows on this rank (a last global batch smaller than world_size): a zero loss
            # that still reaches every parameter, so the all-reduce of each one happens.
            return sum(p.sum() for p in self.parameters()) * 0.0
        if scale == 1.0:
            return self.objective.differentiable_loss(x, context)
        if getattr(self.objective, "uses_pyro", False) and not getattr(self.objective, "jit",
                                                                       False):
            with poutine.scale(scale=scale):
                return self.objective.differentiable_loss(x, context)
        return scale * self.objective.differentiable_loss(x, context)


class DistributedTrainer:
    """One SGD step of the global minibatch on ``world.world_size`` processes: each rank
    computes the loss of its :func:`shard`, DDP all-reduces the gradients, and every rank
    steps its identical :class:`torch.optim.Adam` (β = (0.9, 0.999), ε = 1e-8, as
    ``pyro.optim.Adam``). Same interface as the one-process trainers of
    :mod:`pyro_vae.estimators` (``step``, ``set_lr``, ``state_dict``, ``load_state_dict``).

    :param objective: an :class:`~pyro_vae.estimators.Objective` (any registered estimator).
    :param seed: seeds torch's generator before every step from (seed, step, rank).
    """

    def __init__(self, objective, lr: float, *, world: World, seed: int = 0):
        self.objective, self.world, self.seed = objective, world, seed
        self.steps = 0
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        try:
            # forward_sync_buffers=False: the only buffers (a fixed Gaussian scale) never
            # change after the initial broadcast.
            self.module = DistributedDataParallel(
                LossModule(objective), device_ids=device_ids, forward_sync_buffers=False,
                find_unused_parameters=False,
            )
        except RuntimeError as e:
            raise _collective_failed(world, "wrapping the model in DistributedDataParallel",
                                     e) from None
        self.optim = torch.optim.Adam(objective.vae.parameters(), lr=lr)

    def step(self, x: torch.Tensor, context=None, *, num_data: int | None = None) -> float:
        """One step on the global minibatch ``x`` (``(B, D)``, the same on every rank); returns
        the global loss: −ELBO summed over the B rows, nats, times ``num_data / B`` when
        ``num_data`` is given (the scale of ``SVI.step`` on ``x`` in one process). A non-finite
        loss is returned before any update, on every rank alike."""
        world = self.world
        scale = 1.0 if num_data is None else num_data / x.shape[0]
        local_x = shard(x, world)
        local_context = None if context is None else shard(context, world)
        torch.manual_seed(derive_seed(self.seed, self.steps, world.rank))
        self.steps += 1
        self.optim.zero_grad(set_to_none=True)
        loss = self.module(local_x, local_context, scale=scale)  # this shard's loss
        total = loss.detach().to(world.device, torch.float64).reshape(1)
        try:
            dist.all_reduce(total)
        except RuntimeError as e:
            raise _collective_failed(world, "summing the minibatch loss", e) from None
        total = float(total)
        if not torch.isfinite(torch.tensor(total)):
            return total
        try:
            # DDP averages the ranks' gradients; world_size × the local loss makes the average
            # the gradient of the global-minibatch loss.
            (loss * world.world_size).backward()
        except dist.DistError as e:
            raise _collective_failed(world, "all-reducing the gradients", e) from None
        self.optim.step()
        return total

    def set_lr(self, lr: float) -> None:
        for group in self.optim.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        """torch Adam's state dict (loadable by a one-process hand-written estimator's trainer)
        plus ``distributed_steps``, the step counter that seeds the noise."""
        return {**self.optim.state_dict(), "distributed_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        if not ("state" in state and "param_groups" in state):
            raise CheckpointError(
                "this checkpoint holds the state of Pyro's per-parameter SVI optimizer (a "
                f"one-process run of the {self.objective.name!r} estimator); distributed mode "
                "steps torch Adam. Resume it in one process, or start a new distributed run."
            )
        state = dict(state)
        self.steps = int(state.pop("distributed_steps", 0))
        self.optim.load_state_dict(state)


def check_resumable(optimizer_state: dict, objective, world: World | None) -> None:
    """Raise :class:`CheckpointError` if one process would resume a distributed run of a Pyro
    estimator: SVI cannot take over torch Adam's state."""
    if world is None and "distributed_steps" in optimizer_state and objective.uses_pyro:
        raise CheckpointError(
            f"this checkpoint was written by a distributed run, whose {objective.name!r} "
            "estimator steps torch Adam; one process steps Pyro's SVI optimizer, which cannot "
            "take over that state. Resume it with torchrun (any number of processes)."
        )


def map_rows(
    fn: Callable[[int, int, int], torch.Tensor],
    num_rows: int,
    chunk_size: int,
    *,
    world: World | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """``fn(start, stop, index)`` → the ``(stop − start,)`` values (``(stop − start, width)``
    with ``width``) of rows ``start:stop`` of chunk ``index``, for the chunks of
    ``chunk_size`` rows; returns all ``(num_rows,)`` (or ``(num_rows, width)``) values as
    float64 on the CPU.

    With a ``world``, chunk ``i`` is computed by rank ``i mod world_size`` and the values are
    gathered by an all-reduce in which every entry has exactly one non-zero term, so the result
    is bit-for-bit that of one process, provided ``fn`` draws its random numbers from a seed
    derived from ``index`` (e.g. ``derive_seed(seed, index)``), not from a shared stream.
    """
    device = torch.device("cpu") if world is None else world.device
    shape = (num_rows,) if width is None else (num_rows, width)
    values = torch.zeros(shape, dtype=torch.float64, device=device)
    for index, start in enumerate(range(0, num_rows, chunk_size)):
        if world is None or index % world.world_size == world.rank:
            stop = min(start + chunk_size, num_rows)
            values[start:stop] = fn(start, stop, index).detach().to(values)
    if world is not None:
        try:
            dist.all_reduce(values)
        except RuntimeError as e:
            raise _collective_failed(world, "gathering evaluation results", e) from None
    return values.cpu()


def barrier(world: World | None) -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if world is None:
        return
    try:
        dist.barrier()
    except RuntimeError as e:
        raise _collective_failed(world, "waiting for the other ranks", e) from None


def estimate_log_px(
    vae,
    x: torch.Tensor,
    context: torch.Tensor | None = None,
    *,
    num_samples: int = 5000,
    seed: int = 0,
    chunk_size: int = 256,
    world: World | None = None,
    memory_mb: float = 128.0,
    num_workers: int = 1,
    pareto_k: bool = False,
):
    """:func:`pyro_vae.evaluation.estimate_log_px` (the IWAE_K estimate of log p(x) per
    datapoint, nats; a lower bound in expectation) with the datapoints split across the ranks
    of ``world``: chunk ``i`` of ``chunk_size`` datapoints is estimated by rank
    ``i mod world_size`` from a generator seeded with ``derive_seed(seed, i)``, and the
    per-datapoint values are gathered with :func:`map_rows`. The result is therefore the same
    for any number of processes, one included (``world=None``), given the same ``seed``,
    ``chunk_size``, ``memory_mb`` and ``num_workers``: these fix how each chunk lays out its
    random draws (in :func:`pyro_vae.evaluation.estimate_log_px` the layout of (samples ×
    datapoints) sub-chunks follows ``memory_mb / num_workers``), so they are fixed here rather
    than taken from each rank's thread count.

    :returns: :class:`pyro_vae.evaluation.LogPxEstimate`, on every rank.
    """
    from pyro_vae.evaluation import LogPxEstimate
    from pyro_vae.evaluation import estimate_log_px as estimate_chunk

    columns = 3 if pareto_k else 2  # log_px, its standard error, Pareto k̂

    def chunk(start: int, stop: int, index: int) -> torch.Tensor:
        generator = torch.Generator(device=x.device).manual_seed(derive_seed(seed, index))
        est = estimate_chunk(
            vae, x[start:stop], None if context is None else context[start:stop],
            num_samples=num_samples, batch_size=chunk_size, memory_mb=memory_mb,
            generator=generator, pareto_k=pareto_k, num_workers=num_workers,
        )
        parts = [est.log_px, est.log_px_stderr] + ([est.pareto_k] if pareto_k else [])
        return torch.stack([p.to(torch.float64) for p in parts], dim=1)  # (stop-start, columns)

    values = map_rows(chunk, x.shape[0], chunk_size, world=world, width=columns)
    log_px, se = values[:, 0], values[:, 1]
    n = x.shape[0]
    return LogPxEstimate(
        log_px=log_px,
        mean=float(log_px.mean()),
        stderr=float(se.pow(2).sum().sqrt()) / n,
        num_samples=num_samples,
        pareto_k=values[:, 2] if pareto_k else None,
        log_px_stderr=se,
        data_stderr=float(log_px.std()) / math.sqrt(n) if n > 1 else math.nan,
    )
