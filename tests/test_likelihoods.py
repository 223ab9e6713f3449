"""Likelihood objects: log-densities against torch.distributions, support checks."""

import pytest
import torch
from torch import distributions as td

from pyro_vae import ConfigError, DataError, DataTypeError, make_likelihood
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


@pytest.mark.parametrize("name", ["bernoulli", "continuous-bernoulli", "gaussian"])
def test_log_prob_sum_is_the_sum_of_the_distributions_log_probs(name):
    """log_prob_sum (the layered evaluators' log p(x|z); the Bernoulli's own formula) is
    Σ_d log p(x_d|z) of the likelihood's distribution, with particles in front of x's batch."""
    g = torch.Generator().manual_seed(1)
    params = 3 * torch.randn(4, 3, 5, generator=g, dtype=torch.float64)  # (K, B, D)
    x = torch.rand(3, 5, generator=g, dtype=torch.float64)
    if name == "bernoulli":
        x = x.round()
    lik = make_likelihood(name, x_dim=5)
    expected = lik(params).log_prob(x).sum(-1)
    assert lik.log_prob_sum(params, x).shape == (4, 3)
    assert_close(lik.log_prob_sum(params, x), expected, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("name", ["bernoulli", "continuous-bernoulli", "gaussian"])
def test_output_bias_makes_the_likelihood_mean_the_data_mean(name):
    mean = torch.tensor([0.1, 0.5, 0.9, 0.3], dtype=torch.float64)
    bias = make_likelihood(name, x_dim=4).output_bias(mean)
    if name == "gaussian":
        assert_close(bias, mean, rtol=0, atol=0)
    else:  # the logit of the mean (for the Bernoulli, its mean)
        assert_close(torch.sigmoid(bias), mean, rtol=1e-12, atol=1e-12)
    assert_close(torch.sigmoid(make_likelihood("bernoulli", x_dim=2).output_bias(
        torch.tensor([0.0, 1.0]))), torch.tensor([1e-3, 1 - 1e-3]), rtol=1e-5, atol=0)


def test_gaussian_fixed_and_learned_scale():
    fixed = make_likelihood("gaussian", x_dim=4, scale=0.3)
    assert not list(fixed.parameters())
    assert_close(fixed(torch.zeros(2, 4)).scale, 0.3, rtol=1e-6)
    learned = make_likelihood("gaussian", x_dim=4, scale=2.0, learn_scale=True)
    (param,) = list(learned.parameters())
    assert param.shape == (4,)
    assert_close(learned(torch.zeros(2, 4)).scale, 2.0, rtol=1e-6)
    shared = make_likelihood("gaussian", x_dim=4, scale=2.0, learn_scale=True, shared=True)
    (param,) = list(shared.parameters())
    assert param.shape == (1,)
    assert shared(torch.zeros(2, 4)).scale.shape == (2, 4)
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
    for name in ("bernoulli", "continuous-bernoulli", "gaussian"):
        lik = make_likelihood(name, x_dim=2)
        with pytest.raises(DataError, match=r"^x: 1 of 4 values are NaN or infinite$"):
            lik.check_data(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), where="x")
        with pytest.raises(DataTypeError, match=r"^x: expected floating-point values, found "
                                                r"dtype torch\.int64; convert with x\.float\(\)"):
            lik.check_data(torch.tensor([[0, 1]]), where="x")
        lik.check_data(torch.zeros(2, 2, device="meta"))  # no values to check on meta
    with pytest.raises(DataError, match=r"^data: the bernoulli likelihood needs binary values in "
                                        r"\{0, 1\}, found 1 other values \(e\.g\. 0\.2\); "
                                        r"binarize"):
        make_likelihood("bernoulli", x_dim=2).check_data(torch.tensor([[0.2, 1.0]]))


SUPPORT = {  # the definitions, written as comparisons
    "bernoulli": lambda x: (x == 0) | (x == 1),
    "continuous-bernoulli": lambda x: (x >= 0) & (x <= 1),
    "gaussian": torch.isfinite,
}
SPECIAL = [0.0, -0.0, 1.0, 0.5, 1e-45, -1e-45, 3e-39, 1e-20, 2**-12, 1 - 2**-24, 1 - 2**-23,
           1 + 2**-23, 1 + 2**-22, 2.0, -1.0, 1e30, -1e30, float("nan"), float("inf"),
           -float("inf")]


@pytest.mark.parametrize("name", list(SUPPORT))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_fast_support_check_agrees_with_the_comparisons(name, dtype):
    """all_in_support (x − x·x and a sum for the Bernoulli) says what the comparisons say,
    for binary rows with one special value put anywhere, and on non-contiguous views."""
    g = torch.Generator().manual_seed(0)
    lik = make_likelihood(name, x_dim=6)
    base = torch.bernoulli(torch.full((4, 6), 0.5), generator=g).to(dtype)
    assert lik.all_in_support(base) and lik.all_in_support(base.T)
    for value in SPECIAL:
        for i in range(0, base.numel(), 5):
            x = base.clone()
            x.view(-1)[i] = value
            before = x.clone()
            expected = bool(SUPPORT[name](x).all())
            assert lik.all_in_support(x) == expected, (name, value, i)
            assert lik.all_in_support(x.T) == expected, (name, value, i)
            assert torch.equal(x.nan_to_num(), before.nan_to_num())  # x itself is untouched


def test_unknown_likelihood_lists_the_known_ones():
    with pytest.raises(ConfigError, match="bernoulli, continuous-bernoulli, gaussian"):
        make_likelihood("poisson", x_dim=3)
