"""What a configuration (:class:`~pyro_vae.config.TrainConfig`) builds: the device, the model and
the data, each refused with a one-line error before anything large is allocated."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import torch

from pyro_vae import checks
from pyro_vae.config import TrainConfig
from pyro_vae.data import PreparedData, load_dataset, prepare_data
from pyro_vae.errors import ConfigError
from pyro_vae.models import LIKELIHOODS, VAE, make_likelihood
from pyro_vae.models.interface import missing_members
from pyro_vae.objectives import get_estimator
from pyro_vae.resources import (
    check_fits,
    flow_bytes,
    model_bytes,
    reduce_hint,
    training_bytes,
)

__all__ = ["build_vae", "check_training_memory", "load_data"]

def build_vae(config: TrainConfig, x_dim: int, image_shape=None):
    """The model that ``config`` describes for data of ``x_dim`` features (images of
    ``image_shape``, for a convolutional preset), on torch's default device: a
    :class:`~pyro_vae.VAE` from its preset or the model of ``config.model``, refused if it
    cannot fit in memory."""
    checks.instance("config", config, TrainConfig)
    likelihood = _likelihood(config, x_dim)
    if config.model is not None:
        return _own_model(config, x_dim, image_shape, likelihood)
    latent_dims, hidden_sizes, activation = config.layer_sizes
    if config.flow is not None:  # its transforms could not even be built on the meta device
        check_fits(flow_bytes(latent_dims, hidden_sizes, config.flow_layers),
                   f"building this model ({config.model_description})",
                   reduce_hint(config.size_options))
    kwargs = dict(latent_dim=latent_dims if len(latent_dims) > 1 else latent_dims[0],
                  hidden_sizes=hidden_sizes if len(latent_dims) > 1 else hidden_sizes[0],
                  activation=activation, likelihood=likelihood, beta=config.beta,
                  image_shape=image_shape)
    if config.flow is not None:
        kwargs.update(flow=config.flow, flow_layers=config.flow_layers)
    with torch.device("meta"):  # sizes only: no memory, no draw from the global RNG
        probe = VAE.from_preset(config.preset, x_dim, **kwargs)
    check_fits(model_bytes(probe), f"building this model ({config.model_description})",
               reduce_hint(config.size_options))
    return VAE.from_preset(config.preset, x_dim, **kwargs)


def _likelihood(config: TrainConfig, x_dim: int):
    options = ({"scale": config.likelihood_scale, "learn_scale": config.learn_likelihood_scale,
                "shared": True} if config.likelihood == "gaussian" else {})
    return make_likelihood(config.likelihood, x_dim=x_dim, **options)


def _own_model(config: TrainConfig, x_dim: int, image_shape, likelihood):
    """``config.model`` = ``"MODULE:FUNCTION"``: FUNCTION(x_dim=..., image_shape=...,
    likelihood=..., beta=...) returns the model (``docs/models.md``)."""
    module_name, _, function_name = config.model.partition(":")
    try:
        with _current_folder_importable():
            factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"model {config.model!r}: cannot import it ({type(e).__name__}: {e}); "
                          "expected MODULE:FUNCTION of a module importable here (from the current "
                          "folder or $PYTHONPATH)") from None
    model = factory(x_dim=x_dim, image_shape=image_shape, likelihood=likelihood,
                    beta=config.beta)
    missing = missing_members(model)
    if missing:
        raise ConfigError(f"model {config.model!r} returned a {type(model).__name__} without "
                          f"{', '.join(missing)} (see pyro_vae.models.interface.VAEModel)")
    return model


@contextlib.contextmanager
def _current_folder_importable():
    """MODULE of ``--model MODULE:FUNCTION`` is looked for in the current folder too, as
    ``python -m`` would (the ``pyro-vae`` script's own folder is the one on ``sys.path``)."""
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        yield
    finally:
        if added:
            sys.path.remove(os.getcwd())


def check_training_memory(config: TrainConfig, model, device="cpu") -> None:
    """Raise :class:`ConfigError` if training ``model`` as ``config`` says needs more memory
    than ``device`` has free (:func:`~pyro_vae.resources.training_bytes`), naming the sizes
    and the options that reduce them."""
    estimator = get_estimator(checks.instance("config", config, TrainConfig).estimator)
    k = estimator.samples(config.num_particles, config.estimator_options)
    multiplied = k != estimator.resolve(config.num_particles, config.estimator_options)[0]
    samples = f"{k} samples per datapoint" if multiplied else f"K = {k}"
    check_fits(training_bytes(model, config.batch_size, k),
               f"training this model ({config.model_description}, batch {config.batch_size}, "
               f"{samples})",
               reduce_hint(["--batch-size", "-K", *(["-M"] if multiplied else []),
                            *config.size_options]), device=device)


def load_data(config: TrainConfig, *, train: bool = True, dataset=None) -> PreparedData:
    """The data ``config`` names (:func:`pyro_vae.data.prepare_data`), on its device; the test
    set is binarized once when the likelihood needs binary data. ``train=False`` prepares only
    the test set."""
    checks.instance("config", config, TrainConfig)
    dataset = dataset or load_dataset(config.dataset, config.data_dir)
    return prepare_data(dataset, train_size=config.train_size, test_size=config.test_size,
                        binarize_test=LIKELIHOODS[config.likelihood].needs_binary_data,
                        device=checks.device(config.device), train=train)
