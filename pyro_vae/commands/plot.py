"""Draw the pictures of one or more runs (PNG, next to their metrics.json).

For each RUN_DIR: reconstructions beside their inputs, samples from the prior, the decoded
latent manifold (2-D latent space) or the PCA of the posterior means coloured by label, the
learning curves, and, when `pyro-vae evaluate` wrote evaluation.json there, log p(x) against
K and the histogram of Pareto k̂. With several RUN_DIRs, also one figure of all their learning
curves (train objective and test ELBO, in nats per datapoint) for comparing estimators.

Example: pyro-vae plot runs/meanfield runs/iwae --compare-out runs/compare.png
"""

from __future__ import annotations

import os
from pathlib import Path

from pyro_vae.cli import existing_path
from pyro_vae.errors import DataError


def add_arguments(p) -> None:
    """The arguments of ``pyro-vae plot``."""
    p.add_argument("run_dirs", type=existing_path, nargs="+", metavar="RUN_DIR",
                   help="folder written by pyro-vae train (metrics.json, checkpoint.pt)")
    p.add_argument("--compare-out", type=Path, metavar="FILE",
                   help="with several runs: where to save the comparison of their learning "
                   "curves (default: learning_curves_comparison.png in their common folder)")
    p.add_argument("--curves-only", action="store_true",
                   help="only learning curves; do not load the models")
    p.add_argument("--labels", nargs="+", metavar="LABEL",
                   help="one legend label per RUN_DIR (default: folder name and estimator)")


def run(args) -> int:
    """Draw the pictures of every RUN_DIR (and their comparison); exit status 0."""
    from pyro_vae.plots import plot_learning_curves, read_json, write_run_figures

    run_dirs = [Path(d) for d in args.run_dirs]
    for d in run_dirs:
        if not d.is_dir():
            raise DataError(f"{d}: not a run folder (expected a folder with metrics.json)")
    if args.labels is not None and len(args.labels) != len(run_dirs):
        raise DataError(f"--labels: {len(args.labels)} labels for {len(run_dirs)} runs")
    metrics = [read_json(d / "metrics.json") for d in run_dirs]
    labels = args.labels or [_label(d, m) for d, m in zip(run_dirs, metrics, strict=True)]
    for d, m, label in zip(run_dirs, metrics, labels, strict=True):
        if args.curves_only:
            written = [plot_learning_curves([(label, m)], d / "learning_curves.png")]
        else:
            written = write_run_figures(d, label=label)
        print(f"{d}: {', '.join(p.name for p in written)}")
    if len(run_dirs) > 1:
        out = args.compare_out or _common_folder(run_dirs) / "learning_curves_comparison.png"
        plot_learning_curves(list(zip(labels, metrics, strict=True)), out)
        print(f"learning curves of {len(run_dirs)} runs (nats per datapoint): {out}")
    return 0


def _label(run_dir: Path, metrics: dict) -> str:
    config = metrics.get("config", {})
    estimator = config.get("estimator")
    k = config.get("num_particles")
    what = f"{estimator}" + (f", K={k}" if k else "") if estimator else ""
    name = run_dir.resolve().name
    return f"{name} ({what})" if what and what not in name else name


def _common_folder(run_dirs: list[Path]) -> Path:
    try:
        return Path(os.path.commonpath([d.resolve().parent for d in run_dirs]))
    except ValueError:  # different drives
        return Path.cwd()
