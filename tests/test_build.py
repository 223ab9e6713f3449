"""pyro_vae.build: what a configuration builds (the device, the model, the data) and the memory
check of training, each refused with a one-line error before anything large is allocated.
(Model sizes against the memory estimates: tests/test_resources.py.)"""

import pytest
import torch
from torch import nn

from pyro_vae import VAE, ConfigError
from pyro_vae.build import build_vae, check_training_memory, load_data
from pyro_vae.config import TrainConfig
from pyro_vae.data import load_dataset
from pyro_vae.resources import format_bytes, training_bytes

SMALL = dict(train_size=100, test_size=50)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


# --- build_vae ----------------------------------------------------------------------------
CONFIGS = [
    {},
    {"preset": "burda"},
    {"preset": "burda2"},
    {"flow": "iaf"},
    {"preset": "burda2", "flow": "iaf", "flow_layers": 3},
    {"hidden_sizes": (16, 8), "latent_dim": 3, "activation": "relu"},
]


@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in
                                                                    o.items()) or "pyro")
def test_the_model_built_is_the_one_the_configuration_describes(options):
    config = TrainConfig(**options).validate()
    with torch.device("meta"):  # sizes only
        vae = build_vae(config, 784, (28, 28))
    assert vae.capabilities == config.capabilities
    latent_dims, hidden_sizes, _ = config.layer_sizes
    assert vae.latent_dims == latent_dims
    assert [e.features_dim for e in vae.encoders] == [h[-1] for h in hidden_sizes]
    assert vae.x_dim == 784 and vae.beta == config.beta


@pytest.mark.parametrize("options", [{}, {"flow": "iaf"},
                                     {"preset": "burda2", "flow": "iaf"}])
def test_building_draws_the_initial_weights_and_nothing_else_from_the_seed(options):
    """build_vae sizes a model on the meta device before building it: that probe draws nothing
    from torch's generator, so the weights are those the seed gives VAE.from_preset."""
    config = TrainConfig(**options).validate()
    state = torch.get_rng_state()
    with torch.device("meta"):
        build_vae(config, 784)
    assert torch.equal(torch.get_rng_state(), state)

    torch.manual_seed(5)
    built = build_vae(config, 784)
    after_build = torch.get_rng_state()
    torch.manual_seed(5)
    direct = VAE.from_preset(config.preset, 784, beta=config.beta,
                             **({"flow": config.flow, "flow_layers": config.flow_layers}
                                if config.flow else {}))
    assert torch.equal(torch.get_rng_state(), after_build)
    assert built.state_dict().keys() == direct.state_dict().keys()
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, direct.state_dict()[name]), name


def small_vae(*, x_dim, image_shape, likelihood, beta):
    """A model of one's own, as TrainConfig.model names it (docs/models.md)."""
    return VAE(x_dim, latent_dim=2, hidden_sizes=(8,), likelihood=likelihood, beta=beta)


def not_a_vae(*, x_dim, image_shape, likelihood, beta):
    return nn.Linear(x_dim, 2)


def test_a_model_of_ones_own_is_built_by_its_function_and_checked():
    vae = build_vae(TrainConfig(model=f"{__name__}:small_vae", beta=0.5).validate(), 30)
    assert isinstance(vae, VAE) and vae.latent_dims == (2,) and vae.x_dim == 30
    assert vae.beta == 0.5
    with pytest.raises(ConfigError, match=rf"^model '{__name__}:not_a_vae' returned a Linear "
                                          r"without x_dim, latent_dim, beta, likelihood, "
                                          r"capabilities, model, guide, check_data, encode, "
                                          r"decode, bytes_per_row \(see "):
        build_vae(TrainConfig(model=f"{__name__}:not_a_vae").validate(), 30)
    with pytest.raises(ConfigError, match=r"^model 'no_such_module_here:f': cannot import it "
                                          r"\(ModuleNotFoundError: "):
        build_vae(TrainConfig(model="no_such_module_here:f").validate(), 30)
    with pytest.raises(ConfigError, match=rf"model '{__name__}:absent': cannot import it "
                                          r"\(AttributeError: "):
        build_vae(TrainConfig(model=f"{__name__}:absent").validate(), 30)


# --- load_data ----------------------------------------------------------------------------
def test_load_data_takes_the_sizes_and_binarizes_the_test_set_once(mnist):
    data = load_data(TrainConfig(seed=1, **SMALL), dataset=mnist)
    assert data.train.shape == (100, 784) and data.test.shape == (50, 784)
    assert data.test_labels.shape == (50,) and data.dataset is mnist
    assert set(data.test.unique().tolist()) == {0.0, 1.0}  # the bernoulli likelihood's
    assert len(data.train.unique()) > 2  # grey levels: binarized anew at every step
    # the same binary test set whatever the seed, so that every run is evaluated alike
    assert torch.equal(data.test, load_data(TrainConfig(seed=2, **SMALL), dataset=mnist).test)
    grey = load_data(TrainConfig(likelihood="gaussian", **SMALL), dataset=mnist)
    assert torch.equal(grey.train, data.train) and len(grey.test.unique()) > 2
    assert grey.test.min() >= 0 and grey.test.max() <= 1


def test_load_data_for_evaluation_prepares_only_the_test_set(mnist):
    data = load_data(TrainConfig(**SMALL), train=False, dataset=mnist)
    assert data.train is None and data.test.shape == (50, 784)
    assert torch.equal(data.test, load_data(TrainConfig(**SMALL), dataset=mnist).test)


def test_load_data_refuses_a_device_this_machine_lacks(mnist):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    config = TrainConfig(device="cuda", **SMALL).validate()  # its form is fine
    with pytest.raises(ConfigError, match="no CUDA GPU is available; use --device cpu"):
        load_data(config, dataset=mnist)


# --- check_training_memory ----------------------------------------------------------------
def meta_model(config: TrainConfig):
    with torch.device("meta"):
        return build_vae(config, 784, (28, 28))


@pytest.mark.parametrize("options, samples, hint", [
    ({"batch_size": 100, "estimator": "iwae", "num_particles": 50}, "K = 50",
     "reduce --batch-size, -K, --hidden-sizes or --latent-dim"),
    ({"batch_size": 100, "estimator": "miwae", "num_particles": 5,
      "estimator_options": {"num_estimates": 3}}, "15 samples per datapoint",
     "reduce --batch-size, -K, -M, --hidden-sizes or --latent-dim"),
    ({"batch_size": 100, "preset": "burda2", "flow": "iaf", "estimator": "iwae",
      "num_particles": 50}, "K = 50", "reduce --batch-size, -K or --flow-layers"),
])
def test_training_that_cannot_fit_is_refused_with_its_sizes(options, samples, hint,
                                                             monkeypatch):
    config = TrainConfig(**options).validate()
    model = meta_model(config)
    k = 15 if config.estimator == "miwae" else config.num_particles
    needed = training_bytes(model, config.batch_size, k)
    monkeypatch.setenv("PYRO_VAE_MEMORY_LIMIT_MB", str(needed / 2 / 1e6))
    with pytest.raises(ConfigError) as info:
        check_training_memory(config, model)
    message = str(info.value)
    assert message == (
        f"training this model ({config.model_description}, batch {config.batch_size}, "
        f"{samples}) needs about {format_bytes(needed)} of memory, more than the "
        f"{format_bytes(int(needed / 2))} available; {hint}")
    monkeypatch.setenv("PYRO_VAE_MEMORY_LIMIT_MB", str(needed * 1.01 / 1e6))
    check_training_memory(config, model)  # fits: no error


def test_the_default_run_fits_on_this_machine():
    config = TrainConfig().validate()
    check_training_memory(config, meta_model(config), "cpu")
    check_training_memory(config, build_vae(config, 784), "cpu")
