"""Likelihoods p_θ(x|z) as objects: each turns the decoder's output into a distribution over
one datapoint's features (batch shape ``(..., B, x_dim)``; the model adds ``.to_event(1)``), and
checks that data lie in its support, so that grey levels given to the Bernoulli likelihood fail
with a clear message instead of deep inside torch.
"""

from __future__ import annotations

import inspect
import math

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.errors import ConfigError, DataError, DataTypeError

__all__ = ["LIKELIHOODS", "Bernoulli", "ContinuousBernoulli", "Gaussian", "Likelihood",
           "make_likelihood"]


class Likelihood(nn.Module):
    """Base class: ``forward(params)`` returns a distribution with batch shape ``params.shape``."""

    name = "likelihood"
    needs_binary_data = False
    density = "a log-density"  # what log p(x) is under it, to label every figure

    def check_data(self, x: torch.Tensor, *, where: str = "data") -> None:
        """Raise :class:`DataError` if ``x`` holds values outside the support (NaN and infinity
        included), :class:`DataTypeError` if it is not a floating-point tensor."""
        if not x.is_floating_point():
            raise DataTypeError(f"{where}: expected floating-point values, found dtype "
                                f"{x.dtype}; convert with {where}.float() (grey levels in [0, 1])")
        x = x.detach()  # a scalar from a tensor that needs gradients would warn
        if x.device.type != "meta" and not self.all_in_support(x):
            raise DataError(f"{where}: {self.support_error(x)}")

    def all_in_support(self, x: torch.Tensor) -> bool:
        """Whether the likelihood gives every value of ``x`` a density."""
        return bool(torch.isfinite(x).all())

    def support_error(self, x: torch.Tensor) -> str:
        bad = ~torch.isfinite(x)
        return f"{int(bad.sum())} of {x.numel()} values are NaN or infinite"

    def output_bias(self, mean: torch.Tensor) -> torch.Tensor:
        """Decoder output bias that makes p(x|z) match the per-feature data mean ``mean``."""
        return mean

    def log_prob_sum(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over the features, nats: ``params (..., B, D)`` (the decoder's
        output) and ``x (B, D)`` → ``(..., B)``; subclasses may offer a faster formula."""
        return self(params).log_prob(x).sum(-1)


def _logit_of_mean(mean: torch.Tensor) -> torch.Tensor:
    p = mean.clamp(1e-3, 1 - 1e-3)
    return torch.log(p) - torch.log1p(-p)


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels with logits from the decoder, for binarized data."""

    name = "bernoulli"
    needs_binary_data = True
    density = "a log-probability of binarized images"

    def forward(self, logits: torch.Tensor) -> dist.Bernoulli:
        return dist.Bernoulli(logits=logits)

    def all_in_support(self, x: torch.Tensor) -> bool:
        # x − x·x is 0 exactly at 0 and 1, fused or not (NaN and ±inf give NaN or inf): one
        # kernel and one pass for both extremes, ~3× cheaper than comparisons
        low, high = torch.addcmul(x, x, x, value=-1).aminmax()
        return not (low or high)

    def support_error(self, x: torch.Tensor) -> str:
        if not bool(torch.isfinite(x).all()):
            return super().support_error(x)
        bad = x[(x != 0) & (x != 1)]
        return (f"the bernoulli likelihood needs binary values in {{0, 1}}, found {bad.numel()} "
                f"other values (e.g. {float(bad[0]):.4g}); binarize the data or use the "
                "continuous-bernoulli likelihood for grey levels in [0, 1]")

    def output_bias(self, mean: torch.Tensor) -> torch.Tensor:
        return _logit_of_mean(mean)

    def log_prob_sum(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Σ_d [x_d l_d − softplus(l_d)] with the logits l, faster than ``Bernoulli.log_prob``."""
        out = torch.nn.functional.softplus(params)
        out.addcmul_(params, x, value=-1.0)  # softplus(l) − x·l = −log p(x_d|z)
        return -out.sum(-1)


class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli of Loaiza-Ganem & Cunningham (2019), for grey levels in [0, 1]."""

    name = "continuous-bernoulli"
    density = ("a log-density on [0, 1]^D, not comparable with the bernoulli likelihood's "
               "log-probabilities of binarized images")

    def forward(self, logits: torch.Tensor) -> dist.ContinuousBernoulli:
        return dist.ContinuousBernoulli(logits=logits)

    def all_in_support(self, x: torch.Tensor) -> bool:
        low, high = torch.aminmax(x)  # NaN propagates to both, and fails both tests
        return bool(low >= 0) and bool(high <= 1)

    def support_error(self, x: torch.Tensor) -> str:
        if not bool(torch.isfinite(x).all()):
            return super().support_error(x)
        return (f"the continuous-bernoulli likelihood needs values in [0, 1], found values in "
                f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")

    def output_bias(self, mean: torch.Tensor) -> torch.Tensor:
        return _logit_of_mean(mean)


class Gaussian(Likelihood):
    """N(x; decoder(z), σ² I) for real-valued data: σ = ``scale`` fixed, or learned (as log σ)
    with ``learn_scale``: one per feature, or with ``shared`` one for all features (the σ-VAE
    of Rybkin et al. 2021, which features that never vary cannot drive to zero)."""

    name = "gaussian"
    density = ("a log-density on R^D, not comparable with the bernoulli likelihood's "
               "log-probabilities of binarized images")

    def __init__(self, scale: float = 1.0, *, learn_scale: bool = False, x_dim: int = 1,
                 shared: bool = False):
        super().__init__()
        if not (scale > 0 and math.isfinite(scale)):
            raise ConfigError(f"gaussian likelihood scale must be a positive number, got {scale}")
        log_scale = torch.full((x_dim if learn_scale and not shared else 1,),
                               float(scale)).log()
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, loc: torch.Tensor) -> dist.Normal:
        return dist.Normal(loc, self.log_scale.exp().expand(loc.shape))


#: The likelihoods p(x|z) by name (``--likelihood``); :func:`make_likelihood` builds one.
LIKELIHOODS = {
    "bernoulli": Bernoulli,
    "continuous-bernoulli": ContinuousBernoulli,
    "gaussian": Gaussian,
}


def make_likelihood(name: str, *, x_dim: int, **kwargs) -> Likelihood:
    """Build the likelihood called ``name`` (one of :data:`LIKELIHOODS`)."""
    try:
        cls = LIKELIHOODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown likelihood {name!r}; known likelihoods: {', '.join(LIKELIHOODS)}"
        ) from None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes = [k for k, p in inspect.signature(cls).parameters.items()
             if p.kind in named and k != "x_dim"]
    unknown = sorted(set(kwargs) - set(takes))
    if unknown:
        raise ConfigError(f"the {name} likelihood takes {', '.join(takes) or 'no options'}; "
                          f"got {', '.join(unknown)}")
    if cls is Gaussian:
        return Gaussian(x_dim=x_dim, **kwargs)
    return cls(**kwargs)
