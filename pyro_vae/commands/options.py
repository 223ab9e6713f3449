"""Argument types and shared options of the ``pyro-vae`` subcommands. Each type turns a string
into a checked value or raises :class:`argparse.ArgumentTypeError`.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from pyro_vae.data import check_dataset_name
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.threads import max_threads

__all__ = ["MAX_SEED", "Parser", "existing_path", "non_negative_float", "non_negative_int",
           "output_folder", "positive_float", "positive_int", "run_command", "seed", "temperature",
           "thread_count"]

MAX_SEED = 2**32 - 1  # pyro.set_rng_seed seeds NumPy's legacy generator too: [0, 2³²)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_command(call: Callable[[], int | None], prog: str, *,
                interrupted: Callable[[], str] = lambda: "") -> int:
    """``call()``'s exit status; every failure a user can cause (the project's errors,
    ``OSError``, out of memory) is one line on stderr and exit status 2, and Ctrl-C exit
    status 130 with ``interrupted()`` (what was kept)."""
    try:
        return int(call() or 0)
    except (PyroVAEError, OSError) as e:
        return _fail(prog, str(e))
    except (MemoryError, torch.OutOfMemoryError) as e:
        return _fail(prog, f"out of memory ({' '.join(str(e).split())[:200]}); use smaller sizes")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (exit status 130).{interrupted()}", file=sys.stderr)
        return 130


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)  # one line
    return 2


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    value = _integer(text, "a positive integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def thread_count(text: str) -> int:
    """argparse type: a count of threads, from 1 to :func:`~pyro_vae.threads.max_threads`."""
    value = _integer(text, "a positive integer")
    if not 1 <= value <= max_threads():
        raise argparse.ArgumentTypeError(f"expected an integer in [1, {max_threads()}], got "
                                         f"{value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = _integer(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def seed(text: str) -> int:
    """argparse type: a seed, an integer in [0, 2³² − 1]."""
    value = _integer(text, f"an integer in [0, {MAX_SEED}]")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {MAX_SEED}], got {value}")
    return value


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _number(text, "a positive number")
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number ≥ 0."""
    value = _number(text, "a number >= 0")
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


MAX_TEMPERATURE = 100.0  # z = T·ε: beyond this the decoder sees z far outside its training range


def temperature(text: str) -> float:
    """argparse type: a sampling temperature in [0, 100]."""
    value = _number(text, f"a number in [0, {MAX_TEMPERATURE:g}]")
    if not 0 <= value <= MAX_TEMPERATURE:
        raise argparse.ArgumentTypeError(
            f"expected a number in [0, {MAX_TEMPERATURE:g}] (1 samples the prior), got {value}")
    return value


def existing_path(text: str) -> Path:
    """argparse type: a file or folder that exists."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return path


def output_folder(parser: argparse.ArgumentParser, path: Path, option: str = "--out") -> Path:
    """Create the folder ``path`` for a script's outputs once its arguments are checked, so
    that a run cannot end, after its work, unable to write: ``parser``'s one-line error if it
    cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        parser.error(f"{option} {path}: cannot write there ({e.strerror or e})")
    return path


def dataset_name(text: str) -> str:
    """argparse type: a data set's name, or an .npz file."""
    try:
        return check_dataset_name(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, except where there is none (``None``, or a flag
    that is off), and keeps the description's own line breaks. Used by the examples."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default in (None, False, argparse.SUPPRESS) or "%(default)" in text
                or "default:" in text or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)".strip()

    def _fill_text(self, text, width, indent):
        return "\n".join(indent + line for line in text.splitlines())
