"""Pictures of what a trained VAE generates and encodes, and the numbers behind them.

============================= ==========================================================
:func:`plot_reconstructions`  test images beside the decoder's mean at their posterior mean
:func:`plot_prior_samples`    decoder means of z ~ N(0, T² I) (T = 1: the prior)
:func:`plot_latent_manifold`  (latent size ≤ 2) decoder means over a grid of N(0, 1) quantiles,
                              as in Kingma & Welling (2014), fig. 4
:func:`plot_latent_embedding` posterior means of test images (PCA to 2-D above 2 latent
                              dimensions), coloured by label
============================= ==========================================================

Images are rows of ``D = rows·cols`` pixel values, shown with the data set's ``image_shape``
(28 × 28 for MNIST), grey level 0 black and 1 white.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.models.interface import check_model
from pyro_vae.plots.canvas import (
    colormap,
    device_of,
    figure,
    image_figsize,
    numpy_of,
    save,
    show,
)

__all__ = [
    "LABEL_NAMES",
    "PriorSample",
    "decoder_mean",
    "image_grid",
    "normal_quantile_grid",
    "pca_2d",
    "plot_images",
    "plot_latent_embedding",
    "plot_latent_manifold",
    "plot_prior_samples",
    "plot_reconstructions",
    "sample_prior",
]

LABEL_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                      "sneaker", "bag", "ankle boot"),
}


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
    images = numpy_of(images)
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
def decoder_mean(vae, z: torch.Tensor) -> torch.Tensor:
    """E[x | z] under the decoder, ``(..., x_dim)``: Bernoulli probabilities, the continuous
    Bernoulli's mean, or the Gaussian's location. ``z`` is ``(..., latent_dim)``."""
    return vae.decode(z).mean


class PriorSample(NamedTuple):
    """Draws from the generative model: ``z`` ``(N, latent_dim)`` and the decoder's mean
    ``mean`` ``(N, x_dim)`` (pixel probabilities for the Bernoulli likelihood)."""

    z: torch.Tensor
    mean: torch.Tensor


@torch.no_grad()
def sample_prior(vae, num_samples: int, *, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> PriorSample:
    """Draw z = T·ε, ε ~ N(0, I) (T = ``temperature``; T = 1 is the prior p(z)) and decode it.

    T < 1 trades diversity for typical-looking images (Kingma & Dhariwal 2018, Glow, sec. 5).
    The pixels are the decoder's mean E[x|z], not a draw from p(x|z).

    >>> from pyro_vae import VAE
    >>> vae = VAE(6, latent_dim=2, hidden_sizes=(4,))
    >>> s = sample_prior(vae, 5, temperature=0.0)
    >>> s.z.shape, s.mean.shape, bool((s.z == 0).all())
    (torch.Size([5, 2]), torch.Size([5, 6]), True)
    """
    check_model(vae, "sample_prior")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ConfigError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    device = device_of(vae)
    eps = torch.randn(num_samples, vae.latent_dim, generator=generator,
                      device=generator.device if generator is not None else device)
    z = temperature * eps.to(device)
    return PriorSample(z, decoder_mean(vae, z))


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


def plot_images(images, image_shape: Sequence[int], path, *, title: str = "",
                ncols: int | None = None) -> Path:
    """Save ``images`` ``(N, rows·cols)``, grey levels in [0, 1], as one tiled PNG."""
    grid = image_grid(images, image_shape, ncols=ncols)
    fig = figure(*image_figsize(grid, 6.0))
    ax = fig.add_subplot()
    show(ax, grid, title)
    return save(fig, path)


@torch.no_grad()
def plot_reconstructions(vae, x: torch.Tensor, image_shape: Sequence[int], path, *,
                         num_images: int = 32) -> Path:
    """Save the first ``num_images`` rows of ``x`` beside their reconstructions: the decoder's
    mean at the posterior mean, E[x | z = E_q[z|x]]. Each reconstruction sits at the same
    place in the right panel as its input in the left one."""
    check_model(vae, "plot_reconstructions")
    x = x[:num_images]
    loc, _ = vae.encode(x)
    reconstruction = decoder_mean(vae, loc)
    ncols = min(8, x.shape[0])
    left = image_grid(x, image_shape, ncols=ncols)
    right = image_grid(reconstruction, image_shape, ncols=ncols)
    width, height = image_figsize(left, 4.5)
    fig = figure(2 * width, height)
    show(fig.add_subplot(1, 2, 1), left, "test inputs (as the likelihood sees them)")
    show(fig.add_subplot(1, 2, 2), right, "reconstructions: E[x | z = posterior mean]")
    return save(fig, path)


def plot_prior_samples(vae, image_shape: Sequence[int], path, *, num_samples: int = 64,
                       temperature: float = 1.0, seed: int = 0) -> Path:
    """Save decoder means of ``num_samples`` draws z ~ N(0, T² I) (see :func:`sample_prior`)."""
    check_model(vae, "plot_prior_samples")
    generator = torch.Generator(device=device_of(vae)).manual_seed(seed)
    sample = sample_prior(vae, num_samples, temperature=temperature, generator=generator)
    what = "the prior N(0, I)" if temperature == 1 else f"N(0, {temperature:g}² I)"
    return plot_images(sample.mean, image_shape, path,
                       title=f"{num_samples} samples from {what}: decoder means E[x|z]")


@torch.no_grad()
def plot_latent_manifold(vae, image_shape: Sequence[int], path, *, steps: int = 15) -> Path:
    """Save the decoded manifold: decoder means over ``steps`` N(0, 1) quantiles per latent
    dimension (:func:`normal_quantile_grid`); for a VAE with 1 or 2 latent dimensions."""
    check_model(vae, "plot_latent_manifold")
    if vae.latent_dim > 2:
        raise ConfigError(f"the latent manifold is drawn for 1 or 2 latent dimensions; this "
                          f"VAE has {vae.latent_dim} (see plot_latent_embedding)")
    q = normal_quantile_grid(steps, 1).squeeze(-1)
    z = normal_quantile_grid(steps, vae.latent_dim).to(device_of(vae))
    grid = image_grid(decoder_mean(vae, z), image_shape, ncols=steps, pad=0)
    fig = figure(7.0, 7.0 if vae.latent_dim == 2 else 1.6)
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
    return save(fig, path)


@torch.no_grad()
def plot_latent_embedding(vae, x: torch.Tensor, labels: torch.Tensor | None, path, *,
                          label_names: Sequence[str] | None = None,
                          max_points: int = 3000) -> Path:
    """Save a scatter plot of the posterior means E_q[z|x] of the first ``max_points`` rows
    of ``x``, coloured by ``labels``: the latent coordinates themselves for 1 or 2 latent
    dimensions, their first two principal components (:func:`pca_2d`) for more."""
    check_model(vae, "plot_latent_embedding")
    if labels is not None and len(labels) != x.shape[0]:
        raise DataError(f"labels has {len(labels)} values for {x.shape[0]} rows of x")
    x = x[:max_points]
    loc, _ = vae.encode(x)
    loc = loc.cpu()
    labels = None if labels is None else numpy_of(labels[: x.shape[0]]).astype(int)
    fig = figure(6.5, 5.5)
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
        cmap = colormap("tab10")
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
    return save(fig, path)
