"""The thread policy on an idle and on a busy machine: ``pyro-vae train`` with ``--threads 1``,
``--threads 2`` (every core) and the default (:mod:`pyro_vae.threads`, timed as it runs).

    python -m benchmarks.threads                     # the table in benchmarks/README.md
    python -m benchmarks.threads --repeats 5 --train-size 20000
    python benchmarks/threads.py --quick --out /tmp/threads   # smoke run

Each cell runs the whole command in a process of its own, as a user does (one epoch on the
first ``--train-size`` MNIST images, ``$OMP_NUM_THREADS`` unset), ``--repeats`` times,
interleaved with the other settings so that drifts in the load hit all alike. "busy": one
more process spins on one core for the whole condition (a stand-in for another user's job).
Reported: the median epoch time (training steps only, from ``metrics.json``) and the median
wall time of the command; the default's ratio to the better fixed setting measured in the same
condition (the targets: ≤ 1.3 busy, ≤ 1.1 idle); and the test ELBO of each cell, which must
not depend on the threads. Writes ``OUT/threads.json`` and ``OUT/threads.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file, python benchmarks/threads.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

from benchmarks.common import (
    command_line,
    load_average,
    machine,
    markdown_table,
    output,
    run_main,
    write_results,
)
from pyro_vae.commands.options import Parser, positive_int

DEFAULT_OUT = Path("runs") / "benchmarks" / "threads"
TARGETS = {"idle": 1.1, "busy": 1.3}  # the default's time over the better fixed setting's


def _settings() -> dict[str, list[str]]:
    cores = os.cpu_count() or 1
    return {"1 thread": ["--threads", "1"], f"{cores} threads": ["--threads", str(cores)],
            "default": []}


def _train(folder: Path, options: list[str], train_size: int) -> dict:
    """One ``pyro-vae train`` epoch in a process of its own: its seconds and test ELBO."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    command = [sys.executable, "-m", "pyro_vae", "train", "--epochs", "1", "--train-size",
               str(train_size), "--test-size", "2000", "--out", str(folder), "--overwrite",
               "--quiet", "--no-plots", *options]
    t0 = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    epoch = json.loads((folder / "metrics.json").read_text())["epochs"][-1]
    return {"wall_seconds": wall, "epoch_seconds": epoch["epoch_seconds"],
            "test_elbo": epoch["test_elbo"], "threads": epoch.get("threads")}


def _condition(name: str, repeats: int, train_size: int, folder: Path, log) -> dict:
    spinner = None
    if name == "busy":  # one more process on one core, for the whole condition
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(2)
    try:
        load = [load_average()]
        cells: dict[str, list[dict]] = {label: [] for label in _settings()}
        for r in range(repeats):
            for label, options in _settings().items():
                cells[label].append(_train(folder / "run", options, train_size))
                log(f"{name}, {label}, repeat {r + 1}/{repeats}: "
                    f"{cells[label][-1]['epoch_seconds']:.2f} s an epoch")
        load.append(load_average())
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    summary = {label: {"epoch_seconds": statistics.median(c["epoch_seconds"] for c in runs),
                       "wall_seconds": statistics.median(c["wall_seconds"] for c in runs),
                       "test_elbo": sorted({c["test_elbo"] for c in runs}),
                       "chosen": [c["threads"] for c in runs], "runs": runs}
               for label, runs in cells.items()}
    best = min(v["epoch_seconds"] for k, v in summary.items() if k != "default")
    ratio = summary["default"]["epoch_seconds"] / best
    return {"cells": summary, "default_over_best": ratio, "target": TARGETS[name],
            "met": ratio <= TARGETS[name], "load_average_before_after": load}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="runs of each setting per condition (default 3)")
    parser.add_argument("--train-size", type=positive_int, default=60000,
                        help="training images of the epoch (default 60000: all)")
    parser.add_argument("--conditions", nargs="+", choices=tuple(TARGETS),
                        default=list(TARGETS), help="default: idle busy")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run that checks the script works (tests run it)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    log = output(args).log
    if args.quick:
        args.repeats, args.train_size, args.conditions = 1, 512, ["idle"]
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: _condition(name, args.repeats, args.train_size, Path(tmp), log)
                   for name in args.conditions}
    document = {"units": "seconds", "command": command_line("benchmarks.threads", argv),
                "machine": machine(), "train_size": args.train_size,
                "repeats": args.repeats, "conditions": results}
    rows = []
    for name, r in results.items():
        cells = r["cells"]
        rows.append([name, *(f"{c['epoch_seconds']:.2f} ({c['wall_seconds']:.1f})"
                             for c in cells.values()),
                     f"{r['default_over_best']:.2f} (≤ {r['target']}: "
                     f"{'met' if r['met'] else 'not met'})",
                     ", ".join(f"{e:.3f}" for e in sorted({v for c in cells.values()
                                                          for v in c["test_elbo"]})),
                     " → ".join(f"{v:.1f}" for v in r["load_average_before_after"] if v)])
    table = markdown_table(["machine", *(f"{k}: epoch s (command s)" for k in _settings()),
                            "default / best", "test ELBO", "load"], rows)
    write_results(args.out, "threads", document, table + "\n")
    log(table)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "benchmarks/threads.py"))
