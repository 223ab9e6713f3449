"""The VAE's model and guide: structure, names, scaling, β, composition."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO, Trace_ELBO

from pyro_vae import VAE, ConfigError, DataError
from pyro_vae.losses import gaussian_kl_to_standard_normal
from tests.conftest import assert_close, binary_batch


def small_vae(**kwargs):
    kwargs.setdefault("latent_dim", 3)
    kwargs.setdefault("hidden_sizes", (16,))
    return VAE(12, **kwargs)


def trace_of(vae, x, **kwargs):
    guide_trace = poutine.trace(vae.guide).get_trace(x, **kwargs)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
        x, **kwargs
    )
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return model_trace, guide_trace


def test_sites_shapes_and_plate():
    vae = small_vae()
    x = binary_batch(5, 12)
    model_trace, guide_trace = trace_of(vae, x)
    z, obs = model_trace.nodes["z"], model_trace.nodes["x"]
    assert z["fn"].event_shape == (3,) and z["fn"].batch_shape == (5,)
    assert obs["fn"].event_shape == (12,) and obs["is_observed"]
    assert [f.name for f in obs["cond_indep_stack"]] == ["data"]
    assert isinstance(z["fn"].base_dist, dist.Normal)
    assert_close(z["fn"].base_dist.loc, 0.0, atol=0)
    assert_close(z["fn"].base_dist.scale, 1.0, atol=0)
    assert_close(guide_trace.nodes["z"]["value"], z["value"], atol=0)


def test_log_joint_is_the_sum_of_the_distributions_log_densities():
    vae = small_vae()
    x = binary_batch(4, 12)
    model_trace, guide_trace = trace_of(vae, x)
    z = guide_trace.nodes["z"]["value"]
    loc, scale = vae.encode(x)
    expected_model = (torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
                      + torch.distributions.Bernoulli(logits=vae.decoder(z)).log_prob(x).sum())
    assert_close(model_trace.log_prob_sum(), expected_model, rtol=1e-6)
    expected_guide = torch.distributions.Normal(loc, scale).log_prob(z).sum()
    assert_close(guide_trace.log_prob_sum(), expected_guide, rtol=1e-6)


def test_num_data_scales_every_site_by_n_over_b():
    vae = small_vae()
    x = binary_batch(4, 12)
    pyro.set_rng_seed(0)
    full = TraceMeanField_ELBO().loss(vae.model, vae.guide, x, num_data=1000)
    pyro.set_rng_seed(0)
    batch = TraceMeanField_ELBO().loss(vae.model, vae.guide, x)
    assert_close(full, batch * 1000 / 4, rtol=1e-5)


def test_beta_scales_only_the_latent_site():
    vae = small_vae(beta=0.25)
    x = binary_batch(4, 12)
    model_trace, guide_trace = trace_of(vae, x)
    assert model_trace.nodes["z"]["scale"] == 0.25 and guide_trace.nodes["z"]["scale"] == 0.25
    assert model_trace.nodes["x"]["scale"] == 1.0
    # meanfield with beta: −loss = E log p(x|z) − β KL, checked against the closed-form KL
    pyro.set_rng_seed(1)
    loss = TraceMeanField_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    loc, scale = vae.encode(x)
    expected = -(vae.decode(z).log_prob(x).sum()
                 - 0.25 * gaussian_kl_to_standard_normal(loc, scale).sum())
    assert_close(loss, expected, rtol=1e-5)


def test_prefix_lets_two_vaes_share_one_program():
    a, b = small_vae(prefix="left_"), small_vae(prefix="right_")
    x = binary_batch(4, 12)

    def model(x):
        a.model(x)
        b.model(x)

    def guide(x):
        a.guide(x)
        b.guide(x)

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    loss = svi.step(x)
    names = set(pyro.get_param_store().keys())
    assert {n.split("$$$")[0] for n in names} == {
        "left_encoder", "left_decoder", "right_encoder", "right_decoder"}
    trace = poutine.trace(model).get_trace(x)
    assert {"left_z", "left_x", "right_z", "right_x"} <= set(trace.nodes)
    assert loss > 0


def test_called_under_an_outer_plate_beside_another_latent():
    """A user's model: a per-datapoint label latent y and the VAE conditioned on it."""
    vae = small_vae(context_dim=2, prefix="vae_")
    x = binary_batch(6, 12)

    def model(x):
        with pyro.plate("batch", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(2)))
            vae.model(x, y, plate=False)

    def guide(x):
        with pyro.plate("batch", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(2)))
            vae.guide(x, y, plate=False)

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO(max_plate_nesting=1))
    losses = [svi.step(x) for _ in range(3)]
    trace = poutine.trace(model).get_trace(x)
    assert trace.nodes["vae_z"]["fn"].batch_shape == (6,)
    assert [f.name for f in trace.nodes["vae_x"]["cond_indep_stack"]] == ["batch"]
    assert all(loss > 0 for loss in losses)


def test_vectorized_particles_broadcast():
    vae = small_vae()
    x = binary_batch(4, 12)
    elbo = Trace_ELBO(num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    guide_trace = poutine.trace(elbo._vectorized_num_particles(vae.guide)).get_trace(x)
    assert guide_trace.nodes["z"]["value"].shape == (7, 4, 3)
    assert elbo.loss(vae.model, vae.guide, x) > 0


@pytest.mark.parametrize("x_dim", [10, 784])
def test_nothing_hard_codes_784(x_dim):
    vae = VAE(x_dim, latent_dim=2, hidden_sizes=(5, 6))
    x = binary_batch(3, x_dim)
    assert vae.decode(vae.encode(x)[0]).event_shape == (x_dim,)


def test_check_data_names_shape_and_support():
    vae = small_vae()
    with pytest.raises(DataError, match=r"expected shape \(N, 12\).*found \(4, 13\)"):
        vae.check_data(torch.zeros(4, 13), where="mine.idx")
    with pytest.raises(DataError, match="binarize"):
        vae.check_data(torch.full((4, 12), 0.5), where="grey")
    with pytest.raises(DataError, match="empty"):
        vae.check_data(torch.zeros(0, 12))
    with pytest.raises(DataError, match="NaN"):
        vae.check_data(torch.full((2, 12), float("nan")))


def test_constructor_rejects_bad_sizes_and_prefix():
    with pytest.raises(ConfigError, match="latent_dim"):
        VAE(12, latent_dim=0)
    with pytest.raises(ConfigError, match="x_dim"):
        VAE(-1)
    with pytest.raises(ConfigError, match="prefix"):
        VAE(12, prefix="a$$$b")
