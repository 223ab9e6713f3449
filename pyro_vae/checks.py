"""Argument checks, one copy each, for every entry point of the package. Each returns the value
(converted where that is safe) or raises a one-line error that names the argument, what was
expected and what was found: :class:`~pyro_vae.errors.ConfigError` for a value out of range,
:class:`~pyro_vae.errors.ConfigTypeError` for the wrong type, and for tensors
:class:`~pyro_vae.errors.DataError` and :class:`~pyro_vae.errors.DataTypeError`.

>>> integer("num_samples", 5000)
5000
>>> integer("num_samples", "5")
Traceback (most recent call last):
    ...
pyro_vae.errors.ConfigTypeError: num_samples must be a positive integer, got '5' (str)
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from pyro_vae.errors import ConfigError, ConfigTypeError, DataError, DataTypeError

__all__ = ["MAX_SEED", "choice", "context", "describe_range", "device", "instance", "integer",
           "is_int", "is_number", "is_plain_batch", "modules", "number", "real_numbers", "seed",
           "size_or_sizes", "sizes", "sizes_per_layer", "tensor", "validated"]

MAX_SEED = 2**32 - 1  # pyro.set_rng_seed also seeds NumPy's legacy generator: [0, 2³²)


def is_int(value, low: int | None = None) -> bool:
    """Whether ``value`` is an integer (a NumPy one too; not a ``bool``), at least ``low``."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and (low is None or value >= low))


def is_number(value) -> bool:
    """Whether ``value`` is a finite real number (an ``int`` or ``float``, not a ``bool``)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def describe_range(low=None, high=None, *, open_low=False, open_high=False,
                   integer: bool = False) -> str:
    """``'an integer >= 1'``, ``'a number in (0, 1)'``, ``'a finite number'``, ...

    >>> describe_range(0, 1, open_low=True, open_high=True)
    'a number in (0, 1)'
    """
    kind = "an integer" if integer else "a number" if low is not None or high is not None \
        else "a finite number"
    if high is None and ((integer and low == 1) or (not integer and low == 0 and open_low)):
        return f"a positive {'integer' if integer else 'number'}"
    fmt = "d" if integer else "g"  # integers exactly: 2**32 - 1, not 4.29497e+09
    if low is not None and high is not None:
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        return f"{kind} in {left}{low:{fmt}}, {high:{fmt}}{right}"
    if low is not None:
        return f"{kind} {'>' if open_low else '>='} {low:{fmt}}"
    if high is not None:
        return f"{kind} {'<' if open_high else '<='} {high:{fmt}}"
    return kind


def _shown(value) -> str:
    shown = reprlib.repr(value)  # a long list or string shown by its start
    return f"{shown} ({type(value).__name__})" if not isinstance(value, (int, float)) \
        or isinstance(value, bool) else shown


def integer(name: str, value, *, low: int | None = 1, high: int | None = None,
            optional: bool = False) -> int | None:
    """``value`` if it is an integer in [low, high] (or, when ``optional``, ``None``)."""
    if value is None and optional:
        return None
    what = describe_range(low, high, integer=True)
    if not is_int(value):
        raise ConfigTypeError(f"{name} must be {what}, got {_shown(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return int(value)


def number(name: str, value, *, low: float | None = None, high: float | None = None,
           open_low: bool = False, open_high: bool = False) -> float:
    """``value`` as a float if it is a finite number in the range (ends open or closed)."""
    what = describe_range(low, high, open_low=open_low, open_high=open_high)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigTypeError(f"{name} must be {what}, got {_shown(value)}")
    ok = math.isfinite(value)
    if low is not None:
        ok = ok and (value > low if open_low else value >= low)
    if high is not None:
        ok = ok and (value < high if open_high else value <= high)
    if not ok:
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return float(value)


def seed(name: str, value) -> int:
    """A seed: an integer in [0, 2³² − 1]."""
    return integer(name, value, low=0, high=MAX_SEED)


def choice(name: str, value, known: Iterable):
    """``value`` if it is one of ``known``."""
    known = list(known)
    if not isinstance(value, str) or value not in known:
        raise ConfigError(f"unknown {name} {value!r}; known: {', '.join(map(str, known))}")
    return value


def sizes(name: str, values, *, allow_empty: bool = True) -> tuple[int, ...]:
    """A sequence of positive integers (layer sizes) as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigTypeError(f"{name} must be a sequence of positive integers, got "
                              f"{_shown(values)}")
    values = tuple(values)
    if not all(is_int(v, 1) for v in values) or (not values and not allow_empty):
        raise ConfigError(f"{name} must be positive integers, got {values!r}")
    return values


def instance(name: str, value, cls: type | tuple[type, ...], *, optional: bool = False):
    """``value`` if it is a ``cls`` (or None, when ``optional``)."""
    if not isinstance(value, cls) and not (optional and value is None):
        names = [c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,))]
        article = "an" if names[0][0] in "AEIOU" else "a"
        raise ConfigTypeError(f"{name} must be {article} {' or '.join(names)}, got "
                              f"{_shown(value)}")
    return value


def validated(name: str, value, cls: type, *, default=None):
    """``value.validate()`` if ``value`` is a ``cls`` (``default`` stands for None when given),
    for the settings objects that the evaluators take."""
    if value is None and default is not None:
        value = default
    return instance(name, value, cls).validate()


def size_or_sizes(name: str, value) -> tuple[int, ...]:
    """One positive integer, or a non-empty sequence of them, as a tuple."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return sizes(name, value, allow_empty=False)
    return (integer(name, value),)


def sizes_per_layer(name: str, value, layers: int) -> tuple[tuple[int, ...], ...]:
    """Sizes for each of ``layers`` layers: a flat sequence is the one layer's, else one
    sequence per layer."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigTypeError(f"{name} must be a sequence of positive integers, got {value!r}")
    per_layer = tuple(value) if any(isinstance(v, Sequence) for v in value) else (tuple(value),)
    if len(per_layer) != layers:
        raise ConfigError(f"{name} gives {len(per_layer)} layers' hidden sizes for {layers} "
                          "stochastic layers: give one sequence per layer")
    return tuple(sizes(name, v) for v in per_layer)


def modules(name: str, value, count: int) -> list[torch.nn.Module] | None:
    """The torch modules given for ``name`` (one, or a sequence of ``count``), or None."""
    if value is None:
        return None
    if not isinstance(value, (torch.nn.Module, Sequence)):
        raise ConfigTypeError(f"{name} must be a torch module or a sequence of {count}, got "
                              f"{_shown(value)}")
    value = [value] if isinstance(value, torch.nn.Module) else list(value)
    if len(value) != count or not all(isinstance(m, torch.nn.Module) for m in value):
        raise ConfigError(f"{name}: expected {count} torch modules, got {len(value)}")
    return value


def is_plain_batch(x, width: int, reference: torch.Tensor | None) -> bool:
    """Whether ``x`` is a non-empty ``(B, width)`` tensor of ``reference``'s dtype on its (not
    meta) device, without gradients: :func:`tensor`'s common case in a few cheap reads, for
    the first reads of a training step, which find the caches swept by the optimizer (there
    ``x.device`` alone costs ~17 µs and :func:`tensor` ~40 µs)."""
    shape = x.shape if type(x) is torch.Tensor else None
    return (shape is not None and reference is not None and len(shape) == 2
            and shape[1] == width and shape[0] > 0 and x.dtype is reference.dtype
            and ((x.is_cpu and reference.is_cpu) or (x.device == reference.device
                                                     and not x.is_meta))
            and not x.requires_grad)


def tensor(name: str, x, *, shape: Sequence[int | None] | None = None, min_dims: int | None = None,
           dtype: torch.dtype | None = None, device: torch.device | None = None,
           nonempty: bool = True, finite: bool = True, floating: bool = True) -> torch.Tensor:
    """``x`` if it is a (with ``floating``, floating) tensor of ``dtype`` on ``device`` whose
    trailing dimensions match ``shape`` (``None``: any size; with ``min_dims`` more may lead),
    not empty and finite; the error names ``name``, the shape, the dtype or the offending values."""
    if not isinstance(x, torch.Tensor):
        raise DataTypeError(f"{name} must be a torch.Tensor, got a {type(x).__name__}")
    if shape is not None:
        leading = x.dim() - len(shape)
        if (leading != 0 if min_dims is None else x.dim() < min_dims or leading < 0) or any(
                s is not None and x.shape[leading + i] != s for i, s in enumerate(shape)):
            wanted = str(tuple("N" if s is None else s for s in shape)).replace("'", "")
            hint = ""
            if x.dim() == len(shape) - 1 and shape[-1] is not None and x.shape[-1] == shape[-1]:
                hint = f"; one datapoint is {name}.unsqueeze(0)"
            raise DataError(f"{name} must have shape {wanted}, found {tuple(x.shape)}{hint}")
    if floating and not x.is_floating_point():
        raise DataTypeError(f"{name} has dtype {x.dtype}, expected floating-point values: "
                            f"convert it with {name}.float()")
    if dtype is not None and x.dtype != dtype:
        raise DataTypeError(f"{name} has dtype {x.dtype}, the model's parameters {dtype}: "
                            f"convert it with {name}.to({dtype})")
    if device is not None and x.device != device and x.device != torch.device(device):
        raise DataError(f"{name} is on device {x.device}, the model on {device}: move it with "
                        f"{name}.to({str(device)!r})")
    if nonempty and x.numel() == 0:
        raise DataError(f"{name} is empty, shape {tuple(x.shape)}")
    if finite and x.device.type != "meta":
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise DataError(f"{name}: {bad} of {x.numel()} values are NaN or infinite")
    return x


def context(value, context_dim: int, beside: torch.Tensor, name: str = "x"):
    """``value`` if it is the conditioning input that networks of ``context_dim`` features read
    beside ``name``: ``None`` where they read none, else a finite ``(..., context_dim)`` tensor
    of ``beside``'s dtype and device, with a row for each of its rows (broadcasting)."""
    if value is None and context_dim:
        raise ConfigError(f"this VAE reads a context of {context_dim} features beside {name}: "
                          f"call it with ({name}, context)")
    if value is None:
        return None
    if not context_dim:
        raise ConfigError(f"this VAE reads no context: call it with {name} alone")
    tensor("context", value, shape=(None, context_dim), min_dims=2, dtype=beside.dtype,
           device=beside.device)
    rows, theirs = value.shape[:-1], beside.shape[:-1]
    if any(a != b and 1 not in (a, b) for a, b in zip(reversed(rows), reversed(theirs),
                                                      strict=False)):
        raise DataError(f"context has shape {tuple(value.shape)} and {name} "
                        f"{tuple(beside.shape)}: one row of context for each of {name}")
    return value


def real_numbers(name: str, values) -> torch.Tensor:
    """``values`` (a tensor, an array or nested lists) as a tensor of real numbers or bools."""
    try:
        values = values if isinstance(values, torch.Tensor) else np.asarray(values)
    except ValueError:  # rows of different lengths
        raise DataError(f"{name}: not an array (its rows differ in length)") from None
    kind = values.dtype.kind if isinstance(values, np.ndarray) else (
        "c" if values.is_complex() else "f")
    if kind not in "biuf":
        raise DataError(f"{name}: expected numbers (uint8 grey levels, or floats in [0, 1]), "
                        f"found dtype {values.dtype}")
    values = torch.as_tensor(values)
    # torch reduces no unsigned type but uint8 (min, max): the others as int64
    wide = values.dtype in (torch.uint16, torch.uint32, torch.uint64)
    return values.long() if wide else values


def device(value: str | torch.device) -> torch.device:
    """The torch device ``value``, ``cpu`` or ``cuda[:N]``; :class:`ConfigError` if it is
    unknown, or not on this machine."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {value!r}; use 'cpu' or 'cuda'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {value!r}; use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {value!r} requested but no CUDA GPU is available; use "
                          "--device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {value!r}: this machine has {torch.cuda.device_count()} "
                          "CUDA GPU(s)")
    return dev
