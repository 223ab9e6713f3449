"""A training run's configuration, :class:`TrainConfig`: plain data, saved in every checkpoint
and ``metrics.json``; everything a run does follows from it and the seed. What it builds is in
:mod:`pyro_vae.build`, its schedules in :mod:`pyro_vae.schedules`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pyro_vae import checks
from pyro_vae.data import check_dataset_name
from pyro_vae.errors import ConfigError, ConfigTypeError
from pyro_vae.models import FLOWS, LIKELIHOODS, Capabilities, get_preset
from pyro_vae.models.networks import ACTIVATIONS
from pyro_vae.objectives import ESTIMATORS, check_compatible, get_estimator

__all__ = ["LR_SCHEDULES", "RESUMABLE_FIELDS", "TrainConfig", "resumed_config"]

LR_SCHEDULES = ("constant", "burda", "burda-even")
# Fields a resumed run may change: how long it runs, where its data are read, on which device.
RESUMABLE_FIELDS = ("epochs", "data_dir", "device")


@dataclass
class TrainConfig:
    """Everything a run needs; saved as plain data in every checkpoint and metrics file."""

    dataset: str = "mnist"  # "mnist", "fashion-mnist", or an .npz file (pyro_vae.data)
    data_dir: str | None = None  # folder of the IDX files; None: see pyro_vae.data
    preset: str = "pyro"  # architecture: a name of pyro_vae.models.PRESETS
    model: str | None = None  # "MODULE:FUNCTION" building a model of one's own (docs/models.md)
    latent_dim: int | None = None  # None: the preset's
    hidden_sizes: tuple[int, ...] | None = None  # None: the preset's
    activation: str | None = None  # None: the preset's
    likelihood: str = "bernoulli"  # bernoulli (dynamically binarized data) or grey-level ones
    flow: str | None = None  # None: diagonal Gaussian guide; "iaf": pushed through an IAF
    flow_layers: int = 2  # the flow's transforms, per stochastic layer (with a flow only)
    likelihood_scale: float = 1.0  # gaussian only: σ of p(x|z), or where a learned σ starts
    learn_likelihood_scale: bool = False  # gaussian only: learn one σ shared by all features
    estimator: str = "meanfield"  # a name from pyro_vae.ESTIMATORS
    num_particles: int | None = None  # samples per datapoint; None: the estimator's default
    estimator_options: dict = field(default_factory=dict)  # the estimator's options by name
    # (e.g. alpha for renyi); saved with the registry's default for each one not given
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3  # Adam's learning rate (the first one, for the burda schedules)
    lr_schedule: str = "constant"  # or "burda", "burda-even" (pyro_vae.schedules)
    beta: float = 1.0  # KL weight on the latent site (1: the ELBO)
    beta_warmup_epochs: int = 0  # β rises linearly from β/warmup to β over these epochs
    scale_to_data: bool = False  # scale minibatch losses to the full-data ELBO (Pyro's scale)
    seed: int = 0  # decides the initial weights, the data order and every sample
    device: str = "cpu"  # where the run was trained; evaluation takes its own
    train_size: int | None = None  # use only the first N training images (quick runs)
    test_size: int | None = None  # use only the first N test images
    eval_batch_size: int = 1000
    validate_every_step: bool = False  # False: Pyro's and torch's checks on the first step only
    extra: dict = field(default_factory=dict)  # free-form notes carried into the metrics

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the field for any invalid value or type. The device
        is checked for its form only (a run trained on a GPU loads anywhere):
        :func:`pyro_vae.checks.device` asks whether this machine has it."""
        _check_types(self)
        for name in ("epochs", "batch_size", "eval_batch_size", "latent_dim", "num_particles",
                     "train_size", "test_size", "flow_layers"):
            checks.integer(name, getattr(self, name), optional=True)
        checks.number("lr", self.lr, low=0, open_low=True)
        checks.number("beta", self.beta, low=0)
        checks.integer("beta_warmup_epochs", self.beta_warmup_epochs, low=0)
        checks.seed("seed", self.seed)
        checks.choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_dataset_name(self.dataset)
        checks.choice("likelihood", self.likelihood, LIKELIHOODS)
        checks.number("likelihood_scale", self.likelihood_scale, low=0, open_low=True)
        if self.likelihood != "gaussian" and (self.likelihood_scale != 1.0
                                              or self.learn_likelihood_scale):
            raise ConfigError(f"likelihood_scale and learn_likelihood_scale set the gaussian "
                              f"likelihood's σ; the {self.likelihood} likelihood has none")
        if self.activation is not None:
            checks.choice("activation", self.activation, ACTIVATIONS)
        if not all(isinstance(k, str) for k in self.estimator_options):
            raise ConfigError(f"estimator_options must map option names to values, got "
                              f"{self.estimator_options!r}")
        get_estimator(self.estimator).resolve(self.num_particles, self.estimator_options)
        if self.hidden_sizes is not None:
            checks.sizes("hidden_sizes", self.hidden_sizes)
        self._check_model()
        _check_device_name(self.device)
        return self

    def _check_model(self) -> None:
        """The preset, the flow, the sizes, and whether the estimator can train them."""
        arch = get_preset(self.preset)
        if self.flow is not None:
            checks.choice("flow", self.flow, FLOWS)
        if self.flow is None and self.flow_layers != 2:
            raise ConfigError("flow_layers sets the number of transforms of a flow guide; "
                              "choose one with flow='iaf' (--flow iaf)")
        if arch.stochastic_layers > 1 and (self.latent_dim is not None
                                           or self.hidden_sizes is not None):
            raise ConfigError(f"the {self.preset} preset has {arch.stochastic_layers} stochastic "
                              f"layers of fixed sizes ({arch.describe()}); latent_dim and "
                              "hidden_sizes set those of a one-layer network")
        if self.model is not None:
            given = [n for n in ("latent_dim", "hidden_sizes", "activation", "flow")
                     if getattr(self, n) is not None]
            if given or self.preset != "pyro":
                raise ConfigError(f"model {self.model!r} builds its own networks; leave out "
                                  f"{', '.join(given) or 'preset'}")
            return
        check_compatible(self.estimator, self.capabilities)

    @property
    def capabilities(self) -> Capabilities:
        """What the model this configuration builds offers, without building it."""
        layers = get_preset(self.preset).stochastic_layers
        sites = (("z",) if layers == 1 else (f"z{layers}",)) if self.flow is None else ()
        return Capabilities(layers=layers, flow=self.flow,
                            flow_layers=self.flow_layers if self.flow else 0,
                            closed_form_kl_sites=sites, layered=True)

    @property
    def layer_sizes(self) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], str]:
        """``(latent_dims, hidden_sizes, activation)`` of every stochastic layer: the preset's,
        with the overrides of a one-layer network."""
        arch = get_preset(self.preset)
        if arch.stochastic_layers > 1:
            return arch.latent_dims, arch.hidden_sizes, self.activation or arch.activation
        return ((self.latent_dim or arch.latent_dims[0],),
                (tuple(arch.hidden_sizes[0] if self.hidden_sizes is None
                       else self.hidden_sizes),),
                self.activation or arch.activation)

    @property
    def model_description(self) -> str:
        """What the model is, in the words of the options that size it."""
        if self.model is not None:
            return f"the model of {self.model}"
        latent_dims, hidden_sizes, _ = self.layer_sizes
        what = (f"the {self.preset} preset" if get_preset(self.preset).stochastic_layers > 1
                else f"latent size {latent_dims[0]}, hidden sizes "
                f"{' '.join(map(str, hidden_sizes[0]))}")
        return what + (f", {self.flow_layers} IAF transforms per layer" if self.flow else "")

    @property
    def size_options(self) -> list[str]:
        """The options that set the model's size (a fixed-size preset has only the flow's)."""
        return [*(["--flow-layers"] if self.flow else []),
                *([] if get_preset(self.preset).stochastic_layers > 1 or self.model else
                  ["--hidden-sizes", "--latent-dim"])]

    @property
    def objective_options(self) -> dict:
        """``estimator_options`` with the registry's default for each option not given (as
        given, unchecked, for an unknown estimator)."""
        if not isinstance(self.estimator_options, dict):
            return self.estimator_options
        estimator = ESTIMATORS.get(self.estimator) if isinstance(self.estimator, str) else None
        defaults = {} if estimator is None else {o.name: o.default for o in estimator.options}
        return {**defaults, **self.estimator_options}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = None if self.hidden_sizes is None else list(self.hidden_sizes)
        d["estimator_options"] = self.objective_options
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The configuration saved as ``d`` (:meth:`to_dict`), checked by :meth:`validate`;
        :class:`ConfigError` names an unknown key or a bad value."""
        if not isinstance(d, dict):
            raise ConfigTypeError(f"a configuration is a dict, found a {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        d = dict(d)
        if isinstance(d.get("hidden_sizes"), list):
            d["hidden_sizes"] = tuple(d["hidden_sizes"])
        return cls(**d).validate()


# Accepted types per field (bool is never taken for an int, nor an int for a str).
_TYPES = {
    "dataset": (str,), "data_dir": (str, type(None)), "preset": (str,),
    "model": (str, type(None)), "latent_dim": (int, type(None)),
    "hidden_sizes": (tuple, type(None)), "activation": (str, type(None)), "likelihood": (str,),
    "likelihood_scale": (float, int), "learn_likelihood_scale": (bool,),
    "flow": (str, type(None)), "flow_layers": (int,), "estimator": (str,),
    "estimator_options": (dict,), "num_particles": (int, type(None)), "epochs": (int,),
    "batch_size": (int,), "lr": (float, int), "lr_schedule": (str,), "beta": (float, int),
    "beta_warmup_epochs": (int,), "scale_to_data": (bool,), "seed": (int,), "device": (str,),
    "train_size": (int, type(None)), "test_size": (int, type(None)), "eval_batch_size": (int,),
    "validate_every_step": (bool,), "extra": (dict,),
}


def _check_types(config: TrainConfig) -> None:
    for name, types in _TYPES.items():
        value = getattr(config, name)
        is_bool = isinstance(value, bool)
        if not isinstance(value, types) or (is_bool and bool not in types):
            expected = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise ConfigTypeError(f"{name} must be {expected}, got {value!r} "
                                  f"({type(value).__name__})")


def _check_device_name(device: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N``, whether this machine has it or not."""
    kind, colon, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not index.isdigit())):
        raise ConfigError(f"unknown device {device!r}; use 'cpu' or 'cuda'")


def resumed_config(saved: TrainConfig, changes: dict, *, names: dict | None = None
                   ) -> TrainConfig:
    """``saved`` with ``changes`` (field → value) applied, for resuming a run; a change to a
    field not in :data:`RESUMABLE_FIELDS` raises :class:`ConfigError`, listing each with its
    saved value under its name in ``names`` (e.g. ``--batch-size``)."""
    checks.instance("saved", saved, TrainConfig)
    checks.instance("changes", changes, dict)
    names = names or {}
    saved_values = saved.to_dict()
    normalized = TrainConfig(**{**saved_values, **changes}).to_dict()
    conflicts = [k for k in changes
                 if k not in RESUMABLE_FIELDS and normalized[k] != saved_values[k]]
    if conflicts:
        listed = ", ".join(f"{names.get(k, k)} {normalized[k]!r} (saved: {saved_values[k]!r})"
                           for k in conflicts)
        raise ConfigError(f"cannot resume with a different configuration: {listed}. These "
                          "would change what the run computes; resume without them, or start "
                          "a new run in another folder")
    allowed = {k: v for k, v in changes.items() if k in RESUMABLE_FIELDS}
    return dataclasses.replace(saved, **allowed).validate()
