"""The ``pyro-vae`` command line: ``train`` (and the subcommands listed in :data:`COMMANDS`).

Errors the user can cause (bad arguments, bad files, a diverged run) end with one line on
stderr, ``pyro-vae: error: ...``, and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pyro_vae.errors import PyroVAEError

__all__ = ["COMMANDS", "main"]

# Subcommand name → module with ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS = {
    "train": "pyro_vae.commands.train",
    "plot": "pyro_vae.commands.plot",
    "sample": "pyro_vae.commands.sample",
    "evaluate": "pyro_vae.commands.evaluate",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyro-vae",
        description="Variational autoencoders as Pyro programs. All figures are in nats per "
        "datapoint.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0],
                           description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (PyroVAEError, OSError) as e:  # OSError: a full disk, a folder we may not write
        print(f"pyro-vae: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        where = f" The last finished epoch is saved in {out}." if out else ""
        print(f"pyro-vae: interrupted.{where}", file=sys.stderr)
        return 130


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return path


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
