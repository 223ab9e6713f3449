"""pyro_vae.evaluation.elbo: the test ELBO and its two terms, from the model's own
log-densities (layered models) or its traces (a Program), against closed forms."""

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from pyro_vae.evaluation import Execution, Program, mean_elbo
from pyro_vae.evaluation.elbo import elbo_terms
from pyro_vae.losses import analytic_elbo
from pyro_vae.models.linear_gaussian import (
    LayerParams,
    closed_form_elbo,
    guide_joint,
    linear_gaussian_vae,
    prior_joint,
    sample_model,
    set_to_posterior,
)
from tests.conftest import assert_close

F64 = torch.float64


def chain(layers: int, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    dims = [5, 3, 2][: layers + 1]
    params = tuple(LayerParams(torch.randn(dims[i], dims[i + 1], generator=g, dtype=F64),
                               torch.randn(dims[i], generator=g, dtype=F64),
                               torch.tensor(0.6, dtype=F64)) for i in range(layers))
    vae = linear_gaussian_vae(params, learn_model=False)
    set_to_posterior(vae, params)
    with torch.no_grad():  # a guide near the posterior, not at it
        for p in vae.encoders.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=F64))
    return params, vae, sample_model(params, 4, torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("path", ["layered", "program"])
def test_the_terms_add_up_to_the_closed_form_elbo(layers, path):
    """E_q[log p(x|z)] − KL(q ‖ p(z)) = the ELBO in closed form, within 4 Monte Carlo standard
    errors (at most 0.04 nats here); with one layer and a Gaussian guide the KL is exact."""
    params, vae, x = chain(layers)
    model = vae if path == "layered" else Program(vae.model, vae.guide)
    terms = elbo_terms(model, x, num_samples=20000, execution=Execution(seed=3))
    q_mean, q_cov = guide_joint(vae, x)
    exact = closed_form_elbo(x, q_mean, q_cov, params)
    assert_close(terms["elbo"], terms["expected_loglik"] - terms["kl_to_prior"], rtol=0,
                 atol=1e-9)
    assert_close(terms["elbo"], exact, rtol=0, atol=0.17)
    prior = MultivariateNormal(*prior_joint(params))
    exact_kl = kl_divergence(MultivariateNormal(q_mean, covariance_matrix=q_cov), prior)
    atol = 1e-9 if (layers == 1 and path == "layered") else 0.17
    assert_close(terms["kl_to_prior"], exact_kl, rtol=0, atol=atol)


def test_the_test_elbo_is_the_hand_written_analytic_elbo_on_the_same_draws():
    """One sample per datapoint from the block's seed: the model's own log-densities give the
    hand-written baseline's figure (two implementations; the baseline draws its noise in
    float32, so the samples agree to float32 rounding)."""
    _, vae, x = chain(1)
    from pyro_vae.distributed import derive_seed

    g = torch.Generator().manual_seed(derive_seed(0, 0))
    expected = float(analytic_elbo(vae, x, generator=g, beta=1.0).mean().detach())
    assert mean_elbo(vae, x, execution=Execution(block_size=1000)) == pytest.approx(
        expected, rel=1e-7)
