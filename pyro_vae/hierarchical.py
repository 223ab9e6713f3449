"""A VAE with L stochastic layers as a Pyro program (Burda et al. 2016, section 5: two layers):

    model:  p(z_L) p(z_(L-1)|z_L) … p(z_1|z_2) p_θ(x|z_1),     p(z_L) = N(0, I),
    guide:  q(z_1|x) q(z_2|z_1) … q(z_L|z_(L-1)),

each conditional a diagonal Gaussian whose mean and log standard deviation are linear outputs of
an MLP (:class:`~pyro_vae.networks.GaussianEncoder`), optionally pushed through an inverse
autoregressive flow (:mod:`pyro_vae.flows`). The identity of the one-layer model holds with z =
(z_1, ..., z_L): log p(x) = ELBO(x) + KL(q(z|x) ‖ p(z|x)).

Site names are ``{prefix}z1`` … ``{prefix}zL`` and ``{prefix}x`` inside the plate
``{prefix}data``; modules are registered as ``{prefix}encoders`` (the guide's networks, one per
layer), ``{prefix}priors`` (the networks of p(z_l|z_(l+1)), l < L), ``{prefix}decoder``,
``{prefix}likelihood`` and ``{prefix}flows``.

Example::

    >>> import torch, pyro
    >>> from pyro.infer import SVI, Trace_ELBO
    >>> vae = HierarchicalVAE(4, latent_dims=(3, 2), hidden_sizes=((8,), (6,)))
    >>> svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    >>> loss = svi.step(torch.ones(5, 4))   # −ELBO summed over the 5 datapoints, in nats
    >>> loss > 0
    True

.. warning:: The guide draws z_2 after z_1 and from it, while the model's p(z_1|z_2) depends on
   z_2, so the closed-form KL(q(z_1|x) ‖ p(z_1|z_2)) is **not** the ELBO's term for z_1: an
   estimator may use a closed-form KL for the top layer only (see
   :class:`pyro_vae.objectives.TraceMeanField_ELBO`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.flows import make_flow
from pyro_vae.likelihoods import Likelihood, make_likelihood
from pyro_vae.model import (
    check_data,
    check_input,
    data_plate,
    init_output_bias,
    latent_weight,
    register_modules,
)
from pyro_vae.networks import GaussianEncoder, MLPDecoder, get_preset
from pyro_vae.structure import Structure

__all__ = ["HierarchicalVAE"]


def _check_sizes(latent_dims, hidden_sizes) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    latent_dims, hidden_sizes = tuple(latent_dims), tuple(map(tuple, hidden_sizes))
    if len(latent_dims) < 2:
        raise ConfigError(f"a hierarchical VAE has at least 2 stochastic layers, got "
                          f"latent_dims={latent_dims!r} (use VAE for one)")
    if len(hidden_sizes) != len(latent_dims):
        raise ConfigError(f"hidden_sizes gives {len(hidden_sizes)} layers' hidden sizes, "
                          f"latent_dims {len(latent_dims)} layers")
    for name, values in (("latent_dims", latent_dims),
                         ("hidden_sizes", [h for layer in hidden_sizes for h in layer])):
        if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
            raise ConfigError(f"{name} must be positive integers, got {values!r}")
    return latent_dims, hidden_sizes


class HierarchicalVAE(nn.Module):
    """A VAE with L = ``len(latent_dims)`` ≥ 2 stochastic layers (see the module docstring).

    :param int x_dim: number of features of one datapoint.
    :param latent_dims: sizes of z_1, ..., z_L.
    :param hidden_sizes: per layer, the hidden sizes of the guide's network z_(l-1) → z_l
        (z_0 = x); the model's network z_(l+1) → z_l and the decoder mirror them.
    :param str activation: hidden-layer activation.
    :param likelihood: a :class:`~pyro_vae.likelihoods.Likelihood` or its name.
    :param encoders: optional L modules, ``encoders[l](input, context)`` → ``(loc, scale)`` of
        q(z_(l+1)|input); they replace the MLPs (e.g. the linear-Gaussian model's).
    :param priors: optional L − 1 modules, ``priors[l](z_(l+2), context)`` → ``(loc,
        scale)`` of p(z_(l+1)|z_(l+2)).
    :param decoder: optional module mapping ``(z_1, context)`` to the likelihood's parameter.
    :param int context_dim: size of an optional conditioning input given to every network.
    :param str prefix: prepended to every site, plate and module name.
    :param float beta: weight β of every latent site's log-densities (1: the ELBO).
    :param str flow: ``None``, or ``"iaf"`` to push every layer's q through an IAF conditioned
        on that layer's last hidden layer.
    :param int flow_layers: transforms per flow.
    """

    def __init__(
        self,
        x_dim: int,
        *,
        latent_dims: Sequence[int] = (100, 50),
        hidden_sizes: Sequence[Sequence[int]] = ((200, 200), (100, 100)),
        activation: str = "tanh",
        likelihood: str | Likelihood = "bernoulli",
        encoders: Sequence[nn.Module] | None = None,
        priors: Sequence[nn.Module] | None = None,
        decoder: nn.Module | None = None,
        context_dim: int = 0,
        prefix: str = "",
        beta: float = 1.0,
        flow: str | None = None,
        flow_layers: int = 2,
    ):
        super().__init__()
        latent_dims, hidden_sizes = _check_sizes(latent_dims, hidden_sizes)
        if isinstance(x_dim, bool) or not isinstance(x_dim, int) or x_dim <= 0:
            raise ConfigError(f"x_dim must be a positive integer, got {x_dim!r}")
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ConfigError(f"beta must be a finite number >= 0, got {beta!r}")
        if "$$$" in prefix:
            raise ConfigError(f"prefix must not contain '$$$' (Pyro's separator): {prefix!r}")
        self.x_dim, self.latent_dims, self.context_dim = x_dim, latent_dims, context_dim
        self.prefix, self.beta = prefix, float(beta)
        inputs = (x_dim, *latent_dims[:-1])  # what each layer's guide network reads
        self.encoders = nn.ModuleList(encoders or [
            GaussianEncoder(i, o, h, activation, context_dim=context_dim)
            for i, o, h in zip(inputs, latent_dims, hidden_sizes, strict=True)])
        self.priors = nn.ModuleList(priors or [
            GaussianEncoder(latent_dims[i + 1], latent_dims[i],
                            tuple(reversed(hidden_sizes[i + 1])), activation,
                            context_dim=context_dim)
            for i in range(len(latent_dims) - 1)])
        self.decoder = decoder or MLPDecoder(latent_dims[0], x_dim,
                                             tuple(reversed(hidden_sizes[0])), activation,
                                             context_dim=context_dim)
        if len(self.encoders) != len(latent_dims) or len(self.priors) != len(latent_dims) - 1:
            raise ConfigError(f"{len(latent_dims)} stochastic layers need {len(latent_dims)} "
                              f"encoders and {len(latent_dims) - 1} priors, got "
                              f"{len(self.encoders)} and {len(self.priors)}")
        if isinstance(likelihood, str):
            likelihood = make_likelihood(likelihood, x_dim=x_dim)
        self.likelihood = likelihood
        self._likelihood_has_params = any(True for _ in likelihood.parameters())
        self.flows = None if flow is None else self._make_flows(flow, flow_layers)
        self.flow_name = flow

    def _make_flows(self, flow: str, flow_layers: int) -> nn.ModuleList:
        if not all(hasattr(e, "features") and hasattr(e, "features_dim") for e in self.encoders):
            raise ConfigError("a flow guide conditions on each encoder's last hidden layer: the "
                              "encoders must offer features, heads and features_dim")
        return nn.ModuleList([
            make_flow(flow, latent_dim=d, context_dim=e.features_dim, num_layers=flow_layers)
            for d, e in zip(self.latent_dims, self.encoders, strict=True)])

    @classmethod
    def from_preset(cls, name: str, x_dim: int, **overrides) -> HierarchicalVAE:
        """Build a preset with several stochastic layers (``"burda2"``: x-200-200-100-100-100-50,
        tanh) for ``x_dim`` features; keyword arguments override the preset."""
        arch = get_preset(name)
        if not arch.upper_layers:
            raise ConfigError(f"preset {name!r} has one stochastic layer: build it with VAE")
        kwargs = dict(latent_dims=arch.latent_dims, hidden_sizes=arch.layer_hidden_sizes,
                      activation=arch.activation)
        kwargs.update(overrides)
        return cls(x_dim, **kwargs)

    # --- names -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.latent_dims)

    @property
    def z_sites(self) -> tuple[str, ...]:
        """``{prefix}z1``, ..., ``{prefix}zL``."""
        return tuple(f"{self.prefix}z{i + 1}" for i in range(self.num_layers))

    @property
    def x_site(self) -> str:
        return self.prefix + "x"

    @property
    def plate_name(self) -> str:
        return self.prefix + "data"

    @property
    def latent_dim(self) -> int:
        """Size of the top layer z_L, whose prior is N(0, I) (what pictures sample)."""
        return self.latent_dims[-1]

    @property
    def structure(self) -> Structure:
        if self.flows is None:
            return Structure(self.num_layers)
        return Structure(self.num_layers, self.flow_name, self.flows[0].num_layers)

    # --- the Pyro program --------------------------------------------------------------
    def _sample(self, layer: int, fn):
        with latent_weight(self.beta):
            return pyro.sample(self.z_sites[layer], fn)

    def model(self, x, context=None, *, num_data: int | None = None, plate: bool = True):
        """p(z_L) … p(z_1|z_2) p_θ(x|z_1) for a minibatch ``x`` ``(B, x_dim)``; the arguments
        are those of :meth:`pyro_vae.VAE.model`. Returns ``(z_1, ..., z_L)``."""
        self._check_input(x, plate)
        register_modules(self, priors=self.priors, decoder=self.decoder,
                         likelihood=self.likelihood if self._likelihood_has_params else None)
        batch_size = x.shape[0]
        with data_plate(self.plate_name, batch_size, num_data, plate, x.device):
            loc = x.new_zeros(batch_size, self.latent_dims[-1])
            z = self._sample(-1, dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            zs = [z]
            for i in reversed(range(self.num_layers - 1)):  # z_(L-1), ..., z_1
                loc, scale = self.priors[i](z, context)
                z = self._sample(i, dist.Normal(loc, scale).to_event(1))
                zs.insert(0, z)
            params = self.decoder(z, context)
            pyro.sample(self.x_site, self.likelihood(params).to_event(1), obs=x)
        return tuple(zs)

    def guide(self, x, context=None, *, num_data: int | None = None, plate: bool = True):
        """q(z_1|x) q(z_2|z_1) … q(z_L|z_(L-1)), arguments as in :meth:`model`. Returns
        ``(z_1, ..., z_L)``."""
        self._check_input(x, plate)
        register_modules(self, encoders=self.encoders, flows=self.flows)
        zs, below = [], x
        with data_plate(self.plate_name, x.shape[0], num_data, plate, x.device):
            for i in range(self.num_layers):
                below = self._sample(i, self.posterior(i, below, context))
                zs.append(below)
        return tuple(zs)

    def base_guide(self, x, context=None, *, num_data: int | None = None, plate: bool = True):
        """The guide without its flows: q_0(z_1|x) q_0(z_2|z_1) …, each layer the diagonal
        Gaussian that :meth:`guide`'s flow transforms (the same as :meth:`guide` without flows).
        A normalized density whose value at any z is cheap, where the flow's needs its inverse:
        where AIS starts (:func:`pyro_vae.evaluation.targets.target_for`)."""
        self._check_input(x, plate)
        register_modules(self, encoders=self.encoders)
        zs, below = [], x
        with data_plate(self.plate_name, x.shape[0], num_data, plate, x.device):
            for i in range(self.num_layers):
                loc, scale = self.encoders[i](below, context)
                below = self._sample(i, dist.Normal(loc, scale).to_event(1))
                zs.append(below)
        return tuple(zs)

    def posterior(self, layer: int, below: torch.Tensor, context=None) -> dist.TorchDistribution:
        """q(z_l|z_(l-1)) for ``layer`` = l − 1 (z_0 = x), given the layer below ``(..., B,
        d_(l-1))``: a diagonal Gaussian, pushed through the layer's flow when there is one."""
        encoder = self.encoders[layer]
        if self.flows is None:
            loc, scale = encoder(below, context)
            return dist.Normal(loc, scale).to_event(1)
        h = encoder.features(below, context)
        loc, scale = encoder.heads(h)
        return self.flows[layer](dist.Normal(loc, scale).to_event(1), h)

    def _check_input(self, x, plate: bool) -> None:
        if pyro.infer.util.is_validation_enabled():  # else free
            check_input(x, x_dim=self.x_dim, dtype=self._dtype(x), plate=plate)

    def _dtype(self, default) -> torch.dtype:
        return next(self.encoders.parameters(), default).dtype

    # --- plain-PyTorch conveniences ----------------------------------------------------
    def encode(self, x, context=None):
        """Mean and standard deviation of the top layer's q(z_L|z_(L-1)), with each layer below
        at its mean (for embeddings and pictures), each ``(B, latent_dims[-1])``. With flows:
        of the Gaussians that the flows transform."""
        below = x
        for encoder in self.encoders:
            loc, scale = encoder(below, context)
            below = loc
        return loc, scale

    def decode(self, z, context=None):
        """p(x|z_1) for a top-layer sample ``z`` = z_L ``(..., latent_dims[-1])``, with z_1 at
        the mean of p(z_1|z_2), each layer between at its mean (for pictures)."""
        for prior in reversed(self.priors):
            z = prior(z, context)[0]
        return self.likelihood(self.decoder(z, context)).to_event(1)

    def check_data(self, x: torch.Tensor, *, where: str = "data") -> None:
        """Raise :class:`~pyro_vae.errors.DataError` unless ``x`` is ``(N, x_dim)``, finite and
        in the likelihood's support."""
        check_data(x, x_dim=self.x_dim, dtype=self._dtype(x), likelihood=self.likelihood,
                   where=where)

    def init_output_bias(self, mean: torch.Tensor) -> None:
        """Set the decoder's output bias from the per-feature training mean (Burda et al. 2016)."""
        init_output_bias(self.decoder, self.likelihood, mean)
