"""Matplotlib plumbing shared by the pictures: figures drawn on the Agg canvas (no display, no
global pyplot state), saved as PNG."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pyro_vae import checks
from pyro_vae.files import atomic_write_bytes

_DPI = 100


def numpy_of(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def device_of(vae) -> torch.device:
    return next(vae.parameters()).device


def colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def image_figsize(grid: np.ndarray, width: float) -> tuple[float, float]:
    height = width * grid.shape[0] / grid.shape[1]
    return width, height + 0.5  # room for the title


def show(ax, grid: np.ndarray, title: str) -> None:
    ax.imshow(np.clip(grid, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def fit_ylim(ax, values: list[float]) -> None:
    """Fit the y-axis to ``values``, with a margin."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    low, high = min(finite), max(finite)
    margin = 0.08 * (high - low) or 1.0
    ax.set_ylim(low - margin, high + margin)


def save(fig: Figure, path) -> Path:
    """Write ``fig`` as a PNG at ``path``, atomically (a crash leaves the old picture or the
    new one, whole)."""
    path = Path(checks.instance("path", path, (str, os.PathLike)))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path
