"""The architecture presets by name (``--preset NAME``, ``VAE.from_preset(NAME, x_dim)``): the
sizes of a VAE, and the networks a preset builds. A new architecture is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyro_vae.errors import ConfigError
from pyro_vae.models.conv import conv_networks

__all__ = ["PRESETS", "Architecture", "get_preset", "mlp_networks"]


def mlp_networks(x_dim: int, *, latent_dim, hidden_sizes, activation: str, context_dim: int = 0,
                 image_shape=None) -> dict:
    """The preset networks of :class:`~pyro_vae.VAE`: nothing to add, it builds its MLPs."""
    return {}


@dataclass(frozen=True)
class Architecture:
    """Sizes of a VAE, per stochastic layer: the inference network of layer l reads z_(l-1)
    (z_0 = x) through ``hidden_sizes[l]``; each generative network mirrors it. ``networks``
    builds what :class:`~pyro_vae.VAE` takes besides the sizes (``encoder``, ``decoder``) for
    data of ``x_dim`` features and ``image_shape``: the MLPs (nothing), or a preset's own."""

    hidden_sizes: tuple[tuple[int, ...], ...]
    latent_dims: tuple[int, ...]
    activation: str
    init_output_bias: bool  # decoder output bias := likelihood parameter of the data mean
    reference: str
    networks: Callable[..., dict] = mlp_networks

    @property
    def stochastic_layers(self) -> int:
        return len(self.latent_dims)

    @property
    def summary(self) -> str:
        """The sizes and the activation, e.g. ``x-400-50 softplus``."""
        layers = "" if self.stochastic_layers == 1 else f", {self.stochastic_layers} stochastic " \
            "layers"
        return f"{self.describe()} {self.activation}{layers}"

    def describe(self) -> str:
        """The layer sizes, e.g. ``x-200-200-100-100-100-50``."""
        sizes = [str(s) for hidden, latent in zip(self.hidden_sizes, self.latent_dims,
                                                  strict=True) for s in (*hidden, latent)]
        return "-".join(["x", *sizes])


#: The architecture presets by name (``--preset``); :func:`get_preset` returns one.
#:
#: :meta hide-value:
PRESETS = {
    # Pyro's VAE example (examples/vae/vae.py)
    "pyro": Architecture(((400,),), (50,), "softplus", False, "Pyro examples/vae/vae.py"),
    # Burda, Grosse & Salakhutdinov (2016), one stochastic layer
    "burda": Architecture(((200, 200),), (50,), "tanh", True,
                          "Burda et al. (2016), Importance Weighted Autoencoders"),
    # Burda et al. (2016), two stochastic layers (their appendix)
    "burda2": Architecture(((200, 200), (100, 100)), (100, 50), "tanh", True,
                           "Burda et al. (2016), two stochastic layers"),
    # the DCGAN-style VAE of many tutorials, for images of any size
    "conv": Architecture(((32, 64),), (50,), "elu", True, "convolutional (pyro_vae.models.conv)",
                         networks=conv_networks),
}


def get_preset(name: str) -> Architecture:
    """Return the architecture preset ``name`` (one of :data:`PRESETS`)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None
