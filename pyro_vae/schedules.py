"""The schedules of a run: Adam's learning rate and the KL weight β in each epoch."""

from __future__ import annotations

from pyro_vae import checks
from pyro_vae.config import TrainConfig

__all__ = ["beta_at", "burda_learning_rate", "learning_rate"]


def burda_learning_rate(epoch: int, total_epochs: int, lr0: float = 1e-3, *,
                        even: bool = False) -> float:
    """Burda et al. (2016) schedule: pass i (i = 0..7) lasts 3^i epochs at lr0·10^(−i/7),
    3280 epochs in all, every pass shrunk in proportion for fewer ``total_epochs``. With
    ``even`` the eight passes are equal (the same rates, for a short budget). ``epoch`` counts
    from 0.

    >>> burda_learning_rate(0, 3280), round(burda_learning_rate(3279, 3280), 6)
    (0.001, 0.0001)
    """
    checks.integer("epoch", epoch, low=0)
    checks.integer("total_epochs", total_epochs)
    lengths = [1] * 8 if even else [3**i for i in range(8)]
    position = epoch * sum(lengths) / total_epochs  # where this epoch falls on the schedule
    end = 0
    for i, length in enumerate(lengths):
        end += length
        if position < end:
            return lr0 * 10 ** (-i / 7)
    return lr0 * 10 ** (-7 / 7)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Adam's learning rate in epoch ``epoch`` (counted from 1) under ``config``'s schedule."""
    _check(config, epoch)
    if config.lr_schedule in ("burda", "burda-even"):
        return burda_learning_rate(epoch - 1, config.epochs, config.lr,
                                   even=config.lr_schedule == "burda-even")
    return config.lr


def beta_at(config: TrainConfig, epoch: int) -> float:
    """The KL weight β in epoch ``epoch`` (from 1): ``config.beta``, reached linearly over
    ``beta_warmup_epochs`` epochs when a warm-up is set."""
    _check(config, epoch)
    if config.beta_warmup_epochs:
        return config.beta * min(1.0, epoch / config.beta_warmup_epochs)
    return config.beta


def _check(config, epoch) -> None:
    checks.instance("config", config, TrainConfig)
    checks.integer("epoch", epoch)
