"""The VAE as a Pyro program: ``model`` is the generative model p(z) p_θ(x|z) and ``guide`` the
amortized variational posterior q_φ(z|x), ready for :class:`pyro.infer.SVI`.

    log p(x) = ELBO(x) + KL(q(z|x) ‖ p(z|x)),
    ELBO(x)  = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)) = E_q[log p(x, z) − log q(z|x)].

Site names are ``{prefix}z`` (the latent) and ``{prefix}x`` (the observation), inside the plate
``{prefix}data``; modules are registered as ``{prefix}encoder``, ``{prefix}decoder`` and
``{prefix}likelihood``, so that two VAEs can live in one Pyro program.

Example::

    >>> import torch, pyro
    >>> from pyro.infer import SVI, TraceMeanField_ELBO
    >>> from pyro_vae import VAE
    >>> vae = VAE(x_dim=4, latent_dim=2, hidden_sizes=(8,))
    >>> svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
    >>> loss = svi.step(torch.ones(3, 4))   # −ELBO summed over the 3 datapoints, in nats
    >>> loss > 0
    True
"""

from __future__ import annotations

import contextlib
import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.flows import make_flow
from pyro_vae.likelihoods import Likelihood, make_likelihood
from pyro_vae.networks import GaussianEncoder, MLPDecoder, get_preset
from pyro_vae.structure import Structure

__all__ = ["VAE", "check_data", "check_input", "data_plate", "init_output_bias", "latent_weight"]


class VAE(nn.Module):
    """A variational autoencoder with a N(0, I) prior over ``latent_dim`` latent dimensions.

    :param int x_dim: number of features of one datapoint (784 for MNIST; the data decide).
    :param int latent_dim: size of z.
    :param hidden_sizes: hidden layer sizes of the encoder; the decoder mirrors them.
    :param str activation: hidden-layer activation (see :data:`pyro_vae.networks.ACTIVATIONS`).
    :param likelihood: a :class:`~pyro_vae.likelihoods.Likelihood` or its name
        (``"bernoulli"``, ``"continuous-bernoulli"``, ``"gaussian"``).
    :param encoder: optional module mapping ``(x, context)`` to ``(loc, scale)`` of q(z|x).
    :param decoder: optional module mapping ``(z, context)`` to the likelihood's parameter;
        any architecture works (see ``examples/custom_decoder.py``).
    :param int context_dim: size of an optional conditioning input (e.g. a one-hot label)
        concatenated to the encoder's and decoder's inputs.
    :param str prefix: prepended to every site, plate and module name.
    :param float beta: KL weight β applied to the latent site only (β = 1 is the ELBO; other
        values give the β-VAE objective of Higgins et al. 2017, which is not a bound on log p(x)).
    :param str flow: ``None`` for the diagonal Gaussian q(z|x), or ``"iaf"`` to push it through
        an inverse autoregressive flow conditioned on the encoder's last hidden layer
        (:mod:`pyro_vae.flows`; the encoder must offer ``features`` and ``heads``, as
        :class:`~pyro_vae.networks.GaussianEncoder` does).
    :param int flow_layers: the flow's number of transforms K.
    """

    def __init__(
        self,
        x_dim: int,
        *,
        latent_dim: int = 50,
        hidden_sizes: tuple[int, ...] = (400,),
        activation: str = "softplus",
        likelihood: str | Likelihood = "bernoulli",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        context_dim: int = 0,
        prefix: str = "",
        beta: float = 1.0,
        flow: str | None = None,
        flow_layers: int = 2,
    ):
        super().__init__()
        for name, value in (("x_dim", x_dim), ("latent_dim", latent_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(context_dim, int) or context_dim < 0:
            raise ConfigError(f"context_dim must be an integer >= 0, got {context_dim!r}")
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ConfigError(f"beta must be a finite number >= 0, got {beta!r}")
        hidden_sizes = tuple(hidden_sizes)
        if any(isinstance(h, bool) or not isinstance(h, int) or h <= 0 for h in hidden_sizes):
            raise ConfigError(f"hidden_sizes must be positive integers, got {hidden_sizes!r}")
        if "$$$" in prefix:
            raise ConfigError(f"prefix must not contain '$$$' (Pyro's separator): {prefix!r}")
        self.x_dim, self.latent_dim, self.context_dim = x_dim, latent_dim, context_dim
        self.prefix = prefix
        self.beta = float(beta)
        self.encoder = encoder or GaussianEncoder(
            x_dim, latent_dim, hidden_sizes, activation, context_dim=context_dim
        )
        self.decoder = decoder or MLPDecoder(
            latent_dim, x_dim, tuple(reversed(hidden_sizes)), activation, context_dim=context_dim
        )
        if isinstance(likelihood, str):
            likelihood = make_likelihood(likelihood, x_dim=x_dim)
        self.likelihood = likelihood
        self._likelihood_has_params = any(True for _ in likelihood.parameters())
        self.flow = None
        if flow is not None:
            if not all(hasattr(self.encoder, a) for a in ("features", "heads", "features_dim")):
                raise ConfigError("a flow guide conditions on the encoder's last hidden layer: "
                                  "the encoder must offer features(x, context), heads(h) and "
                                  "features_dim, as GaussianEncoder does")
            self.flow = make_flow(flow, latent_dim=latent_dim, num_layers=flow_layers,
                                  context_dim=self.encoder.features_dim)
        self.flow_name = flow

    @classmethod
    def from_preset(cls, name: str, x_dim: int, **overrides) -> VAE:
        """Build the ``"pyro"`` (784-400-50, softplus) or ``"burda"`` (784-200-200-50, tanh)
        architecture for ``x_dim`` features; keyword arguments override the preset."""
        arch = get_preset(name)
        if arch.upper_layers:
            raise ConfigError(f"preset {name!r} has {arch.stochastic_layers} stochastic layers: "
                              "build it with HierarchicalVAE.from_preset")
        kwargs = dict(
            latent_dim=arch.latent_dim, hidden_sizes=arch.hidden_sizes, activation=arch.activation
        )
        kwargs.update(overrides)
        return cls(x_dim, **kwargs)

    # --- names -------------------------------------------------------------------------
    @property
    def z_site(self) -> str:
        return self.prefix + "z"

    @property
    def x_site(self) -> str:
        return self.prefix + "x"

    @property
    def plate_name(self) -> str:
        return self.prefix + "data"

    @property
    def structure(self) -> Structure:
        """One stochastic layer; the guide's family (what estimators check)."""
        if self.flow is None:
            return Structure(1)
        return Structure(1, self.flow_name, self.flow.num_layers)

    # --- the Pyro program ----------------------------------------------------------------
    def _data_plate(self, batch_size: int, num_data: int | None, plate: bool, device):
        return data_plate(self.plate_name, batch_size, num_data, plate, device)

    def _kl_weight(self):
        return latent_weight(self.beta)

    def model(self, x, context=None, *, num_data: int | None = None, plate: bool = True):
        """p(z) p_θ(x|z) for a minibatch ``x`` of shape ``(B, x_dim)``.

        :param context: optional ``(B, context_dim)`` conditioning input.
        :param num_data: full data set size; scales the minibatch to the full-data ELBO.
        :param plate: open the data plate; pass ``False`` when calling from inside an outer
            plate over the same batch dimension.
        :returns: the latent sample z, ``(B, latent_dim)`` (with particles in front if
            vectorized).
        """
        self._check_input(x, plate)
        register_modules(self, decoder=self.decoder,
                         likelihood=self.likelihood if self._likelihood_has_params else None)
        batch_size = x.shape[0]
        with self._data_plate(batch_size, num_data, plate, x.device):
            loc = x.new_zeros(batch_size, self.latent_dim)
            prior = dist.Normal(loc, torch.ones_like(loc)).to_event(1)
            with self._kl_weight():
                z = pyro.sample(self.z_site, prior)
            params = self.decoder(z, context)
            pyro.sample(self.x_site, self.likelihood(params).to_event(1), obs=x)
        return z

    def guide(self, x, context=None, *, num_data: int | None = None, plate: bool = True):
        """q_φ(z|x) (:meth:`posterior`), arguments as in :meth:`model`."""
        self._check_input(x, plate)
        register_modules(self, encoder=self.encoder, flow=self.flow)
        with self._data_plate(x.shape[0], num_data, plate, x.device):
            q = self.posterior(x, context)
            with self._kl_weight():
                return pyro.sample(self.z_site, q)

    def posterior(self, x, context=None) -> dist.TorchDistribution:
        """q_φ(z|x) over ``(latent_dim,)``, batch shape ``(B,)``: N(loc(x), diag(scale(x)²)),
        pushed through the flow when the VAE has one."""
        if self.flow is None:
            loc, scale = self.encoder(x, context)
            return dist.Normal(loc, scale).to_event(1)
        h = self.encoder.features(x, context)
        loc, scale = self.encoder.heads(h)
        return self.flow(dist.Normal(loc, scale).to_event(1), h)

    def _check_input(self, x, plate: bool) -> None:
        if pyro.infer.util.is_validation_enabled():  # else free
            check_input(x, x_dim=self.x_dim, dtype=next(self.encoder.parameters(), x).dtype,
                        plate=plate)

    # --- plain-PyTorch conveniences ----------------------------------------------------
    def encode(self, x, context=None):
        """Mean and standard deviation of q(z|x), each ``(B, latent_dim)`` (with a flow: of
        the Gaussian that the flow transforms)."""
        return self.encoder(x, context)

    def decode(self, z, context=None):
        """The distribution p_θ(x|z) with event shape ``(x_dim,)``."""
        return self.likelihood(self.decoder(z, context)).to_event(1)

    def check_data(self, x: torch.Tensor, *, where: str = "data") -> None:
        """Raise :class:`~pyro_vae.errors.DataError` unless ``x`` is ``(B, x_dim)``, finite and
        in the likelihood's support."""
        check_data(x, x_dim=self.x_dim, dtype=next(self.encoder.parameters(), x).dtype,
                   likelihood=self.likelihood, where=where)

    def init_output_bias(self, mean: torch.Tensor) -> None:
        """Set the decoder's output bias from the per-feature training mean (Burda et al. 2016)."""
        init_output_bias(self.decoder, self.likelihood, mean)


# --- what every model of the package shares ---------------------------------------------------


def register_modules(vae, **modules) -> None:
    """``pyro.module(vae.prefix + name, module)`` for each module given (``None``: skipped),
    unless :func:`modules_unregistered` is in force: SVI and Pyro's JIT-compiled ELBOs find
    the parameters through Pyro's param store, while a differentiable loss stepped by a torch
    optimizer over ``vae.parameters()`` does not need it, and registering costs a Pyro message
    per parameter at every step."""
    if getattr(vae, "_registers_modules", True):
        for name, module in modules.items():
            if module is not None:
                pyro.module(vae.prefix + name, module)


@contextlib.contextmanager
def modules_unregistered(vae):
    """Within the block, ``vae``'s model and guide do not register their modules with Pyro's
    param store (see :func:`register_modules`); the numbers are the same."""
    previous = getattr(vae, "_registers_modules", True)
    vae._registers_modules = False
    try:
        yield vae
    finally:
        vae._registers_modules = previous


def data_plate(name: str, batch_size: int, num_data: int | None, plate: bool, device):
    """The data plate ``name`` (nothing when not ``plate``); with ``num_data`` the
    log-densities are scaled by num_data / B so that a minibatch loss estimates the full-data
    loss. The plate's indices live on ``device``, the data's."""
    if not plate:
        return contextlib.nullcontext()
    plate_ = pyro.plate(name, batch_size, device=device)
    if num_data is None or num_data == batch_size:
        return plate_
    stack = contextlib.ExitStack()
    stack.enter_context(plate_)
    stack.enter_context(poutine.scale(scale=num_data / batch_size))
    return stack


def latent_weight(beta: float):
    """The context of a latent site under the KL weight β: its log-densities (and a closed-form
    KL) times β; at β = 0, where :func:`pyro.poutine.scale` refuses, masked out instead."""
    if beta == 1.0:
        return contextlib.nullcontext()
    return poutine.scale(scale=beta) if beta > 0 else poutine.mask(mask=False)


def check_input(x, *, x_dim: int, dtype: torch.dtype, plate: bool) -> None:
    """With Pyro's validation on (:func:`pyro.enable_validation`), what a user's SVI loop
    would otherwise meet as a broadcasting or dtype error deep inside torch: ``x`` must be a
    floating tensor ``(B, x_dim)`` (``(..., B, x_dim)`` under ``plate=False``) of the
    parameters' ``dtype``. Free when validation is off."""
    if not pyro.infer.util.is_validation_enabled():
        return
    if not isinstance(x, torch.Tensor):
        raise DataError(f"x must be a torch.Tensor of shape (B, {x_dim}), got a "
                        f"{type(x).__name__}")
    shape = "(B, x_dim)" if plate else "(..., B, x_dim)"
    if (x.dim() != 2 if plate else x.dim() < 2) or x.shape[-1] != x_dim:
        hint = (f"; one datapoint is x.unsqueeze(0), of shape (1, {x_dim})"
                if x.dim() == 1 and x.shape[0] == x_dim else "")
        raise DataError(f"x must have shape {shape} = (B, {x_dim}) for this model, "
                        f"found {tuple(x.shape)}{hint}")
    if not x.is_floating_point() or x.dtype != dtype:
        raise DataError(f"x has dtype {x.dtype}, the model's parameters {dtype}: use "
                        f"x.to({dtype}) (or convert the model with vae.to({x.dtype}))")


def check_data(x, *, x_dim: int, dtype: torch.dtype, likelihood: Likelihood,
               where: str = "data") -> None:
    """Raise :class:`~pyro_vae.errors.DataError` unless ``x`` is ``(N, x_dim)`` of ``dtype``,
    not empty, finite and in the likelihood's support."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{where}: expected a torch.Tensor, found a {type(x).__name__}")
    if x.dim() != 2 or x.shape[-1] != x_dim:
        raise DataError(
            f"{where}: expected shape (N, {x_dim}) for this model, found {tuple(x.shape)}"
        )
    if x.is_floating_point() and x.dtype != dtype:
        raise DataError(f"{where}: dtype {x.dtype}, the model's parameters are {dtype}")
    if x.shape[0] == 0:
        raise DataError(f"{where}: the data set is empty")
    likelihood.check_data(x, where=where)


def init_output_bias(decoder: nn.Module, likelihood: Likelihood, mean: torch.Tensor) -> None:
    """Set ``decoder.out``'s bias so that p(x|z) matches the per-feature ``mean``."""
    out = getattr(decoder, "out", None)
    if not isinstance(out, nn.Linear):
        raise ConfigError("init_output_bias needs a decoder with a Linear 'out' layer")
    with torch.no_grad():
        out.bias.copy_(likelihood.output_bias(mean.to(out.bias)))
