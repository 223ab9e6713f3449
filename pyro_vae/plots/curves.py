"""Figures of merit against training time and sample size: learning curves, the log p(x)
estimate against K, and the Pareto k̂ histogram. Every axis is in nats per datapoint and says
whether it shows a bound (ELBO, IWAE_K) or an estimate of log p(x).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from pyro_vae.errors import DataError
from pyro_vae.evaluation.psis import PARETO_K_THRESHOLDS
from pyro_vae.plots.canvas import colormap, figure, fit_ylim, numpy_of, save

__all__ = ["plot_comparison", "plot_learning_curves", "plot_log_px_vs_k", "plot_pareto_k"]


def plot_learning_curves(runs: Sequence[tuple[str, dict]], path) -> Path:
    """Save train and test curves of one or several runs, against epochs (left) and
    wall-clock time (right), for comparing estimators.

    :param runs: ``(label, metrics)`` pairs, ``metrics`` as in a run's ``metrics.json``
        (a dict with ``"epochs"``: per-epoch records with ``epoch``, ``train_objective_nats``,
        ``train_objective``, ``test_elbo``, ``wall_seconds``).

    Test curves (solid) are the ELBO on the test set after each epoch; train curves (dashed)
    are the training objective averaged over the epoch's minibatches as they were seen:
    the ELBO, IWAE_K (a tighter bound), or a β-weighted ELBO (not a bound when β < 1).
    """
    if not runs:
        raise DataError("plot_learning_curves needs at least one run")
    fig = figure(12.0, 4.8)
    by_epoch, by_time = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    cmap = colormap("tab10")
    values: list[float] = []
    clipped = False
    for i, (label, metrics) in enumerate(runs):
        records = metrics.get("epochs") or []
        if not records:
            raise DataError(f"{label}: no finished epoch in its metrics")
        epochs = [r["epoch"] for r in records]
        seconds = [r["wall_seconds"] for r in records]
        train = [r["train_objective_nats"] for r in records]
        test = [r["test_elbo"] for r in records]
        objective = records[-1].get("train_objective", "objective")
        # The y-axis fits what follows the first epochs, whose figures can be hundreds of
        # nats lower and would flatten the rest: the train objective (an average over a
        # model changing fast) after epoch 1, the test ELBO after the first tenth.
        values += train[1:] if len(train) > 3 else train
        values += test[len(test) // 10 :]
        clipped = clipped or min(train + test) < min(values)
        color = cmap(i % 10)
        for ax, t in ((by_epoch, epochs), (by_time, seconds)):
            marker = "o" if len(records) <= 30 else None
            ax.plot(t, test, "-", color=color, marker=marker, markersize=3,
                    label=f"{label}: test ELBO")
            ax.plot(t, train, "--", color=color, alpha=0.7, label=f"{label}: train {objective}")
    by_epoch.set_xlabel("epoch")
    by_time.set_xlabel("wall-clock time (s, training and test evaluation)")
    for ax in (by_epoch, by_time):
        ax.set_ylabel("nats per datapoint (higher is better)")
        ax.grid(alpha=0.3)
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (by_epoch, by_time):
        fit_ylim(ax, values)
    by_epoch.legend(fontsize=8, loc="lower right")
    below = "; the first epochs lie below the axes" if clipped else ""
    fig.suptitle(f"learning curves: ELBO and IWAE_K are lower bounds on log p(x){below}",
                 fontsize=10)
    return save(fig, path)


def plot_comparison(runs: Sequence[tuple[str, dict, dict | None]], path) -> Path:
    """Save one figure comparing several runs on what can be compared:

    - left, the **test ELBO** per epoch: the same bound (analytic KL, β = 1, one fixed-seed
      sample per image) for every run, whatever it was trained on;
    - middle, each run's **training objective** per epoch, named (ELBO, IWAE_5, β-ELBO):
      what that run maximized, not comparable across objectives (IWAE_K ≥ ELBO);
    - right, **log p(x)** from each run's ``evaluation.json`` (± 2 Monte Carlo standard
      errors), the figure that ranks models; a run not yet evaluated is listed as such.

    :param runs: ``(label, metrics, evaluation or None)`` per run, as a run folder holds them.
    """
    if not runs:
        raise DataError("plot_comparison needs at least one run")
    fig = figure(15.0, 4.8)
    test_ax, train_ax, log_px_ax = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    cmap = colormap("tab10")
    tests, trains = [], []
    for i, (label, metrics, _) in enumerate(runs):
        records = metrics.get("epochs") or []
        if not records:
            raise DataError(f"{label}: no finished epoch in its metrics")
        epochs = [r["epoch"] for r in records]
        test = [r["test_elbo"] for r in records]
        train = [r["train_objective_nats"] for r in records]
        tests += test[len(test) // 10 :]
        trains += train[1:] if len(train) > 3 else train
        objective = records[-1]["train_objective"]
        test_ax.plot(epochs, test, "-o" if len(records) <= 30 else "-", color=cmap(i % 10),
                     markersize=3, label=label)
        train_ax.plot(epochs, train, "--", color=cmap(i % 10), label=f"{label}: {objective}")
    for ax, values, title in ((test_ax, tests, "test ELBO (the same bound for every run)"),
                              (train_ax, trains, "training objective (each run's own)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per datapoint (higher is better)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fit_ylim(ax, values)
        ax.legend(fontsize=7, loc="lower right")
    _log_px_panel(log_px_ax, runs, cmap)
    fig.suptitle("comparison of runs: the test ELBO and log p(x) are comparable across "
                 "estimators; training objectives are not", fontsize=10)
    return save(fig, path)


def _log_px_panel(ax, runs, cmap) -> None:
    labels = [label for label, _, _ in runs]
    ys = list(range(len(runs)))
    shown = []
    for y, (i, (_, _, evaluation)) in zip(ys, enumerate(runs), strict=True):
        if evaluation is None:
            continue
        log_px = evaluation["log_px"]
        error = 2 * log_px["mc_stderr"] if isinstance(log_px.get("mc_stderr"), float) else None
        method = (f"IWAE_{evaluation['settings']['num_samples']}"
                  if evaluation.get("method") == "is" else str(evaluation["method"]).upper())
        ax.errorbar([log_px["mean"]], [y], xerr=None if error is None else [error], fmt="o",
                    color=cmap(i % 10), capsize=3)
        ax.annotate(f"{log_px['mean']:.2f} ({method})", (log_px["mean"], y), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
        shown.append(log_px["mean"])
    ax.set_yticks(ys, [lab if runs[y][2] is not None else f"{lab}\n(not evaluated)"
                       for y, lab in enumerate(labels)], fontsize=7)
    ax.set_ylim(-0.7, len(runs) - 0.3)
    ax.set_xlabel("log p(x), nats per datapoint (estimate, ± 2 s.e.)")
    ax.set_title("log p(x) from pyro-vae evaluate", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    if shown:
        low, high = min(shown), max(shown)
        margin = 0.25 * (high - low) or 1.0
        ax.set_xlim(low - margin, high + 2 * margin)
    else:
        ax.text(0.5, 0.5, "no run evaluated yet:\npyro-vae evaluate RUN_DIR", ha="center",
                va="center", transform=ax.transAxes, fontsize=9)


def plot_log_px_vs_k(ks: Sequence[int], log_px: Sequence[float], path, *,
                     stderr: Sequence[float] | None = None, elbo: float | None = None,
                     label: str = "") -> Path:
    """Save the IWAE_K estimate of log p(x) (mean over test datapoints, ± 2 standard errors
    when ``stderr`` is given) against the number of importance samples K (log axis).

    IWAE_K is a lower bound on log p(x) that rises with K (Burda et al. 2016, theorem 1) and
    reaches log p(x) as K → ∞; K = 1 is the ELBO. ``elbo``, if given, is drawn as a line.
    """
    ks, log_px = list(ks), list(log_px)
    if not ks or len(ks) != len(log_px):
        raise DataError(f"need as many K as log p(x) values, got {len(ks)} and {len(log_px)}")
    fig = figure(6.5, 4.5)
    ax = fig.add_subplot()
    yerr = None if stderr is None else [2 * s for s in stderr]
    ax.errorbar(ks, log_px, yerr=yerr, fmt="o-", capsize=3,
                label="IWAE_K estimate of log p(x)" + (" (± 2 s.e.)" if yerr else ""))
    if elbo is not None:
        ax.axhline(elbo, color="grey", linestyle="--", label=f"test ELBO {elbo:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("K, importance samples per datapoint")
    ax.set_ylabel("log p(x), nats per datapoint")
    ax.grid(alpha=0.3, which="both")
    ax.margins(y=0.15)
    ax.legend(fontsize=8, loc="center right")
    ax.set_title(f"{label + ': ' if label else ''}log p(x) bound against K "
                 f"(K = {ks[-1]}: {log_px[-1]:.2f} nats)")
    return save(fig, path)


def plot_pareto_k(pareto_k: Sequence[float], path, *, num_samples: int | None = None) -> Path:
    """Save the histogram of per-datapoint Pareto k̂ of the importance weights p(x,z)/q(z|x)
    (Vehtari et al. 2024; Yao et al. 2018), with the thresholds of
    :data:`pyro_vae.evaluation.PARETO_K_THRESHOLDS`: below 0.5 the weights have a finite
    variance; above 0.7 the log p(x) estimate of that datapoint is unreliable, q(z|x) being
    too light-tailed a proposal for its posterior."""
    k = numpy_of(pareto_k).astype(float).ravel()
    undefined = int((~np.isfinite(k)).sum())  # NaN: not computed; −∞: bounded weights
    k = k[np.isfinite(k)]
    if k.size == 0:
        raise DataError("no finite Pareto k-hat values to plot")
    fig = figure(6.5, 4.5)
    ax = fig.add_subplot()
    ax.hist(k, bins=min(50, max(10, k.size // 20)), color="tab:blue", alpha=0.8)
    colors = ("tab:green", "tab:orange", "tab:red", "black")
    for i, threshold in enumerate(PARETO_K_THRESHOLDS):
        color = colors[min(i, len(colors) - 1)]
        share = float((k > threshold).mean())
        ax.axvline(threshold, color=color, linestyle="--",
                   label=f"k̂ > {threshold}: {100 * share:.1f}% of datapoints")
    ax.set_xlabel("Pareto k̂ of the importance weights (dimensionless)")
    ax.set_ylabel("test datapoints")
    ax.legend(fontsize=8)
    with_k = f", K = {num_samples}" if num_samples else ""
    left_out = f"; {undefined} without a finite k̂ left out" if undefined else ""
    ax.set_title(f"Pareto k̂ per datapoint ({k.size} datapoints{with_k}{left_out})",
                 fontsize=10)
    return save(fig, path)
