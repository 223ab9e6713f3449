"""pyro_vae.evaluation.bdmc: on data simulated from the linear-Gaussian model, whose log p(x)
is exact, the forward AIS bound lies below the truth and the reverse one above it, within
their standard errors, and the gap between them closes as T grows; also on a program with
two latent sites simulated through Pyro."""

import pytest
import torch

from pyro_vae.evaluation import Execution, Program
from pyro_vae.evaluation.ais import AISSettings
from pyro_vae.evaluation.bdmc import bdmc
from pyro_vae.models.linear_gaussian import (
    LayerParams,
    linear_gaussian_vae,
    log_marginal,
    set_to_posterior,
)
from tests.known_models import TwoLayer, random_ppca


def check_brackets(result, truth):
    """Forward ≤ truth ≤ reverse, on average over the datapoints, within 3 standard errors."""
    n = truth.numel()
    lower_se = float(result.lower_mc_stderr.pow(2).sum().sqrt()) / n
    upper_se = float(result.upper_mc_stderr.pow(2).sum().sqrt()) / n
    assert result.mean_lower < float(truth.mean()) + 3 * lower_se
    assert result.mean_upper > float(truth.mean()) - 3 * upper_se


@pytest.mark.parametrize("start", ["guide", "prior"])
def test_bdmc_brackets_the_exact_log_px_and_the_gap_closes(start):
    params = random_ppca(10, 3, seed=1)
    vae = linear_gaussian_vae(params, learn_model=False)
    set_to_posterior(vae, params)
    with torch.no_grad():
        vae.encoder.A.mul_(0.8)  # a few nats from the posterior
    template = torch.zeros(20, 10, dtype=torch.float64)  # only the shape matters
    gaps = []
    for T in (5, 50, 300):
        result = bdmc(vae, template, AISSettings(num_steps=T, start=start),
                      execution=Execution(seed=3))
        truth = log_marginal(result.observations, params)
        check_brackets(result, truth)
        assert result.mean_gap == pytest.approx(result.mean_upper - result.mean_lower)
        gaps.append((result.mean_gap, result.gap_mc_stderr))
    assert gaps[0][0] > 1.0  # the gap is visible at T = 5 ...
    assert gaps[0][0] - gaps[1][0] > 3 * (gaps[0][1] + gaps[1][1])  # ... closes with T ...
    assert abs(gaps[2][0]) < 0.1 + 3 * gaps[2][1]  # ... to under 0.1 nats


def test_bdmc_on_a_pyro_program_simulates_through_the_model():
    model = TwoLayer.random(seed=2)
    template = torch.zeros(8, model.W.shape[0], dtype=torch.float64)
    result = bdmc(Program(model.model, model.guide), template,
                  AISSettings(num_steps=60, num_chains=8), execution=Execution(seed=4))
    truth = model.log_marginal(result.observations)
    check_brackets(result, truth)
    assert not torch.equal(result.observations, template)  # simulated, not the template
    assert (result.forward_acceptance > 0.3).all() and (result.reverse_acceptance > 0.3).all()


def test_bdmc_of_a_two_layer_flow_vae_brackets_the_exact_log_px():
    """The layered target of a two-layer linear-Gaussian VAE with IAF guides (mild ones: the
    MADEs' last layers scaled down): the reverse chains start at the simulated z pulled back
    through the flows into the guide's base coordinates, and the two bounds bracket the
    exact log p(x) of the simulated data, the gap closed to under 0.1 nats."""
    g = torch.Generator().manual_seed(5)
    params = (random_ppca(8, 3, seed=5),
              LayerParams(torch.randn(3, 2, generator=g, dtype=torch.float64),
                          torch.randn(3, generator=g, dtype=torch.float64),
                          torch.tensor(0.7, dtype=torch.float64)))
    vae = linear_gaussian_vae(params, learn_model=False, flow="iaf")
    set_to_posterior(vae, params)
    with torch.no_grad():
        for flow in vae.flows:
            for transform in flow.transforms:
                transform.nn.layers[-1].weight.mul_(0.1)
                transform.nn.layers[-1].bias.mul_(0.1)
    template = torch.zeros(10, 8, dtype=torch.float64)
    result = bdmc(vae, template, AISSettings(num_steps=100, num_chains=8),
                  execution=Execution(seed=6))
    assert result.start == "the encoder q(z|x), in its flows' input coordinates"
    truth = log_marginal(result.observations, params)
    check_brackets(result, truth)
    assert abs(result.mean_gap) < 0.1 + 3 * result.gap_mc_stderr
