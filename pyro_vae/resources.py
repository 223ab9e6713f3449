"""Memory checked before it is allocated: an estimate of what a model, a training step, an
evaluation or a picture needs, refused with the estimate and the limit when it cannot fit,
instead of an allocator error (or the machine swapping) minutes into the work.

The estimates count float32 numbers and round up; they are meant to catch sizes that are off
by orders of magnitude (a mistyped ``--hidden-sizes 1000000000``), not to budget tightly.
"""

from __future__ import annotations

import itertools
import os

import torch

from pyro_vae.errors import ConfigError

__all__ = ["available_bytes", "check_fits", "format_bytes", "idle_cores", "mlp_parameters",
           "set_threads", "training_bytes"]

_FLOAT = 4  # bytes of a float32


def format_bytes(n: float) -> str:
    """``"512 MB"``, ``"3.1 GB"``, ``"2.0e+03 TB"``.

    >>> format_bytes(3.1e9), format_bytes(5e5)
    ('3.1 GB', '0.5 MB')
    """
    for unit, size in (("TB", 1e12), ("GB", 1e9)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 1000 else f"{value:.1e} {unit}"
    return f"{n / 1e6:.1f} MB"


def available_bytes(device: str | torch.device = "cpu") -> int:
    """Memory free for new allocations: ``MemAvailable`` of ``/proc/meminfo`` on Linux (all
    physical memory elsewhere), or the GPU's free memory for a CUDA device; at most
    ``$PYRO_VAE_MEMORY_LIMIT_MB`` megabytes when that is set (e.g. to leave room for other
    jobs, or in tests)."""
    device = torch.device(device)
    limit = os.environ.get("PYRO_VAE_MEMORY_LIMIT_MB")
    free = _free_bytes(device)
    if limit:
        try:
            return min(free, int(float(limit) * 1e6))
        except ValueError:
            raise ConfigError(f"$PYRO_VAE_MEMORY_LIMIT_MB must be a number of megabytes, got "
                              f"{limit!r}") from None
    return free


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8 * 10**9


def check_fits(nbytes: float, what: str, hint: str, *, device="cpu",
               limit: float | None = None) -> None:
    """Raise :class:`ConfigError` if ``nbytes`` exceeds ``limit`` (default: the memory
    available on ``device``); the message says what needs it, both sizes, and ``hint``."""
    limit = available_bytes(device) if limit is None else limit
    if nbytes > limit:
        raise ConfigError(f"{what} needs about {format_bytes(nbytes)} of memory, more than the "
                          f"{format_bytes(limit)} available; {hint}")


def mlp_parameters(sizes: list[int]) -> int:
    """Weights and biases of a chain of linear layers ``sizes[0] → sizes[1] → …``."""
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def training_bytes(x_dim: int, latent_dim: int, hidden_sizes: tuple[int, ...],
                   batch_size: int, num_particles: int) -> int:
    """Memory of training the one-layer VAE: parameters, their gradients and Adam's two
    moments (4 copies), plus the activations of one step that autograd keeps (about twice
    the forward pass's: K × B rows through the decoder, B through the encoder)."""
    encoder = mlp_parameters([x_dim, *hidden_sizes]) + 2 * mlp_parameters(
        [hidden_sizes[-1] if hidden_sizes else x_dim, latent_dim])
    decoder = mlp_parameters([latent_dim, *reversed(hidden_sizes), x_dim])
    hidden = sum(hidden_sizes)
    rows = batch_size * num_particles
    activations = 2 * (rows * (2 * hidden + 3 * x_dim + 4 * latent_dim)
                       + batch_size * (2 * hidden + x_dim + 2 * latent_dim))
    return _FLOAT * (4 * (encoder + decoder) + activations)


def idle_cores() -> int:
    """The CPU cores not busy with other work now: the core count minus the one-minute load
    average, rounded, at least 1 (all cores where the load is unknown)."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # pragma: no cover - not on every platform
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def set_threads(requested: int | None = None) -> str | None:
    """Set torch's intra-op threads to ``requested`` (``None``: leave torch's choice, one per
    core or ``$OMP_NUM_THREADS``). Returns a note to show the user when the threads outnumber
    the cores idle now: on a machine busy with other jobs every op then waits at OpenMP's
    barriers for a thread that is not running, and a training step can take many times, even
    a hundred times, as long (measured: 412 s against 3.6 s per epoch of the default run, at a
    load average of 5 on 2 cores). The thread count is not chosen from the load by itself:
    the numbers of a run may depend on it (parallel reductions), and the same command should
    give the same numbers."""
    if requested is not None:
        torch.set_num_threads(requested)
    threads, idle = torch.get_num_threads(), idle_cores()
    if threads <= idle:
        return None
    return (f"note: {threads} torch threads with {idle} core(s) idle now (load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): steps may be many times "
            f"slower than with --threads {idle}")
