"""pyro_vae: the variational autoencoder as a verifiable Pyro program.

The public API is exactly what this module exports; see ``README.md`` for the tour.
"""

from pyro_vae.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DataNotFoundError,
    PyroVAEError,
    RunFolderError,
    TrainingDivergedError,
)
from pyro_vae.flows import FLOWS, InverseAutoregressiveFlow
from pyro_vae.hierarchical import HierarchicalVAE
from pyro_vae.likelihoods import LIKELIHOODS, make_likelihood
from pyro_vae.model import VAE
from pyro_vae.networks import PRESETS
from pyro_vae.objectives import ESTIMATORS, Bound, get_estimator, make_objective
from pyro_vae.structure import Structure

__version__ = "0.2.0"

__all__ = [
    "ESTIMATORS",
    "FLOWS",
    "LIKELIHOODS",
    "PRESETS",
    "VAE",
    "Bound",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "HierarchicalVAE",
    "InverseAutoregressiveFlow",
    "PyroVAEError",
    "RunFolderError",
    "Structure",
    "TrainingDivergedError",
    "get_estimator",
    "make_likelihood",
    "make_objective",
]
