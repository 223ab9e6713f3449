"""Argument types and shared options of the ``pyro-vae`` subcommands. Each type turns a string
into a checked value or raises :class:`argparse.ArgumentTypeError`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from pyro_vae.checks import MAX_SEED, describe_range
from pyro_vae.data import check_dataset_name
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.files import probe_folder
from pyro_vae.threads import max_threads

__all__ = ["MAX_SEED", "Parser", "existing_path", "non_negative_float", "non_negative_int",
           "output_folder", "positive_float", "positive_int", "run_command", "seed", "temperature",
           "thread_count"]


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


def _ranged(parse: Callable[[str], float], low=None, high=None, *, open_low: bool = False,
            note: str = "", what: str = "") -> Callable[[str], float]:
    """An argparse type: ``parse`` (``int`` or ``float``) of the text, finite, in the range
    (``what``, by default :func:`~pyro_vae.checks.describe_range`'s words); ``high`` may be a
    callable, read when an argument is checked."""
    def convert(text: str):
        top = high() if callable(high) else high

        def refused(got: str, why: str = "") -> argparse.ArgumentTypeError:
            words = what or describe_range(low, top, open_low=open_low, integer=parse is int)
            return argparse.ArgumentTypeError(f"expected {words}{why}, got {got}")

        try:
            value = parse(text)
        except ValueError:
            raise refused(repr(text)) from None
        in_range = ((low is None or value > low or (value == low and not open_low))
                    and (top is None or value <= top))
        if not (in_range and (parse is int or math.isfinite(value))):  # isfinite overflows
            raise refused(str(value), note)                             # on a huge int
        return value
    return convert


positive_int = _ranged(int, 1)  # an integer > 0
non_negative_int = _ranged(int, 0)  # an integer ≥ 0
seed = _ranged(int, 0, MAX_SEED)  # a seed: pyro.set_rng_seed seeds NumPy's legacy generator too
thread_count = _ranged(int, 1, max_threads)  # threads, from 1 to threads.max_threads()
positive_float = _ranged(float, 0, open_low=True)  # a finite number > 0
non_negative_float = _ranged(float, 0, what="a finite number >= 0")

MAX_TEMPERATURE = 100.0  # z = T·ε: beyond this the decoder sees z far outside its training range
temperature = _ranged(float, 0, MAX_TEMPERATURE, note=" (1 samples the prior)")


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
        probe_folder(path)
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
