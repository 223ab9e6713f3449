"""What an option of an estimator is (α of ``renyi``, M of ``miwae`` and ``piwae``, β of
``ciwae``): a name, its command-line flags, its kind, default and range, declared once in the
registry (:mod:`.registry`), from which :func:`~pyro_vae.objectives.make_objective`,
:class:`~pyro_vae.config.TrainConfig` and the command line take it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyro_vae.errors import ConfigError

__all__ = ["Option"]


@dataclass(frozen=True, kw_only=True)
class Option:
    """An option of one or more estimators: a keyword of :func:`make_objective`, a key of
    ``TrainConfig.estimator_options`` and a command-line flag, with its default and range.

    >>> Option(name="alpha", flags=("--alpha",), metavar="ALPHA", kind=float, default=0.5,
    ...        low=0.0, high=1.0, open_low=True, open_high=True, help="...").describe()
    'a number in (0, 1)'
    """

    name: str
    flags: tuple[str, ...]  # the command line's, e.g. ("--num-estimates", "-M")
    metavar: str  # its value in the command line's help
    kind: type  # int or float
    default: int | float
    low: float
    high: float = math.inf
    open_low: bool = False  # the range excludes low (high is excluded when open_high)
    open_high: bool = False
    help: str  # what it sets, and why it exists
    multiplies_particles: bool = False  # the samples drawn per datapoint are K × this

    def describe(self) -> str:
        if self.kind is int:
            return f"an integer >= {self.low:g}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"a number in {left}{self.low:g}, {self.high:g}{right}"

    def check(self, value):
        """``value`` if it is of this option's kind and range; :class:`ConfigError` naming the
        option otherwise."""
        kinds = (int,) if self.kind is int else (int, float)
        ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > self.low if self.open_low else value >= self.low)
        ok = ok and (value < self.high if self.open_high else value <= self.high)
        if not ok:
            raise ConfigError(f"{self.name} ({self.flags[0]}) must be {self.describe()}, got "
                              f"{value!r}")
        return self.kind(value)
