"""pyro_vae.models.interface: what a model offers (Capabilities), as training asks it. Every
estimator with every model and guide: it trains them (a finite loss per datapoint and a finite
gradient for every parameter) or refuses at once, from make_objective and from
TrainConfig.validate, with a message that names the estimator, the model and guide, and why;
the capabilities a built VAE reports are those its TrainConfig predicts."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import (
    ESTIMATORS,
    VAE,
    Capabilities,
    ConfigError,
    LayeredModel,
    VAEModel,
    make_likelihood,
    make_objective,
    plots,
)
from pyro_vae.build import build_vae
from pyro_vae.config import TrainConfig
from pyro_vae.errors import ConfigTypeError
from pyro_vae.evaluation import active_units, elbo_per_datapoint
from pyro_vae.models.interface import missing_members
from pyro_vae.objectives import check_compatible
from tests.conftest import binary_batch


class OwnModel(nn.Module):
    """A model of one's own (a VAEModel that is not layered): its own Pyro program."""

    x_dim, latent_dim, beta = 12, 3, 1.0

    def __init__(self):
        super().__init__()
        self.q_net = nn.Linear(12, 6)
        self.p_net = nn.Linear(3, 12)
        self.likelihood = make_likelihood("bernoulli", x_dim=12)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    def model(self, x, context=None, *, num_data=None, plate=True):
        pyro.module("own_p", self.p_net)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 3), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.p_net(z)).to_event(1), obs=x)

    def guide(self, x, context=None, *, num_data=None, plate=True):
        pyro.module("own_q", self.q_net)
        with pyro.plate("data", x.shape[0]):
            h = self.q_net(x)
            pyro.sample("z", dist.Normal(h[..., :3], h[..., 3:].exp()).to_event(1))

    def check_data(self, x, *, where="data"):
        self.likelihood.check_data(x, where=where)

    def encode(self, x, context=None):
        h = self.q_net(x)
        return h[..., :3], h[..., 3:].exp()

    def decode(self, z, context=None):
        return self.likelihood(self.p_net(z)).to_event(1)

    def bytes_per_row(self) -> int:
        return 4 * (12 + 6 + 3 + 12)


MODELS = {
    "vae": lambda: VAE(12, latent_dim=3, hidden_sizes=(16,)),
    "vae+iaf": lambda: VAE(12, latent_dim=3, hidden_sizes=(16,), flow="iaf"),
    "hierarchical": lambda: VAE(12, latent_dim=(4, 3), hidden_sizes=((16,), (8,))),
    "hierarchical+iaf": lambda: VAE(12, latent_dim=(4, 3), hidden_sizes=((16,), (8,)),
                                    flow="iaf"),
    "own": OwnModel,
}
CONFIGS = {
    "vae": {"preset": "burda"},
    "vae+iaf": {"preset": "burda", "flow": "iaf"},
    "hierarchical": {"preset": "burda2"},
    "hierarchical+iaf": {"preset": "burda2", "flow": "iaf"},
}
# What this package's estimators refuse, and a word of the reason (estimators added later are
# held to the rule of the test, not to this table).
REFUSED = {
    ("jit-meanfield", "hierarchical"): "mean-field condition fails",
    ("jit-meanfield", "hierarchical+iaf"): "mean-field condition fails",
    ("analytic", "vae+iaf"): "diagonal Gaussian",
    ("analytic", "hierarchical+iaf"): "diagonal Gaussian",
    ("analytic", "own"): "written for pyro_vae.VAE's chain of Gaussian networks",
    ("mc", "vae+iaf"): "diagonal Gaussian",
    ("mc", "hierarchical+iaf"): "diagonal Gaussian",
    ("mc", "own"): "written for pyro_vae.VAE's chain of Gaussian networks",
    ("stl", "vae+iaf"): "inverting it",
    ("stl", "hierarchical+iaf"): "inverting it",
    ("dreg", "vae+iaf"): "inverting it",
    ("dreg", "hierarchical+iaf"): "inverting it",
    ("rws", "vae+iaf"): "inverting it",
    ("rws", "hierarchical+iaf"): "inverting it",
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_refuses_a_model_with_a_context_in_one_line(name):
    # the hand-written baselines ended in torch's "mat1 and mat2 shapes cannot be multiplied"
    vae = VAE(6, latent_dim=2, hidden_sizes=(8,), context_dim=3)
    with pytest.raises(ConfigError) as refused:
        make_objective(name, vae)
    assert str(refused.value) == (
        f"the {name} estimator trains on x alone, and this model reads a context of 3 features "
        "beside it: train the program that supplies the context with a Pyro ELBO "
        "(examples/composed_model.py)")


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_trains_every_model_or_refuses_at_once(name, model):
    vae = MODELS[model]()
    config = TrainConfig(estimator=name, **CONFIGS[model]) if model in CONFIGS else None
    if config is not None:
        assert config.capabilities == vae.capabilities
    reason = ESTIMATORS[name].refuses(vae.capabilities)
    try:
        objective = make_objective(name, vae, num_particles=2)
    except ConfigError as e:
        message = str(e)
        assert reason is not None, "refused although Estimator.refuses gives no reason"
        assert message == f"the {name} estimator cannot train {vae.capabilities.describe()}: " \
                          f"{reason}"
        assert "\n" not in message
        with pytest.raises(ConfigError) as checked:
            check_compatible(name, vae.capabilities)
        assert str(checked.value) == message
        if config is not None:
            with pytest.raises(ConfigError) as from_config:
                config.validate()
            assert str(from_config.value) == message
        if (name, model) in REFUSED:
            assert REFUSED[name, model] in message
        return
    assert reason is None and (name, model) not in REFUSED, "refusal expected"
    check_compatible(name, vae.capabilities)
    if config is not None:
        config.validate()
    x = binary_batch(8, 12)
    objective.differentiable_loss(x)  # jit: compile first
    vae.zero_grad()
    loss = objective.differentiable_loss(x)
    loss.backward()
    assert 0 < float(loss.detach()) / 8 < 12 * math.log(2) * 10  # nats per datapoint, binary data
    for param_name, param in vae.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("flow, flow_layers", [(None, 2), ("iaf", 2), ("iaf", 3)],
                         ids=["gaussian", "iaf-2", "iaf-3"])
@pytest.mark.parametrize("preset", ["pyro", "burda", "burda2"])
def test_a_vae_reports_the_capabilities_its_config_predicts(preset, flow, flow_layers):
    """TrainConfig.capabilities (what validate refuses from, before anything is built) is what
    the model built from the config reports, and what VAE.from_preset reports."""
    config = TrainConfig(preset=preset, flow=flow, flow_layers=flow_layers)
    built = build_vae(config, 20)
    assert built.capabilities == config.capabilities
    from_preset = VAE.from_preset(preset, 20, flow=flow, flow_layers=flow_layers)
    assert from_preset.capabilities == config.capabilities
    layers = 2 if preset == "burda2" else 1
    top = "z" if layers == 1 else "z2"
    assert config.capabilities == Capabilities(
        layers=layers, flow=flow, flow_layers=flow_layers if flow else 0,
        closed_form_kl_sites=() if flow else (top,), layered=True, context_dim=0)


def test_capabilities_describe_the_model_and_guide():
    assert Capabilities().describe() == "a one-layer VAE with a diagonal Gaussian guide"
    assert Capabilities(layers=3).describe() == "a 3-layer VAE with a diagonal Gaussian guide"
    assert Capabilities(layers=2, flow="iaf", flow_layers=3).describe() == \
        "a 2-layer VAE with an IAF guide (3 flow layers)"
    assert Capabilities(flow="iaf", flow_layers=1).describe() == \
        "a one-layer VAE with an IAF guide (1 flow layers)"
    defaults = Capabilities()
    assert (defaults.layers, defaults.flow, defaults.flow_layers, defaults.closed_form_kl_sites,
            defaults.layered, defaults.context_dim) == (1, None, 0, (), False, 0)
    assert TrainConfig(preset="burda2", flow="iaf", flow_layers=3).capabilities == \
        Capabilities(layers=2, flow="iaf", flow_layers=3, layered=True)


def test_a_vae_reports_its_layers_flow_and_context():
    vae = VAE(12, latent_dim=(4, 3, 2), hidden_sizes=((16,), (8,), (6,)), flow="iaf",
              flow_layers=3, context_dim=5)
    assert vae.capabilities == Capabilities(layers=3, flow="iaf", flow_layers=3,
                                            closed_form_kl_sites=(), layered=True,
                                            context_dim=5)
    assert VAE(12, latent_dim=3, prefix="p_").capabilities.closed_form_kl_sites == ("p_z",)
    # layered: it offers every method of the LayeredModel protocol
    wanted = {n for protocol in (VAEModel, LayeredModel)
              for n in (*vars(protocol), *protocol.__annotations__) if not n.startswith("_")}
    assert {"guide_path", "log_prior", "pull_back", "latent_dims", "capabilities"} <= wanted
    assert all(hasattr(vae, n) for n in wanted), sorted(n for n in wanted if not hasattr(vae, n))



def test_the_interfaces_members_are_read_from_the_protocols():
    layered_only = ["latent_dims", "guide_path", "log_prior", "log_likelihood", "sample_prior",
                    "sample_x", "pull_back"]
    assert missing_members(VAE(12, latent_dim=2, hidden_sizes=(4,)), LayeredModel) == []
    assert missing_members(OwnModel()) == []
    assert missing_members(OwnModel(), LayeredModel) == layered_only
    assert missing_members(3) == ["x_dim", "latent_dim", "beta", "likelihood", "capabilities",
                                  "model", "guide", "check_data", "encode", "decode",
                                  "bytes_per_row", "parameters"]


CONSUMERS = {  # each asks for the interface first, whatever else it is given
    "sample_prior": (lambda m: plots.sample_prior(m, 2), False),
    "plot_reconstructions": (lambda m: plots.plot_reconstructions(m, X, (3, 4), "r.png"), False),
    "plot_prior_samples": (lambda m: plots.plot_prior_samples(m, (3, 4), "p.png"), False),
    "plot_latent_manifold": (lambda m: plots.plot_latent_manifold(m, (3, 4), "m.png"), False),
    "plot_latent_embedding": (lambda m: plots.plot_latent_embedding(m, X, None, "e.png"), False),
    "the posterior on a grid": (lambda m: plots.plot_posterior_vs_guide(m, X, "g.png"), True),
    "active units and the KL per dimension": (lambda m: active_units(m, X), False),
    "elbo_per_datapoint": (lambda m: elbo_per_datapoint(m, X), True),
}
X = binary_batch(4, 12)


@pytest.mark.parametrize("consumer", list(CONSUMERS))
@pytest.mark.parametrize("model", ["not a model", "nn.Linear", "own"])
def test_what_needs_a_model_names_the_interface_it_lacks(consumer, model, tmp_path,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    call, layered = CONSUMERS[consumer]
    given = {"not a model": 3, "nn.Linear": nn.Linear(12, 2), "own": OwnModel()}[model]
    if model == "own" and not layered:  # a model of one's own offers everything these ask
        if consumer == "plot_latent_manifold":  # ... but three latent dimensions
            with pytest.raises(ConfigError, match="drawn for 1 or 2 latent dimensions"):
                call(given)
        else:
            call(given)
        return
    protocol = "LayeredModel" if layered else "VAEModel"
    with pytest.raises(ConfigTypeError) as refused:
        call(given)
    message = str(refused.value)
    assert message.startswith(f"{consumer} needs a model that implements pyro_vae.models."
                              f"{protocol} (pyro_vae.VAE does); got a {type(given).__name__}, "
                              "without ") and "\n" not in message
