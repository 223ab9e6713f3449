"""The Pyro handlers the VAE's program runs under: the data plate (with the minibatch scale),
the KL weight β of the latent sites, and the registration of its modules in Pyro's param
store."""

from __future__ import annotations

import contextlib

import pyro
from pyro import poutine

from pyro_vae import checks
from pyro_vae.errors import ConfigError

__all__ = ["data_plate", "latent_weight", "modules_unregistered", "register_modules"]


def register_modules(vae, **modules) -> None:
    """``pyro.module(vae.prefix + name, module)`` for each module given (``None``: skipped),
    unless :func:`modules_unregistered` is in force: SVI and Pyro's JIT-compiled ELBOs find
    the parameters through Pyro's param store, while a differentiable loss stepped by a torch
    optimizer over ``vae.parameters()`` does not need it, and registering costs a Pyro message
    per parameter at every step."""
    if getattr(vae, "_registers_modules", True):
        for name, module in modules.items():
            if module is not None:
                pyro.module(vae.prefix + name, module)


@contextlib.contextmanager
def modules_unregistered(vae):
    """Within the block, ``vae``'s model and guide do not register their modules with Pyro's
    param store (see :func:`register_modules`); the numbers are the same."""
    previous = getattr(vae, "_registers_modules", True)
    # a plain flag: written past nn.Module.__setattr__, which costs ~5 µs a call at every step
    vae.__dict__["_registers_modules"] = False
    try:
        yield vae
    finally:
        vae.__dict__["_registers_modules"] = previous


@contextlib.contextmanager
def data_plate(name: str, batch_size: int, num_data: int | None, plate: bool, device):
    """The data plate ``name`` over the B rows of x (nothing when not ``plate``); with
    ``num_data`` the log-densities are scaled by num_data / B so that a minibatch loss estimates
    the full-data loss. The plate must take the rightmost batch dimension, x's: inside another
    plate of the caller's it would not, and the program would broadcast against that plate."""
    if num_data is not None:
        checks.integer("num_data", num_data)
    checks.instance("plate", plate, bool)
    if not plate:
        yield
        return
    frame = pyro.plate(name, batch_size, device=device)
    with frame:
        if frame.dim != -1:
            outer = [f.name for f in pyro.poutine.runtime.get_plates() if f.dim == -1]
            raise ConfigError(f"the VAE was called inside the plate {outer[0]!r}, which holds "
                              "the rightmost batch dimension, x's: pass plate=False and let "
                              "that plate index the datapoints")
        scaled = num_data is not None and num_data != batch_size
        with poutine.scale(scale=num_data / batch_size) if scaled else contextlib.nullcontext():
            yield


def latent_weight(beta: float):
    """The context of a latent site under the KL weight β: its log-densities (and a closed-form
    KL) times β; at β = 0, where :func:`pyro.poutine.scale` refuses, masked out instead."""
    if beta == 1.0:
        return contextlib.nullcontext()
    return poutine.scale(scale=beta) if beta > 0 else poutine.mask(mask=False)
