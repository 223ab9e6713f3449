"""TensorBoard logs of a training run (``pyro-vae train --tensorboard``, ``fit(tensorboard=)``),
an optional extra: ``pip install -e ".[tensorboard]"``.

After every epoch: the training objective and the test ELBO (nats per datapoint; bounds on
log p(x), higher is better), the test ELBO's two terms E_q[log p(x|z)] and KL(q(z|x) ‖ p(z))
on up to 1000 test images, the mean step time (ms), the learning rate and β; and two image
grids, the first 32 test images beside their reconstructions E[x | z = posterior mean], and
decoder means of 64 draws from the prior (the same draws every epoch).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pyro_vae.errors import ConfigError, ConfigTypeError

__all__ = ["TensorBoardLog", "open_log"]

_TERMS_SIZE = 1000  # test images for the ELBO's two terms
_IMAGES = 32  # test images reconstructed


def open_log(folder: str | Path) -> TensorBoardLog:
    """A :class:`TensorBoardLog` writing into ``folder``; a one-line :class:`ConfigError` when
    the tensorboard package is missing."""
    if not isinstance(folder, (str, os.PathLike)):
        raise ConfigTypeError(f"tensorboard must be a folder path; got {type(folder).__name__}")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError('--tensorboard needs the tensorboard package: pip install -e '
                          '".[tensorboard]" (or pip install tensorboard)') from None
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ConfigError(f"--tensorboard {folder}: a file is in the way of the folder")
    return TensorBoardLog(SummaryWriter(log_dir=str(folder)))


class TensorBoardLog:
    """Scalars and image grids of each epoch, step = the epoch number (so a resumed run
    continues the same curves)."""

    def __init__(self, writer):
        self.writer = writer

    @torch.no_grad()
    def log_epoch(self, record: dict, vae, test: torch.Tensor, image_shape) -> None:
        from pyro_vae.evaluation import Execution
        from pyro_vae.evaluation.elbo import elbo_terms

        epoch, w = record["epoch"], self.writer
        w.add_scalar(f"train/{record['train_objective']} (nats)",
                     record["train_objective_nats"], epoch)
        w.add_scalar("test/ELBO (nats)", record["test_elbo"], epoch)
        w.add_scalar("train/step time (ms)",
                     1e3 * record["epoch_seconds"] / max(1, record["steps"]), epoch)
        w.add_scalar("train/learning rate", record["lr"], epoch)
        w.add_scalar("train/beta", record["beta"], epoch)
        was_training = vae.training
        vae.eval()
        try:
            terms = elbo_terms(vae, test[:_TERMS_SIZE], num_samples=1,
                               execution=Execution(seed=0))
            w.add_scalar("test/E_q[log p(x|z)] (nats)", float(terms["expected_loglik"].mean()),
                         epoch)
            w.add_scalar("test/KL(q(z|x) || p(z)) (nats)", float(terms["kl_to_prior"].mean()),
                         epoch)
            if image_shape is not None and len(image_shape) == 2:
                self._images(vae, test, tuple(image_shape), epoch)
        finally:
            vae.train(was_training)
        w.flush()

    def _images(self, vae, test: torch.Tensor, image_shape: tuple[int, int], epoch: int) -> None:
        from pyro_vae.plots.images import decoder_mean, image_grid, sample_prior

        x = test[:_IMAGES]
        reconstruction = decoder_mean(vae, vae.encode(x)[0])
        pairs = torch.stack([x, reconstruction.to(x)], 1).reshape(-1, x.shape[1])
        self.writer.add_image("test/inputs and reconstructions",
                              _clip(image_grid(pairs, image_shape, ncols=8)), epoch,
                              dataformats="HW")
        prior = sample_prior(vae, 64, generator=torch.Generator(device=x.device).manual_seed(0))
        self.writer.add_image("prior samples (decoder means)",
                              _clip(image_grid(prior.mean, image_shape)), epoch,
                              dataformats="HW")

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()


def _clip(grid: np.ndarray) -> np.ndarray:
    return np.clip(grid, 0.0, 1.0).astype(np.float32)
