"""The memory estimates of ``pyro_vae.resources`` against the models they describe: the
parameter count equals that of the built model for every preset, flow or not, and sizes that
cannot fit are refused before anything is built."""

import pytest

from pyro_vae import ConfigError
from pyro_vae.build import build_vae
from pyro_vae.config import TrainConfig
from pyro_vae.resources import (
    made_buffers,
    made_parameters,
    model_bytes,
    model_parameters,
    training_bytes,
)

CONFIGS = [
    {},
    {"preset": "burda"},
    {"preset": "burda2"},
    {"preset": "burda2", "flow": "iaf", "flow_layers": 3},
    {"flow": "iaf", "flow_layers": 2},
    {"preset": "burda", "flow": "iaf", "flow_layers": 1},
    {"hidden_sizes": (8,), "latent_dim": 2, "flow": "iaf", "flow_layers": 5},
    {"hidden_sizes": (16, 8, 4), "latent_dim": 3},
]


def _sizes(config: TrainConfig):
    latent_dims, hidden_sizes = config.layer_sizes
    return latent_dims, hidden_sizes, config.flow_layers if config.flow else 0


@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in
                                                                    o.items()) or "pyro")
@pytest.mark.parametrize("x_dim", [784, 30])
def test_parameter_count_is_that_of_the_built_model(options, x_dim):
    config = TrainConfig(**options).validate()
    latent_dims, hidden_sizes, flow_layers = _sizes(config)
    vae = build_vae(config, x_dim)
    assert model_parameters(x_dim, latent_dims, hidden_sizes, flow_layers=flow_layers) == sum(
        p.numel() for p in vae.parameters())


@pytest.mark.parametrize("options", [o for o in CONFIGS if o.get("flow")])
def test_model_bytes_count_the_parameters_and_the_made_masks(options):
    """Beside the parameters, a flow's memory is its MADE buffers (a mask per weight matrix, a
    permutation) and a fixed cost per transform: model_bytes minus both is that cost exactly."""
    config = TrainConfig(**options).validate()
    latent_dims, hidden_sizes, flow_layers = _sizes(config)
    vae = build_vae(config, 784)
    numbers = sum(p.numel() for p in vae.parameters()) + sum(b.numel() for b in vae.buffers())
    transforms = flow_layers * len(latent_dims)
    overhead = model_bytes(784, latent_dims, hidden_sizes, flow_layers=flow_layers) - 4 * numbers
    assert overhead == transforms * 64_000


def test_made_parameters_and_buffers_of_pyros_default_network():
    from pyro.distributions.transforms import conditional_affine_autoregressive

    transform = conditional_affine_autoregressive(7, 11)
    assert made_parameters(7, 11) == sum(p.numel() for p in transform.parameters())
    assert made_buffers(7, 11) == sum(b.numel() for b in transform.buffers())


def test_training_bytes_grow_with_every_size_that_costs_memory():
    base = dict(x_dim=784, latent_dims=(100, 50), hidden_sizes=((200, 200), (100, 100)),
                batch_size=100, num_particles=5)
    reference = training_bytes(**base)
    for change in ({"batch_size": 200}, {"num_particles": 10}, {"latent_dims": (200, 50)}):
        assert training_bytes(**{**base, **change}) > reference
    assert training_bytes(**base, flow_layers=2) > reference
    # 4 copies of the parameters (values, gradients, Adam's two moments) at the least
    params = model_parameters(784, (100, 50), ((200, 200), (100, 100)))
    assert reference > 4 * 4 * params


@pytest.mark.parametrize("options, named", [
    ({"flow": "iaf", "flow_layers": 100_000}, "--flow-layers"),
    ({"flow": "iaf", "latent_dim": 20_000}, "--latent-dim"),
    ({"preset": "burda2", "flow": "iaf", "flow_layers": 100_000}, "--flow-layers"),
])
def test_a_model_that_cannot_fit_is_refused_before_it_is_built(options, named, monkeypatch):
    """A mistyped --flow-layers 100000 once built transforms until the kernel killed the
    process (the fuzz run of issue 16); now build_vae refuses it at once, naming the size."""
    import pyro_vae.config

    monkeypatch.setenv("PYRO_VAE_MEMORY_LIMIT_MB", "2000")
    built = []
    monkeypatch.setattr(pyro_vae.config, "VAE", lambda *a, **k: built.append(a))
    monkeypatch.setattr(pyro_vae.config.HierarchicalVAE, "from_preset",
                        lambda *a, **k: built.append(a))
    with pytest.raises(ConfigError, match=f"building this model .* needs about .*{named}"):
        build_vae(TrainConfig(**options).validate(), 784)
    assert built == []
    build_vae(TrainConfig(**{**options, "flow_layers": 2, "latent_dim": None}).validate(), 784)
    assert len(built) == 1  # the same model at its default sizes is built
