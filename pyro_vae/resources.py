"""Memory checked before it is allocated: what a model, a training step, an evaluation or a
picture needs, refused with the estimate and the limit when it cannot fit. The estimates count
float32 numbers and round up: they catch sizes off by orders of magnitude, not budget tightly.
"""

from __future__ import annotations

import math
import os

import torch

from pyro_vae.errors import ConfigError

__all__ = ["available_bytes", "check_fits", "flow_bytes", "format_bytes", "made_buffers",
           "made_parameters", "model_bytes", "reduce_hint", "training_bytes"]

_FLOAT = 4  # bytes of a float32
_TRANSFORM_BYTES = 64_000  # a flow transform's modules, masks' bookkeeping, autograd records


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
    ``$PYRO_VAE_MEMORY_LIMIT_MB`` megabytes when that is set."""
    device = torch.device(device)
    limit = os.environ.get("PYRO_VAE_MEMORY_LIMIT_MB")
    free = _free_bytes(device)
    if limit:
        try:
            megabytes = float(limit)
        except ValueError:
            megabytes = math.nan
        if not 0 < megabytes < math.inf:
            raise ConfigError(f"$PYRO_VAE_MEMORY_LIMIT_MB must be a positive number of "
                              f"megabytes, got {limit!r}")
        return min(free, int(megabytes * 1e6))
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


def reduce_hint(options: list[str]) -> str:
    """What to do when something cannot fit: ``reduce --a, --b or --c``.

    >>> reduce_hint(["--batch-size", "-K", "--latent-dim"]), reduce_hint([])
    ('reduce --batch-size, -K or --latent-dim', 'its sizes are fixed')
    """
    if not options:
        return "its sizes are fixed"
    return "reduce " + (" or ".join(options) if len(options) < 2 else
                        f"{', '.join(options[:-1])} or {options[-1]}")


def made_parameters(latent_dim: int, context_dim: int) -> int:
    """Weights and biases of one transform of an IAF guide: Pyro's conditional MADE
    ``(z, context) → 10·latent_dim → (shift, log scale)``."""
    hidden = 10 * latent_dim
    return (latent_dim + context_dim + 1) * hidden + (hidden + 1) * 2 * latent_dim


def made_buffers(latent_dim: int, context_dim: int) -> int:
    """Numbers in the buffers of that MADE: a mask per weight matrix, and the permutation."""
    hidden = 10 * latent_dim
    return (latent_dim + context_dim) * hidden + hidden * 2 * latent_dim + latent_dim


def flow_bytes(latent_dims: tuple[int, ...], hidden_sizes: tuple[tuple[int, ...], ...],
               flow_layers: int) -> int:
    """Memory of the IAF guides of a VAE with these layer sizes (the MADE networks, their masks,
    each transform's Python objects), counted before anything is built: even on the meta
    device a transform's masks are made on the CPU."""
    numbers = sum(made_parameters(d, h[-1] if h else d) + made_buffers(d, h[-1] if h else d)
                  for d, h in zip(latent_dims, hidden_sizes, strict=True))
    return flow_layers * (_FLOAT * numbers + _TRANSFORM_BYTES * len(latent_dims))


def model_bytes(model) -> int:
    """Memory of a model (built on the meta device, say): its parameters and buffers, and the
    Python objects of each flow transform."""
    numbers = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    capabilities = model.capabilities
    return _FLOAT * numbers + _TRANSFORM_BYTES * capabilities.flow_layers * capabilities.layers


def training_bytes(model, batch_size: int, num_particles: int) -> int:
    """Memory of training ``model``: the model, three more copies of its parameters (their
    gradients and Adam's two moments), and the activations of one step, which autograd keeps
    (about twice the forward pass's :meth:`~pyro_vae.models.VAEModel.bytes_per_row` for each
    of the K × B rows)."""
    params = sum(p.numel() for p in model.parameters())
    rows = batch_size * num_particles
    return model_bytes(model) + 3 * _FLOAT * params + 2 * rows * model.bytes_per_row()
