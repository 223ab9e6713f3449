"""pyro_vae: the variational autoencoder as a verifiable Pyro program.

The public API is exactly what this module exports; see ``README.md`` for the tour.
"""

from pyro_vae.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PyroVAEError,
    TrainingDivergedError,
)
from pyro_vae.estimators import ESTIMATORS, get_estimator, make_objective
from pyro_vae.likelihoods import LIKELIHOODS, make_likelihood
from pyro_vae.model import VAE
from pyro_vae.networks import PRESETS

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "LIKELIHOODS",
    "PRESETS",
    "VAE",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "PyroVAEError",
    "TrainingDivergedError",
    "get_estimator",
    "make_likelihood",
    "make_objective",
]
