"""The run folder: everything one training run writes, and how the package reads it back.

=====================  ========================================================
:mod:`.folder`         :class:`RunFolder`: paths, the lock, writing and reading the files
:mod:`.schema`         what each file holds (:class:`Checkpoint`), and its checks
:mod:`.migrations`     files of older format versions, brought to the current schemas
=====================  ========================================================
"""

from pyro_vae.runs.folder import PICTURES, RunFolder, load_checkpoint, vae_from_checkpoint
from pyro_vae.runs.schema import (
    CHECKPOINT_VERSION,
    EVALUATION_SCHEMA,
    EVALUATION_VERSION,
    METRICS_SCHEMA,
    METRICS_VERSION,
    Checkpoint,
    read_json,
)

__all__ = ["CHECKPOINT_VERSION", "EVALUATION_SCHEMA", "EVALUATION_VERSION", "METRICS_SCHEMA",
           "METRICS_VERSION", "PICTURES", "Checkpoint", "RunFolder", "load_checkpoint",
           "read_json", "vae_from_checkpoint"]
