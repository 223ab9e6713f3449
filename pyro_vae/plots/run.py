"""The pictures of a run folder: what ``pyro-vae train`` draws at the end of a run and
``pyro-vae plot`` on demand, read through :class:`~pyro_vae.runs.RunFolder`."""

from __future__ import annotations

from pathlib import Path

import torch

from pyro_vae.build import load_data
from pyro_vae.data import PreparedData
from pyro_vae.plots.canvas import device_of
from pyro_vae.plots.curves import plot_learning_curves, plot_log_px_vs_k, plot_pareto_k
from pyro_vae.plots.images import (
    LABEL_NAMES,
    plot_latent_embedding,
    plot_latent_manifold,
    plot_prior_samples,
    plot_reconstructions,
)
from pyro_vae.runs import RunFolder

__all__ = ["evaluation_figures", "write_run_figures"]


def write_run_figures(run: RunFolder | str | Path, *, vae=None,
                      data: PreparedData | None = None, label: str | None = None) -> list[Path]:
    """Write every picture that applies into the run folder and return their paths.

    :param vae: the trained VAE; default: rebuilt from the run's checkpoint.
    :param data: whose test images and labels are shown; default: the run's test set,
        prepared as in training.
    """
    run = RunFolder.of(run)
    metrics = run.read_metrics()
    written = [plot_learning_curves([(label or run.path.name, metrics)],
                                    run.picture("learning_curves"))]
    checkpoint = None
    if vae is None:
        vae, checkpoint = run.load_vae()
    if data is None:
        checkpoint = checkpoint or run.load_checkpoint()
        config = checkpoint.config
        config.device = "cpu"
        data = load_data(config, train=False)  # only the test set is shown
    image_shape = tuple(metrics["data"].get("image_shape") or data.dataset.image_shape)
    was_training = vae.training
    vae.eval()
    try:
        test = data.test.to(device_of(vae))
        written.append(plot_reconstructions(vae, test, image_shape,
                                            run.picture("reconstructions")))
        written.append(plot_prior_samples(vae, image_shape, run.picture("prior_samples")))
        if vae.latent_dim <= 2:
            written.append(plot_latent_manifold(vae, image_shape, run.picture("latent_manifold")))
        written.append(plot_latent_embedding(vae, test, data.test_labels,
                                             run.picture("latent_embedding"),
                                             label_names=LABEL_NAMES.get(data.dataset.name)))
    finally:
        vae.train(was_training)
    return written + evaluation_figures(run)


def evaluation_figures(run: RunFolder | str | Path) -> list[Path]:
    """Pictures of the run's ``evaluation.json``: the log p(x) estimate against K and the
    Pareto k̂ histogram; nothing when the run has not been evaluated."""
    run = RunFolder.of(run)
    evaluation = run.read_evaluation()
    if evaluation is None:
        return []
    written = []
    points = sorted(_log_px_points(evaluation).items())
    if len(points) > 1:
        ks, values = zip(*points, strict=True)
        means = [v[0] for v in values]
        errors = [v[1] for v in values]
        written.append(plot_log_px_vs_k(
            list(ks), means, run.picture("log_px_vs_k"),
            stderr=None if any(e is None for e in errors) else errors,
            elbo=evaluation.get("elbo", {}).get("mean")))
    pareto = evaluation.get("pareto_k")
    if isinstance(pareto, dict) and pareto.get("values"):
        values = [float("nan") if v is None else v for v in pareto["values"]]
        written.append(plot_pareto_k(torch.tensor(values), run.picture("pareto_k"),
                                     num_samples=evaluation["settings"].get("num_samples")))
    return written


def _log_px_points(evaluation: dict) -> dict[int, tuple[float, float | None]]:
    """K → (mean IWAE_K estimate, its standard error): ``log_px_by_k`` where the report has
    it, else the K of the report and K = 1 (the Monte Carlo ELBO, E[IWAE_1])."""
    if evaluation.get("method", "is") != "is":  # AIS: no curve over K
        return {}
    points = {int(k): (v["mean"], v.get("mc_stderr"))
              for k, v in evaluation.get("log_px_by_k", {}).items()}
    points.setdefault(evaluation["settings"]["num_samples"], (
        evaluation["log_px"]["mean"], evaluation["log_px"].get("mc_stderr")))
    elbo = evaluation.get("elbo")
    if isinstance(elbo, dict) and "mean" in elbo:  # E[IWAE_1], the ELBO
        points.setdefault(1, (elbo["mean"], elbo.get("mc_stderr")))
    return points
