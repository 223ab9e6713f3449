"""Training: :func:`fit` runs SVI (or a hand-written loss with Adam) over minibatches sliced
from tensors that live on the device, and writes per-epoch metrics and a checkpoint.

Every figure is in nats per datapoint. ``train_elbo`` is the training objective's bound
(the ELBO, the β-weighted ELBO when β ≠ 1, or IWAE_K for ``iwae``), averaged over the epoch's
minibatches as they were seen; ``test_elbo`` is the analytic-KL ELBO (β = 1) on the test set
after the epoch, with a fixed seed, so it is comparable across estimators.

Validation: Pyro's checks (site shapes, model/guide agreement, the mean-field requirement)
and torch.distributions' (parameter constraints, the support of observed values) run on the
first step of every :func:`fit` call, where a mistake in a model, a guide or the data shows
up, and then stop: they cost 5–10 % of a step (``benchmarks/README.md``), and what they would
catch later, a parameter turning NaN or infinite, the divergence checks catch (the loss is
checked after every step, the parameters after every epoch). ``validate_every_step=True`` keeps
them on; with validation disabled globally (``pyro.enable_validation(False)``) none run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from pyro_vae.data import Dataset, binarize, check_grey_levels, load_dataset, preprocess
from pyro_vae.distributed import (
    DistributedTrainer,
    World,
    barrier,
    check_resumable,
    current_world,
    derive_seed,
    map_rows,
)
from pyro_vae.errors import ConfigError, DataError, TrainingDivergedError
from pyro_vae.estimators import get_estimator, make_objective
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.losses import analytic_elbo
from pyro_vae.model import VAE
from pyro_vae.networks import ACTIVATIONS, get_preset

__all__ = [
    "TEST_BINARIZATION_SEED",
    "FitResult",
    "TrainConfig",
    "build_vae",
    "burda_learning_rate",
    "fit",
    "load_vae",
    "mean_elbo",
    "prepare_data",
    "step_checks",
]

TEST_BINARIZATION_SEED = 0  # one fixed binarized test set, whatever the training seed
LR_SCHEDULES = ("constant", "burda", "burda-even")
RESUMABLE_CHANGES = ("epochs", "data_dir")  # config fields a resumed run may change


@dataclass
class TrainConfig:
    """Everything a run needs; saved as plain data in every checkpoint and metrics file."""

    dataset: str = "mnist"  # "mnist" or "fashion-mnist"
    data_dir: str | None = None  # folder of the IDX files; None: see pyro_vae.data
    preset: str = "pyro"  # architecture preset: "pyro" (784-400-50) or "burda" (784-200-200-50)
    latent_dim: int | None = None  # None: the preset's
    hidden_sizes: tuple[int, ...] | None = None  # None: the preset's
    activation: str | None = None  # None: the preset's
    likelihood: str = "bernoulli"  # bernoulli (dynamically binarized data) or grey-level ones
    estimator: str = "meanfield"  # a name from pyro_vae.ESTIMATORS
    num_particles: int | None = None  # samples per datapoint; None: the estimator's default
    epochs: int = 10  # about a minute on 2 CPU cores with the default network
    batch_size: int = 128
    lr: float = 1e-3  # Adam's learning rate (the first one, for the burda schedule)
    lr_schedule: str = "constant"  # "burda": 10^(-i/7) decay over passes of 3^i epochs;
    # "burda-even": the same eight rates, each for an equal share of the epochs
    beta: float = 1.0  # KL weight on the latent site (1: the ELBO)
    beta_warmup_epochs: int = 0  # β rises linearly from β/warmup to β over these epochs
    scale_to_data: bool = False  # scale minibatch losses to the full-data ELBO (Pyro's scale)
    seed: int = 0
    device: str = "cpu"
    train_size: int | None = None  # use only the first N training images (quick runs)
    test_size: int | None = None  # use only the first N test images
    eval_batch_size: int = 1000
    validate_every_step: bool = False  # False: Pyro's and torch's checks on the first step only
    extra: dict = field(default_factory=dict)  # free-form notes carried into the metrics

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` for any invalid value, before any work starts."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size}
        for opt in ("latent_dim", "num_particles", "train_size", "test_size"):
            if getattr(self, opt) is not None:
                positive[opt] = getattr(self, opt)
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ConfigError(f"beta must be a non-negative number, got {self.beta!r}")
        if self.beta_warmup_epochs < 0:
            raise ConfigError(f"beta_warmup_epochs must be >= 0, got {self.beta_warmup_epochs}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"unknown lr_schedule {self.lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}"
            )
        get_estimator(self.estimator)
        get_preset(self.preset)
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(
                f"unknown likelihood {self.likelihood!r}; known likelihoods: "
                f"{', '.join(LIKELIHOODS)}"
            )
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}"
            )
        if self.hidden_sizes is not None and any(
            not isinstance(h, int) or h <= 0 for h in self.hidden_sizes
        ):
            raise ConfigError(f"hidden_sizes must be positive integers, got {self.hidden_sizes}")
        check_device(self.device)
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = None if self.hidden_sizes is None else list(self.hidden_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        d = dict(d)
        if d.get("hidden_sizes") is not None:
            d["hidden_sizes"] = tuple(d["hidden_sizes"])
        return cls(**d)


def check_device(device: str) -> torch.device:
    """The torch device ``device``; :class:`ConfigError` if it is unknown or not available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return dev


def build_vae(config: TrainConfig, x_dim: int) -> VAE:
    """The VAE that ``config`` describes, for data of ``x_dim`` features."""
    arch = get_preset(config.preset)
    return VAE(
        x_dim,
        latent_dim=config.latent_dim or arch.latent_dim,
        hidden_sizes=tuple(config.hidden_sizes or arch.hidden_sizes),
        activation=config.activation or arch.activation,
        likelihood=config.likelihood,
        beta=config.beta,
    )


def load_vae(checkpoint, *, device="cpu") -> tuple[VAE, TrainConfig, dict]:
    """Rebuild the VAE from a checkpoint (a path, a run folder, or a loaded dict)."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(ckpt["config"])
    vae = build_vae(config, ckpt["x_dim"])
    vae.load_state_dict(ckpt["model_state"])
    vae.beta = 1.0
    return vae.to(device).eval(), config, ckpt


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


class PreparedData(NamedTuple):
    train: torch.Tensor  # (N, D) float on the device: grey levels in [0, 1]
    test: torch.Tensor  # (M, D) float on the device: what the likelihood models
    test_labels: torch.Tensor
    dataset: Dataset


def prepare_data(config: TrainConfig, dataset: Dataset | None = None) -> PreparedData:
    """Load and preprocess the data of ``config``; the test set of the Bernoulli likelihood is
    binarized once with :data:`TEST_BINARIZATION_SEED`."""
    dataset = dataset or load_dataset(config.dataset, config.data_dir)
    train = dataset.train_images[: config.train_size]
    test = dataset.test_images[: config.test_size]
    labels = dataset.test_labels[: config.test_size]
    if train.shape[0] == 0 or test.shape[0] == 0:
        raise DataError(
            f"{dataset.source}: empty data set ({train.shape[0]} training, "
            f"{test.shape[0]} test images)"
        )
    device = check_device(config.device)
    train = preprocess(train).to(device)
    test = preprocess(test)
    if LIKELIHOODS[config.likelihood].needs_binary_data:
        test = binarize(test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    return PreparedData(train, test.to(device), labels, dataset)


@torch.no_grad()
def mean_elbo(
    vae: VAE, x: torch.Tensor, *, batch_size: int = 1000, seed: int = 0,
    world: World | None = None,
) -> float:
    """Mean analytic-KL ELBO (β = 1) over ``x`` in nats per datapoint, one posterior sample
    per datapoint; batch ``i`` draws from a generator seeded with ``derive_seed(seed, i)``.
    With ``world`` (:mod:`pyro_vae.distributed`) the batches are split across the ranks and
    gathered; the result is the same as in one process."""

    def batch_elbo(start: int, stop: int, index: int) -> torch.Tensor:
        generator = torch.Generator(device=x.device).manual_seed(derive_seed(seed, index))
        return analytic_elbo(vae, x[start:stop], generator=generator, beta=1.0)  # (stop-start,)

    return float(map_rows(batch_elbo, x.shape[0], batch_size, world=world).sum()) / x.shape[0]


class FitResult(NamedTuple):
    vae: VAE
    history: list  # one dict of metrics per epoch
    out_dir: Path | None


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": generator.get_state(),
             "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume_config(saved: dict, config: TrainConfig | None) -> TrainConfig:
    """The configuration to resume with: the checkpoint's, or ``config`` if it differs from
    it only in :data:`RESUMABLE_CHANGES` (e.g. more epochs); :class:`ConfigError` else."""
    saved_config = TrainConfig.from_dict(saved)
    if config is None:
        return saved_config
    changed = sorted(k for k, v in config.to_dict().items()
                     if k not in RESUMABLE_CHANGES and v != saved_config.to_dict()[k])
    if changed:
        raise ConfigError(
            "cannot resume with a different configuration: "
            + ", ".join(f"{k}={getattr(config, k)!r} (checkpoint: {saved[k]!r})" for k in changed)
        )
    return config


def _epoch_lr(config: TrainConfig, epochs_done: int) -> float:
    """The learning rate of epoch ``epochs_done + 1`` under ``config``'s schedule."""
    if config.lr_schedule in ("burda", "burda-even"):
        return burda_learning_rate(epochs_done, config.epochs, config.lr,
                                   even=config.lr_schedule == "burda-even")
    return config.lr


def _params_finite(vae: VAE) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in vae.parameters())


def _diverged(epoch: int, step: int, what: str, out_dir) -> TrainingDivergedError:
    kept = (f" The last good checkpoint, {out_dir / 'checkpoint.pt'}, is intact."
            if out_dir is not None and (out_dir / "checkpoint.pt").exists() else "")
    return TrainingDivergedError(
        f"training diverged at epoch {epoch}, step {step}: {what}. Likely causes: a "
        "learning rate too high (try --lr 1e-4), data outside the likelihood's support, or a "
        "Gaussian likelihood scale collapsing to zero." + kept
    )


_INVALID_PARAMETER = re.compile(
    r"Expected parameter (\w+) .*?of distribution (\w+).*?to satisfy the constraint (.*?), "
    r"but found invalid values"
)


def _divergence_in(error: ValueError, vae: VAE) -> str | None:
    """What to report if ``error``, raised by a training step or an evaluation, comes from a
    diverged network: a parameter NaN or infinite, or a distribution parameter outside its
    support (with validation on, torch raises "Expected parameter scale ... to satisfy the
    constraint GreaterThan(lower_bound=0.0)" when an encoder's scale underflows to 0).
    ``None`` for any other error, which is then re-raised as it is."""
    if not _params_finite(vae):
        return "a parameter became NaN or infinite (through its gradient)"
    match = _INVALID_PARAMETER.search(str(error).replace("\n", " "))
    if match:
        name, distribution, constraint = match.groups()
        return (f"the {name} of a {distribution} distribution is NaN, infinite or outside "
                f"its support {constraint}")
    return None


def step_checks(validate: bool):
    """The context one training step runs in: Pyro's and torch's validation checks as Pyro's
    global setting says when ``validate``, else off (see the module docstring)."""
    return contextlib.nullcontext() if validate else pyro.validation_enabled(False)


def fit(
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool | None = None,
    data: PreparedData | None = None,
    log=print,
) -> FitResult:
    """Train a VAE as ``config`` says; see the module docstring for the figures.

    :param out_dir: folder for ``metrics.json`` and ``checkpoint.pt`` (rewritten atomically
        after every epoch); ``None`` writes nothing.
    :param resume: continue from ``out_dir/checkpoint.pt``: weights, optimizer state, epoch,
        RNG states and schedules, so the result equals an uninterrupted run with the same seed.
    :param progress: show a progress bar; ``None``: only when stderr is a terminal.
    :raises TrainingDivergedError: if the loss or the parameters become non-finite; the last
        checkpoint is left as it was.

    .. note:: This clears Pyro's global parameter store, so that SVI optimizes this VAE's
       own parameters.

    .. note:: In an initialized :mod:`torch.distributed` process group (under ``torchrun``)
       this trains data-parallel with :class:`pyro_vae.distributed.DistributedTrainer`: each
       rank takes its slice of every global minibatch of ``config.batch_size``, and only rank
       0 logs and writes ``out_dir``. See ``docs/distributed.md``.
    """
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt = None
    if resume:
        if out_dir is None:
            raise ConfigError("resume needs the run folder (out_dir)")
        ckpt = load_checkpoint(out_dir / "checkpoint.pt")
        config = _resume_config(ckpt["config"], config)
    config.validate()
    world = current_world()  # None in one process; under torchrun see pyro_vae.distributed
    main_process = world is None or world.is_main  # only rank 0 prints and writes files
    progress = sys.stderr.isatty() if progress is None else progress
    progress = progress and main_process
    log = log if main_process else (lambda *args, **kwargs: None)
    data = data or prepare_data(config)
    device = check_device(config.device)

    pyro.set_rng_seed(config.seed)  # the seed decides the initial weights too
    vae = build_vae(config, data.train.shape[1]).to(device)
    check_grey_levels(data.train, where=f"{data.dataset.source} training set")
    if ckpt is not None and ckpt["x_dim"] != data.train.shape[1]:
        raise DataError(f"{data.dataset.source}: {data.train.shape[1]} features per datapoint, "
                        f"expected {ckpt['x_dim']} like the checkpoint in {out_dir}")
    vae.check_data(data.test, where=f"{data.dataset.source} test set")
    if get_preset(config.preset).init_output_bias and ckpt is None:
        vae.init_output_bias(data.train.mean(0))

    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    objective = make_objective(config.estimator, vae, num_particles=config.num_particles)
    trainer = (objective.make_trainer(config.lr) if world is None
               else DistributedTrainer(objective, config.lr, world=world, seed=config.seed))
    history: list[dict] = []
    start_epoch = 0
    if ckpt is not None:
        check_resumable(ckpt["optimizer_state"], objective, world)
        vae.load_state_dict(ckpt["model_state"])
        trainer.load_state_dict(ckpt["optimizer_state"])
        _set_rng_state(ckpt["rng_state"], generator)
        history = list(ckpt["history"])
        start_epoch = ckpt["epoch"]
        log(f"resuming {out_dir} after epoch {start_epoch} of {config.epochs}")

    n = data.train.shape[0]
    bound = get_estimator(config.estimator).bound
    binary = vae.likelihood.needs_binary_data
    wall_start = time.perf_counter() - (history[-1]["wall_seconds"] if history else 0.0)
    validate_step = True  # the first step of this call: as Pyro's global setting says
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if config.beta_warmup_epochs:
            vae.beta = config.beta * min(1.0, epoch / config.beta_warmup_epochs)
        trainer.set_lr(_epoch_lr(config, epoch - 1))
        permutation = torch.randperm(n, generator=generator, device=device)
        starts = range(0, n, config.batch_size)
        bar = tqdm(starts, desc=f"epoch {epoch}/{config.epochs}", unit="step",
                   disable=not progress, leave=False, file=sys.stderr)
        loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
        for step, start in enumerate(bar, 1):
            x = data.train[permutation[start : start + config.batch_size]]
            if binary:
                x = binarize(x, generator)
            checks = step_checks(validate_step)
            validate_step = config.validate_every_step
            try:
                with checks:
                    loss = trainer.step(x, num_data=n if config.scale_to_data else None)
            except ValueError as e:
                if (what := _divergence_in(e, vae)) is None:
                    raise
                bar.close()  # so that the error gets a line of its own
                raise _diverged(epoch, step, what, out_dir) from e
            if not math.isfinite(loss):
                bar.close()
                raise _diverged(epoch, step, f"the loss is {loss}", out_dir)
            scale = n / x.shape[0] if config.scale_to_data else 1.0
            loss_sum += loss / scale
            seen += x.shape[0]
            if step % 20 == 0:
                bar.set_postfix_str(f"{bound} {-loss_sum / seen:.2f} nats")
        bar.close()
        epoch_seconds = time.perf_counter() - t0
        if not _params_finite(vae):
            raise _diverged(epoch, step, "a parameter became NaN or infinite (through its "
                            "gradient)", out_dir)
        t1 = time.perf_counter()
        vae.eval()
        try:
            elbo_test = mean_elbo(vae, data.test, batch_size=config.eval_batch_size, world=world)
        except ValueError as e:
            if (what := _divergence_in(e, vae)) is None:
                raise
            raise _diverged(epoch, step, f"on the test set, {what}", out_dir) from e
        if not math.isfinite(elbo_test):
            raise _diverged(epoch, step, f"the test ELBO is {elbo_test}", out_dir)
        vae.train()
        record = {
            "epoch": epoch,
            "train_elbo": -loss_sum / seen,
            "train_objective": bound if config.beta == 1 else f"beta-{bound}",
            "test_elbo": elbo_test,
            "beta": vae.beta,
            "lr": _epoch_lr(config, epoch - 1),
            "steps": step,
            "epoch_seconds": epoch_seconds,
            "eval_seconds": time.perf_counter() - t1,
            "wall_seconds": time.perf_counter() - wall_start,
            "processes": 1 if world is None else world.world_size,
        }
        history.append(record)
        log(f"epoch {epoch:3d}/{config.epochs}  train {record['train_objective']} "
            f"{record['train_elbo']:9.3f}  test ELBO {elbo_test:9.3f} nats/datapoint  "
            f"({epoch_seconds:.1f} s)")
        if out_dir is not None and main_process:
            _write_outputs(out_dir, config, vae, trainer, epoch, generator, history, data)
    barrier(world)  # under torchrun, every rank returns once rank 0 has written its files
    return FitResult(vae, history, out_dir)


def metrics_document(config: TrainConfig, history: list, data: PreparedData) -> dict:
    """The ``metrics.json`` document: config, units, data sizes and per-epoch records."""
    return {
        "units": "nats per datapoint; *_elbo are lower bounds on log p(x) (higher is better)",
        "config": config.to_dict(),
        "data": {"dataset": data.dataset.name, "source": data.dataset.source,
                 "train_size": int(data.train.shape[0]), "test_size": int(data.test.shape[0]),
                 "image_shape": list(data.dataset.image_shape)},
        "epochs": history,
    }


def _write_outputs(out_dir, config, vae, trainer, epoch, generator, history, data):
    save_checkpoint(out_dir / "checkpoint.pt", {
        "config": config.to_dict(),
        "x_dim": vae.x_dim,
        "image_shape": list(data.dataset.image_shape),
        "epoch": epoch,
        "model_state": vae.state_dict(),
        "optimizer_state": trainer.state_dict(),
        "rng_state": _rng_state(generator),
        "history": history,
    })
    atomic_write_json(out_dir / "metrics.json", metrics_document(config, history, data))
