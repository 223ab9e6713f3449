"""The memory estimates of ``pyro_vae.resources`` against the models they describe: the bytes of
a built model, for every preset, flow or not, are four per number of its parameters and buffers
(counted here independently, in closed form, from the sizes alone), the flows' bytes are known
before they are built, and sizes that cannot fit are refused before anything is built."""

import itertools

import pytest
import torch

import pyro_vae.build
from pyro_vae import VAE, ConfigError
from pyro_vae.build import build_vae
from pyro_vae.config import TrainConfig
from pyro_vae.resources import (
    flow_bytes,
    made_buffers,
    made_parameters,
    model_bytes,
    training_bytes,
)

TRANSFORM_BYTES = 64_000  # a flow transform's Python objects (resources._TRANSFORM_BYTES)

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
IDS = [",".join(f"{k}={v}" for k, v in o.items()) or "pyro" for o in CONFIGS]


def _mlp(sizes) -> int:
    """Weights and biases of a chain of linear layers sizes[0] → sizes[1] → …"""
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def closed_form_numbers(x_dim, latent_dims, hidden_sizes, flow_layers) -> int:
    """The numbers (parameters and buffers) of the VAE with these sizes, from the sizes alone:
    layer l's inference network reads z_(l-1) (z_0 = x) through its hidden layers into a loc
    and a log-scale head; the generative networks mirror them (p(x|z_1)'s logits, p(z_l|z_(l+1))
    a loc and a scale head); each IAF transform is a MADE conditioned on the last hidden layer,
    with its masks and permutation as buffers."""
    total = 0
    for layer, (d_in, d, hidden) in enumerate(zip((x_dim, *latent_dims[:-1]), latent_dims,
                                                  hidden_sizes, strict=True)):
        features = hidden[-1] if hidden else d_in
        top = hidden[0] if hidden else d
        total += _mlp([d_in, *hidden]) + 2 * _mlp([features, d])
        heads = 1 if layer == 0 else 2
        total += _mlp([d, *reversed(hidden)]) + heads * _mlp([top, d_in])
        total += flow_layers * (made_parameters(d, features) + made_buffers(d, features))
    return total


def numbers(module) -> int:
    return sum(t.numel() for t in (*module.parameters(), *module.buffers()))


def transforms(config: TrainConfig) -> int:
    return config.flow_layers * len(config.layer_sizes[0]) if config.flow else 0


@pytest.mark.parametrize("options", CONFIGS, ids=IDS)
@pytest.mark.parametrize("x_dim", [784, 30])
def test_model_bytes_are_four_per_number_of_the_built_model(options, x_dim):
    """Four bytes per parameter and buffer of the model built (a flow's MADE masks and
    permutations among the buffers), and a fixed cost per flow transform."""
    config = TrainConfig(**options).validate()
    vae = build_vae(config, x_dim)
    assert model_bytes(vae) == 4 * numbers(vae) + TRANSFORM_BYTES * transforms(config)
    with torch.device("meta"):  # what build_vae sizes before it builds
        probe = build_vae(config, x_dim)
    assert model_bytes(probe) == model_bytes(vae)


@pytest.mark.parametrize("options", CONFIGS, ids=IDS)
@pytest.mark.parametrize("x_dim", [784, 30])
def test_the_built_model_has_the_numbers_its_sizes_give(options, x_dim):
    """Two independent counts agree exactly: the closed form from the sizes, and the tensors of
    the model build_vae builds (on the meta device, as build_vae sizes it)."""
    config = TrainConfig(**options).validate()
    latent_dims, hidden_sizes, _ = config.layer_sizes
    with torch.device("meta"):
        vae = build_vae(config, x_dim)
    flow_layers = config.flow_layers if config.flow else 0
    assert numbers(vae) == closed_form_numbers(x_dim, latent_dims, hidden_sizes, flow_layers)
    assert model_bytes(vae) == (4 * closed_form_numbers(x_dim, latent_dims, hidden_sizes,
                                                        flow_layers)
                                + TRANSFORM_BYTES * transforms(config))


@pytest.mark.parametrize("options", [o for o in CONFIGS if o.get("flow")],
                         ids=[i for o, i in zip(CONFIGS, IDS, strict=True) if o.get("flow")])
def test_flow_bytes_are_those_of_the_flows_built(options):
    """flow_bytes counts the IAF guides from the sizes before anything is built (their masks
    would be made on the CPU even on the meta device): exactly the flows' parameters and
    buffers, four bytes each, and the fixed cost per transform."""
    config = TrainConfig(**options).validate()
    latent_dims, hidden_sizes, _ = config.layer_sizes
    vae = build_vae(config, 784)
    assert flow_bytes(latent_dims, hidden_sizes, config.flow_layers) == (
        4 * numbers(vae.flows) + TRANSFORM_BYTES * transforms(config))
    # and the rest of model_bytes is the networks'
    rest = [m for name, m in vae.named_children() if name != "flows"]
    assert model_bytes(vae) - flow_bytes(latent_dims, hidden_sizes, config.flow_layers) == (
        4 * sum(numbers(m) for m in rest))


def test_made_parameters_and_buffers_of_pyros_default_network():
    from pyro.distributions.transforms import conditional_affine_autoregressive

    transform = conditional_affine_autoregressive(7, 11)
    assert made_parameters(7, 11) == sum(p.numel() for p in transform.parameters())
    assert made_buffers(7, 11) == sum(b.numel() for b in transform.buffers())


def test_training_bytes_grow_with_every_size_that_costs_memory():
    with torch.device("meta"):
        two_layers = VAE(784, latent_dim=(100, 50), hidden_sizes=((200, 200), (100, 100)))
        wider = VAE(784, latent_dim=(200, 50), hidden_sizes=((200, 200), (100, 100)))
        flow = VAE(784, latent_dim=(100, 50), hidden_sizes=((200, 200), (100, 100)),
                   flow="iaf", flow_layers=2)
    reference = training_bytes(two_layers, 100, 5)
    assert training_bytes(two_layers, 200, 5) > reference
    assert training_bytes(two_layers, 100, 10) > reference
    assert training_bytes(wider, 100, 5) > reference
    assert training_bytes(flow, 100, 5) > reference
    # the activations grow with the rows, K × B, whichever of the two grows
    assert training_bytes(two_layers, 200, 5) == training_bytes(two_layers, 100, 10)
    assert (training_bytes(two_layers, 300, 5) - training_bytes(two_layers, 200, 5)
            == training_bytes(two_layers, 200, 5) - reference > 0)
    # 4 copies of the parameters (values, gradients, Adam's two moments) at the least
    params = sum(p.numel() for p in two_layers.parameters())
    assert params == closed_form_numbers(784, (100, 50), ((200, 200), (100, 100)), 0)
    assert reference > 4 * 4 * params
    assert training_bytes(two_layers, 1, 1) > model_bytes(two_layers) + 3 * 4 * params


@pytest.mark.parametrize("options, named", [
    ({"flow": "iaf", "flow_layers": 100_000}, "--flow-layers"),
    ({"flow": "iaf", "latent_dim": 20_000}, "--latent-dim"),
    ({"preset": "burda2", "flow": "iaf", "flow_layers": 100_000}, "--flow-layers"),
    ({"hidden_sizes": (1_000_000, 1_000_000)}, "--hidden-sizes"),
    ({"latent_dim": 10_000_000}, "--latent-dim"),
])
def test_a_model_that_cannot_fit_is_refused_before_it_is_built(options, named, monkeypatch):
    """A mistyped --flow-layers 100000 once built transforms until the kernel killed the
    process (found by a fuzz run); now build_vae refuses it at once, naming the size. A
    flow's size is refused before any of it is built; the other networks may be sized on the
    meta device (no memory), but are never built for real."""
    monkeypatch.setenv("PYRO_VAE_MEMORY_LIMIT_MB", "2000")
    built = []  # (the default device, preset) of each VAE.from_preset call
    real_from_preset = VAE.from_preset
    too_large = [True]

    class Recording(VAE):
        @classmethod
        def from_preset(cls, name, x_dim, **kwargs):
            device = torch.get_default_device()
            built.append((device.type, name))
            if device.type != "meta" and too_large[0]:  # before it takes the memory
                raise AssertionError(f"a model too large was built on {device}")
            return real_from_preset(name, x_dim, **kwargs)

    monkeypatch.setattr(pyro_vae.build, "VAE", Recording)
    with pytest.raises(ConfigError, match=f"building this model .* needs about .*{named}"):
        build_vae(TrainConfig(**options).validate(), 784)
    assert all(device == "meta" for device, _ in built)
    if options.get("flow"):
        assert built == []  # not even sized on the meta device
    small = {**options, "latent_dim": None, "hidden_sizes": None,
             **({"flow_layers": 2} if options.get("flow") else {})}
    built.clear()
    too_large[0] = False
    build_vae(TrainConfig(**small).validate(), 784)
    preset = small.get("preset", "pyro")
    assert built == [("meta", preset), ("cpu", preset)]  # the same model at its default sizes


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf", "1e400"])
def test_a_memory_limit_that_is_not_a_positive_number_is_refused_in_one_line(monkeypatch,
                                                                              value):
    from pyro_vae.resources import available_bytes

    monkeypatch.setenv("PYRO_VAE_MEMORY_LIMIT_MB", value)
    with pytest.raises(ConfigError, match=r"^\$PYRO_VAE_MEMORY_LIMIT_MB must be a positive "
                                          f"number of megabytes, got '{value}'$"):
        available_bytes()
    monkeypatch.setenv("PYRO_VAE_MEMORY_LIMIT_MB", "0.5")
    assert available_bytes() == 500_000
