"""pyro_vae.evaluation.hmc: a transition that starts from the gradient kept from the last one
equals one that evaluates it, and the closed-form gradient of the start is autograd's."""

import pytest
import torch

from pyro_vae import VAE
from pyro_vae.evaluation.hmc import hmc_transition, initial_state
from pyro_vae.evaluation.targets import LayeredTarget
from tests.conftest import assert_close, binary_batch


def one_layer(flow=None):
    torch.manual_seed(0)
    return VAE(12, latent_dim=3, hidden_sizes=(16,), flow=flow).double()


@pytest.mark.parametrize("flow", [None, "iaf"])
def test_the_start_gradient_in_closed_form_is_autograds(flow):
    vae = one_layer(flow)
    density = LayeredTarget(vae).bind(binary_batch(5, 12).double())
    u = density.sample_start(4).requires_grad_(True)
    log_start, _ = density.start_and_ratio(u)
    (expected,) = torch.autograd.grad(log_start.sum(), u)
    assert_close(density.start_grad(u.detach()), expected, rtol=1e-10, atol=1e-12)


def test_no_closed_form_for_the_prior_start_or_two_layers():
    torch.manual_seed(0)
    x = binary_batch(5, 12).double()
    two = VAE(12, latent_dim=(3, 2), hidden_sizes=((16,), (8,))).double()
    for target in (LayeredTarget(one_layer(), start="prior"), LayeredTarget(two)):
        assert not target.closed_form_start
        density = target.bind(x)
        assert density.start_grad(density.sample_start(2)) is None
        assert initial_state(density, density.sample_start(2)).grad_ratio is None


def counted(density):
    """``density`` with a count of its evaluations of log s and ℓ."""
    calls = [0]
    original = density.start_and_ratio

    def start_and_ratio(u):
        calls[0] += 1
        return original(u)

    density.start_and_ratio = start_and_ratio
    return density, calls


@pytest.mark.parametrize("beta", [1e-3, 0.4, 1.0])
def test_a_transition_from_the_kept_gradient_equals_one_that_evaluates_it(beta):
    vae = one_layer()
    density, calls = counted(LayeredTarget(vae).bind(binary_batch(6, 12).double()))
    kept = initial_state(density, density.sample_start(4, torch.Generator().manual_seed(1)))
    fresh = kept._replace(grad_ratio=None)
    step = torch.full((6,), 0.2, dtype=torch.float64)
    runs = {}
    for name, state in (("kept", kept), ("fresh", fresh)):
        calls[0] = 0
        runs[name] = hmc_transition(density, state, beta, step, 5,
                                    torch.Generator().manual_seed(2)), calls[0]
    (new_kept, accept_kept), evaluations_kept = runs["kept"]
    (new_fresh, accept_fresh), evaluations_fresh = runs["fresh"]
    assert (evaluations_kept, evaluations_fresh) == (5, 6)  # one gradient evaluation saved
    assert 0 < float(accept_kept.mean()) < 1  # some chains moved, some stayed
    assert_close(accept_kept, accept_fresh, rtol=1e-9, atol=1e-9)
    for a, b in zip(new_kept[:3], new_fresh[:3], strict=True):
        assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert new_fresh.grad_ratio is None
    # the gradient kept for the next β is ∇ℓ at the new positions, moved and stayed alike
    u = new_kept.u.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(density.start_and_ratio(u)[1].sum(), u)
    assert_close(new_kept.grad_ratio, expected, rtol=1e-6, atol=1e-6 / beta)
