"""The hand-written baselines against torch.distributions and against each other."""

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from pyro_vae import VAE, ConfigError
from pyro_vae.losses import analytic_elbo, gaussian_kl_to_standard_normal, mc_elbo
from tests.conftest import assert_close, binary_batch


def test_gaussian_kl_matches_torch():
    g = torch.Generator().manual_seed(3)
    loc = torch.randn(7, 5, generator=g) * 2
    scale = torch.rand(7, 5, generator=g) * 3 + 0.05
    expected = kl_divergence(
        Independent(Normal(loc, scale), 1), Independent(Normal(torch.zeros(5), 1.0), 1)
    )
    assert_close(gaussian_kl_to_standard_normal(loc, scale), expected, rtol=1e-6)


def test_gaussian_kl_is_zero_at_the_prior():
    assert_close(gaussian_kl_to_standard_normal(torch.zeros(3, 4), torch.ones(3, 4)), 0.0)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli", "gaussian"])
def test_two_forms_of_the_elbo_agree_in_expectation(likelihood):
    """E_q[log p(x,z) − log q] = E_q[log p(x|z)] − KL(q‖p(z)): Monte Carlo, 4 standard errors."""
    vae = VAE(12, latent_dim=3, hidden_sizes=(16,), likelihood=likelihood)
    x = binary_batch(4, 12) * 0.8 + 0.1 if likelihood != "bernoulli" else binary_batch(4, 12)
    draws = 3000
    with torch.no_grad():
        mc = torch.stack([mc_elbo(vae, x) for _ in range(draws)])  # (draws, B) iid estimates
        an = torch.stack([analytic_elbo(vae, x) for _ in range(draws)])
    diff = mc.mean(0) - an.mean(0)
    se = (mc.var(0) / mc.shape[0] + an.var(0) / an.shape[0]).sqrt()
    assert (diff.abs() < 4 * se).all(), (diff, se)


def test_elbo_forms_are_equal_with_zero_variance_posterior_limit():
    """With q = p(z) the KL is 0 and both forms reduce to E_p(z)[log p(x|z)]."""
    vae = VAE(6, latent_dim=2, hidden_sizes=(8,))
    with torch.no_grad():
        vae.encoder.loc.weight.zero_()
        vae.encoder.loc.bias.zero_()
        vae.encoder.log_scale.weight.zero_()
        vae.encoder.log_scale.bias.zero_()
    x = binary_batch(3, 6)
    torch.manual_seed(5)
    a = analytic_elbo(vae, x)
    torch.manual_seed(5)
    m = mc_elbo(vae, x)
    assert_close(a, m, rtol=1e-6)  # log p(z) − log q(z) = 0 exactly for q = p


def test_beta_weights_only_the_kl():
    vae = VAE(6, latent_dim=2, hidden_sizes=(8,))
    x = binary_batch(3, 6)
    g = torch.Generator()
    e1 = analytic_elbo(vae, x, generator=g.manual_seed(0), beta=1.0)
    e0 = analytic_elbo(vae, x, generator=g.manual_seed(0), beta=0.0)
    e2 = analytic_elbo(vae, x, generator=g.manual_seed(0), beta=2.0)
    loc, scale = vae.encoder(x)
    kl = gaussian_kl_to_standard_normal(loc, scale)
    assert_close(e0 - e1, kl)
    assert_close(e1 - e2, kl)


@pytest.mark.parametrize("loss", [analytic_elbo, mc_elbo])
def test_a_flow_guide_is_refused(loss):
    """q's log-density is written as a diagonal Gaussian's: a flow guide has none to write."""
    vae = VAE(6, latent_dim=2, hidden_sizes=(8,), flow="iaf")
    with pytest.raises(ConfigError, match="write q's Gaussian log-density by hand"):
        loss(vae, binary_batch(3, 6))
