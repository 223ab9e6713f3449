"""pyro_vae: the variational autoencoder as a verifiable Pyro program. The public API is
exactly what this module exports (``README.md`` has the tour).
"""

from pyro_vae.errors import (
    CheckpointError,
    ConfigError,
    ConfigTypeError,
    DataError,
    DataNotFoundError,
    DataTypeError,
    PyroVAEError,
    RunFolderError,
    TrainingDivergedError,
)
from pyro_vae.models import (
    FLOWS,
    LIKELIHOODS,
    PRESETS,
    VAE,
    Capabilities,
    InverseAutoregressiveFlow,
    LayeredModel,
    VAEModel,
    make_likelihood,
)
from pyro_vae.objectives import ESTIMATORS, Bound, get_estimator, make_objective

__version__ = "0.3.0"

__all__ = ["ESTIMATORS", "FLOWS", "LIKELIHOODS", "PRESETS", "VAE", "Bound", "Capabilities",
           "CheckpointError", "ConfigError", "ConfigTypeError", "DataError", "DataNotFoundError",
           "DataTypeError", "InverseAutoregressiveFlow", "LayeredModel", "PyroVAEError",
           "RunFolderError", "TrainingDivergedError", "VAEModel", "get_estimator",
           "make_likelihood", "make_objective"]
