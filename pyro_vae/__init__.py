"""pyro_vae: the variational autoencoder as a verifiable Pyro program. The public API is
exactly what this module exports (``README.md`` has the tour).
"""

import os

# MKL's strict reproducibility mode: its matrix products give the same bits on any number of
# threads, as on one (without it, 2 threads differ from 1 for some shapes on a loaded
# machine), so neither the thread policy's choice nor the load changes a run's numbers. Read
# at torch's first matrix product, so set before it; a user's own setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

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
