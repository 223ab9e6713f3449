"""Draw the pictures of one or more runs (PNG, in each run folder).

For each RUN_DIR: reconstructions beside their inputs, samples from the prior, the decoded
latent manifold (2-D latent space) or the PCA of the posterior means coloured by label, the
learning curves, and, when `pyro-vae evaluate` wrote evaluation.json there, log p(x) against
K and the histogram of Pareto k-hat. With several RUN_DIRs, also one figure comparing their
test ELBO (the same bound for every run), training objectives, and log p(x) where evaluated.

Example: pyro-vae plot runs/meanfield runs/iwae --compare-out compare.png
"""

from __future__ import annotations

from pathlib import Path

from pyro_vae.commands.options import existing_path
from pyro_vae.errors import DataError


def add_arguments(p) -> None:
    p.add_argument("run_dirs", type=existing_path, nargs="+", metavar="RUN_DIR",
                   help="folder written by pyro-vae train (metrics.json, checkpoint.pt)")
    p.add_argument("--compare-out", type=Path, metavar="FILE",
                   help="with several runs: where to save their comparison (default: "
                   "comparison.png in the current folder)")
    p.add_argument("--curves-only", action="store_true",
                   help="only learning curves; do not load the models")
    p.add_argument("--labels", nargs="+", metavar="LABEL",
                   help="one legend label per RUN_DIR (default: folder name and estimator)")


def run(args) -> int:
    """Draw the pictures of every RUN_DIR (and their comparison); exit status 0."""
    from pyro_vae.plots import plot_comparison, plot_learning_curves, write_run_figures
    from pyro_vae.runs import RunFolder

    runs = [RunFolder(d) for d in args.run_dirs]
    for run_folder in runs:
        if not run_folder.path.is_dir():
            raise DataError(f"{run_folder.path}: not a run folder (expected a folder with "
                            "metrics.json)")
    if args.labels is not None and len(args.labels) != len(runs):
        raise DataError(f"--labels: {len(args.labels)} labels for {len(runs)} runs")
    metrics = [r.read_metrics() for r in runs]
    labels = args.labels or [_label(r.path, m) for r, m in zip(runs, metrics, strict=True)]
    for run_folder, m, label in zip(runs, metrics, labels, strict=True):
        if args.curves_only:
            written = [plot_learning_curves([(label, m)], run_folder.picture("learning_curves"))]
        else:
            written = write_run_figures(run_folder, label=label)
        print(f"{run_folder.path}: {', '.join(p.name for p in written)}")
    if len(runs) > 1:
        out = args.compare_out or Path("comparison.png")
        evaluations = [r.read_evaluation() for r in runs]
        plot_comparison(list(zip(labels, metrics, evaluations, strict=True)), out)
        evaluated = sum(e is not None for e in evaluations)
        print(f"comparison of {len(runs)} runs (test ELBO, training objectives, and log p(x) "
              f"of the {evaluated} evaluated; nats per datapoint): {out}")
    return 0


def _label(run_dir: Path, metrics: dict) -> str:
    config = metrics["config"]
    k = config.get("num_particles")
    what = config["estimator"] + (f", K={k}" if k else "")
    name = run_dir.resolve().name
    return f"{name} ({what})" if what not in name else name
