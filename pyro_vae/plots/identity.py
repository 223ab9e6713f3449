"""Pictures of the identity the package measures,

    log p(x) = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)) + KL(q(z|x) ‖ p(z|x)),
               └──────────── the ELBO = −loss ─────────┘

and of how it was measured: the decomposition per test image (with the inference gaps when
they were measured), q(z|x) against the exact posterior of a two-dimensional latent space, and
AIS's acceptance and step size along the annealing path. Every figure is in nats.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pyro_vae.errors import ConfigError
from pyro_vae.models.interface import check_model
from pyro_vae.plots.canvas import figure, numpy_of, save

__all__ = ["plot_ais_diagnostics", "plot_elbo_decomposition", "plot_posterior_vs_guide",
           "posterior_and_guide_on_grid"]

_COLORS = {"loglik": "tab:blue", "kl_prior": "tab:red", "kl_post": "tab:green",
           "amortization": "tab:olive", "approximation": "tab:cyan"}


def plot_elbo_decomposition(per_datapoint: dict, path, *, images: int = 12,
                            log_px_from: str = "AIS", title: str = "") -> Path:
    """For the first ``images`` datapoints and for the mean over all, a staircase in three
    lanes: from 0 down to E_q[log p(x|z)]; on from there down by KL(q ‖ p(z)) to the ELBO; back
    up from the ELBO by KL(q ‖ p(z|x)) = log p(x) − ELBO to log p(x), split into the
    amortization and approximation gaps when ``per_datapoint`` holds them.

    :param per_datapoint: ``(N,)`` arrays: ``expected_loglik``, ``kl_to_prior``, ``log_px``,
        and optionally ``amortization`` and ``approximation``.
    """
    missing = [k for k in ("expected_loglik", "kl_to_prior", "log_px") if k not in per_datapoint]
    if missing:
        raise ConfigError(f"per_datapoint lacks {', '.join(missing)}: it needs expected_loglik, "
                          "kl_to_prior and log_px, (N,) each")
    columns = {k: numpy_of(v).astype(float) for k, v in per_datapoint.items()}
    n = min(images, columns["log_px"].shape[0])
    rows = [(f"image {i}", {k: v[i] for k, v in columns.items()}) for i in range(n)]
    rows.append((f"mean of {columns['log_px'].shape[0]}",
                 {k: float(np.mean(v)) for k, v in columns.items()}))
    fig = figure(8.5, 0.55 * len(rows) + 2.4)
    ax = fig.add_subplot()
    gaps = "amortization" in columns
    lane = 0.26  # three lanes per image: the reconstruction, the penalty, the gap
    for y, (_, r) in enumerate(rows):
        loglik, elbo = r["expected_loglik"], r["expected_loglik"] - r["kl_to_prior"]
        ax.barh(y - lane, loglik, color=_COLORS["loglik"], height=lane)
        ax.barh(y, -r["kl_to_prior"], left=loglik, color=_COLORS["kl_prior"], height=lane)
        if gaps:
            ax.barh(y + lane, r["amortization"], left=elbo, color=_COLORS["amortization"],
                    height=lane)
            ax.barh(y + lane, r["approximation"], left=elbo + r["amortization"],
                    color=_COLORS["approximation"], height=lane)
        else:
            ax.barh(y + lane, r["log_px"] - elbo, left=elbo, color=_COLORS["kl_post"],
                    height=lane)
        ax.vlines(r["log_px"], y - 1.6 * lane, y + 1.6 * lane, color="k", linewidth=1.5)
        ax.annotate(f"log p(x) {r['log_px']:.1f}", (r["log_px"], y - lane), xytext=(4, -3),
                    textcoords="offset points", fontsize=7)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    low = min(r["expected_loglik"] - r["kl_to_prior"] for _, r in rows)
    ax.set_xlim(1.08 * low, 0)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("nats (log-probabilities and KL divergences of each image)")
    parts = [("loglik", "E_q[log p(x|z)]: how well z reconstructs x"),
             ("kl_prior", "− KL(q(z|x) ‖ p(z)): the ELBO's penalty")]
    parts += ([("amortization", "+ amortization gap"),
               ("approximation", "+ approximation gap")] if gaps else
              [("kl_post", "+ KL(q(z|x) ‖ p(z|x)) = log p(x) − ELBO")])
    handles = [Patch(color=_COLORS[key]) for key, _ in parts]
    handles.append(Line2D([], [], color="k", marker="|", linestyle="", markersize=10))
    labels = [label for _, label in parts] + [f"log p(x) ({log_px_from})"]
    ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09),
              ncols=2, frameon=False)
    ax.set_title(title or "log p(x) = E_q[log p(x|z)] − KL(q ‖ p(z)) + KL(q ‖ p(z|x)); the ELBO "
                 "(where the red bar ends) is −loss", fontsize=9)
    return save(fig, path)


@torch.no_grad()
def posterior_and_guide_on_grid(model, x: torch.Tensor, *, steps: int = 120):
    """For one datapoint ``x`` (shape ``(1, D)``) of a layered model with one two-dimensional
    latent layer: axes ``a``, ``b`` (``(steps,)``) over the region where the guide and the
    posterior have their mass, and on the grid they span (``(steps, steps)``, rows along
    ``b``) log p(z|x) and log q(z|x), each normalized to sum to one over the grid, in nats."""
    check_model(model, "the posterior on a grid", layered=True)
    if model.capabilities.layers != 1 or model.latent_dim != 2:
        raise ConfigError(f"the posterior on a grid needs one two-dimensional latent layer; this "
                          f"model has {model.capabilities.layers} of size {model.latent_dim} "
                          "(the top one)")
    z = model.guide_path(x, num_samples=400).zs[0][:, 0]  # (400, 2)
    lows, highs = _around(z.mean(0), z.std(0))
    # Where the posterior lies: its mean and spread on a grid over the guide's region and the
    # prior's, widened while the posterior's region runs past it.
    search = torch.minimum(lows, torch.full_like(lows, -5)), torch.maximum(highs, torch.full_like(
        highs, 5))
    for _ in range(8):
        _, _, grid = _grid(*search, steps)
        weights = _log_joint(model, x, grid)[:, 0].softmax(0)[:, None]
        mean = (weights * grid[:, 0]).sum(0)
        post = _around(mean, (weights * (grid[:, 0] - mean) ** 2).sum(0).sqrt())
        if (post[0] >= search[0]).all() and (post[1] <= search[1]).all():
            break
        search = torch.minimum(search[0], post[0]), torch.maximum(search[1], post[1])
    a, b, grid = _grid(torch.minimum(lows, post[0]), torch.maximum(highs, post[1]), steps)
    guide = model.guide_path(x, u=model.pull_back(x, [grid]))
    log_q = guide.log_q[0] - guide.log_det

    def normalized(v):
        return (v - torch.logsumexp(v.flatten(), 0)).reshape(steps, steps)

    return a, b, normalized(_log_joint(model, x, grid)), normalized(log_q)


def _around(center: torch.Tensor, sd: torch.Tensor):
    """Four standard deviations (at least 0.8) each way of ``center``."""
    spread = 4 * sd.clamp_min(0.2)
    return center - spread, center + spread


def _grid(lows: torch.Tensor, highs: torch.Tensor, steps: int):
    """Axes from ``lows`` to ``highs`` and the ``(steps², 1, 2)`` points of their grid."""
    a, b = (torch.linspace(float(lo), float(hi), steps, dtype=lows.dtype)
            for lo, hi in zip(lows, highs, strict=True))
    return a, b, torch.stack(torch.meshgrid(a, b, indexing="xy"), -1).reshape(-1, 1, 2)


def _log_joint(model, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return model.log_likelihood(x, grid) + model.log_prior([grid])[0]


def plot_posterior_vs_guide(model, x: torch.Tensor, path, *, images: int = 4,
                            steps: int = 120) -> Path:
    """For the first ``images`` datapoints of a layered model with one two-dimensional latent
    layer: the exact posterior p(z|x) ∝ p(x|z) p(z) on a grid (filled contours) against the
    guide q(z|x) (line contours), from :func:`posterior_and_guide_on_grid`. Their
    KL(q ‖ p(z|x)) is the gap between the ELBO and log p(x)."""
    n = min(images, x.shape[0])
    fig = figure(3.2 * n, 3.5)
    for i in range(n):
        a, b, log_post, log_q = (numpy_of(v) for v in posterior_and_guide_on_grid(
            model, x[i : i + 1], steps=steps))
        ax = fig.add_subplot(1, n, i + 1)
        ax.contourf(a, b, np.exp(log_post), levels=12, cmap="Greys")
        ax.contour(a, b, np.exp(log_q - log_q.max()), levels=[0.05, 0.3, 0.6, 0.9],
                   colors="tab:red", linewidths=1)
        ax.set_title(f"image {i}", fontsize=9)
        ax.set_xlabel("z₁", fontsize=8)
        if i == 0:
            ax.set_ylabel("z₂", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("the exact posterior p(z|x) (grey) against the guide q(z|x) (red)",
                 fontsize=10)
    return save(fig, path)


def plot_ais_diagnostics(by_step: dict, path, *, is_vs_ais: Sequence | None = None) -> Path:
    """AIS along the annealing path: the mean HMC acceptance (with its target) and step size
    of the transition at each β_t (``by_step``: ``beta``, ``acceptance``, ``step_size``, as
    the report holds them); with ``is_vs_ais`` = (IS estimates, AIS estimates) of the same
    images, the one against the other, image by image."""
    beta = np.asarray(by_step["beta"], dtype=float)
    acc = np.asarray([np.nan if v is None else v for v in by_step["acceptance"]], dtype=float)
    step = np.asarray([np.nan if v is None else v for v in by_step["step_size"]], dtype=float)
    panels = 3 if is_vs_ais is not None else 2
    fig = figure(4.2 * panels, 3.8)
    ax = fig.add_subplot(1, panels, 1)
    ax.plot(beta, acc, ".-", markersize=3)
    if "target" in by_step:
        ax.axhline(by_step["target"], color="grey", linestyle="--", label="target")
        ax.legend(fontsize=8)
    ax.set(xlabel="β (0: the start, 1: the posterior)", ylabel="HMC acceptance probability",
           ylim=(0, 1.02))
    ax = fig.add_subplot(1, panels, 2)
    ax.plot(beta, step, ".-", markersize=3, color="tab:orange")
    ax.set(xlabel="β", ylabel="leapfrog step size (units of z)", yscale="log")
    if is_vs_ais is not None:
        est_is, est_ais = (np.asarray(v, dtype=float) for v in is_vs_ais)
        ax = fig.add_subplot(1, panels, 3)
        ax.scatter(est_is, est_ais, s=6, alpha=0.6)
        lims = [min(est_is.min(), est_ais.min()), max(est_is.max(), est_ais.max())]
        ax.plot(lims, lims, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel="log p(x) by IS (nats)", ylabel="log p(x) by AIS (nats)",
               title=f"AIS − IS: {np.mean(est_ais - est_is):+.2f} nats on average")
    fig.suptitle("AIS along its annealing path", fontsize=10)
    return save(fig, path)
