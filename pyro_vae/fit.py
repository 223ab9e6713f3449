"""The training loop: :func:`fit` steps a :class:`~pyro_vae.trainer.Trainer` over minibatches
sliced from tensors on the device, evaluates the test ELBO after every epoch, and writes the
run folder (:class:`~pyro_vae.runs.RunFolder`).

Every figure is in nats per datapoint. ``train_objective_nats`` is the training objective
named by ``train_objective`` (``ELBO``, ``IWAE_5``, or ``beta-ELBO`` while β ≠ 1), averaged
over the epoch's minibatches as they were seen; ``test_elbo`` is the analytic-KL ELBO (β = 1)
on the test set after the epoch, with a fixed seed, so it is comparable across estimators.

Validation: Pyro's checks (site shapes, model/guide agreement) and torch.distributions'
(parameter constraints, the support of observed values) run on the first step of every
:func:`fit` call, where a mistake in a model, a guide or the data shows up, and then stop:
their cost per step is measured in ``benchmarks/README.md``, and what they would catch later,
a parameter turning NaN or infinite, the divergence checks catch (the loss after every step,
the parameters after every epoch). ``validate_every_step=True`` keeps them on; with validation
disabled globally (``pyro.enable_validation(False)``) none run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import pyro
import torch

from pyro_vae import checks
from pyro_vae.build import build_vae, check_training_memory, load_data
from pyro_vae.config import TrainConfig, resumed_config
from pyro_vae.data import PreparedData, binarize, check_grey_levels
from pyro_vae.distributed import World, barrier
from pyro_vae.errors import (
    CheckpointError,
    ConfigError,
    ConfigTypeError,
    DataError,
    PyroVAEError,
    TrainingDivergedError,
)
from pyro_vae.evaluation import Execution, mean_elbo
from pyro_vae.models import get_preset
from pyro_vae.objectives import get_estimator, make_objective
from pyro_vae.progress import Progress
from pyro_vae.runs import Checkpoint, RunFolder
from pyro_vae.schedules import beta_at, learning_rate
from pyro_vae.tensorboard import open_log
from pyro_vae.threads import ThreadPolicy, thread_policy
from pyro_vae.trainer import Trainer

__all__ = ["FitResult", "fit", "step_checks"]


class FitResult(NamedTuple):
    vae: object  # the trained model (a pyro_vae.models.VAEModel)
    history: list  # one dict of metrics per epoch
    run: RunFolder | None


@dataclasses.dataclass
class _State:
    """What the epochs update."""

    vae: object
    trainer: Trainer
    generator: torch.Generator  # the data order and binarization
    history: list
    wall_start: float = dataclasses.field(default_factory=time.perf_counter)  # for wall_seconds
    validated: bool = False  # whether this call's first step (with validation) is done
    threads: ThreadPolicy | None = None  # chooses torch's thread count, step by step


def fit(
    config: TrainConfig | None,
    run: str | Path | RunFolder | None = None,
    *,
    resume: bool | Checkpoint = False,
    overwrite: bool = False,
    data: PreparedData | None = None,
    world: World | None = None,
    progress: bool | None = None,
    threads: ThreadPolicy | int | str | None = "auto",
    tensorboard: str | Path | None = None,
    log=print,
) -> FitResult:
    """Train a VAE as ``config`` says; see the module docstring for the figures.

    :param run: the run folder (``checkpoint.pt``, ``metrics.json`` after every epoch,
        atomically), locked for the call; ``None`` writes nothing; one holding a run needs
        ``resume`` or ``overwrite``.
    :param resume: continue the run in ``run`` (or from this loaded checkpoint): weights,
        optimizer state, epoch, RNG states and schedules, so the result equals an uninterrupted
        run with the same seed. ``config`` may then be ``None`` (the saved one) or differ from
        it only in :data:`~pyro_vae.config.RESUMABLE_FIELDS`.
    :param overwrite: replace a run already in ``run``. ``data``: a prepared data set.
    :param world: train data-parallel in this process group (:mod:`pyro_vae.distributed`);
        only its rank 0 logs and writes.
    :param progress: a progress bar on a terminal and lines in logs (``None``), a bar
        (``True``) or nothing (``False``).
    :param threads: torch's thread count: ``"auto"``, the fastest as timed while the steps
        run (:class:`~pyro_vae.threads.ThreadPolicy`, unless the count was fixed by
        :func:`~pyro_vae.threads.set_threads` or ``$OMP_NUM_THREADS``); a number fixes it;
        ``None`` leaves it alone. The metrics do not depend on it.
    :param tensorboard: log each epoch to TensorBoard in this folder (the ``tensorboard`` extra).
    :raises TrainingDivergedError: if the loss or the parameters become non-finite; the last
        checkpoint is left as it was.
    """
    run = None if run is None else RunFolder.of(run)
    _check_arguments(data=data, resume=resume, world=world, progress=progress, log=log)
    main = world is None or world.is_main
    log = log if main else _silent
    board = open_log(tensorboard) if tensorboard is not None and main else None
    with (run.lock() if run is not None and main else contextlib.nullcontext(),
          board or contextlib.nullcontext()):
        checkpoint = _checkpoint_to_resume(run, resume)
        config = _config_for(config, checkpoint)
        if run is not None and main and checkpoint is None:
            run.prepare_new(overwrite=overwrite, log=log)
        data = data or load_data(config)
        state = _start(config, data, checkpoint, world, log)
        state.threads = thread_policy(threads, lambda: _first_gradients(state, config, data))
        mode = "off" if progress is False or not main else ("bar" if progress else "auto")
        for epoch in range(len(state.history) + 1, config.epochs + 1):
            record = _train_epoch(state, config, data, epoch, world, mode, run)
            state.history.append(record)
            log(_epoch_line(record, config.epochs))
            if run is not None and main:
                _save(run, state, config, data, epoch)
            if board is not None:
                board.log_epoch(record, state.vae, data.test, data.dataset.image_shape)
    barrier(world)  # under torchrun, every rank returns once rank 0 has written its files
    return FitResult(state.vae, state.history, run)


def _check_arguments(*, data, resume, world, progress, log) -> None:
    checks.instance("data", data, PreparedData, optional=True)
    checks.instance("resume", resume, (bool, Checkpoint))
    checks.instance("world", world, World, optional=True)
    checks.instance("progress", progress, bool, optional=True)
    if not callable(log):
        raise ConfigTypeError(f"log must be a function of a message, got {log!r}")


def _epoch_line(record: dict, epochs: int) -> str:
    return (f"epoch {record['epoch']:3d}/{epochs}  train {record['train_objective']} "
            f"{record['train_objective_nats']:9.3f}  test ELBO {record['test_elbo']:9.3f} "
            f"nats/datapoint  ({record['epoch_seconds']:.1f} s)")


def _first_gradients(state: _State, config, data) -> list[torch.Tensor]:
    """The loss and gradients of a first step, on the first minibatch (the thread policy's
    test that its thread counts agree bit for bit)."""
    x = data.train[: config.batch_size]
    if state.vae.likelihood.needs_binary_data:
        x = binarize(x, torch.Generator(device=x.device).manual_seed(config.seed))
    loss = state.trainer.objective.differentiable_loss(x)
    params = [p for p in state.vae.parameters() if p.requires_grad]
    return [loss, *torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)]


def _silent(*args, **kwargs) -> None:
    pass


def _checkpoint_to_resume(run: RunFolder | None, resume) -> Checkpoint | None:
    if isinstance(resume, Checkpoint):
        return resume
    if not resume:
        return None
    if run is None:
        raise ConfigError("resume needs the run folder to resume")
    return run.load_checkpoint()


def _config_for(config: TrainConfig | None, checkpoint: Checkpoint | None) -> TrainConfig:
    checks.instance("config", config, TrainConfig, optional=True)
    if checkpoint is None:
        if config is None:
            raise ConfigError("fit needs a TrainConfig, or resume=True with a run folder")
        return config.validate()
    if config is None:
        return checkpoint.config
    saved = checkpoint.config.to_dict()
    changes = {k: v for k, v in config.to_dict().items() if v != saved[k]}
    return resumed_config(checkpoint.config, changes)


def _start(config: TrainConfig, data: PreparedData, checkpoint, world, log) -> _State:
    """The model (initialized from the seed, or restored), its trainer and the data
    generator."""
    device = checks.device(config.device)
    source = data.dataset.source
    check_grey_levels(data.train, where=f"{source} training set")
    if config.likelihood != "bernoulli":  # else binarized, and checked binary by the model
        check_grey_levels(data.test, where=f"{source} test set")
    pyro.set_rng_seed(config.seed)  # the seed decides the initial weights too
    vae = build_vae(config, data.train.shape[1], data.dataset.image_shape)
    check_training_memory(config, vae, device)
    vae = vae.to(device)
    vae.check_data(data.test, where=f"{source} test set")
    if checkpoint is None and config.model is None and get_preset(config.preset).init_output_bias:
        vae.init_output_bias(data.train.mean(0))
    # Pyro's param store is global: a module registered by an earlier run under the same name
    # would stand in for this VAE's in a JIT-compiled ELBO (SVI would step it, too).
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    objective = make_objective(config.estimator, vae, num_particles=config.num_particles,
                               **config.estimator_options)
    state = _State(vae, Trainer(objective, config.lr, world=world, seed=config.seed),
                   generator, [])
    if checkpoint is not None:
        _restore(state, checkpoint, data, log)
    return state


def _restore(state: _State, checkpoint: Checkpoint, data: PreparedData, log) -> None:
    where = checkpoint.path or "the checkpoint"
    if checkpoint.x_dim != data.train.shape[1]:
        raise DataError(f"{data.dataset.source}: {data.train.shape[1]} features per datapoint, "
                        f"expected {checkpoint.x_dim} like {where}")
    if checkpoint.trainer_state is None or checkpoint.rng_state is None:
        raise CheckpointError(f"{where} holds no optimizer or RNG state: it can be evaluated, "
                              "not resumed")
    state.vae.load_state_dict(checkpoint.model_state)
    state.trainer.load_state_dict(checkpoint.trainer_state)
    if not _set_rng_state(checkpoint.rng_state, state.generator):
        log(f"note: {where} was trained on another device; the data order and samples go on "
            "from a new stream, so the result will differ from an uninterrupted run's")
        state.generator.manual_seed(checkpoint.config.seed + checkpoint.epoch)
    state.history = list(checkpoint.history)
    state.wall_start -= state.history[-1]["wall_seconds"] if state.history else 0.0
    log(f"resuming {where} after epoch {checkpoint.epoch} of {checkpoint.config.epochs}")


def _train_epoch(state: _State, config, data, epoch: int, world, mode: str, run) -> dict:
    """One pass over the shuffled training set, then the test ELBO: the epoch's record."""
    vae, trainer, generator = state.vae, state.trainer, state.generator
    vae.beta = beta_at(config, epoch)
    trainer.set_lr(learning_rate(config, epoch))
    n, batch_size = data.train.shape[0], config.batch_size
    label = get_estimator(config.estimator).bound.label(trainer.objective.num_particles,
                                                        vae.beta, **trainer.objective.options)
    num_data = n if config.scale_to_data else None
    permutation = torch.randperm(n, generator=generator, device=generator.device)
    loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
    with Progress(math.ceil(n / batch_size), f"epoch {epoch}/{config.epochs}", "steps",
                  mode=mode) as bar, warnings.catch_warnings():
        # Pyro warns of a non-finite loss; _step reports it as a divergence instead.
        warnings.filterwarnings("ignore", message="Encountered (NaN|[+-]?inf)")
        for step, start in enumerate(range(0, n, batch_size), 1):
            x = data.train[permutation[start : start + batch_size]]
            if vae.likelihood.needs_binary_data:
                x = binarize(x, generator)
            with state.threads.step() if state.threads else contextlib.nullcontext():
                loss = _step(state, x, num_data, config, epoch, step, run)
            loss_sum += loss / (n / x.shape[0]) if num_data else loss
            seen += x.shape[0]
            bar.update(1, f"{label} {-loss_sum / seen:.2f} nats" if step % 20 == 0 else None)
    epoch_seconds = time.perf_counter() - t0
    test_elbo, eval_seconds = _test_elbo(vae, data, config, world, epoch, step, run)
    return {"epoch": epoch, "train_objective": label, "train_objective_nats": -loss_sum / seen,
            "test_elbo": test_elbo, "beta": vae.beta, "lr": learning_rate(config, epoch),
            "steps": step, "epoch_seconds": epoch_seconds, "eval_seconds": eval_seconds,
            "wall_seconds": time.perf_counter() - state.wall_start,
            "processes": 1 if world is None else world.world_size,
            "threads": state.threads.describe() if state.threads else torch.get_num_threads()}


def _step(state: _State, x, num_data, config, epoch: int, step: int, run) -> float:
    """One trainer step with the validation policy, turning a diverged step into an error."""
    validation = step_checks(not state.validated or config.validate_every_step)
    state.validated = True
    try:
        with validation:
            loss = state.trainer.step(x, num_data=num_data)
    except ValueError as e:
        what = _divergence_in(e, state.vae, lambda: state.trainer.objective.loss(x))
        if what is None:
            raise
        raise _diverged(epoch, step, what, run) from e
    if not math.isfinite(loss):
        raise _diverged(epoch, step, f"the loss is {loss}", run)
    return loss


def _test_elbo(vae, data, config, world, epoch, step, run) -> tuple[float, float]:
    """The test ELBO after the epoch (nats per datapoint) and the seconds it took."""
    if not _params_finite(vae):
        raise _diverged(epoch, step, "a parameter became NaN or infinite (through its "
                        "gradient)", run)
    t0 = time.perf_counter()
    vae.eval()

    def elbo() -> float:
        return mean_elbo(vae, data.test, execution=Execution(
            block_size=config.eval_batch_size, world=world))

    try:
        value = elbo()
    except ValueError as e:
        if (what := _divergence_in(e, vae, elbo)) is None:
            raise
        raise _diverged(epoch, step, f"on the test set, {what}", run) from e
    finally:
        vae.train()
    if not math.isfinite(value):
        raise _diverged(epoch, step, f"the test ELBO is {value}", run)
    return value, time.perf_counter() - t0


def _save(run: RunFolder, state: _State, config, data: PreparedData, epoch: int) -> None:
    run.save_checkpoint(Checkpoint(
        config=config, x_dim=state.vae.x_dim, image_shape=tuple(data.dataset.image_shape),
        epoch=epoch, model_state=state.vae.state_dict(),
        trainer_state=state.trainer.state_dict(), rng_state=_rng_state(state.generator),
        history=state.history,
    ))
    run.write_metrics(config, state.history, {
        "dataset": data.dataset.name, "source": data.dataset.source,
        "train_size": int(data.train.shape[0]), "test_size": int(data.test.shape[0]),
        "image_shape": list(data.dataset.image_shape),
    })


# --- random number generators -------------------------------------------------------------


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": generator.get_state(),
             "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> bool:
    """Restore the saved states; ``False`` if the data generator's is of another device."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])
    try:
        generator.set_state(state["data"])
    except RuntimeError:
        return False
    return True


# --- divergence -----------------------------------------------------------------------------


def step_checks(validate: bool):
    """The context one training step runs in: Pyro's and torch's validation checks as Pyro's
    global setting says when ``validate``, else off (see the module docstring)."""
    return contextlib.nullcontext() if validate else pyro.validation_enabled(False)


def _params_finite(vae) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in vae.parameters())


def _diverged(epoch: int, step: int, what: str, run: RunFolder | None) -> TrainingDivergedError:
    kept = (f" The last good checkpoint, {run.checkpoint}, is intact."
            if run is not None and run.checkpoint.exists() else "")
    return TrainingDivergedError(
        f"training diverged at epoch {epoch}, step {step}: {what}. Likely causes: a "
        "learning rate too high (try --lr 1e-4), data outside the likelihood's support, or a "
        "Gaussian likelihood scale collapsing to zero." + kept
    )


def _divergence_in(error: ValueError, vae, loss) -> str | None:
    """What to report if ``error``, raised by a training step or an evaluation, comes from a
    diverged network, by the values alone: a parameter NaN or infinite, or ``loss()``,
    computed again with the checks off, not finite (a distribution's parameter outside its
    support, such as an encoder scale that underflowed to 0, fails torch's checks). ``None``
    for any other error (the project's own among them), which is then re-raised as it is."""
    if isinstance(error, PyroVAEError):
        return None
    if not _params_finite(vae):
        return "a parameter became NaN or infinite (through its gradient)"
    with pyro.validation_enabled(False), torch.no_grad():
        try:
            value = loss()
        except (ValueError, RuntimeError):
            return None
    if not math.isfinite(value):
        return (f"the loss is {value}: a distribution's parameter left its support (an "
                "encoder's scale that underflowed to 0, say)")
    return None
