"""Explicit migrations of older files to the current schemas (:mod:`.schema`), one version at a
time.

Version 1 (pyro_vae 0.1) → 2: checkpoints' Pyro or torch optimizer states under
``optimizer_state`` became one torch Adam state under ``trainer_state``; per-epoch records'
``train_elbo`` became ``train_objective_nats``, and ``IWAE_K`` names its K (``IWAE_5``);
``evaluation.json`` got its schema fields and ``"method": "is"``.

Checkpoint version 2 (pyro_vae 0.2) → 3: a one-layer model's ``encoder.*`` and ``flow.*``
weights became ``encoders.0.*`` and ``flows.0.*``, in the same order (the optimizer state fits).
"""

from __future__ import annotations

import torch

from pyro_vae.build import build_vae
from pyro_vae.checks import is_int
from pyro_vae.config import TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.models import PRESETS, get_preset
from pyro_vae.objectives import get_estimator
from pyro_vae.runs.schema import (
    EVALUATION_SCHEMA,
    EVALUATION_VERSION,
    METRICS_SCHEMA,
    METRICS_VERSION,
    bad_entry,
)

__all__ = ["migrate_checkpoint", "migrate_evaluation", "migrate_metrics_v1"]


def _objective_label(config: dict, label: str) -> str:
    """Version 1 said ``IWAE_K``; version 2 names K (``IWAE_5``)."""
    if "IWAE_K" not in label:
        return label
    k = config.get("num_particles")
    if not is_int(k, 1):
        k = get_estimator(config.get("estimator")).default_num_particles
    return label.replace("IWAE_K", f"IWAE_{k}")


def _migrate_record_v1(record, config: dict):
    """A per-epoch record of version 1 brought to version 2."""
    if not isinstance(record, dict) or "train_elbo" not in record:
        return record
    out = {k: v for k, v in record.items() if k != "train_elbo"}
    out["train_objective"] = _objective_label(config, record.get("train_objective", "ELBO"))
    out["train_objective_nats"] = record["train_elbo"]
    return out


def migrate_metrics_v1(document: dict) -> dict:
    config = document.get("config") if isinstance(document.get("config"), dict) else {}
    epochs = document.get("epochs")
    return {**document, "schema": METRICS_SCHEMA, "version": METRICS_VERSION,
            "epochs": ([_migrate_record_v1(r, config) for r in epochs]
                       if isinstance(epochs, list) else epochs)}


def migrate_evaluation(document: dict) -> dict:
    """``evaluation.json`` of version 1 or 2 brought to version 3, which moved K into
    ``settings`` and kept only the Monte Carlo test ELBO (``monte_carlo``) as ``elbo``."""
    if "schema" not in document:
        document = {"schema": EVALUATION_SCHEMA, "version": 2, "method": "is", **document}
    if document.get("version") != 2:
        return document
    out = {**document, "version": EVALUATION_VERSION}
    if "num_samples" in out:
        out["settings"] = {**out.get("settings", {}), "num_samples": out.pop("num_samples")}
    elbo = out.get("elbo")
    if isinstance(elbo, dict) and isinstance(elbo.get("monte_carlo"), dict):
        out["elbo"] = {"what": elbo.get("what"), **elbo["monte_carlo"]}
    return out


def migrate_checkpoint(raw: dict, path) -> dict:
    """``raw`` of format version 1 or 2 brought to version 3."""
    if raw.get("format_version") == 1:
        raw = _checkpoint_v1_to_v2(raw, path)
    return _checkpoint_v2_to_v3(raw)


def _checkpoint_v2_to_v3(raw: dict) -> dict:
    config, state = raw.get("config"), raw.get("model_state")
    preset = config.get("preset") if isinstance(config, dict) else None
    one_layer = preset not in PRESETS or get_preset(preset).stochastic_layers == 1
    if one_layer and isinstance(state, dict):
        renames = (("encoder.", "encoders.0."), ("flow.", "flows.0."))
        state = {next((new + k[len(old):] for old, new in renames
                       if isinstance(k, str) and k.startswith(old)), k): v
                 for k, v in state.items()}
    return {**raw, "model_state": state, "format_version": 3}


def _checkpoint_v1_to_v2(raw: dict, path) -> dict:
    out = {k: v for k, v in raw.items() if k != "optimizer_state"}
    out["format_version"] = 2
    config = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    if isinstance(raw.get("history"), list):
        out["history"] = [_migrate_record_v1(r, config) for r in raw["history"]]
    state = raw.get("optimizer_state")
    if state is not None:
        out["trainer_state"] = _migrate_optimizer_state(state, raw, path)
    return out


def _migrate_optimizer_state(state, raw: dict, path) -> dict:
    if not isinstance(state, dict):
        raise bad_entry(path, "entry optimizer_state", "is not a dict")
    if "state" in state and "param_groups" in state:  # torch Adam (hand-written or DDP)
        adam = {k: v for k, v in state.items() if k != "distributed_steps"}
        steps = state.get("distributed_steps")
        return {"adam": adam, "steps": steps if is_int(steps, 0) else _adam_steps(adam)}
    # Pyro's: {"encoder$$$body.0.weight": one-parameter Adam state dict, ...}
    try:
        config = TrainConfig.from_dict(raw["config"])
        with torch.device("meta"):  # the names of version 2, the order of every version
            names = [n.replace("encoders.0.", "encoder.", 1).replace("flows.0.", "flow.", 1)
                     for n, _ in build_vae(config, raw["x_dim"]).named_parameters()]
    except (ConfigError, KeyError, TypeError, RuntimeError) as e:
        raise bad_entry(path, "entry config", f"cannot be read ({e})") from None
    moments, groups = {}, []
    for pyro_name, per_param in state.items():
        name = str(pyro_name).replace("$$$", ".", 1)
        if name not in names or not isinstance(per_param, dict):
            raise bad_entry(path, f"entry optimizer_state[{pyro_name!r}]",
                       "names no parameter of the model")
        inner = per_param.get("state", {})
        if isinstance(inner, dict) and 0 in inner:
            moments[names.index(name)] = inner[0]
        groups += per_param.get("param_groups", [])[:1]
    if not groups:
        raise bad_entry(path, "entry optimizer_state", "holds no optimizer state")
    adam = {"state": moments, "param_groups": [{**groups[0], "params": list(range(len(names)))}]}
    return {"adam": adam, "steps": _adam_steps(adam)}


def _adam_steps(adam: dict) -> int:
    steps = [int(m["step"]) for m in adam.get("state", {}).values()
             if isinstance(m, dict) and "step" in m]
    return max(steps, default=0)
