"""What an estimator needs to know of a model and its guide to decide whether it can train them:
how many stochastic layers the model has and which family the guide belongs to.

Every model offers it as ``vae.structure``, and a :class:`~pyro_vae.config.TrainConfig` says
which one it builds (:attr:`~pyro_vae.config.TrainConfig.structure`), so that an estimator that
cannot train a model refuses it before any work starts
(:func:`pyro_vae.objectives.check_compatible`), with the reason.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Structure"]


class Structure(NamedTuple):
    """The shape of a model and its guide, as the estimators see it.

    >>> Structure(2, "iaf", 3).describe()
    'the 2-layer hierarchical VAE with an IAF guide (3 flow layers)'
    """

    stochastic_layers: int = 1  # 1: VAE; L ≥ 2: HierarchicalVAE, q(z_l|z_(l-1)) for l ≥ 2
    flow: str | None = None  # None: a diagonal Gaussian q; "iaf": pushed through an IAF
    flow_layers: int = 0  # transforms in the flow (0 without one)

    @property
    def hierarchical(self) -> bool:
        """Whether a guide site's distribution depends on another latent sample."""
        return self.stochastic_layers > 1

    def describe(self) -> str:
        model = ("the one-layer VAE" if self.stochastic_layers == 1
                 else f"the {self.stochastic_layers}-layer hierarchical VAE")
        if self.flow is None:
            return f"{model} with a diagonal Gaussian guide"
        return f"{model} with an {self.flow.upper()} guide ({self.flow_layers} flow layers)"
