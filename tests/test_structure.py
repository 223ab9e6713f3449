"""Every estimator with every model and guide: it trains them (a finite loss per datapoint and a
finite gradient for every parameter) or refuses at once, from make_objective and from
TrainConfig.validate, with a message that names the estimator, the model and guide, and why."""

import math

import pytest
import torch

from pyro_vae import ESTIMATORS, VAE, Capabilities, ConfigError, make_objective
from pyro_vae.config import TrainConfig
from tests.conftest import binary_batch

MODELS = {
    "vae": lambda: VAE(12, latent_dim=3, hidden_sizes=(16,)),
    "vae+iaf": lambda: VAE(12, latent_dim=3, hidden_sizes=(16,), flow="iaf"),
    "hierarchical": lambda: VAE(12, latent_dims=(4, 3), hidden_sizes=((16,), (8,))),
    "hierarchical+iaf": lambda: VAE(12, latent_dims=(4, 3),
                                                hidden_sizes=((16,), (8,)), flow="iaf"),
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
    ("mc", "vae+iaf"): "diagonal Gaussian",
    ("mc", "hierarchical+iaf"): "diagonal Gaussian",
    ("stl", "vae+iaf"): "inverting it",
    ("stl", "hierarchical+iaf"): "inverting it",
    ("dreg", "vae+iaf"): "inverting it",
    ("dreg", "hierarchical+iaf"): "inverting it",
    ("rws", "vae+iaf"): "inverting it",
    ("rws", "hierarchical+iaf"): "inverting it",
}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_trains_every_model_or_refuses_at_once(name, model):
    vae = MODELS[model]()
    config = TrainConfig(estimator=name, **CONFIGS[model])
    assert config.structure.describe() == vae.structure.describe()
    try:
        objective = make_objective(name, vae, num_particles=2)
    except ConfigError as e:
        message = str(e)
        assert message.startswith(f"the {name} estimator cannot train "
                                  f"{vae.structure.describe()}: ")
        assert "\n" not in message
        with pytest.raises(ConfigError) as from_config:
            config.validate()
        assert str(from_config.value) == message
        if (name, model) in REFUSED:
            assert REFUSED[name, model] in message
        return
    assert (name, model) not in REFUSED, "refusal expected"
    config.validate()
    x = binary_batch(8, 12)
    objective.differentiable_loss(x)  # jit: compile first
    vae.zero_grad()
    loss = objective.differentiable_loss(x)
    loss.backward()
    assert 0 < float(loss.detach()) / 8 < 12 * math.log(2) * 10  # nats per datapoint, binary data
    for param_name, param in vae.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name


def test_structure_names_the_model_and_guide():
    assert Capabilities().describe() == "the one-layer VAE with a diagonal Gaussian guide"
    assert not Capabilities().hierarchical and Capabilities(2).hierarchical
    assert TrainConfig(preset="burda2", flow="iaf", flow_layers=3).structure == \
        Capabilities(2, "iaf", 3)
