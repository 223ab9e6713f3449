"""Likelihood objects: log-densities against torch.distributions, support checks."""

import pytest
import torch
from torch import distributions as td

from pyro_vae import ConfigError, DataError, make_likelihood
from tests.conftest import assert_close


def test_log_probs_match_torch():
    g = torch.Generator().manual_seed(0)
    params = torch.randn(3, 5, generator=g)
    binary = torch.bernoulli(torch.full((3, 5), 0.5), generator=g)
    grey = torch.rand(3, 5, generator=g)
    cases = [
        ("bernoulli", binary, td.Bernoulli(logits=params)),
        ("continuous-bernoulli", grey, td.ContinuousBernoulli(logits=params)),
        ("gaussian", grey, td.Normal(params, 1.0)),
    ]
    for name, x, reference in cases:
        lik = make_likelihood(name, x_dim=5)
        assert_close(lik(params).log_prob(x), reference.log_prob(x), rtol=1e-6, msg=name)


def test_gaussian_fixed_and_learned_scale():
    fixed = make_likelihood("gaussian", x_dim=4, scale=0.3)
    assert not list(fixed.parameters())
    assert_close(fixed(torch.zeros(2, 4)).scale, 0.3, rtol=1e-6)
    learned = make_likelihood("gaussian", x_dim=4, scale=2.0, learn_scale=True)
    (param,) = list(learned.parameters())
    assert param.shape == (4,)
    assert_close(learned(torch.zeros(2, 4)).scale, 2.0, rtol=1e-6)
    with pytest.raises(ConfigError, match="positive"):
        make_likelihood("gaussian", x_dim=4, scale=0.0)


def test_support_checks():
    make_likelihood("bernoulli", x_dim=2).check_data(torch.tensor([[0.0, 1.0]]))
    with pytest.raises(DataError, match="continuous-bernoulli"):
        make_likelihood("bernoulli", x_dim=2).check_data(torch.tensor([[0.2, 1.0]]))
    with pytest.raises(DataError, match=r"\[-0.5, 1\]"):
        make_likelihood("continuous-bernoulli", x_dim=2).check_data(torch.tensor([[-0.5, 1.0]]))
    with pytest.raises(DataError, match="infinite"):
        make_likelihood("gaussian", x_dim=2).check_data(torch.tensor([[float("inf"), 1.0]]))


def test_unknown_likelihood_lists_the_known_ones():
    with pytest.raises(ConfigError, match="bernoulli, continuous-bernoulli, gaussian"):
        make_likelihood("poisson", x_dim=3)
