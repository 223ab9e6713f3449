"""Helpers shared by the benchmark scripts: estimator specs and their steppers, interleaved
step timing, time-budgeted training, log p(x) evaluation, machine facts, progress and files.

Every script runs both as ``python -m benchmarks.NAME`` and as ``python benchmarks/NAME.py``
from the repository root (a script run as a file first puts the root on ``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pyro
import pyro.infer
import pyro.optim
import torch
from matplotlib.figure import Figure

from pyro_vae import VAE
from pyro_vae.build import build_vae
from pyro_vae.commands.options import run_command, thread_count
from pyro_vae.config import TrainConfig
from pyro_vae.data import PreparedData, binarize
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation import (
    AISSettings,
    Execution,
    active_units,
    ais,
    estimate_log_px,
    mean_elbo,
)
from pyro_vae.files import atomic_write_bytes, atomic_write_json
from pyro_vae.fit import step_checks
from pyro_vae.models import get_preset
from pyro_vae.objectives import ESTIMATORS, Bound, PyroObjective, get_estimator, make_objective
from pyro_vae.threads import ThreadPolicy
from pyro_vae.trainer import Trainer

# where a script writes unless given --out: under runs/, which git ignores (the published
# tables are in benchmarks/results/, written there with --out)
RESULTS = Path("runs") / "benchmarks"


# --- estimators and their steppers -------------------------------------------------------------
class Spec(NamedTuple):
    """An estimator of the registry with its number of particles K and the options given
    (``(("alpha", 0.2),)``; the others take the registry's defaults)."""

    name: str
    k: int
    options: tuple[tuple[str, int | float], ...] = ()

    @property
    def label(self) -> str:
        """``name`` for the one-particle ELBOs, ``name K=k`` otherwise, then the options
        given (``renyi K=5 alpha=0.2``)."""
        label = self.name if self.k == 1 else f"{self.name} K={self.k}"
        return label + "".join(f" {n}={v:g}" for n, v in self.options)

    @property
    def slug(self) -> str:
        """A file-name-safe form: ``name``, ``name-k``, then ``-option=value`` each."""
        slug = self.name if self.k == 1 else f"{self.name}-{self.k}"
        return slug + "".join(f"-{n}={v:g}" for n, v in self.options)

    @property
    def bound(self) -> Bound:
        """What −loss estimates (:class:`pyro_vae.objectives.Bound`)."""
        return get_estimator(self.name).bound

    @property
    def all_options(self) -> dict:
        """Every option of the estimator: those given, and the defaults."""
        return get_estimator(self.name).resolve(self.k, dict(self.options))[1]


def parse_spec(text: str) -> Spec:
    """``"meanfield"``, ``"iwae:50"`` or ``"renyi:5,alpha=0.2"`` (``NAME[:K][,OPTION=VALUE]
    ...``) → :class:`Spec`; K defaults to the estimator's, options to the registry's. A bad K
    or option raises :class:`ConfigError`."""
    head, *assignments = text.split(",")
    name, _, k = head.partition(":")
    estimator = get_estimator(name)
    if k and (not k.isdigit() or int(k) <= 0):
        raise ConfigError(f"bad estimator spec {text!r}: K must be a positive integer")
    known = {o.name: o for o in estimator.options}
    options = []
    for assignment in assignments:
        option, _, value = assignment.partition("=")
        try:
            options.append((option, known[option].kind(value)))
        except (KeyError, ValueError):
            raise ConfigError(f"bad estimator spec {text!r}: {assignment!r} is not "
                              f"OPTION=VALUE with an option of {name} "
                              f"({', '.join(known) or 'it has none'})") from None
    spec = Spec(name, int(k) if k else estimator.default_num_particles, tuple(options))
    estimator.resolve(spec.k, dict(spec.options))  # K and values in range
    return spec


def registry_specs(iwae_ks: tuple[int, ...] = (5, 50)) -> list[Spec]:
    """Every registered estimator, in registry order, with its default options: the ELBOs with
    K = 1 and every multi-sample estimator (``iwae``, ``dreg``, ``renyi``, ``rws``, ``miwae``,
    ..., any whose bound is not the ELBO) once per K in ``iwae_ks`` that it takes."""
    specs = []
    for name, estimator in ESTIMATORS.items():
        if estimator.bound is not Bound.ELBO:
            specs += [Spec(name, k) for k in iwae_ks if k >= estimator.min_particles]
        else:
            specs.append(Spec(name, 1))
    return specs


def make_trainer(spec: Spec, vae: VAE, lr: float) -> Trainer:
    """The package's trainer (torch Adam over the VAE's parameters) for ``spec``."""
    return Trainer(make_objective(spec.name, vae, num_particles=spec.k, **dict(spec.options)),
                   lr)


class PyroSVI:
    """What a user of Pyro's SVI pays: :class:`pyro.infer.SVI` with :class:`pyro.optim.Adam`
    (one torch Adam per parameter) and a Pyro objective's ELBO (or ``elbo``, e.g. Pyro's own
    class), built from Pyro's public API; ``step`` as :class:`pyro_vae.trainer.Trainer`'s."""

    def __init__(self, objective: PyroObjective, lr: float, *, elbo=None):
        if not isinstance(objective, PyroObjective):
            raise ConfigError(f"{objective.name!r} is not a Pyro ELBO: SVI cannot step it")
        self.objective = objective
        self.elbo = objective.elbo if elbo is None else elbo
        self.svi = pyro.infer.SVI(objective.model, objective.guide, pyro.optim.Adam({"lr": lr}),
                                  self.elbo)

    def step(self, x: torch.Tensor, *, num_data: int | None = None) -> float:
        """One ``SVI.step``: the loss, −bound summed over the minibatch in nats."""
        args, kwargs = self.objective.arguments(x, num_data)
        return self.svi.step(*args, **kwargs)


def linear_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    """The weights of ``module``'s linear layers, in order: what a matrix-product floor times."""
    return [m.weight.detach() for m in module.modules() if isinstance(m, torch.nn.Linear)]


def identical_vaes(labels: list[str], x_dim: int, *, seed: int, device="cpu",
                   preset: str | None = None, image_shape=None, **vae_kwargs) -> dict[str, VAE]:
    """One VAE per label, all with the same initial weights (from ``seed``); distinct Pyro
    prefixes keep their parameters apart in Pyro's global param store. With ``preset``, the
    preset's networks (images of ``image_shape`` for ``conv``), sized by ``vae_kwargs``."""
    def build(**kwargs) -> VAE:
        if preset is None:
            return VAE(x_dim, **kwargs, **vae_kwargs)
        return VAE.from_preset(preset, x_dim, image_shape=image_shape, **kwargs, **vae_kwargs)

    torch.manual_seed(seed)
    base = build().to(device)
    vaes = {}
    for i, label in enumerate(labels):
        vae = build(prefix=f"s{i}_").to(device)
        vae.load_state_dict(copy.deepcopy(base.state_dict()))
        vaes[label] = vae
    return vaes


def stepper(trainer, x: torch.Tensor, *, validate_every_step: bool = False) -> Callable[[], None]:
    """A call that takes one ``trainer`` step on ``x`` as :func:`pyro_vae.fit.fit` does:
    Pyro's and torch's validation checks on the first call only, unless
    ``validate_every_step``; with CUDA, up to a synchronize, so that the time is the work's."""
    first = True
    cuda = x.device.type == "cuda"

    def step() -> None:
        nonlocal first
        checks = step_checks(validate_every_step or first)
        first = False
        # a new tensor, just written, as training makes each minibatch (an index and a
        # binarization): the model checks the values of every x it has not seen, at every step
        batch = x.clone()
        with checks:
            trainer.step(batch)
        if cuda:
            torch.cuda.synchronize()

    return step


# --- timing ------------------------------------------------------------------------------------
class Timings(NamedTuple):
    """Seconds of each call, per stepper: wall-clock, and CPU time of this process (the
    work itself, without the time the process waited for a core on a shared machine)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def time_interleaved(
    steppers: dict[str, Callable[[], object]],
    *,
    blocks: int,
    steps_per_block: int | dict[str, int],
    warmup: int = 5,
    budget_seconds: float | None = None,
    min_blocks: int = 2,
) -> Timings:
    """Times of each call of each stepper, measured in rounds of blocks: each stepper in turn
    makes ``steps_per_block`` calls (an int, or one per stepper), A A A B B B, then the next
    round, so that a slow spell of a shared machine hits every stepper alike.
    ``budget_seconds`` stops after the round that exceeds it (at least ``min_blocks`` rounds).

    .. note:: CPU time counts every thread of the process; GPU work that a stepper does not
       wait for is in neither time.
    """
    for step in steppers.values():
        for _ in range(warmup):
            step()
    if isinstance(steps_per_block, int):
        steps_per_block = dict.fromkeys(steppers, steps_per_block)
    timings = Timings({name: [] for name in steppers}, {name: [] for name in steppers})
    start = time.perf_counter()
    clock, cpu_clock = time.perf_counter, time.process_time
    for block in range(blocks):
        order = list(steppers.items())
        if block % 2:
            order.reverse()  # no stepper always runs right after the same other one
        for name, step in order:
            wall, cpu = timings.wall[name], timings.cpu[name]
            for _ in range(steps_per_block[name]):
                t0, c0 = clock(), cpu_clock()
                step()
                cpu.append(cpu_clock() - c0)
                wall.append(clock() - t0)
        if (budget_seconds is not None and block >= min_blocks - 1
                and clock() - start > budget_seconds):
            break
    return timings


def steps_for_block(steppers: dict[str, Callable[[], object]], block_seconds: float, *,
                    low: int = 2, high: int = 50) -> dict[str, int]:
    """Steps per block for each stepper so that its block lasts about ``block_seconds``
    (between ``low`` and ``high`` steps), from the time of one call."""
    out = {}
    for name, step in steppers.items():
        t0 = time.perf_counter()
        step()
        out[name] = max(low, min(high, int(block_seconds / max(time.perf_counter() - t0, 1e-6))))
    return out


def per_round_ratios(times: dict[str, list[float]], steps_per_block: dict[str, int], name: str,
                     baseline: str) -> list[float]:
    """Round by round, the ratio of ``name``'s median step time to ``baseline``'s."""
    def rounds(label):
        n = steps_per_block[label]
        return [statistics.median(times[label][i : i + n])
                for i in range(0, len(times[label]), n)]

    return [a / b for a, b in zip(rounds(name), rounds(baseline), strict=True)]


def round_ratios(times: dict[str, list[float]], steps_per_block: dict[str, int],
                 baseline: str) -> dict[str, dict]:
    """Per stepper: the ratio of its median step time to ``baseline``'s, and the quartiles
    of the same ratio computed round by round (one block of each per round)."""
    base = statistics.median(times[baseline])
    out = {}
    for name in times:
        ratios = per_round_ratios(times, steps_per_block, name, baseline)
        q = (statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1
             else ratios * 3)
        out[name] = {"ratio": statistics.median(times[name]) / base, "round_ratio_q1": q[0],
                     "round_ratio_median": q[1], "round_ratio_q3": q[2]}
    return out


def summarize_times(seconds: list[float]) -> dict:
    """Median and quartiles of step times, in milliseconds."""
    q1, median, q3 = (statistics.quantiles(seconds, n=4, method="inclusive")
                      if len(seconds) > 1 else [seconds[0]] * 3)
    return {"median_ms": 1e3 * median, "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3, "steps": len(seconds)}


def timing_summary(timings: Timings, steps_per_block: dict[str, int], baseline: str) -> dict:
    """Per stepper: wall-clock median and quartiles (ms), its ratio to ``baseline`` with the
    quartiles of the per-round ratio, and the same median and ratios in CPU time
    (``cpu_`` keys)."""
    wall_ratios = round_ratios(timings.wall, steps_per_block, baseline)
    cpu_ratios = round_ratios(timings.cpu, steps_per_block, baseline)
    out = {}
    for name, seconds in timings.wall.items():
        cpu = summarize_times(timings.cpu[name])
        out[name] = {**summarize_times(seconds), **wall_ratios[name],
                     "cpu_median_ms": cpu["median_ms"],
                     **{f"cpu_{k}": v for k, v in cpu_ratios[name].items()}}
    return out


class StepTimes(NamedTuple):
    """The result of :func:`measure_steps`."""

    summary: dict  # per stepper: timing_summary's figures against the baseline
    steps_per_block: dict[str, int]
    rounds: int
    timings: Timings  # every step's seconds, for other ratios (round_ratios)


def measure_steps(steppers: dict[str, Callable[[], object]], *, baseline: str,
                  block_seconds: float, budget_seconds: float, max_rounds: int = 1000,
                  warmup: int = 3) -> StepTimes:
    """Interleaved step times of ``steppers`` against ``baseline``: ``warmup`` untimed steps
    each (compilation, allocator, optimizer state), blocks of about ``block_seconds`` per
    stepper, rounds until ``budget_seconds`` (or ``max_rounds``) have passed."""
    for step in steppers.values():
        for _ in range(warmup):
            step()
    per_block = steps_for_block(steppers, block_seconds)
    timings = time_interleaved(steppers, blocks=max_rounds, steps_per_block=per_block,
                               warmup=0, budget_seconds=budget_seconds)
    rounds = len(timings.wall[baseline]) // per_block[baseline]
    return StepTimes(timing_summary(timings, per_block, baseline), per_block, rounds, timings)


def random_minibatch(data: torch.Tensor, batch_size: int, generator: torch.Generator,
                     binary: bool) -> torch.Tensor:
    """``batch_size`` random rows of ``data`` (``(N, D)``), binarized when ``binary``."""
    index = torch.randint(data.shape[0], (batch_size,), generator=generator)
    x = data[index]
    return binarize(x, generator) if binary else x


# --- training within a time budget -------------------------------------------------------------
def seconds_per_epoch(config: TrainConfig, data: PreparedData, *,
                      probe_seconds: float = 20.0) -> float:
    """Estimated wall-clock seconds of one :func:`pyro_vae.fit.fit` epoch of ``config``:
    training steps on random minibatches for ``probe_seconds`` (at least 10 steps), scaled
    to one epoch's steps, plus one test-ELBO evaluation. Uses a throw-away VAE and clears
    Pyro's param store."""
    pyro.clear_param_store()
    train = data.train
    vae = build_vae(config, train.shape[1], data.dataset.image_shape)
    if get_preset(config.preset).init_output_bias:
        vae.init_output_bias(train.mean(0))
    k = config.num_particles or get_estimator(config.estimator).default_num_particles
    trainer = make_trainer(Spec(config.estimator, k, tuple(config.estimator_options.items())),
                           vae, config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    binary = vae.likelihood.needs_binary_data
    trainer.step(random_minibatch(train, config.batch_size, generator, binary))  # warm-up
    steps, t0 = 0, time.perf_counter()
    threads = ThreadPolicy.default()  # as fit chooses them
    with step_checks(config.validate_every_step):  # as fit runs every step after its first
        while steps < 10 or time.perf_counter() - t0 < probe_seconds:
            with threads.step() if threads else contextlib.nullcontext():
                trainer.step(random_minibatch(train, config.batch_size, generator, binary))
            steps += 1
    per_step = (time.perf_counter() - t0) / steps
    t1 = time.perf_counter()
    mean_elbo(vae, data.test, execution=Execution(block_size=config.eval_batch_size))
    eval_seconds = time.perf_counter() - t1
    pyro.clear_param_store()
    return math.ceil(train.shape[0] / config.batch_size) * per_step + eval_seconds


# --- log p(x) ----------------------------------------------------------------------------------
def evaluate_log_px(vae: VAE, x: torch.Tensor, num_samples: int, *, seed: int = 0,
                    progress: str = "off") -> dict:
    """The IWAE_K estimate of log p(x) (K = ``num_samples``) of :func:`estimate_log_px`,
    averaged over the rows of ``x``, in nats per datapoint: ``log_px_mean``, its Monte Carlo
    standard error ``log_px_mean_mc_stderr``, the standard error from the choice of datapoints
    ``log_px_data_stderr`` (sd / √N), and the seconds it took; ``log_px_per_datapoint`` is the
    ``(N,)`` tensor, for paired comparisons (pop it before writing JSON)."""
    t0 = time.perf_counter()
    vae.eval()
    try:
        estimate = estimate_log_px(vae, x, num_samples=num_samples,
                                   execution=Execution(seed=seed, progress=progress))
    finally:
        vae.train()
    return {"log_px_mean": estimate.mean,
            "log_px_mean_mc_stderr": estimate.mean_mc_stderr,
            "log_px_data_stderr": estimate.data_stderr,
            "log_px_samples": int(estimate.num_samples), "log_px_datapoints": int(x.shape[0]),
            "log_px_seconds": time.perf_counter() - t0,
            "log_px_per_datapoint": estimate.log_px.detach().double().cpu()}


def evaluate_log_px_ais(vae, x: torch.Tensor, *, steps: int = 100, chains: int = 16,
                        seed: int = 0, progress: str = "off") -> dict:
    """AIS estimate of log p(x) (:func:`pyro_vae.evaluation.ais`: T = ``steps`` intermediate
    targets from the encoder, ``chains`` chains, HMC), averaged over the rows of ``x``, nats
    per datapoint: the same keys as :func:`evaluate_log_px` with the prefix ``ais_``; a
    stochastic lower bound that, unlike importance sampling with the encoder as proposal, does
    not depend on how good each model's encoder is."""
    t0 = time.perf_counter()
    vae.eval()
    try:
        estimate = ais(vae, x, AISSettings(num_steps=steps, num_chains=chains),
                       pareto_k=False, execution=Execution(seed=seed, progress=progress))
    finally:
        vae.train()
    return {"ais_log_px_mean": estimate.mean,
            "ais_log_px_mean_mc_stderr": estimate.mean_mc_stderr,
            "ais_log_px_data_stderr": estimate.data_stderr,
            "ais_steps": steps, "ais_chains": chains, "ais_datapoints": int(x.shape[0]),
            "ais_seconds": time.perf_counter() - t0,
            "ais_log_px_per_datapoint": estimate.log_px.detach().double().cpu()}


def count_active_units(vae: VAE, x: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions u with Cov_x(E_q[u|x]) > ``threshold`` (Burda et al. 2016, sec. 5.2)."""
    vae.eval()
    try:
        count, _ = active_units(vae, x, threshold=threshold)
    finally:
        vae.train()
    return int(count)


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean of ``a − b`` over paired datapoints and its standard error (nats per datapoint)."""
    d = (a - b).double()
    return {"mean": float(d.mean()),
            "stderr": float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else float("nan")}


# --- machine, command line, progress and files -------------------------------------------------
def machine() -> dict:
    """What the timings were measured on, the load average included."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15_min": list(load) if load else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "pyro_validation": pyro.infer.util.is_validation_enabled(),
    }


def load_average() -> float | None:
    """The one-minute load average (``None`` where the system has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reproduces this run."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", module, *map(shlex.quote, args)])


def run_main(main: Callable[[], int], prog: str) -> int:
    """Run a benchmark's ``main`` as ``pyro-vae`` runs a command
    (:func:`~pyro_vae.commands.options.run_command`): a bad input the project recognises (an
    option out of range, an estimator that cannot train the model, a damaged file) ends in one
    line on stderr and exit status 2, Ctrl-C in exit status 130. What the script had written
    (results after every finished row, run folders after every epoch) stays, and a rerun with
    the same options resumes from it."""
    return run_command(main, prog, interrupted=lambda: " Results written so far are kept.")


def add_common_arguments(parser: argparse.ArgumentParser, default_out: Path | None, *,
                         threads: int | None = None, out_default_text: str | None = None
                         ) -> None:
    """The options every benchmark script takes: threads, output folder, quick mode, quiet.
    ``default_out`` ``None``: the script chooses, as ``out_default_text`` says. ``threads``
    ``None``: training chooses its thread count by timing (:mod:`pyro_vae.threads`); a script
    that times a step itself fixes one, so that its figures compare."""
    parser.add_argument("--threads", type=thread_count, default=threads,
                        help="torch intra-op threads, fixed (default: " + (
                            f"{threads}" if threads else "the fastest, timed while training "
                            "runs (pyro_vae.threads)") + ")")
    shown = _shown(default_out) if default_out is not None else out_default_text
    parser.add_argument("--out", type=Path, default=default_out,
                        help="output folder" + (f" (default {shown})" if shown else ""))
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run that checks the script works (tests run it)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress and no logs (default: a bar on a terminal, progress "
                             "lines in logs)")


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Output(NamedTuple):
    """How a script reports as it runs: ``log`` (print, or nothing with ``--quiet``) and the
    :class:`pyro_vae.progress.Progress` mode (a bar on a terminal, lines in logs, or off)."""

    log: Callable[..., None]
    progress: str


def output(args: argparse.Namespace) -> Output:
    if args.quiet:
        return Output(lambda *a, **k: None, "off")
    return Output(print, "auto")


def fit_progress(mode: str) -> bool | None:
    """:func:`pyro_vae.fit.fit`'s ``progress`` argument for a Progress ``mode``."""
    return False if mode == "off" else None


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def save_figure(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


def write_results(out: Path, stem: str, document: dict, markdown: str) -> None:
    """``OUT/stem.json`` and ``OUT/stem.md``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", document)
    atomic_write_bytes(out / f"{stem}.md", (markdown.rstrip() + "\n").encode())


def fmt(value, digits: int = 2) -> str:
    """A number for a table; ``—`` for a missing one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"
