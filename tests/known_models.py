"""Small hand-written Pyro programs whose log p(x) is known in closed form, for the tests of
generic importance sampling, AIS, BDMC and the inference gaps: several latent sites, a flow
in the guide, a positive latent, and a discrete latent summed out by enumeration.

Every model takes the data as its first argument, with the datapoints in plate ``"data"``;
every function of a model's parameters is float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch.distributions import MultivariateNormal

from pyro_vae.models.linear_gaussian import PPCAParams

F64 = torch.float64


def random_ppca(D: int, L: int, *, seed: int = 0, sigma: float = 0.5) -> PPCAParams:
    g = torch.Generator().manual_seed(seed)
    return PPCAParams(torch.randn(D, L, generator=g, dtype=F64),
                      torch.randn(D, generator=g, dtype=F64), torch.tensor(sigma, dtype=F64))


def posterior_precision(params: PPCAParams) -> torch.Tensor:
    """Λ = (Wᵀ W + σ² I) / σ², the precision of p(z|x) (the same for every x)."""
    W, _, sigma = params
    return (W.T @ W + sigma**2 * torch.eye(W.shape[1], dtype=W.dtype)) / sigma**2


# --- two latent sites: z1 → z2 → x -----------------------------------------------------------
class TwoLayer(NamedTuple):
    """z1 ~ N(0, I), z2 | z1 ~ N(A z1, s² I), x | z2 ~ N(W z2 + μ, σ² I)."""

    A: torch.Tensor  # (L2, L1)
    s: float
    W: torch.Tensor  # (D, L2)
    mu: torch.Tensor
    sigma: float

    @classmethod
    def random(cls, D=6, L1=2, L2=3, seed=0) -> TwoLayer:
        g = torch.Generator().manual_seed(seed)
        return cls(torch.randn(L2, L1, generator=g, dtype=F64), 0.7,
                   torch.randn(D, L2, generator=g, dtype=F64),
                   torch.randn(D, generator=g, dtype=F64), 0.5)

    def joint_cov(self):
        """Covariance of (z1, z2, x), for exact marginals and conditionals."""
        L1, L2, D = self.A.shape[1], self.A.shape[0], self.W.shape[0]
        # linear map from independent noise (e1, e2, e3) to (z1, z2, x)
        M = torch.zeros(L1 + L2 + D, L1 + L2 + D, dtype=F64)
        M[:L1, :L1] = torch.eye(L1, dtype=F64)
        M[L1 : L1 + L2, :L1] = self.A
        M[L1 : L1 + L2, L1 : L1 + L2] = self.s * torch.eye(L2, dtype=F64)
        M[L1 + L2 :] = self.W @ M[L1 : L1 + L2]
        M[L1 + L2 :, L1 + L2 :] += self.sigma * torch.eye(D, dtype=F64)
        return M @ M.T

    def log_marginal(self, x):
        n = self.A.shape[1] + self.A.shape[0]
        return MultivariateNormal(self.mu, self.joint_cov()[n:, n:]).log_prob(x)

    def model(self, x):
        B, L1 = x.shape[0], self.A.shape[1]
        with pyro.plate("data", B):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(B, L1), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(z1 @ self.A.T, self.s).to_event(1))
            pyro.sample("x", dist.Normal(z2 @ self.W.T + self.mu, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        """q(z1|x) q(z2|z1, x): the exact conditional means, diagonal variances (close to,
        not equal to, the posterior)."""
        L1, L2 = self.A.shape[1], self.A.shape[0]
        cov = self.joint_cov()
        n = L1 + L2
        gain = cov[:n, n:] @ torch.linalg.inv(cov[n:, n:])  # E[z|x] = gain (x − μ)
        post = cov[:n, :n] - gain @ cov[n:, :n]
        with pyro.plate("data", x.shape[0]):
            loc = (x - self.mu) @ gain.T  # (B, L1 + L2)
            z1 = pyro.sample("z1", dist.Normal(loc[..., :L1], post[:L1, :L1].diagonal().sqrt()
                                               * 1.2).to_event(1))
            # z2 | z1, x: condition the Gaussian posterior on z1
            k = post[L1:, :L1] @ torch.linalg.inv(post[:L1, :L1])
            cond = post[L1:, L1:] - k @ post[:L1, L1:]
            loc2 = loc[..., L1:] + (z1 - loc[..., :L1]) @ k.T
            pyro.sample("z2", dist.Normal(loc2, cond.diagonal().sqrt() * 1.2).to_event(1))


# --- a flow in the guide ---------------------------------------------------------------------
class FlowGuide:
    """q(z|x) = an affine autoregressive flow (IAF-style, Pyro's transform) on top of
    N(posterior mean, 1.5² × posterior marginal variances) of a pPCA model.

    .. warning:: pyro-ppl 1.9.2's ``AffineAutoregressive._inverse`` starts from float32
       zeros whatever the input's dtype, so the density of a float64 flow at a given z
       fails unless torch's default dtype is float64 (as the tests that use it set)."""

    def __init__(self, params: PPCAParams, seed: int = 0):
        self.params = params
        torch.manual_seed(seed)
        L = params.W.shape[1]
        self.flow = AffineAutoregressive(AutoRegressiveNN(L, [8]).double())
        with torch.no_grad():  # near the identity: a mild, non-linear distortion
            for layer in self.flow.arn.layers[-1:]:
                layer.weight.mul_(0.1)
                layer.bias.mul_(0.1)
        W, _, sigma = params
        M = W.T @ W + sigma**2 * torch.eye(L, dtype=F64)
        self.gain = torch.linalg.solve(M, W.T)
        self.scale = 1.5 * (sigma**2 * torch.linalg.inv(M).diagonal()).sqrt()

    def __call__(self, x):
        pyro.module("flow", self.flow)
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal((x - self.params.mu) @ self.gain.T, self.scale).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, [self.flow]))


# --- a positive latent: Gamma-Poisson --------------------------------------------------------
class GammaPoisson(NamedTuple):
    """λ ~ Gamma(a, b), x | λ ~ Poisson(λ), per datapoint: p(x) is negative binomial."""

    a: float = 3.0
    b: float = 0.5

    def log_marginal(self, x):
        a, b = self.a, self.b
        return (torch.lgamma(x + a) - math.lgamma(a) - torch.lgamma(x + 1)
                + a * math.log(b / (1 + b)) - x * math.log(1 + b))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(x.new_tensor(self.a), x.new_tensor(self.b)))
            pyro.sample("x", dist.Poisson(rate), obs=x)

    def guide(self, x):
        """A log-normal near (not at) the Gamma posterior."""
        with pyro.plate("data", x.shape[0]):
            mean = (self.a + x) / (self.b + 1)
            pyro.sample("rate", dist.LogNormal(mean.log(), 0.6 / (self.a + x).sqrt()))


# --- a discrete latent summed out: a mixture with a continuous latent (M2-like) --------------
class Mixture(NamedTuple):
    """y ~ Cat(π), z ~ N(0, I), x | y, z ~ N(W z + M_y, σ² I): p(x) = Σ_y π_y N(M_y, W Wᵀ + σ² I).
    The guide enumerates y, like the M2 model of ``examples/composed_model.py``."""

    pi: torch.Tensor  # (K,)
    W: torch.Tensor  # (D, L)
    M: torch.Tensor  # (D, K)
    sigma: float
    widen: float = 1.2  # the guide's sd over the posterior's (1 with Wᵀ W diagonal: exact)

    @classmethod
    def random(cls, D=5, L=2, K=3, seed=0, *, exact_guide=False) -> Mixture:
        """With ``exact_guide``, Wᵀ W is diagonal, so that q(z|x, y) = p(z|x, y) exactly."""
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(D, L, generator=g, dtype=F64)
        if exact_guide:
            W = torch.linalg.qr(W)[0] * torch.linspace(2.0, 0.8, L, dtype=F64)
        return cls(torch.softmax(torch.randn(K, generator=g, dtype=F64), 0), W,
                   2 * torch.randn(D, K, generator=g, dtype=F64), 0.5,
                   1.0 if exact_guide else 1.2)

    def log_marginal(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.W.shape[0], dtype=F64)
        comps = MultivariateNormal(self.M.T, cov).log_prob(x.unsqueeze(-2))  # (B, K)
        return torch.logsumexp(comps + self.pi.log(), -1)

    def sample(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        y = torch.multinomial(self.pi, n, replacement=True, generator=g)
        z = torch.randn(n, self.W.shape[1], generator=g, dtype=F64)
        noise = torch.randn(n, self.W.shape[0], generator=g, dtype=F64)
        return z @ self.W.T + self.M.T[y] + self.sigma * noise

    def model(self, x):
        B, K, L = x.shape[0], self.pi.shape[0], self.W.shape[1]
        with pyro.plate("data", B):
            y = pyro.sample("y", dist.OneHotCategorical(self.pi.expand(B, K)))
            z = pyro.sample("z", dist.Normal(x.new_zeros(B, L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + y @ self.M.T, self.sigma).to_event(1),
                        obs=x)

    def guide(self, x):
        """q(y|x) uniform; q(z|x, y) = N(posterior mean given y, ``widen`` × posterior
        marginal sd)."""
        L, K = self.W.shape[1], self.pi.shape[0]
        A = self.W.T @ self.W + self.sigma**2 * torch.eye(L, dtype=F64)
        gain = torch.linalg.solve(A, self.W.T)
        sd = self.widen * (self.sigma**2 * torch.linalg.inv(A).diagonal()).sqrt()
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(x.shape[0], K)),
                            infer={"enumerate": "parallel", "expand": True})
            loc = (x - y @ self.M.T) @ gain.T  # (E, P, B, L) with y enumerated
            pyro.sample("z", dist.Normal(loc, sd).to_event(1))
