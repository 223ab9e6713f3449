"""The ``pyro-vae`` command line: ``train``, ``evaluate``, ``sample`` and ``plot`` (one module
each in :mod:`pyro_vae.commands`). Every failure a user can cause ends in one line on stderr and
exit status 2, never a traceback; Ctrl-C ends with exit status 130 and says what was saved.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pyro_vae.commands.options import Parser, run_command

__all__ = ["COMMANDS", "build_parser", "main"]

# Subcommand name → module with ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS = {
    "train": "pyro_vae.commands.train",
    "evaluate": "pyro_vae.commands.evaluate",
    "sample": "pyro_vae.commands.sample",
    "plot": "pyro_vae.commands.plot",
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pyro-vae",
        description="Variational autoencoders as Pyro programs. All figures are in nats per "
        "datapoint.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
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
    return run_command(lambda: args._run(args), "pyro-vae", interrupted=lambda: _saved(args))


def _saved(args) -> str:
    """What an interrupted ``train`` left on disk."""
    out = getattr(args, "out", None)
    if args.command != "train" or out is None:
        return ""
    checkpoint = Path(out) / "checkpoint.pt"
    if checkpoint.exists():
        return (f" The last finished epoch is saved in {checkpoint}; continue with: "
                f"pyro-vae train --resume {out}")
    return " No epoch had finished: nothing was saved."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
