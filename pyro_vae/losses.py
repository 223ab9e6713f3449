"""Hand-written plain-PyTorch ELBO losses, the baselines Pyro's estimators are checked and
timed against: they share the networks and the likelihood with :class:`pyro_vae.VAE`, and
nothing of Pyro's inference code. The losses are −ELBO summed over the minibatch (nats), times
``num_data / B`` when ``num_data`` is given (the scale of Pyro's ``SVI.step``); the ``*_elbo``
functions return the ELBO per datapoint, ``(B,)`` nats. For Gaussian guides of L layers, with
z_0 = x and z_1..z_L drawn layer by layer,

    mc:        log p(x|z_1) + β Σ_l [log p(z_l|z_(l+1)) − log q(z_l|z_(l-1))],
               with p(z_L|z_(L+1)) = p(z_L) = N(0, I);
    analytic:  the same with the top layer's log p(z_L) − log q(z_L|z_(L-1)) replaced by
               −KL(q(z_L|z_(L-1)) ‖ N(0, I)) in closed form, the only layer where that KL is the
               ELBO's term (see :mod:`pyro_vae.models.vae`).

A guide with a flow has no Gaussian log-density to write by hand: they refuse it.
"""

from __future__ import annotations

import torch

from pyro_vae import checks
from pyro_vae.errors import ConfigError

__all__ = ["analytic_elbo", "analytic_loss", "gaussian_kl_to_standard_normal", "mc_elbo",
           "mc_loss", "sample_posterior"]

_LOG_2PI = float(torch.log(torch.tensor(2 * torch.pi)))


def gaussian_kl_to_standard_normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, diag(scale²)) ‖ N(0, I)) in nats, summed over the last dimension.

    Kingma & Welling (2014), appendix B / eq. 10:
    −KL = ½ Σ_d (1 + log σ_d² − μ_d² − σ_d²).
    """
    return 0.5 * (scale.pow(2) + loc.pow(2) - 1.0 - 2.0 * scale.log()).sum(-1)


def _standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)


def _normal_log_prob(z, loc, scale) -> torch.Tensor:
    return (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * _LOG_2PI).sum(-1)


def sample_posterior(loc, scale, num_particles: int = 1, generator=None) -> torch.Tensor:
    """Reparameterized z = loc + scale·ε, shape ``(K, B, latent_dim)``; without a generator,
    drawn as ``Normal(loc, scale).rsample`` draws it, so that it equals Pyro's guide's sample."""
    if generator is None:
        return torch.distributions.Normal(loc, scale).rsample((num_particles,))
    eps = torch.randn((num_particles, *loc.shape), generator=generator, device=loc.device)
    return loc + scale * eps


def analytic_elbo(vae, x, *, num_particles: int = 1, generator=None, beta=None):
    """E_q[log p(x|z)] (Monte Carlo over ``num_particles``) − β KL(q(z|x) ‖ p(z)) (closed
    form), per datapoint: ``(B,)`` nats. β defaults to ``vae.beta``; β = 1 is the ELBO."""
    beta = vae.beta if beta is None else beta
    if _layers(vae, x) > 1:
        return _hierarchical_elbo(vae, x, num_particles, generator, beta, closed_form_top=True)
    loc, scale = vae.encoder(x)
    z = sample_posterior(loc, scale, num_particles, generator)
    log_px_given_z = vae.likelihood(vae.decoder(z)).log_prob(x).sum(-1)  # (K, B)
    return log_px_given_z.mean(0) - beta * gaussian_kl_to_standard_normal(loc, scale)


def mc_elbo(vae, x, *, num_particles: int = 1, generator=None, beta=None):
    """log p(x|z) + β [log p(z) − log q(z|x)] on reparameterized samples, averaged over
    ``num_particles``, per datapoint: ``(B,)`` nats."""
    beta = vae.beta if beta is None else beta
    if _layers(vae, x) > 1:
        return _hierarchical_elbo(vae, x, num_particles, generator, beta, closed_form_top=False)
    loc, scale = vae.encoder(x)
    z = sample_posterior(loc, scale, num_particles, generator)
    log_px_given_z = vae.likelihood(vae.decoder(z)).log_prob(x).sum(-1)
    log_pz = _standard_normal_log_prob(z)
    log_qz = _normal_log_prob(z, loc, scale)
    return (log_px_given_z + beta * (log_pz - log_qz)).mean(0)


def _layers(vae, x) -> int:
    """The number of stochastic layers; refuses models these formulas do not describe, and
    data the model does not take (as its own model and guide do)."""
    vae.check_data(x, where="x")
    capabilities = vae.capabilities
    if capabilities.flow is not None or not capabilities.layered:
        raise ConfigError(f"the hand-written losses write q's Gaussian log-density by hand; "
                          f"{capabilities.describe()} has none in closed form (use a Pyro "
                          "estimator: trace, meanfield or iwae)")
    return capabilities.layers


def _rsample(loc, scale, generator) -> torch.Tensor:
    """loc + scale·ε with ε of loc's shape, drawn as Normal(loc, scale).rsample() draws it."""
    if generator is None:
        return torch.distributions.Normal(loc, scale).rsample()
    return loc + scale * torch.randn(loc.shape, generator=generator, device=loc.device)


def _hierarchical_elbo(vae, x, num_particles, generator, beta, *, closed_form_top: bool):
    """The L-layer ELBO of the module docstring, averaged over ``num_particles``: ``(B,)``."""
    below, log_q, samples = x, [], []
    for layer, encoder in enumerate(vae.encoders):  # z_1, ..., z_L, each (K, B, d_l)
        loc, scale = encoder(below)
        z = (sample_posterior(loc, scale, num_particles, generator) if layer == 0
             else _rsample(loc, scale, generator))
        log_q.append(_normal_log_prob(z, loc, scale))
        samples.append(z)
        below = z
    log_p = [_normal_log_prob(z, *prior(above))
             for z, prior, above in zip(samples, vae.priors, samples[1:], strict=False)]
    latent = sum(p - q for p, q in zip(log_p, log_q, strict=False))  # layers 1..L-1
    if closed_form_top:
        latent = latent - gaussian_kl_to_standard_normal(loc, scale)
    else:
        latent = latent + _standard_normal_log_prob(below) - log_q[-1]
    log_px_given_z = vae.likelihood(vae.decoder(samples[0])).log_prob(x).sum(-1)  # (K, B)
    return (log_px_given_z + beta * latent).mean(0)


def _to_loss(elbo: torch.Tensor, num_data: int | None) -> torch.Tensor:
    scale = 1.0 if num_data is None else checks.integer("num_data", num_data) / elbo.shape[0]
    return -scale * elbo.sum()


def analytic_loss(vae, x, *, num_particles=1, num_data=None, generator=None):
    """−Σ_i analytic ELBO(x_i), Pyro's scale (see the module docstring)."""
    elbo = analytic_elbo(vae, x, num_particles=num_particles, generator=generator)
    return _to_loss(elbo, num_data)


def mc_loss(vae, x, *, num_particles=1, num_data=None, generator=None):
    """−Σ_i Monte Carlo ELBO(x_i), Pyro's scale (see the module docstring)."""
    elbo = mc_elbo(vae, x, num_particles=num_particles, generator=generator)
    return _to_loss(elbo, num_data)
