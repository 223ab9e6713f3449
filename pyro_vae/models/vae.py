"""The VAE as a Pyro program with L ≥ 1 stochastic layers (Kingma & Welling 2014; Burda et
al. 2016 for L ≥ 2), ready for :class:`pyro.infer.SVI`::

    model:  p(z_L) p(z_(L-1)|z_L) ⋯ p(z_1|z_2) p_θ(x|z_1),     p(z_L) = N(0, I)
    guide:  q(z_1|x) q(z_2|z_1) ⋯ q(z_L|z_(L-1))

each conditional a diagonal Gaussian from a network, each q optionally pushed through an
inverse autoregressive flow. Sites ``{prefix}z`` (``{prefix}z1`` … ``{prefix}zL`` with more
layers) and ``{prefix}x`` in the plate ``{prefix}data``; modules ``{prefix}encoders``,
``{prefix}priors``, ``{prefix}decoder``, ``{prefix}likelihood``, ``{prefix}flows``.

    >>> import torch, pyro
    >>> from pyro.infer import SVI, TraceMeanField_ELBO
    >>> vae = VAE(x_dim=4, latent_dim=2, hidden_sizes=(8,))
    >>> svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
    >>> svi.step(torch.ones(3, 4)) > 0   # −ELBO summed over the 3 datapoints, in nats
    True

With L ≥ 2 only the top layer's KL is the ELBO's term in closed form (the guide draws z_2
from z_1, and p(z_1|z_2) depends on it): ``capabilities.closed_form_kl_sites``.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import Normal

from pyro_vae import checks
from pyro_vae.errors import ConfigError
from pyro_vae.models.flows import make_flow
from pyro_vae.models.handlers import data_plate, latent_weight, register_modules
from pyro_vae.models.interface import Capabilities, GuidePath
from pyro_vae.models.likelihoods import Likelihood, make_likelihood
from pyro_vae.models.networks import GaussianEncoder, MLPDecoder, output_numel
from pyro_vae.models.presets import get_preset

__all__ = ["VAE"]


class VAE(nn.Module):
    """A VAE with L stochastic layers (see the module docstring); one layer by default.

    :param latent_dim: the size of z, or the sizes of z_1, ..., z_L.
    :param hidden_sizes: the guide's hidden sizes: one tuple (one layer; the decoder mirrors
        it) or one per layer (layer l reads z_(l-1), z_0 = x; the model mirrors them).
    :param likelihood: a :class:`~.likelihoods.Likelihood` or its name.
    :param encoder: a module ``(input, context) → (loc, scale)`` of q(z_1|x), or one per
        layer; ``priors``: L − 1 modules of p(z_l|z_(l+1)); ``decoder``: a module
        ``(z_1, context) →`` the likelihood's parameter. Given modules replace the MLPs.
    :param context_dim: size of a conditioning input that every network reads.
    :param prefix: prepended to every site, plate and module name.
    :param beta: weight β of the latent sites' log-densities (1: the ELBO; otherwise the β-VAE
        objective of Higgins et al. 2017, not a bound on log p(x)).
    :param flow: ``"iaf"``: each q pushed through ``flow_layers`` inverse autoregressive
        transforms conditioned on its encoder's last hidden layer.
    """

    def __init__(
        self,
        x_dim: int,
        *,
        latent_dim: int | Sequence[int] = 50,
        hidden_sizes: Sequence[int] | Sequence[Sequence[int]] = (400,),
        activation: str = "softplus",
        likelihood: str | Likelihood = "bernoulli",
        encoder: nn.Module | Sequence[nn.Module] | None = None,
        priors: Sequence[nn.Module] | None = None,
        decoder: nn.Module | None = None,
        context_dim: int = 0,
        prefix: str = "",
        beta: float = 1.0,
        flow: str | None = None,
        flow_layers: int = 2,
    ):
        super().__init__()
        self.x_dim = checks.integer("x_dim", x_dim)
        self.latent_dims = checks.size_or_sizes("latent_dim", latent_dim)
        hidden = checks.sizes_per_layer("hidden_sizes", hidden_sizes, len(self.latent_dims))
        self.context_dim = checks.integer("context_dim", context_dim, low=0)
        self.beta = checks.number("beta", beta, low=0)
        if not isinstance(prefix, str) or "$$$" in prefix:
            raise ConfigError(f"prefix must be a string without '$$$' (Pyro's separator), got "
                              f"{prefix!r}")
        self.prefix = prefix
        dims, c = self.latent_dims, context_dim
        self.encoders = nn.ModuleList(checks.modules("encoder", encoder, len(dims)) or [
            GaussianEncoder(i, o, h, activation, context_dim=c)
            for i, o, h in zip((x_dim, *dims[:-1]), dims, hidden, strict=True)])
        self.priors = nn.ModuleList(checks.modules("priors", priors, len(dims) - 1) or [
            GaussianEncoder(dims[i + 1], dims[i], tuple(reversed(hidden[i + 1])), activation,
                            context_dim=c) for i in range(len(dims) - 1)])
        self.decoder = decoder or MLPDecoder(dims[0], x_dim, tuple(reversed(hidden[0])),
                                             activation, context_dim=c)
        self.likelihood = (make_likelihood(likelihood, x_dim=x_dim) if isinstance(likelihood, str)
                           else checks.instance("likelihood", likelihood, Likelihood))
        self._likelihood_has_params = any(True for _ in self.likelihood.parameters())
        self.flows = None if flow is None else self._make_flows(flow, flow_layers)
        self.flow_name = flow
        self._checked = (None, -1)  # (a weak reference to the x last checked, its version)
        self._holder: tuple[nn.Module, str] | None = None  # see _reference_parameter
        self._row_numel: int | None = None

    def _make_flows(self, flow: str, flow_layers: int) -> nn.ModuleList:
        if not all(hasattr(e, a) for e in self.encoders
                   for a in ("features", "heads", "features_dim")):
            raise ConfigError("a flow guide conditions on each encoder's last hidden layer: "
                              "the encoders must offer features(input, context), heads(h) and "
                              "features_dim, as GaussianEncoder does")
        return nn.ModuleList([
            make_flow(flow, latent_dim=d, context_dim=e.features_dim, num_layers=flow_layers)
            for d, e in zip(self.latent_dims, self.encoders, strict=True)])

    @classmethod
    def from_preset(cls, name: str, x_dim: int, *, image_shape: Sequence[int] | None = None,
                    **overrides) -> VAE:
        """The architecture preset ``name`` (:data:`~.presets.PRESETS`) for ``x_dim``
        features (images of ``image_shape`` for a convolutional preset); keyword arguments
        override the preset's ``latent_dim``, ``hidden_sizes`` and ``activation``, and pass
        the rest (``likelihood``, ``flow``, ``beta``, ...)."""
        arch = get_preset(name)
        sizes = {"latent_dim": arch.latent_dims if len(arch.latent_dims) > 1
                 else arch.latent_dims[0],
                 "hidden_sizes": arch.hidden_sizes if len(arch.latent_dims) > 1
                 else arch.hidden_sizes[0],
                 "activation": arch.activation}
        sizes.update({k: overrides.pop(k) for k in list(sizes) if k in overrides})
        networks = arch.networks(x_dim, image_shape=image_shape,
                                 context_dim=overrides.get("context_dim", 0), **sizes)
        return cls(x_dim, **sizes, **networks, **overrides)

    # --- names and capabilities ---------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.latent_dims)

    @property
    def latent_dim(self) -> int:
        """Size of the top layer z_L, whose prior is N(0, I) (what pictures sample)."""
        return self.latent_dims[-1]

    @property
    def encoder(self) -> nn.Module:
        """The network of q(z_1|x) (with one layer, the guide's only one); read-only."""
        return self.encoders[0]

    def __setattr__(self, name: str, value) -> None:
        if name == "encoder":  # nn.Module would register it beside encoders[0], unused
            raise AttributeError("vae.encoder is vae.encoders[0]: assign that, or pass "
                                 "encoder= to VAE(...)")
        super().__setattr__(name, value)

    @property
    def z_sites(self) -> tuple[str, ...]:
        """``{prefix}z`` with one layer; ``{prefix}z1``, ..., ``{prefix}zL`` with more."""
        if self.num_layers == 1:
            return (self.prefix + "z",)
        return tuple(f"{self.prefix}z{i + 1}" for i in range(self.num_layers))

    @property
    def x_site(self) -> str:
        return self.prefix + "x"

    @property
    def plate_name(self) -> str:
        return self.prefix + "data"

    @property
    def capabilities(self) -> Capabilities:
        """Layers, flows, the top layer's closed-form KL, and the fast evaluators."""
        flow_layers = 0 if self.flows is None else self.flows[0].num_layers
        return Capabilities(layers=self.num_layers, flow=self.flow_name, flow_layers=flow_layers,
                            closed_form_kl_sites=() if self.flows else self.z_sites[-1:],
                            layered=True, context_dim=self.context_dim)

    # --- the Pyro program ----------------------------------------------------------------
    def model(self, x, context=None, *, num_data: int | None = None, plate: bool = True):
        """p(z_L) ⋯ p(z_1|z_2) p_θ(x|z_1) for a minibatch ``x`` ``(B, x_dim)`` (``context``
        ``(B, context_dim)``); ``num_data`` scales it to the full-data ELBO; ``plate=False``
        from inside an outer plate over the same datapoints. Returns z ``(B, latent_dim)``, or
        (z_1, ..., z_L)."""
        self._check_input(x, context, plate)
        register_modules(self, priors=self.priors if self.num_layers > 1 else None,
                         decoder=self.decoder,
                         likelihood=self.likelihood if self._likelihood_has_params else None)
        with data_plate(self.plate_name, x.shape[0], num_data, plate, x.device):
            loc = x.new_zeros(x.shape[0], self.latent_dim)
            z = self._sample(-1, dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            zs = [z]
            for i in reversed(range(self.num_layers - 1)):  # z_(L-1), ..., z_1
                loc, scale = self.priors[i](z, context)
                z = self._sample(i, dist.Normal(loc, scale).to_event(1))
                zs.insert(0, z)
            pyro.sample(self.x_site, self.likelihood(self.decoder(z, context)).to_event(1),
                        obs=x)
        return zs[0] if self.num_layers == 1 else tuple(zs)

    def guide(self, x, context=None, *, num_data: int | None = None, plate: bool = True):
        """q(z_1|x) ⋯ q(z_L|z_(L-1)) (:meth:`posterior` layer by layer); arguments and
        return value as in :meth:`model`."""
        self._check_input(x, context, plate)
        register_modules(self, encoders=self.encoders, flows=self.flows)
        zs, below = [], x
        with data_plate(self.plate_name, x.shape[0], num_data, plate, x.device):
            for i in range(self.num_layers):
                below = self._sample(i, self.posterior(below, context, layer=i))
                zs.append(below)
        return zs[0] if self.num_layers == 1 else tuple(zs)

    def _sample(self, layer: int, fn):
        with latent_weight(self.beta):
            return pyro.sample(self.z_sites[layer], fn)

    def posterior(self, below, context=None, *, layer: int = 0) -> dist.TorchDistribution:
        """q(z_l|z_(l-1)) of ``layer`` = l − 1 given the layer below ``(..., B, d_(l-1))``
        (z_0 = x): N(loc, diag scale²), pushed through the layer's flow when there is one."""
        encoder = self.encoders[layer]
        if self.flows is None:
            loc, scale = encoder(below, context)
            return dist.Normal(loc, scale).to_event(1)
        h = encoder.features(below, context)
        loc, scale = encoder.heads(h)
        return self.flows[layer](dist.Normal(loc, scale).to_event(1), h)

    def _check_input(self, x, context, plate: bool) -> None:
        """x as :meth:`check_data` wants it, once per tensor (the guide's check serves the
        model's), and the context at every call."""
        ref, version = self._checked
        if ref is None or ref() is not x or version != x._version:
            self._check_x(x, "x", min_dims=None if plate else 2)
            self.__dict__["_checked"] = (weakref.ref(x), x._version)  # past nn.Module.__setattr__
        if context is not None or self.context_dim:  # a call less on every step without one
            checks.context(context, self.context_dim, x)

    def _reference_parameter(self) -> nn.Parameter | None:
        """The first parameter, whose dtype and device x must share, read by name from its
        holder once found (~0.2 µs, not a ~15 µs walk; ``.to()`` and an assigning load show)."""
        holder = self.__dict__.get("_holder")  # absent from a VAE pickled before it existed
        parameter = holder and holder[0]._parameters.get(holder[1])
        if parameter is not None:
            return parameter
        for module in self.modules():
            for name, parameter in module._parameters.items():
                if parameter is not None:
                    self._holder = (module, name)
                    return parameter
        return None

    # --- the layered model (:class:`~.interface.LayeredModel`) ------------------------------
    def guide_path(self, x, context=None, *, u=None, num_samples: int = 1,
                   generator=None) -> GuidePath:
        """The guide layer by layer at the base draws ``u`` ``(S, B, Σ d_l)``, or drawing S =
        ``num_samples`` of them as loc + scale·ε (ε from ``generator``, else torch's)."""
        below, offset, parts = x, 0, ([], [], [], [], [])
        log_det = None
        for layer, d in enumerate(self.latent_dims):
            encoder = self.encoders[layer]
            h = None if self.flows is None else encoder.features(below, context)
            loc, scale = encoder(below, context) if h is None else encoder.heads(h)
            if u is None:
                shape = (num_samples, *loc.shape) if layer == 0 else loc.shape
                e = loc + scale * torch.randn(shape, generator=generator, dtype=loc.dtype,
                                              device=loc.device)
            else:
                e = u[..., offset : offset + d]
            offset += d
            z = e
            if h is not None:
                z, ladj = self.flows[layer].push(e, h)
                log_det = ladj if log_det is None else log_det + ladj
            log_q = Normal(loc, scale, validate_args=False).log_prob(e).sum(-1)
            for part, value in zip(parts, (e, z, loc, scale, log_q), strict=True):
                part.append(value)
            below = z
        u = parts[0][0] if len(parts[0]) == 1 else torch.cat(parts[0], -1)
        log_det = torch.zeros_like(parts[4][0]) if log_det is None else log_det
        return GuidePath(u, parts[1], parts[2], parts[3], parts[4], log_det)

    def log_prior(self, zs, context=None) -> list[torch.Tensor]:
        """log p(z_l | z_(l+1)) for l = 1..L, the last log N(z_L; 0, I): each ``(S, B)``."""
        terms = [Normal(*prior(above, context), validate_args=False).log_prob(z).sum(-1)
                 for z, prior, above in zip(zs, self.priors, zs[1:], strict=False)]
        return [*terms, Normal(0.0, 1.0, validate_args=False).log_prob(zs[-1]).sum(-1)]

    def log_likelihood(self, x, z, context=None) -> torch.Tensor:
        """log p(x | z_1) summed over the features, ``(S, B)`` nats."""
        return self.likelihood.log_prob_sum(self.decoder(z, context), x)

    def sample_prior(self, shape: tuple[int, ...], context=None, *, generator=None
                     ) -> list[torch.Tensor]:
        """z_1..z_L, each ``shape + (d_l,)``, drawn top down as loc + scale·ε (ε from
        ``generator``, else torch's global one)."""
        shape = checks.sizes("shape", shape)
        parameter = self._reference_parameter()
        z = torch.randn((*shape, self.latent_dim), generator=generator, dtype=parameter.dtype,
                        device=parameter.device)
        zs = [z]
        for prior in reversed(self.priors):
            loc, scale = prior(z, context)
            z = loc + scale * torch.randn(loc.shape, generator=generator, dtype=loc.dtype,
                                          device=loc.device)
            zs.insert(0, z)
        return zs

    def sample_x(self, z: torch.Tensor, context=None) -> torch.Tensor:
        """x ~ p(x | z_1), with torch's global generator."""
        return self.likelihood(self.decoder(z, context)).sample()

    def pull_back(self, x, zs, context=None) -> torch.Tensor:
        """The base draws u that :meth:`guide_path` maps to ``zs`` (each flow's inverse: one
        network pass per latent dimension and transform)."""
        if self.flows is None:
            return torch.cat(zs, -1)
        parts, below = [], x
        for layer, z in enumerate(zs):
            h = self.encoders[layer].features(below, context)
            parts.append(self.flows[layer].pull(z, h))
            below = z
        return torch.cat(parts, -1)

    # --- plain-PyTorch conveniences --------------------------------------------------------
    def encode(self, x, context=None):
        """Mean and standard deviation ``(B, latent_dim)`` of the top layer's Gaussian (before
        any flow), each layer below at its mean: for embeddings and pictures."""
        below = checks.tensor("x", x, shape=(None, self.x_dim), min_dims=2, finite=False)
        checks.context(context, self.context_dim, x)
        for encoder in self.encoders:
            loc, scale = encoder(below, context)
            below = loc
        return loc, scale

    def decode(self, z, context=None):
        """p(x|z_1) for a top-layer ``z`` ``(..., latent_dim)``, the layers between at their
        means (for pictures); event shape ``(x_dim,)``."""
        checks.tensor("z", z, shape=(self.latent_dim,), min_dims=1, finite=False)
        checks.context(context, self.context_dim, z, "z")
        for prior in reversed(self.priors):
            z = prior(z, context)[0]
        return self.likelihood(self.decoder(z, context)).to_event(1)

    def check_data(self, x: torch.Tensor, *, where: str = "data") -> None:
        """Raise :class:`~pyro_vae.errors.DataError` unless ``x`` is a non-empty ``(N, x_dim)``
        tensor of the parameters' dtype and device, in the likelihood's support."""
        self._check_x(x, where)

    def _check_x(self, x, where: str, min_dims: int | None = None) -> None:
        parameter = self._reference_parameter()
        # _modules: nn.Module.__getattr__ costs ~8 µs on a step's cold caches
        if (checks.is_plain_batch(x, self.x_dim, parameter)
                and self._modules["likelihood"].all_in_support(x)):
            return
        checks.tensor(where, x, shape=(None, self.x_dim), min_dims=min_dims, finite=False,
                      dtype=None if parameter is None else parameter.dtype,
                      device=None if parameter is None else parameter.device)
        self.likelihood.check_data(x, where=where)

    def init_output_bias(self, mean: torch.Tensor) -> None:
        """Set the decoder's output bias from the per-feature training mean (Burda et al. 2016):
        the decoder must offer ``output_bias``, a ``(x_dim,)`` parameter."""
        checks.tensor("mean", mean, shape=(self.x_dim,))
        bias = getattr(self.decoder, "output_bias", None)
        if not isinstance(bias, torch.Tensor) or bias.shape != (self.x_dim,):
            raise ConfigError(f"init_output_bias needs a decoder with an output_bias of shape "
                              f"({self.x_dim},)")
        with torch.no_grad():
            bias.copy_(self.likelihood.output_bias(mean.to(bias)))

    def bytes_per_row(self) -> int:
        """Bytes of the forward activations of one sample of one datapoint (a gradient
        evaluation needs about three times as much): the networks' outputs twice, x three
        times, z four times, each flow transform's (z, h) → 10 d → 2 d pass."""
        if self._row_numel is None:
            parameter = self._reference_parameter()
            kw = {"dtype": parameter.dtype, "device": parameter.device}
            c = torch.zeros(1, self.context_dim, **kw) if self.context_dim else None
            widths = output_numel(self.decoder, torch.zeros(1, self.latent_dims[0], **kw), c)
            for net, d_in in (*zip(self.priors, self.latent_dims[1:], strict=True),
                              *zip(self.encoders[1:], self.latent_dims[:-1], strict=True)):
                widths += output_numel(net, torch.zeros(1, d_in, **kw), c)
            flows = 0 if self.flows is None else self.flows[0].num_layers * sum(
                14 * d + e.features_dim for d, e in zip(self.latent_dims, self.encoders,
                                                         strict=True))
            self._row_numel = 4 * sum(self.latent_dims) + 2 * widths + 3 * self.x_dim + flows
        return self._row_numel * self._reference_parameter().element_size()

