"""Pictures of a trained VAE and of its run, as PNG files drawn on matplotlib's Agg canvas
(no display, no global pyplot state).

=========================  ==========================================================
``reconstructions.png``    test images beside the decoder's mean at their posterior mean
``prior_samples.png``      decoder means of z ~ N(0, T² I) (T = 1: the prior)
``latent_manifold.png``    (latent size ≤ 2) decoder means over a grid of N(0, 1) quantiles,
                           as in Kingma & Welling (2014), fig. 4
``latent_embedding.png``   posterior means of test images (PCA to 2-D above 2 latent
                           dimensions), coloured by label
``learning_curves.png``    train objective and test ELBO against epochs and wall-clock time
``log_px_vs_k.png``        (with ``evaluation.json``) IWAE_K estimate of log p(x) against K
``pareto_k.png``           (with per-datapoint k̂ in ``evaluation.json``) Pareto k̂ histogram
=========================  ==========================================================

Every axis with a figure of merit is in nats per datapoint and says whether it shows a bound
(ELBO, IWAE_K) or an estimate of log p(x). :func:`write_run_figures` writes all that apply
into a run folder; ``pyro-vae train`` calls it at the end of a run and ``pyro-vae plot`` on
demand.

Images are rows of ``D = rows·cols`` pixel values, shown with the data set's
``image_shape`` (28 × 28 for MNIST), grey level 0 black and 1 white.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.evaluation import PARETO_K_THRESHOLDS

__all__ = [
    "LABEL_NAMES",
    "PriorSample",
    "decoder_mean",
    "image_grid",
    "log_px_points",
    "normal_quantile_grid",
    "pareto_k_values",
    "pca_2d",
    "plot_images",
    "plot_latent_embedding",
    "plot_latent_manifold",
    "plot_learning_curves",
    "plot_log_px_vs_k",
    "plot_pareto_k",
    "plot_prior_samples",
    "plot_reconstructions",
    "read_json",
    "sample_prior",
    "write_run_figures",
]

LABEL_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                      "sneaker", "bag", "ankle boot"),
}

_DPI = 100


# --- numbers behind the pictures ------------------------------------------------------------


def image_grid(images, image_shape: Sequence[int], *, ncols: int | None = None, pad: int = 1,
               pad_value: float = 0.5) -> np.ndarray:
    """Tile ``images`` ``(N, rows·cols)`` into one ``(H, W)`` array, row by row.

    The grid has ``ncols`` columns (default ⌈√N⌉) and ⌈N / ncols⌉ rows; cells are
    ``image_shape`` pixels, separated by ``pad`` pixels of ``pad_value``, and cells left over
    in the last row are filled with ``pad_value``. ``H = nrows·rows + (nrows − 1)·pad``.

    >>> image_grid(np.arange(12.0).reshape(3, 4), (2, 2), ncols=2, pad=1, pad_value=-1)
    array([[ 0.,  1., -1.,  4.,  5.],
           [ 2.,  3., -1.,  6.,  7.],
           [-1., -1., -1., -1., -1.],
           [ 8.,  9., -1., -1., -1.],
           [10., 11., -1., -1., -1.]])
    """
    images = _numpy(images)
    rows, cols = (int(s) for s in image_shape)
    if images.ndim != 2 or images.shape[1] != rows * cols or images.shape[0] == 0:
        raise DataError(f"expected images of shape (N > 0, {rows * cols}) for image_shape "
                        f"{(rows, cols)}, found {images.shape}")
    n = images.shape[0]
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * rows + (nrows - 1) * pad, ncols * cols + (ncols - 1) * pad),
                   pad_value, dtype=np.float64)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        top, left = r * (rows + pad), c * (cols + pad)
        grid[top : top + rows, left : left + cols] = image.reshape(rows, cols)
    return grid


@torch.no_grad()
def decoder_mean(vae, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """E[x | z] under the decoder, ``(..., x_dim)``: Bernoulli probabilities, the continuous
    Bernoulli's mean, or the Gaussian's location. ``z`` is ``(..., latent_dim)``."""
    return vae.decode(z, context).mean


class PriorSample(NamedTuple):
    """Draws from the generative model: ``z`` ``(N, latent_dim)`` and the decoder's mean
    ``mean`` ``(N, x_dim)`` (pixel probabilities for the Bernoulli likelihood)."""

    z: torch.Tensor
    mean: torch.Tensor


@torch.no_grad()
def sample_prior(vae, num_samples: int, *, temperature: float = 1.0,
                 generator: torch.Generator | None = None,
                 context: torch.Tensor | None = None) -> PriorSample:
    """Draw z = T·ε, ε ~ N(0, I) (T = ``temperature``; T = 1 is the prior p(z)) and decode it.

    T < 1 trades diversity for typical-looking images (Kingma & Dhariwal 2018, Glow, sec. 5).
    The pixels are the decoder's mean E[x|z], not a draw from p(x|z).

    >>> from pyro_vae import VAE
    >>> vae = VAE(6, latent_dim=2, hidden_sizes=(4,))
    >>> s = sample_prior(vae, 5, temperature=0.0)
    >>> s.z.shape, s.mean.shape, bool((s.z == 0).all())
    (torch.Size([5, 2]), torch.Size([5, 6]), True)
    """
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ConfigError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    device = _device_of(vae)
    eps = torch.randn(num_samples, vae.latent_dim, generator=generator,
                      device=generator.device if generator is not None else device)
    z = temperature * eps.to(device)
    return PriorSample(z, decoder_mean(vae, z, context))


def normal_quantile_grid(steps: int, latent_dim: int = 2) -> torch.Tensor:
    """Latent points on an evenly spaced grid of N(0, 1) quantiles,
    z = Φ⁻¹((i + ½) / steps), i = 0..steps−1, in each of ``latent_dim`` (1 or 2) dimensions.

    Returns ``(steps**latent_dim, latent_dim)``, in image order: the first coordinate runs
    left to right along a row, the second from top (high) to bottom (low). Kingma & Welling
    (2014), fig. 4.

    >>> normal_quantile_grid(3, 1).squeeze(-1)
    tensor([-0.9674,  0.0000,  0.9674])
    >>> normal_quantile_grid(2)
    tensor([[-0.6745,  0.6745],
            [ 0.6745,  0.6745],
            [-0.6745, -0.6745],
            [ 0.6745, -0.6745]])
    """
    if latent_dim not in (1, 2):
        raise ConfigError(f"a quantile grid is drawn for 1 or 2 latent dimensions, not "
                          f"{latent_dim}")
    p = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    q = torch.distributions.Normal(0.0, 1.0).icdf(p).float()
    if latent_dim == 1:
        return q.unsqueeze(-1)
    z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)


class _PCA(NamedTuple):
    projection: torch.Tensor  # (N, 2) coordinates on the first two principal axes
    explained: torch.Tensor  # (2,) fraction of the total variance along each axis


def pca_2d(x: torch.Tensor) -> _PCA:
    """Project the rows of ``x`` ``(N, d)``, d ≥ 2, onto their first two principal axes.

    Returns ``(projection (N, 2), explained (2,))``: the centred data times the two leading
    right singular vectors (each signed so that its largest entry is positive), and the
    fraction of the total variance each axis carries.

    >>> x = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, -0.5, 0.0]])
    >>> pca_2d(x).projection
    tensor([[ 1.0000,  0.0000],
            [-1.0000,  0.0000],
            [ 0.0000,  0.5000],
            [ 0.0000, -0.5000]])
    >>> pca_2d(x).explained
    tensor([0.8000, 0.2000])
    """
    if x.dim() != 2 or x.shape[1] < 2 or x.shape[0] < 2:
        raise DataError(f"pca_2d needs (N >= 2, d >= 2) data, found {tuple(x.shape)}")
    centred = (x - x.mean(0)).double()
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2]  # (2, d)
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    axes = axes * signs
    explained = s[:2].pow(2) / s.pow(2).sum().clamp_min(1e-300)
    projection = centred @ axes.T + 0.0  # + 0.0 turns −0.0 into 0.0
    return _PCA(projection.to(x.dtype), explained.to(x.dtype))


# --- single pictures -----------------------------------------------------------------------


def plot_images(images, image_shape: Sequence[int], path, *, title: str = "",
                ncols: int | None = None) -> Path:
    """Save ``images`` ``(N, rows·cols)``, grey levels in [0, 1], as one tiled PNG."""
    grid = image_grid(images, image_shape, ncols=ncols)
    fig = _figure(*_image_figsize(grid, 6.0))
    ax = fig.add_subplot()
    _show(ax, grid, title)
    return _save(fig, path)


@torch.no_grad()
def plot_reconstructions(vae, x: torch.Tensor, image_shape: Sequence[int], path, *,
                         num_images: int = 32, context: torch.Tensor | None = None) -> Path:
    """Save the first ``num_images`` rows of ``x`` beside their reconstructions: the decoder's
    mean at the posterior mean, E[x | z = E_q[z|x]]. Each reconstruction sits at the same
    place in the right panel as its input in the left one."""
    x = x[:num_images]
    context = None if context is None else context[:num_images]
    loc, _ = vae.encode(x, context)
    reconstruction = decoder_mean(vae, loc, context)
    ncols = min(8, x.shape[0])
    left = image_grid(x, image_shape, ncols=ncols)
    right = image_grid(reconstruction, image_shape, ncols=ncols)
    width, height = _image_figsize(left, 4.5)
    fig = _figure(2 * width, height)
    _show(fig.add_subplot(1, 2, 1), left, "test inputs (as the likelihood sees them)")
    _show(fig.add_subplot(1, 2, 2), right, "reconstructions: E[x | z = posterior mean]")
    return _save(fig, path)


def plot_prior_samples(vae, image_shape: Sequence[int], path, *, num_samples: int = 64,
                       temperature: float = 1.0, seed: int = 0) -> Path:
    """Save decoder means of ``num_samples`` draws z ~ N(0, T² I) (see :func:`sample_prior`)."""
    generator = torch.Generator(device=_device_of(vae)).manual_seed(seed)
    sample = sample_prior(vae, num_samples, temperature=temperature, generator=generator)
    what = "the prior N(0, I)" if temperature == 1 else f"N(0, {temperature:g}² I)"
    return plot_images(sample.mean, image_shape, path,
                       title=f"{num_samples} samples from {what}: decoder means E[x|z]")


@torch.no_grad()
def plot_latent_manifold(vae, image_shape: Sequence[int], path, *, steps: int = 15) -> Path:
    """Save the decoded manifold: decoder means over ``steps`` N(0, 1) quantiles per latent
    dimension (:func:`normal_quantile_grid`); for a VAE with 1 or 2 latent dimensions."""
    if vae.latent_dim > 2:
        raise ConfigError(f"the latent manifold is drawn for 1 or 2 latent dimensions; this "
                          f"VAE has {vae.latent_dim} (see plot_latent_embedding)")
    q = normal_quantile_grid(steps, 1).squeeze(-1)
    z = normal_quantile_grid(steps, vae.latent_dim).to(_device_of(vae))
    grid = image_grid(decoder_mean(vae, z), image_shape, ncols=steps, pad=0)
    fig = _figure(7.0, 7.0 if vae.latent_dim == 2 else 1.6)
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    rows, cols = (int(s) for s in image_shape)
    ticks = list(range(0, steps, max(1, steps // 5)))
    ax.set_xticks([(i + 0.5) * cols - 0.5 for i in ticks], [f"{float(q[i]):.2f}" for i in ticks])
    ax.set_xlabel("z₁ (quantiles of N(0, 1))")
    if vae.latent_dim == 2:
        ax.set_yticks([(i + 0.5) * rows - 0.5 for i in ticks],
                      [f"{float(q.flip(0)[i]):.2f}" for i in ticks])
        ax.set_ylabel("z₂")
    else:
        ax.set_yticks([])
    ax.set_title("decoded latent space: E[x|z] at N(0, 1) quantiles")
    return _save(fig, path)


@torch.no_grad()
def plot_latent_embedding(vae, x: torch.Tensor, labels: torch.Tensor | None, path, *,
                          label_names: Sequence[str] | None = None,
                          max_points: int = 3000) -> Path:
    """Save a scatter plot of the posterior means E_q[z|x] of the first ``max_points`` rows
    of ``x``, coloured by ``labels``: the latent coordinates themselves for 1 or 2 latent
    dimensions, their first two principal components (:func:`pca_2d`) for more."""
    x = x[:max_points]
    loc, _ = vae.encode(x)
    loc = loc.cpu()
    labels = None if labels is None else _numpy(labels[: x.shape[0]]).astype(int)
    fig = _figure(6.5, 5.5)
    ax = fig.add_subplot()
    if vae.latent_dim == 1:
        rng = np.random.default_rng(0)
        y = (labels if labels is not None else np.zeros(len(loc))) + rng.uniform(-0.3, 0.3,
                                                                                  len(loc))
        xy = np.stack([loc[:, 0].numpy(), y], 1)
        xlabel, ylabel = "posterior mean of z₁", "label (jittered)"
    elif vae.latent_dim == 2:
        xy = loc.numpy()
        xlabel, ylabel = "posterior mean of z₁", "posterior mean of z₂"
    else:
        pca = pca_2d(loc)
        xy = pca.projection.numpy()
        xlabel = f"principal component 1 ({100 * float(pca.explained[0]):.0f}% of variance)"
        ylabel = f"principal component 2 ({100 * float(pca.explained[1]):.0f}% of variance)"
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6)
    else:
        cmap = _colormap("tab10")
        for value in np.unique(labels):
            keep = labels == value
            name = label_names[value] if label_names and value < len(label_names) else value
            ax.scatter(xy[keep, 0], xy[keep, 1], s=4, alpha=0.7, color=cmap(int(value) % 10),
                       label=str(name))
        ax.legend(markerscale=3, fontsize=8, loc="best", framealpha=0.8, title="label")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    how = "" if vae.latent_dim <= 2 else f" ({vae.latent_dim}-D, PCA to 2-D)"
    ax.set_title(f"posterior means of {len(xy)} test images{how}")
    return _save(fig, path)


def plot_learning_curves(runs: Sequence[tuple[str, dict]], path) -> Path:
    """Save train and test curves of one or several runs, against epochs (left) and
    wall-clock time (right), for comparing estimators.

    :param runs: ``(label, metrics)`` pairs, ``metrics`` as in a run's ``metrics.json``
        (a dict with ``"epochs"``: per-epoch records with ``epoch``, ``train_elbo``,
        ``train_objective``, ``test_elbo``, ``wall_seconds``).

    Test curves (solid) are the ELBO on the test set after each epoch; train curves (dashed)
    are the training objective averaged over the epoch's minibatches as they were seen:
    the ELBO, IWAE_K (a tighter bound), or a β-weighted ELBO (not a bound when β < 1).
    """
    if not runs:
        raise DataError("plot_learning_curves needs at least one run")
    fig = _figure(12.0, 4.8)
    by_epoch, by_time = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    cmap = _colormap("tab10")
    values: list[float] = []
    clipped = False
    for i, (label, metrics) in enumerate(runs):
        records = metrics.get("epochs") or []
        if not records:
            raise DataError(f"{label}: no finished epoch in its metrics")
        epochs = [r["epoch"] for r in records]
        seconds = [r["wall_seconds"] for r in records]
        train = [r["train_elbo"] for r in records]
        test = [r["test_elbo"] for r in records]
        objective = records[-1].get("train_objective", "objective")
        # The y-axis fits what follows the first epochs, whose figures can be hundreds of
        # nats lower and would flatten the rest: the train objective (an average over a
        # model changing fast) after epoch 1, the test ELBO after the first tenth.
        values += train[1:] or train
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
        _fit_ylim(ax, values)
    by_epoch.legend(fontsize=8, loc="lower right")
    below = "; the first epochs lie below the axes" if clipped else ""
    fig.suptitle(f"learning curves: ELBO and IWAE_K are lower bounds on log p(x){below}",
                 fontsize=10)
    return _save(fig, path)


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
    fig = _figure(6.5, 4.5)
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
    return _save(fig, path)


def plot_pareto_k(pareto_k: Sequence[float], path, *, num_samples: int | None = None) -> Path:
    """Save the histogram of per-datapoint Pareto k̂ of the importance weights p(x,z)/q(z|x)
    (Vehtari et al. 2024; Yao et al. 2018), with the thresholds of
    :data:`pyro_vae.evaluation.PARETO_K_THRESHOLDS`: below 0.5 the weights have a finite
    variance; above 0.7 the log p(x) estimate of that datapoint is unreliable, q(z|x) being
    too light-tailed a proposal for its posterior."""
    k = _numpy(pareto_k).astype(float).ravel()
    undefined = int((~np.isfinite(k)).sum())  # NaN: not computed; −∞: bounded weights
    k = k[np.isfinite(k)]
    if k.size == 0:
        raise DataError("no finite Pareto k̂ values to plot")
    fig = _figure(6.5, 4.5)
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
    return _save(fig, path)


# --- a run folder --------------------------------------------------------------------------


def read_json(path) -> dict:
    """The JSON document at ``path``; :class:`DataError` naming the file if it is unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({e})") from None


def write_run_figures(run_dir, *, vae=None, data=None, label: str | None = None) -> list[Path]:
    """Write every picture that applies into ``run_dir`` and return their paths.

    :param run_dir: a folder written by :func:`pyro_vae.training.fit` (``metrics.json``,
        ``checkpoint.pt``; ``evaluation.json`` from ``pyro-vae evaluate`` if present).
    :param vae: the trained VAE; default: rebuilt from ``run_dir/checkpoint.pt``.
    :param data: a :class:`~pyro_vae.training.PreparedData` whose test images and labels
        are shown; default: the run's test set, prepared as in training.
    """
    from pyro_vae.training import load_vae, prepare_data

    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    written = [plot_learning_curves([(label or run_dir.name, metrics)],
                                    run_dir / "learning_curves.png")]
    if vae is None or data is None:
        loaded, config, _ = load_vae(run_dir)
        vae = loaded if vae is None else vae
    if data is None:
        # Only the test set is shown: prepare one training image instead of sixty thousand.
        data = prepare_data(dataclasses.replace(config, train_size=1, device="cpu"))
    image_shape = tuple(metrics.get("data", {}).get("image_shape") or data.dataset.image_shape)
    device = _device_of(vae)
    was_training = vae.training
    vae.eval()
    try:
        test = data.test.to(device)
        written.append(plot_reconstructions(vae, test, image_shape,
                                            run_dir / "reconstructions.png"))
        written.append(plot_prior_samples(vae, image_shape, run_dir / "prior_samples.png"))
        if vae.latent_dim <= 2:
            written.append(plot_latent_manifold(vae, image_shape,
                                                run_dir / "latent_manifold.png"))
        written.append(plot_latent_embedding(
            vae, test, data.test_labels, run_dir / "latent_embedding.png",
            label_names=LABEL_NAMES.get(data.dataset.name),
        ))
    finally:
        vae.train(was_training)
    written += _evaluation_figures(run_dir)
    return written


def _evaluation_figures(run_dir: Path) -> list[Path]:
    """Pictures from ``run_dir/evaluation.json`` (``pyro-vae evaluate``), for what it holds;
    nothing if the file is absent. See :func:`log_px_points` and :func:`pareto_k_values` for
    the layouts read."""
    path = run_dir / "evaluation.json"
    if not path.is_file():
        return []
    evaluation = read_json(path)
    written = []
    points = log_px_points(evaluation)
    if points:
        ks, means, errors = zip(*points, strict=True)
        stderr = None if any(e is None for e in errors) else list(errors)
        written.append(plot_log_px_vs_k(list(ks), list(means), run_dir / "log_px_vs_k.png",
                                        stderr=stderr, elbo=_elbo_of(evaluation)))
    values = pareto_k_values(evaluation)
    if values is not None:
        k = evaluation.get("num_samples")
        written.append(plot_pareto_k(values, run_dir / "pareto_k.png",
                                     num_samples=k if isinstance(k, int) else None))
    return written


def log_px_points(evaluation) -> list[tuple[int, float, float | None]]:
    """The (K, log p(x) estimate, its standard error or None) points of an evaluation
    document, sorted by K, one per K: every report in it (the document itself, or any dict
    nested in it) with an integer ``num_samples`` and ``log_px`` either a number or a dict
    with ``mean`` (and ``mc_stderr`` or ``stderr``), as :func:`pyro_vae.evaluation.evaluate`
    writes; and every ``{"k": K, "log_px": ..., "stderr": ...}`` record. A report's Monte
    Carlo ELBO (``elbo`` → ``monte_carlo``), the mean of log w over its samples, gives the
    point K = 1, since E[IWAE_1] is the ELBO, unless K = 1 is there already.

    >>> log_px_points({"num_samples": 50, "log_px": {"mean": -90.5, "mc_stderr": 0.1},
    ...                "sweep": [{"k": 5, "log_px": -92.0}]})
    [(5, -92.0, None), (50, -90.5, 0.1)]
    >>> log_px_points({"num_samples": 50, "log_px": {"mean": -90.5, "mc_stderr": 0.1},
    ...                "elbo": {"monte_carlo": {"mean": -95.0, "mc_stderr": 0.2}}})
    [(1, -95.0, 0.2), (50, -90.5, 0.1)]
    """
    elbo_points: list[tuple[int, float, float | None]] = []
    found: dict[int, tuple[int, float, float | None]] = {}

    def visit(node):
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        k = node.get("num_samples", node.get("k"))
        value, stderr = node.get("log_px"), node.get("stderr")
        if isinstance(value, dict):
            value, stderr = value.get("mean"), value.get("mc_stderr", value.get("stderr"))
        if (isinstance(k, int) and not isinstance(k, bool) and k > 0
                and _is_number(value) and k not in found):
            found[k] = (k, float(value), float(stderr) if _is_number(stderr) else None)
            elbo = node.get("elbo")
            mc = elbo.get("monte_carlo") if isinstance(elbo, dict) else None
            if isinstance(mc, dict) and _is_number(mc.get("mean")):
                se = mc.get("mc_stderr")
                elbo_points.append((1, float(mc["mean"]), float(se) if _is_number(se) else None))
        for child in node.values():
            visit(child)

    visit(evaluation)
    if 1 not in found and elbo_points:
        found[1] = elbo_points[0]
    return [found[k] for k in sorted(found)]


def pareto_k_values(evaluation) -> list[float] | None:
    """Per-datapoint Pareto k̂ of an evaluation document, or None if it holds only a summary:
    a list under ``pareto_k_values``, ``pareto_k`` itself, or ``pareto_k`` → ``values`` /
    ``per_datapoint``. ``None`` entries (k̂ undefined) become NaN.

    >>> pareto_k_values({"pareto_k": {"median": 0.3, "values": [0.2, None, 0.9]}})
    [0.2, nan, 0.9]
    >>> pareto_k_values({"pareto_k": {"median": 0.3}}) is None
    True
    """
    if not isinstance(evaluation, dict):
        return None
    k = evaluation.get("pareto_k_values", evaluation.get("pareto_k"))
    if isinstance(k, dict):
        k = k.get("values", k.get("per_datapoint"))
    if isinstance(k, list) and k and all(_is_number(v) or v is None for v in k):
        return [float("nan") if v is None else float(v) for v in k]
    return None


def _elbo_of(evaluation: dict) -> float | None:
    """The test ELBO of an evaluation document: ``elbo`` → ``analytic_kl`` → ``mean`` as
    :func:`pyro_vae.evaluation.evaluate` writes it, or ``elbo`` / ``test_elbo`` as a number
    or a dict with ``mean``."""
    for key in ("elbo", "test_elbo"):
        value = evaluation.get(key)
        if isinstance(value, dict):
            value = value.get("analytic_kl", value)
            value = value.get("mean") if isinstance(value, dict) else value
        if _is_number(value) and math.isfinite(value):
            return float(value)
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- matplotlib plumbing -------------------------------------------------------------------


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _device_of(vae) -> torch.device:
    return next(vae.parameters()).device


def _colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _image_figsize(grid: np.ndarray, width: float) -> tuple[float, float]:
    height = width * grid.shape[0] / grid.shape[1]
    return width, height + 0.5  # room for the title


def _show(ax, grid: np.ndarray, title: str) -> None:
    ax.imshow(np.clip(grid, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def _fit_ylim(ax, values: list[float]) -> None:
    """Fit the y-axis to ``values``, with a margin."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    low, high = min(finite), max(finite)
    margin = 0.08 * (high - low) or 1.0
    ax.set_ylim(low - margin, high + margin)


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
