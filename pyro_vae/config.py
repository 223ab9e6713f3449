"""A training run's configuration: :class:`TrainConfig`, its checks, and what it builds (the
device, the VAE, the learning rate and KL weight of each epoch).

A configuration is plain data, saved in every checkpoint and ``metrics.json``; everything a run
does follows from it and the seed. :meth:`TrainConfig.validate` checks every field, its type
and its range, before any work starts, and names the field in its error.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from pyro_vae.data import DATASETS, PreparedData, load_dataset, prepare_data
from pyro_vae.errors import ConfigError
from pyro_vae.flows import FLOWS
from pyro_vae.hierarchical import HierarchicalVAE
from pyro_vae.likelihoods import LIKELIHOODS, make_likelihood
from pyro_vae.model import VAE
from pyro_vae.networks import ACTIVATIONS, get_preset
from pyro_vae.objectives import ESTIMATORS, check_compatible, get_estimator
from pyro_vae.resources import check_fits, model_bytes, reduce_hint
from pyro_vae.structure import Structure

__all__ = [
    "LR_SCHEDULES",
    "RESUMABLE_FIELDS",
    "TrainConfig",
    "beta_at",
    "build_vae",
    "burda_learning_rate",
    "check_device",
    "learning_rate",
    "load_data",
    "resumed_config",
]

LR_SCHEDULES = ("constant", "burda", "burda-even")
# Fields a resumed run may change: they do not change what the run computes, only how long it
# runs, where its data are read from and on which device. Every other field is refused.
RESUMABLE_FIELDS = ("epochs", "data_dir", "device")
MAX_SEED = 2**32 - 1  # pyro.set_rng_seed also seeds NumPy's legacy generator: [0, 2³²)


@dataclass
class TrainConfig:
    """Everything a run needs; saved as plain data in every checkpoint and metrics file."""

    dataset: str = "mnist"  # "mnist" or "fashion-mnist"
    data_dir: str | None = None  # folder of the IDX files; None: see pyro_vae.data
    preset: str = "pyro"  # architecture preset: "pyro" (784-400-50), "burda" (784-200-200-50)
    # or "burda2" (two stochastic layers, 784-200-200-100-100-100-50)
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
    # (alpha for renyi, num_estimates for miwae and piwae, ciwae_beta for ciwae); the registry's
    # default for each one not given. Saved with every default filled in (to_dict).
    epochs: int = 10  # the Quickstart's run (README.md says how long it takes)
    batch_size: int = 128
    lr: float = 1e-3  # Adam's learning rate (the first one, for the burda schedules)
    lr_schedule: str = "constant"  # "burda": 10^(-i/7) decay over passes of 3^i epochs;
    # "burda-even": the same eight rates, each for an equal share of the epochs
    beta: float = 1.0  # KL weight on the latent site (1: the ELBO)
    beta_warmup_epochs: int = 0  # β rises linearly from β/warmup to β over these epochs
    scale_to_data: bool = False  # scale minibatch losses to the full-data ELBO (Pyro's scale)
    seed: int = 0  # decides the initial weights, the data order and every sample
    device: str = "cpu"
    train_size: int | None = None  # use only the first N training images (quick runs)
    test_size: int | None = None  # use only the first N test images
    eval_batch_size: int = 1000
    validate_every_step: bool = False  # False: Pyro's and torch's checks on the first step only
    extra: dict = field(default_factory=dict)  # free-form notes carried into the metrics

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` for any invalid value or type, before any work starts."""
        _check_types(self)
        for name in ("epochs", "batch_size", "eval_batch_size", "latent_dim", "num_particles",
                     "train_size", "test_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr!r}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ConfigError(f"beta must be a finite number >= 0, got {self.beta!r}")
        if self.beta_warmup_epochs < 0:
            raise ConfigError(f"beta_warmup_epochs must be >= 0, got {self.beta_warmup_epochs}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer in [0, 2**32 - 1], got {self.seed}")
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("likelihood", self.likelihood, LIKELIHOODS)
        if not (self.likelihood_scale > 0 and math.isfinite(self.likelihood_scale)):
            raise ConfigError(f"likelihood_scale must be a positive finite number, got "
                              f"{self.likelihood_scale!r}")
        if self.likelihood != "gaussian" and (self.likelihood_scale != 1.0
                                              or self.learn_likelihood_scale):
            raise ConfigError(f"likelihood_scale and learn_likelihood_scale set the gaussian "
                              f"likelihood's σ; the {self.likelihood} likelihood has none")
        if self.activation is not None:
            _check_choice("activation", self.activation, ACTIVATIONS)
        if not all(isinstance(k, str) for k in self.estimator_options):
            raise ConfigError(f"estimator_options must map option names to values, got "
                              f"{self.estimator_options!r}")
        get_estimator(self.estimator).resolve(self.num_particles, self.estimator_options)
        get_preset(self.preset)
        if self.hidden_sizes is not None and any(h <= 0 for h in self.hidden_sizes):
            raise ConfigError(f"hidden_sizes must be positive integers, got {self.hidden_sizes}")
        self._check_model()
        check_device(self.device)
        return self

    def _check_model(self) -> None:
        """The flow and the preset's layers, and whether the estimator can train them."""
        if self.flow is not None:
            _check_choice("flow", self.flow, FLOWS)
        if self.flow_layers <= 0:
            raise ConfigError(f"flow_layers must be a positive integer, got {self.flow_layers!r}")
        if self.flow is None and self.flow_layers != 2:
            raise ConfigError("flow_layers sets the number of transforms of a flow guide; "
                              "choose one with flow='iaf' (--flow iaf)")
        arch = get_preset(self.preset)
        if arch.upper_layers and (self.latent_dim is not None or self.hidden_sizes is not None):
            raise ConfigError(f"the {self.preset} preset has {arch.stochastic_layers} stochastic "
                              f"layers of fixed sizes ({arch.describe()}); latent_dim and "
                              "hidden_sizes set those of a one-layer network")
        check_compatible(self.estimator, self.structure)

    @property
    def structure(self) -> Structure:
        """The model and guide this configuration builds, as the estimators see them."""
        layers = get_preset(self.preset).stochastic_layers
        return Structure(layers, self.flow, self.flow_layers if self.flow else 0)

    @property
    def architecture(self) -> tuple[int, tuple[int, ...], str]:
        """``(latent_dim, hidden_sizes, activation)``: the preset's, with any override."""
        arch = get_preset(self.preset)
        return (self.latent_dim or arch.latent_dim,
                tuple(self.hidden_sizes or arch.hidden_sizes),
                self.activation or arch.activation)

    @property
    def layer_sizes(self) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
        """``(latent_dims, hidden_sizes)`` of every stochastic layer z_1, …, z_L: the sizes
        and the inference networks' hidden sizes (those of z_1 with any override)."""
        arch = get_preset(self.preset)
        latent_dim, hidden_sizes, _ = self.architecture
        return ((latent_dim, *arch.latent_dims[1:]),
                (hidden_sizes, *arch.layer_hidden_sizes[1:]))

    @property
    def model_description(self) -> str:
        """What the model is, in the words of the options that size it."""
        latent_dims, hidden_sizes = self.layer_sizes
        what = (f"the {self.preset} preset" if get_preset(self.preset).upper_layers else
                f"latent size {latent_dims[0]}, hidden sizes {' '.join(map(str, hidden_sizes[0]))}")
        flow_layers = self.structure.flow_layers
        return what + (f", {flow_layers} IAF transforms per layer" if flow_layers else "")

    @property
    def size_options(self) -> list[str]:
        """The options that set the model's size (a fixed-size preset has only the flow's)."""
        return [*(["--flow-layers"] if self.flow else []),
                *([] if get_preset(self.preset).upper_layers else
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
            raise ConfigError(f"a configuration is a dict, found a {type(d).__name__}")
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
    "latent_dim": (int, type(None)), "hidden_sizes": (tuple, type(None)),
    "activation": (str, type(None)), "likelihood": (str,), "likelihood_scale": (float, int),
    "learn_likelihood_scale": (bool,), "flow": (str, type(None)), "flow_layers": (int,),
    "estimator": (str,), "estimator_options": (dict,),
    "num_particles": (int, type(None)), "epochs": (int,), "batch_size": (int,),
    "lr": (float, int), "lr_schedule": (str,), "beta": (float, int),
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
            raise ConfigError(f"{name} must be {expected}, got {value!r} "
                              f"({type(value).__name__})")
    if config.hidden_sizes is not None and not all(
        isinstance(h, int) and not isinstance(h, bool) for h in config.hidden_sizes
    ):
        raise ConfigError(f"hidden_sizes must be positive integers, got {config.hidden_sizes!r}")


def _check_choice(name: str, value: str, known) -> None:
    if value not in known:
        raise ConfigError(f"unknown {name} {value!r}; known: {', '.join(known)}")


def check_device(device: str) -> torch.device:
    """The torch device ``device``; :class:`ConfigError` if it is unknown or not available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                          "CUDA GPU(s)")
    return dev


def build_vae(config: TrainConfig, x_dim: int) -> VAE | HierarchicalVAE:
    """The VAE that ``config`` describes, for data of ``x_dim`` features (on the CPU): a
    :class:`HierarchicalVAE` for a preset with several stochastic layers."""
    nbytes = model_bytes(x_dim, *config.layer_sizes, flow_layers=config.structure.flow_layers)
    check_fits(nbytes, f"building this model ({config.model_description})",
               reduce_hint(config.size_options))
    latent_dim, hidden_sizes, activation = config.architecture
    options = ({"scale": config.likelihood_scale, "learn_scale": config.learn_likelihood_scale,
                "shared": True} if config.likelihood == "gaussian" else {})
    likelihood = make_likelihood(config.likelihood, x_dim=x_dim, **options)
    flow = {} if config.flow is None else {"flow": config.flow, "flow_layers": config.flow_layers}
    if get_preset(config.preset).upper_layers:
        return HierarchicalVAE.from_preset(config.preset, x_dim, activation=activation,
                                           likelihood=likelihood, beta=config.beta, **flow)
    return VAE(x_dim, latent_dim=latent_dim, hidden_sizes=hidden_sizes, activation=activation,
               likelihood=likelihood, beta=config.beta, **flow)


def burda_learning_rate(epoch: int, total_epochs: int, lr0: float = 1e-3, *,
                        even: bool = False) -> float:
    """Burda et al. (2016) schedule: pass i (i = 0..7) lasts 3^i epochs at lr0·10^(−i/7);
    3280 epochs in all. For fewer ``total_epochs`` every pass shrinks in proportion.

    With ``even``, the eight passes last ``total_epochs / 8`` epochs each: the same rates,
    from lr0 down to lr0/10, for a short budget. Scaled in proportion, any budget spends two
    thirds of its epochs in the last pass, at lr0/10, and under 4 % above lr0/4: right for
    3280 epochs, slow for a few hundred. ``epoch`` counts from 0."""
    lengths = [1] * 8 if even else [3**i for i in range(8)]
    position = epoch * sum(lengths) / total_epochs  # where this epoch falls on the schedule
    end = 0
    for i, length in enumerate(lengths):
        end += length
        if position < end:
            return lr0 * 10 ** (-i / 7)
    return lr0 * 10 ** (-7 / 7)


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Adam's learning rate in epoch ``epoch`` (counted from 1) under ``config``'s schedule."""
    if config.lr_schedule in ("burda", "burda-even"):
        return burda_learning_rate(epoch - 1, config.epochs, config.lr,
                                   even=config.lr_schedule == "burda-even")
    return config.lr


def beta_at(config: TrainConfig, epoch: int) -> float:
    """The KL weight β in epoch ``epoch`` (from 1): ``config.beta``, reached linearly over
    ``beta_warmup_epochs`` epochs when a warm-up is set."""
    if config.beta_warmup_epochs:
        return config.beta * min(1.0, epoch / config.beta_warmup_epochs)
    return config.beta


def resumed_config(saved: TrainConfig, changes: dict, *, names: dict | None = None
                   ) -> TrainConfig:
    """``saved`` with ``changes`` (field → value) applied, for resuming a run: the fields in
    :data:`RESUMABLE_FIELDS` may change; a change to any other is refused with a
    :class:`ConfigError` that lists each one beside its saved value (``names`` maps a field
    to what the caller calls it, e.g. ``--batch-size``)."""
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


def load_data(config: TrainConfig, *, train: bool = True, dataset=None) -> PreparedData:
    """The data ``config`` names (:func:`pyro_vae.data.prepare_data`), on its device; the test
    set is binarized once when the likelihood needs binary data. ``train=False`` prepares only
    the test set."""
    dataset = dataset or load_dataset(config.dataset, config.data_dir)
    return prepare_data(dataset, train_size=config.train_size, test_size=config.test_size,
                        binarize_test=LIKELIHOODS[config.likelihood].needs_binary_data,
                        device=check_device(config.device), train=train)
