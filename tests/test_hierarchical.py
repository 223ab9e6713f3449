"""pyro_vae.hierarchical: the L-layer VAE as a Pyro program (sites, plates, prefixes, scaling),
the hand-written two-layer losses equal to Pyro's estimators sample by sample (loss and
gradients), meanfield's closed-form KL at the top layer only, the burda2 preset, and training
from Python and from the command line, with resume."""

import dataclasses

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyro_vae import VAE, ConfigError, DataError, make_objective
from pyro_vae.build import load_data
from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.distributed import derive_seed
from pyro_vae.fit import fit
from pyro_vae.losses import analytic_elbo, gaussian_kl_to_standard_normal, mc_elbo
from pyro_vae.models.networks import get_preset
from pyro_vae.objectives import closed_form_kl_sites
from pyro_vae.runs import load_checkpoint
from tests.conftest import assert_close, binary_batch


def make_hvae(likelihood="bernoulli", **kwargs):
    kwargs.setdefault("latent_dims", (4, 3))
    kwargs.setdefault("hidden_sizes", ((16,), (8,)))
    return VAE(12, likelihood=likelihood, **kwargs)


def data_for(likelihood, batch_size=16):
    x = binary_batch(batch_size, 12)
    return x if likelihood == "bernoulli" else 0.1 + 0.8 * x * torch.rand(x.shape)


def traces(vae, x, **kwargs):
    """The model's and guide's traces, plates left out, as the estimators see them."""
    guide = poutine.trace(vae.guide).get_trace(x, **kwargs)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, **kwargs)
    return prune_subsample_sites(model), prune_subsample_sites(guide)


# --- the program ----------------------------------------------------------------------------


def test_the_model_and_guide_sample_each_layer_in_the_data_plate():
    vae = make_hvae(latent_dims=(4, 3, 2), hidden_sizes=((16,), (8,), (6,)))
    x = data_for("bernoulli", 5)
    model, guide = traces(vae, x)
    latent = [n for n, s in guide.nodes.items() if s["type"] == "sample"]
    assert latent == ["z1", "z2", "z3"]  # bottom up
    assert [n for n, s in model.nodes.items() if s["type"] == "sample"] == ["z3", "z2", "z1", "x"]
    for name, dim in zip(latent, (4, 3, 2), strict=True):
        assert guide.nodes[name]["value"].shape == (5, dim)
        assert [f.name for f in model.nodes[name]["cond_indep_stack"]] == ["data"]
    assert vae.structure.stochastic_layers == 3 and vae.latent_dim == 2


def test_log_joint_is_the_sum_of_the_layers_written_out():
    """log p(x, z) − log q(z|x) from Pyro's traces against the densities written out."""
    vae = make_hvae()
    x = data_for("bernoulli", 6)
    model, guide = traces(vae, x)
    z1, z2 = guide.nodes["z1"]["value"], guide.nodes["z2"]["value"]
    normal = torch.distributions.Normal
    expected = (normal(0.0, 1.0).log_prob(z2).sum(-1)
                + normal(*vae.priors[0](z2)).log_prob(z1).sum(-1)
                + vae.likelihood(vae.decoder(z1)).log_prob(x).sum(-1)
                - normal(*vae.encoders[0](x)).log_prob(z1).sum(-1)
                - normal(*vae.encoders[1](z1)).log_prob(z2).sum(-1))
    model.compute_log_prob()
    guide.compute_log_prob()
    log_w = sum(s["log_prob"] for s in model.nodes.values() if s["type"] == "sample") - sum(
        s["log_prob"] for s in guide.nodes.values() if s["type"] == "sample")
    assert_close(log_w, expected, rtol=1e-5)


def test_prefix_and_plate_flag_compose_two_models_in_one_program():
    """Two hierarchical VAEs with prefixes inside the user's own plate: their sites and
    modules do not collide, and the loss is the sum of each one's alone."""
    a, b = make_hvae(prefix="a_"), make_hvae(prefix="b_")
    x = data_for("bernoulli", 4)

    def model(x):
        with pyro.plate("batch", x.shape[0]):
            a.model(x, plate=False)
            b.model(x, plate=False)

    def guide(x):
        with pyro.plate("batch", x.shape[0]):
            a.guide(x, plate=False)
            b.guide(x, plate=False)

    elbo = pyro.infer.Trace_ELBO()
    pyro.set_rng_seed(0)
    both = elbo.differentiable_loss(model, guide, x)
    pyro.set_rng_seed(0)
    alone = elbo.differentiable_loss(a.model, a.guide, x) + elbo.differentiable_loss(
        b.model, b.guide, x)
    assert_close(both, alone, rtol=1e-6)
    names = set(poutine.trace(guide).get_trace(x).nodes)
    assert {"a_z1", "a_z2", "b_z1", "b_z2"} <= names
    assert "a_encoders$$$0.body.0.weight" in pyro.get_param_store()


def test_num_data_scales_the_minibatch_loss():
    vae = make_hvae()
    x = data_for("bernoulli", 8)
    objective = make_objective("trace", vae)
    pyro.set_rng_seed(1)
    plain = objective.differentiable_loss(x)
    pyro.set_rng_seed(1)
    scaled = objective.differentiable_loss(x, num_data=100)
    assert_close(scaled, plain * 100 / 8, rtol=1e-6)


def test_bad_input_and_bad_sizes_are_refused():
    vae = make_hvae()
    with pytest.raises(DataError, match=r"shape \(B, x_dim\) = \(B, 12\)"):
        vae.model(torch.zeros(12))
    with pytest.raises(DataError, match="binary values"):
        vae.check_data(torch.full((3, 12), 0.5))
    with pytest.raises(ConfigError, match="at least 2 stochastic layers"):
        VAE(12, latent_dims=(4,), hidden_sizes=((8,),))
    with pytest.raises(ConfigError, match="hidden sizes"):
        VAE(12, latent_dims=(4, 3), hidden_sizes=((8,),))
    with pytest.raises(ConfigError, match=r"VAE\.from_preset"):
        VAE.from_preset("burda2", 784)
    with pytest.raises(ConfigError, match="build it with VAE"):
        VAE.from_preset("burda", 784)


def test_burda2_is_the_papers_two_layer_architecture():
    """x-200-200-z1(100)-100-100-z2(50) and the mirror image, tanh (Burda et al. 2016)."""
    vae = VAE.from_preset("burda2", 784)
    linear = [(m.in_features, m.out_features) for m in vae.encoders.modules()
              if isinstance(m, torch.nn.Linear)]
    assert linear == [(784, 200), (200, 200), (200, 100), (200, 100),
                      (100, 100), (100, 100), (100, 50), (100, 50)]
    generative = [(m.in_features, m.out_features) for net in (vae.priors, vae.decoder)
                  for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert generative == [(50, 100), (100, 100), (100, 100), (100, 100),
                          (100, 200), (200, 200), (200, 784)]
    assert all(isinstance(m, torch.nn.Linear | torch.nn.Tanh | torch.nn.Sequential)
               for m in vae.decoder.body)
    assert get_preset("burda2").describe() == "x-200-200-100-100-100-50"
    mean = torch.full((784,), 0.2)
    vae.init_output_bias(mean)
    assert_close(torch.sigmoid(vae.decoder.out.bias), mean, rtol=1e-6)


# --- the hand-written two-layer losses, sample by sample ------------------------------------


def loss_and_grads(objective, x, seed, **kwargs):
    vae = objective.vae
    vae.zero_grad()
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(x, **kwargs)
    loss.backward()
    # at β = 0 the top layer's networks are out of Pyro's graph (masked): no gradient is zero
    return loss.detach(), {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                           for n, p in vae.named_parameters()}


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("pyro_name, torch_name", [("meanfield", "analytic"), ("trace", "mc")],
                         ids=["meanfield=analytic", "trace=mc"])
@pytest.mark.parametrize("num_data, beta, k",
                         [(None, 1.0, 1), (1000, 0.5, 1), (None, 0.0, 1), (None, 1.0, 3)],
                         ids=["elbo", "scaled-beta", "beta-0", "3-particles"])
def test_pyro_loss_and_gradient_equal_hand_written(pyro_name, torch_name, likelihood,
                                                   num_data, beta, k):
    """In float64, so that any difference beyond 1e-5 is a difference of formula."""
    vae = make_hvae(likelihood, beta=beta).double()
    x = data_for(likelihood).double()
    kwargs = {"num_data": num_data}
    a_loss, a_grads = loss_and_grads(make_objective(pyro_name, vae, num_particles=k), x, 7,
                                     **kwargs)
    b_loss, b_grads = loss_and_grads(make_objective(torch_name, vae, num_particles=k), x, 7,
                                     **kwargs)
    assert_close(a_loss, b_loss, rtol=1e-5)
    assert a_grads.keys() == b_grads.keys()
    for name in a_grads:
        assert_close(a_grads[name], b_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_same_seed_means_same_samples_in_every_layer():
    """The premise of the test above: the guide and the baseline draw the same z_1 and z_2."""
    vae = make_hvae()
    x = data_for("bernoulli")
    pyro.set_rng_seed(3)
    guide = poutine.trace(vae.guide).get_trace(x)
    pyro.set_rng_seed(3)
    normal = torch.distributions.Normal
    z1 = normal(*vae.encoders[0](x)).rsample()
    z2 = normal(*vae.encoders[1](z1)).rsample()
    assert torch.equal(guide.nodes["z1"]["value"], z1)
    assert torch.equal(guide.nodes["z2"]["value"], z2)


def test_meanfield_takes_the_closed_form_kl_of_the_top_layer_only():
    vae = make_hvae(latent_dims=(4, 3, 2), hidden_sizes=((16,), (8,), (6,)))
    model, guide = traces(vae, data_for("bernoulli"))
    assert closed_form_kl_sites(model, guide) == {"z3"}
    one = VAE(12, latent_dim=3, hidden_sizes=(8,))
    assert closed_form_kl_sites(*traces(one, data_for("bernoulli"))) == {"z"}


def test_analytic_and_mc_differ_by_the_top_layers_kl_only():
    """analytic − mc = log q(z_L|·) − log p(z_L) − KL(q(z_L|·) ‖ N(0, I)) on the same draws."""
    vae = make_hvae()
    x = data_for("bernoulli", 6)
    g = torch.Generator()
    a = analytic_elbo(vae, x, generator=g.manual_seed(0))
    m = mc_elbo(vae, x, generator=g.manual_seed(0))
    g.manual_seed(0)
    loc1, scale1 = vae.encoders[0](x)
    z1 = loc1 + scale1 * torch.randn((1, *loc1.shape), generator=g)
    loc2, scale2 = vae.encoders[1](z1)
    z2 = loc2 + scale2 * torch.randn(loc2.shape, generator=g)
    normal = torch.distributions.Normal
    expected = (normal(loc2, scale2).log_prob(z2).sum(-1) - normal(0.0, 1.0).log_prob(z2).sum(-1)
                - gaussian_kl_to_standard_normal(loc2, scale2))[0]
    assert_close(a - m, expected, rtol=1e-5, atol=1e-5)


# --- training ---------------------------------------------------------------------------------

TINY = TrainConfig(preset="burda2", train_size=256, test_size=64, batch_size=64, epochs=2,
                   seed=1)


@pytest.fixture(scope="module")
def data():
    return load_data(TINY)


def quiet(*args, **kwargs):
    pass


def test_fit_trains_burda2_and_reports_the_test_elbo_of_the_trained_model(tmp_path, data):
    """The recorded test ELBO is the hand-written analytic ELBO (closed-form KL of the top
    layer, β = 1) of the trained model, one sample per test image from the documented seed;
    training raises it."""
    result = fit(dataclasses.replace(TINY, epochs=3), tmp_path, data=data, log=quiet)
    assert isinstance(result.vae, VAE)
    history = result.history
    assert history[-1]["test_elbo"] > history[0]["test_elbo"]
    generator = torch.Generator().manual_seed(derive_seed(0, 0))  # one batch of 64 images
    with torch.no_grad():
        elbo = analytic_elbo(result.vae.eval(), data.test, generator=generator, beta=1.0)
    assert_close(history[-1]["test_elbo"], elbo.mean(), rtol=1e-6)


def test_an_interrupted_burda2_run_resumes_to_the_uninterrupted_numbers(tmp_path, data):
    config = dataclasses.replace(TINY, flow="iaf", lr_schedule="burda")
    whole = fit(config, tmp_path / "whole", data=data, log=quiet)
    fit(dataclasses.replace(config, epochs=1), tmp_path / "cut", data=data, log=quiet)
    resumed = fit(config, tmp_path / "cut", resume=True, data=data, log=quiet)
    assert [r["test_elbo"] for r in resumed.history] == [r["test_elbo"] for r in whole.history]
    for name, value in whole.vae.state_dict().items():
        assert torch.equal(resumed.vae.state_dict()[name], value), name


CLI_TINY = ["--train-size", "128", "--test-size", "64", "--batch-size", "64", "--quiet",
            "--no-plots"]


def test_cli_trains_burda2_with_a_flow_and_refuses_bad_combinations(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "burda2", "--flow", "iaf", "--flow-layers", "1",
                 "--epochs", "1", *CLI_TINY, "--out", str(run)]) == 0
    checkpoint = load_checkpoint(run)
    assert (checkpoint.config.preset, checkpoint.config.flow) == ("burda2", "iaf")
    assert checkpoint.config.flow_layers == 1
    capsys.readouterr()
    for args, message in (
        (["--preset", "burda2", "--estimator", "jit-meanfield"], "the jit-meanfield estimator "
         "cannot train the 2-layer hierarchical VAE with a diagonal Gaussian guide: "),
        (["--preset", "burda2", "--latent-dim", "20"], "latent_dim and hidden_sizes"),
        (["--flow-layers", "3"], "flow_layers sets the number of transforms"),
    ):
        assert main(["train", *args, *CLI_TINY, "--out", str(tmp_path / "no")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "no").exists()
