"""One loop for every evaluator: the datapoints cut into blocks, each block with a seed of its
own, this process's blocks computed (on several threads where the computation draws from its
own generator only), their named columns filled in a float64 matrix and gathered across the
processes of a ``torchrun`` group. Importance sampling, AIS, BDMC, the inference gaps and the
test ELBO are each the computation of one block; this module is the rest, as BlackJAX's
samplers share one loop and differ in their kernels.

**Random numbers.** Block ``i`` draws from ``derive_seed(execution.seed, i)``: from the
generator it is given and, for computations that run on one thread, from torch's global
generator reseeded inside :func:`torch.random.fork_rng` (Pyro's programs draw from it), the
caller's stream left as it was. So the result depends on neither the number of processes,
nor the threads, nor what ran before.

**Processes.** Under ``torchrun``, block ``i`` is computed by rank ``i mod world_size``; each
entry of the matrix is filled by one rank and is zero on the others, so the all-reduce that
gathers them is exact: every rank gets the numbers that one process computes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch

from pyro_vae import checks
from pyro_vae.distributed import World, derive_seed, owns, sum_across
from pyro_vae.errors import ConfigError
from pyro_vae.progress import PROGRESS_MODES, Progress

__all__ = ["Execution", "as_data", "run_blocks", "slice_data", "split_data"]

MB = 2**20


class Execution(NamedTuple):
    """How an evaluation runs: ``seed`` and the blocks (``block_size``, or ``memory_mb`` that
    sizes them) decide the random numbers; the workers and the processes only say where the
    blocks are computed, and do not change the numbers."""

    seed: int = 0  # block i draws from derive_seed(seed, i)
    memory_mb: float = 128.0  # working memory of a block (of each, with several workers), MB
    block_size: int | None = None  # datapoints per block (None: from memory_mb, at most 128)
    workers: int | None = None  # blocks at once on CPU threads, each op on one thread (None:
    # torch's thread count), for the computations that draw from their own generator only
    world: World | None = None  # split the blocks across the ranks of this process group
    progress: str = "off"  # "auto", "bar", "lines" or "off" (pyro_vae.progress)

    def validate(self) -> Execution:
        checks.seed("seed", self.seed)
        checks.number("memory_mb", self.memory_mb, low=0, open_low=True)
        checks.integer("block_size", self.block_size, optional=True)
        checks.integer("workers", self.workers, optional=True)
        checks.choice("progress", self.progress, PROGRESS_MODES)
        return self

    def thread_count(self, device: torch.device) -> int:
        """Blocks computed at once: ``workers``, torch's thread count by default, 1 on CUDA."""
        if device.type != "cpu":
            return 1
        return self.workers or torch.get_num_threads()


def as_data(data, model=None) -> tuple[torch.Tensor, ...]:
    """``data`` (a tensor, or a tuple of tensors with one row per datapoint) as a tuple; with a
    ``model`` of this package, its x checked as the model checks it (one line if not)."""
    data = (data,) if torch.is_tensor(data) else tuple(data) if isinstance(data, (tuple, list)) \
        else ()
    if not data or not all(torch.is_tensor(d) and d.dim() >= 1 for d in data):
        raise ConfigError("data must be a tensor, or a tuple of tensors, whose first "
                          "dimension indexes the datapoints")
    rows = {d.shape[0] for d in data}
    if len(rows) != 1 or 0 in rows:
        raise ConfigError(f"every data tensor needs the same, non-zero number of rows; got "
                          f"shapes {[tuple(d.shape) for d in data]}")
    if model is not None and hasattr(model, "check_data"):
        model.check_data(data[0], where="x")
    return data


def split_data(model, data: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, context)`` of ``data`` for a model that reads a context beside x
    (``capabilities.context_dim``), ``(x, None)`` for one that does not; a
    :class:`ConfigError` when the count of data tensors does not fit."""
    context_dim = model.capabilities.context_dim
    if len(data) != 1 + bool(context_dim):
        reads = f"x and a context of {context_dim} features" if context_dim else "x alone"
        raise ConfigError(f"this model reads {reads}: pass data="
                          f"{'(x, context)' if context_dim else 'x'}, got {len(data)} tensors")
    return data[0], data[1] if context_dim else None


def slice_data(data: tuple, start: int, stop: int) -> tuple[torch.Tensor, ...]:
    """Rows ``start:stop`` of every data tensor."""
    return tuple(d[start:stop] for d in data)


def run_blocks(
    compute: Callable[[tuple, torch.Generator, Progress], dict[str, torch.Tensor]],
    data: tuple,
    columns: dict[str, int],
    execution: Execution,
    *,
    block: int,
    steps_per_block: Callable[[int], int] | None = None,
    label: str = "evaluating",
    unit: str = "datapoints",
    threaded: bool = False,
) -> dict[str, torch.Tensor]:
    """``compute(block_data, generator, bar)`` → ``{column: (b,) or (b, width)}`` for each
    block of ``block`` datapoints of ``data``; returns every column for all N datapoints,
    float64 on the CPU, ``(N,)`` where ``columns`` gives width 0, ``(N, width)`` otherwise.

    :param steps_per_block: the progress bar's count of one block of b datapoints (default: b,
        in ``unit``).
    :param threaded: ``compute`` draws from its generator only, never torch's global one, so
        blocks may run at once on ``execution.workers`` threads.
    """
    n = data[0].shape[0]
    offsets, width = {}, 0
    for name, w in columns.items():
        offsets[name] = (width, w)
        width += max(w, 1)
    values = torch.zeros(n, width, dtype=torch.float64)
    mine = [i for i in range(math.ceil(n / block)) if owns(execution.world, i)]
    device = data[0].device
    steps = steps_per_block or (lambda b: b)
    total = sum(steps(min(block, n - i * block)) for i in mine)

    with Progress(total, label, unit, mode=execution.progress) as bar:

        def run(i: int) -> None:
            start = i * block
            xb = slice_data(data, start, start + block)
            seed = derive_seed(execution.seed, i)
            generator = torch.Generator(device=device).manual_seed(seed)
            # grad mode and the subnormals' mode are per thread: the workers' are set again
            with torch.no_grad(), subnormals_flushed():
                if threaded:
                    out = compute(xb, generator, bar)
                else:
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda"
                                               else []):
                        torch.manual_seed(seed)
                        out = compute(xb, generator, bar)
            for name, (offset, w) in offsets.items():
                column = out[name].to(device="cpu", dtype=torch.float64)
                values[start : start + column.shape[0], offset : offset + max(w, 1)] = (
                    column.reshape(column.shape[0], -1))

        _each(run, mine, execution.thread_count(device) if threaded else 1)
    values = sum_across(values, execution.world)
    return {name: values[:, offset] if w == 0 else values[:, offset : offset + w]
            for name, (offset, w) in offsets.items()}


def _each(run: Callable[[int], None], blocks: list[int], workers: int) -> None:
    """``run`` each block, on ``workers`` threads of one torch thread each: no OpenMP barrier
    between the blocks, so a core taken by another job slows one block, not every op."""
    if workers == 1 or len(blocks) <= 1:
        for i in blocks:
            run(i)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, blocks))
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def subnormals_flushed():
    """Subnormal floats read and written as zero on this thread within the block. A decoder's
    very negative logits (−25 to −104) make the Bernoulli likelihood's softplus pass through
    subnormal intermediates, which the CPU computes 5–10× slower: a trained model's importance
    sampling took 20 % longer. Only values under 2⁻¹²⁶ (float32) change, which cannot move a
    log-density or its gradient of any size that a figure shows; torch's own worker threads
    keep their mode (no API reaches them), which for the same reason gives the same numbers."""
    was_on = torch.tensor(2.0**-140).mul(1.0).item() == 0.0  # no getter: test a subnormal
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was_on:
            torch.set_flush_denormal(False)
