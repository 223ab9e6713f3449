"""Step time of Pyro's ELBOs against the hand-written PyTorch loss on the same network.

    python -m benchmarks.overhead                              # CPU, batch 32..1024
    python -m benchmarks.overhead --batch-sizes 32 128 --profile
    python benchmarks/overhead.py --quick --out /tmp/overhead  # smoke run

One training step = loss, gradients and an Adam update of every parameter, on one fixed
minibatch of binarized MNIST images (the data do not change the work). Steppers:

=================================  =========================================================
``analytic``                       the baseline: the hand-written loss, stepped by
                                   :class:`pyro_vae.trainer.Trainer` (one torch Adam)
``meanfield``, ``trace``,          the registry's Pyro ELBOs, stepped by the same ``Trainer``
``jit-meanfield``, ``jit-trace``   (``differentiable_loss`` and torch Adam: how ``fit`` trains)
``… [Pyro SVI]``                   the same ELBO as a user of Pyro drives it:
                                   ``pyro.infer.SVI`` with ``pyro.optim.Adam`` (one torch
                                   Adam per parameter); ``jit-meanfield [Pyro SVI]`` with
                                   Pyro's own ``CompiledMeanField_ELBO``, which recompiles its
                                   trace at every step (see :mod:`pyro_vae.objectives.jit`)
``meanfield [Pyro's ELBO class]``  ``meanfield`` with Pyro's own ``MeanField_ELBO``,
                                   which also computes log-densities that it does not use
``matrix products alone (floor)``  the floor: the network's matrix products alone, forward
                                   and backward (three per linear layer), nothing between
=================================  =========================================================

Every stepper trains its own copy of the same initial network. Steps run in interleaved
blocks (all steppers in turn, for many rounds) so that the load of a shared machine hits all
alike; a step's time is its wall-clock time (with CUDA, up to a synchronize). Reported: the
median step time in ms, and its ratio to ``analytic`` at the same batch size, with the
spread (quartiles) of the per-round ratios. ``--profile`` adds where meanfield's time goes
(cProfile, which inflates Python-heavy parts) and the cost of validation.

Validation is timed as :func:`pyro_vae.fit.fit` runs it: Pyro's and torch.distributions'
checks on a stepper's first step, then ``pyro.validation_enabled(False)`` (which switches off
the baseline's torch checks alike). The ``--profile`` ablation also times both steppers with
the checks on every step (``fit(validate_every_step=True)``, Pyro's own default). Writes
``OUT/overhead.json`` and ``OUT/overhead.md``; the measured figures are in
``benchmarks/README.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file, python benchmarks/overhead.py: import from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import cProfile
import pstats
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import pyro.infer
import torch

from benchmarks.common import (
    RESULTS,
    PyroSVI,
    add_common_arguments,
    command_line,
    identical_vaes,
    linear_weights,
    machine,
    markdown_table,
    measure_steps,
    output,
    per_round_ratios,
    run_main,
    stepper,
    time_interleaved,
    write_results,
)
from pyro_vae import VAE
from pyro_vae.commands.options import Parser, positive_float, positive_int
from pyro_vae.data import binarize, load_dataset, preprocess
from pyro_vae.models.presets import get_preset
from pyro_vae.objectives import PyroObjective, make_objective
from pyro_vae.progress import Progress
from pyro_vae.trainer import Trainer

DEFAULT_OUT = RESULTS / "overhead"
BASELINE = "analytic"

# Pyro's own classes for the registry's subclasses that change what a step computes.
PYRO_ELBOS = {
    "meanfield": lambda: pyro.infer.TraceMeanField_ELBO(max_plate_nesting=1),
    "jit-meanfield": lambda: pyro.infer.JitTraceMeanField_ELBO(max_plate_nesting=1,
                                                               ignore_jit_warnings=True),
}


class Variant(NamedTuple):
    """One stepper: an estimator, how it is stepped (the package's ``Trainer``, or Pyro's SVI
    with ``pyro.optim.Adam``), whether with Pyro's own ELBO class, and whether Pyro's and
    torch's validation checks run on every step or, as in ``fit`` by default, on the first."""

    label: str
    estimator: str
    pyro_svi: bool = False
    pyro_elbo: bool = False  # Pyro's own class where the registry has a subclass
    validate_every_step: bool = False
    input_checks: bool = True  # the model's own checks of x, which run whatever Pyro's flag

    def trainer(self, vae: VAE, lr: float):
        if not self.input_checks:  # to time them
            _switch_input_checks(vae, False)
        objective = make_objective(self.estimator, vae)
        elbo = PYRO_ELBOS[self.estimator]() if self.pyro_elbo else None
        if self.pyro_svi:
            return PyroSVI(objective, lr, elbo=elbo)
        if elbo is not None:
            objective = PyroObjective(objective.name, vae, elbo, jit=objective.jit)
        return Trainer(objective, lr)


def variants(names: tuple[str, ...], *, pyro_twins: bool) -> list[Variant]:
    """The steppers of the main table: each estimator, and with ``pyro_twins`` its Pyro SVI
    twin and, for ``meanfield``, its twin with Pyro's own ELBO class."""
    out = [Variant(BASELINE, BASELINE)]
    for name in names:
        if name == BASELINE:
            continue
        out.append(Variant(name, name))
        if pyro_twins:
            out.append(Variant(f"{name} [Pyro SVI]", name, pyro_svi=True,
                               pyro_elbo=name == "jit-meanfield"))
            if name == "meanfield":
                out.append(Variant(f"{name} [Pyro's ELBO class]", name, pyro_elbo=True))
    return out


@dataclass
class OverheadConfig:
    estimators: tuple[str, ...] = ("meanfield", "trace", "jit-meanfield", "jit-trace")
    batch_sizes: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    preset: str = "pyro"  # 784-400-50 softplus, Pyro's VAE example
    hidden_sizes: tuple[int, ...] | None = None  # None: the preset's
    latent_dim: int | None = None
    seconds_per_batch_size: float = 30.0  # time budget of the interleaved rounds per batch size
    block_seconds: float = 0.25  # about this long per block of one stepper
    max_rounds: int = 200
    pyro_twins: bool = True  # also time each ELBO under Pyro's SVI and pyro.optim.Adam
    profile_batch_sizes: tuple[int, ...] = ()
    profile_steps: int = 200
    paired_seconds: float = 20.0  # per estimator, for the input checks' paired ratio
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"

    def vae_kwargs(self) -> dict:
        arch = get_preset(self.preset)
        return dict(latent_dim=self.latent_dim or arch.latent_dims[0],
                    hidden_sizes=self.hidden_sizes or arch.hidden_sizes[0],
                    activation=arch.activation)


QUICK = dict(batch_sizes=(8, 32), hidden_sizes=(32,), latent_dim=5, seconds_per_batch_size=2.0,
             block_seconds=0.02, max_rounds=4, profile_batch_sizes=(8,), profile_steps=5,
             paired_seconds=0.2)


def make_steppers(config: OverheadConfig, chosen: list[Variant], x: torch.Tensor
                  ) -> dict[str, Callable[[], None]]:
    """One stepper per variant, each on its own copy of the same initial network."""
    pyro.clear_param_store()
    vaes = identical_vaes([v.label for v in chosen], x.shape[1], seed=config.seed,
                          device=config.device, **config.vae_kwargs())
    return {v.label: stepper(v.trainer(vaes[v.label], config.lr), x,
                             validate_every_step=v.validate_every_step) for v in chosen}


def fixed_minibatch(config: OverheadConfig, images: torch.Tensor, batch_size: int):
    return binarize(images[:batch_size], torch.Generator().manual_seed(config.seed)).to(
        config.device)


FLOOR = "matrix products alone (floor)"


def matmul_floor(vae: VAE, batch_size: int) -> Callable[[], None]:
    """A step's matrix products with nothing between them: for each linear layer of ``vae``,
    the forward product and the two of its backward pass (input and weight gradients)."""
    weights = linear_weights(vae)
    ins = [torch.randn(batch_size, w.shape[1], device=w.device) for w in weights]
    grads = [torch.randn(batch_size, w.shape[0], device=w.device) for w in weights]

    def step() -> None:
        for x, g, w in zip(ins, grads, weights, strict=True):
            x @ w.T, g @ w, g.T @ x
        if weights[0].device.type == "cuda":
            torch.cuda.synchronize()

    return step


def measure_batch_size(config: OverheadConfig, chosen: list[Variant], images: torch.Tensor,
                       batch_size: int, *, floor: bool = False) -> dict:
    """Interleaved step times of every variant at one batch size, and with ``floor`` of the
    same network's matrix products alone."""
    steppers = make_steppers(config, chosen, fixed_minibatch(config, images, batch_size))
    if floor:
        network = identical_vaes(["floor"], images.shape[1], seed=config.seed,
                                 device=config.device, **config.vae_kwargs())["floor"]
        steppers[FLOOR] = matmul_floor(network, batch_size)
    times = measure_steps(steppers, baseline=BASELINE, block_seconds=config.block_seconds,
                          budget_seconds=config.seconds_per_batch_size,
                          max_rounds=config.max_rounds, warmup=5)
    return {"batch_size": batch_size, "steps_per_block": times.steps_per_block,
            "rounds": times.rounds, "steppers": times.summary}


# --- where the time goes -----------------------------------------------------------------------
# Functions whose cumulative time cProfile attributes to a part of a training step; a tuple
# names alternatives, of which the first that ran counts (a method of pyro_vae.objectives,
# then the Pyro method it overrides, which the override may call in turn).
PROFILE_PARTS = {
    "trace model and guide (forward pass, pyro.module, log-densities)": (
        "meanfield.py:_get_trace", "get_importance_trace"),
    "– of which pyro.module (parameter registration)": "primitives.py:module",
    "hand-written loss (forward pass, log-densities)": "losses.py:analytic_loss",
    "validation checks (Pyro's and torch.distributions')": "VALIDATION",
    "ELBO from the traces (KL, sums)": ("meanfield.py:_differentiable_loss_particle",
                                        "trace_mean_field_elbo.py:_differentiable_loss_particle"),
    "backward": "_tensor.py:backward",
    "pyro.optim wrapper (one torch Adam per parameter)": "PYRO_OPTIM",
    "torch Adam.step": "adam.py:step",
    "zeroing gradients (Pyro's zero_grads, torch's zero_grad)": ("util.py:zero_grads",
                                                                 "optimizer.py:zero_grad"),
}
VALIDATION_FUNCTIONS = ("check_site_shape", "_check_mean_field_requirement",
                        "check_model_guide_match", "warn_if_nan", "warn_if_inf",
                        "check_fully_reparametrized", "_validate_sample", "_validate_args",
                        "check_if_enumerated")


def _cumulative(stats: pstats.Stats, key: str | tuple[str, ...]) -> float:
    """Cumulative seconds of the functions ``key`` names (see :data:`PROFILE_PARTS`)."""
    if isinstance(key, tuple):
        return next((t for t in (_cumulative(stats, k) for k in key) if t), 0.0)
    total = 0.0
    for (filename, _line, name), (_, _, _tottime, cumtime, _) in stats.stats.items():
        if key == "VALIDATION":
            total += cumtime if name in VALIDATION_FUNCTIONS else 0.0
        elif key == "PYRO_OPTIM":
            total += cumtime if name == "__call__" and "pyro/optim/optim.py" in filename else 0.0
        elif f"{Path(filename).name}:{name}" == key or (":" not in key and name == key):
            total += cumtime
    return total


def profile_meanfield(config: OverheadConfig, images: torch.Tensor, batch_size: int) -> dict:
    """cProfile of ``profile_steps`` steps of each meanfield stepper: ms per step in each
    part, and the profiled step time of the analytic baseline for scale."""
    chosen = [Variant("meanfield [Pyro SVI]", "meanfield", pyro_svi=True),
              Variant("meanfield [Pyro's ELBO class]", "meanfield", pyro_elbo=True),
              Variant("meanfield", "meanfield"), Variant(BASELINE, BASELINE)]
    steppers = make_steppers(config, chosen, fixed_minibatch(config, images, batch_size))
    out = {}
    for label, step in steppers.items():
        for _ in range(5):
            step()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(config.profile_steps):
            step()
        profiler.disable()
        stats = pstats.Stats(profiler)
        per_step = 1e3 / config.profile_steps
        parts = {"total": stats.total_tt * per_step}
        parts.update({part: _cumulative(stats, key) * per_step
                      for part, key in PROFILE_PARTS.items()})
        out[label] = parts
    return {"batch_size": batch_size, "steps": config.profile_steps, "ms_per_step": out}


def validation_ablation(config: OverheadConfig, images: torch.Tensor, batch_size: int) -> dict:
    """Interleaved step times with validation on the first step only (``fit``'s default), on
    every step, and without the model's own input checks (which run on every step)."""
    chosen = [Variant(BASELINE, BASELINE),
              Variant("analytic, validated every step", BASELINE, validate_every_step=True),
              Variant("analytic, no input checks", BASELINE, input_checks=False),
              Variant("meanfield", "meanfield"),
              Variant("meanfield, validated every step", "meanfield", validate_every_step=True),
              Variant("meanfield, no input checks", "meanfield", input_checks=False)]
    result = measure_batch_size(config, chosen, images, batch_size)
    for name in (BASELINE, "meanfield"):
        result.setdefault("input_checks_ratio", {})[name] = input_checks_ratio(
            config, images, batch_size, name, seconds=config.paired_seconds)
        result.setdefault("input_checks_in_step", {})[name] = input_checks_in_step(
            config, images, batch_size, name)
    return result


def _switch_input_checks(vae: VAE, on: bool) -> None:
    if on:  # the class's methods again
        vae.__dict__.pop("_check_input", None), vae.__dict__.pop("check_data", None)
    else:  # the instance's no-ops shadow them
        vae._check_input = vae.check_data = lambda *args, **kwargs: None


def input_checks_ratio(config: OverheadConfig, images: torch.Tensor, batch_size: int,
                       estimator: str, seconds: float = 20.0, steps_per_block: int = 40) -> dict:
    """The model's input checks' cost per step as a ratio: one network stepped in blocks with
    its checks on and off in turn (on-off, then off-on), the ratio of the two blocks' median
    step times round by round, and the median of those ratios with a 95 % bootstrap interval.
    One network, not two copies: copies differ by about a percent in where their memory lies."""
    vae = identical_vaes(["paired"], images.shape[1], seed=config.seed, device=config.device,
                         **config.vae_kwargs())["paired"]
    step = stepper(Variant(estimator, estimator).trainer(vae, config.lr),
                   fixed_minibatch(config, images, batch_size))

    def with_checks(on: bool) -> Callable[[], None]:
        def call() -> None:
            if ("_check_input" in vae.__dict__) == on:  # switched at a block's first step
                _switch_input_checks(vae, on)
            step()
        return call

    try:
        timings = time_interleaved({"on": with_checks(True), "off": with_checks(False)},
                                   blocks=10**9, steps_per_block=steps_per_block,
                                   budget_seconds=seconds, min_blocks=4)
    finally:
        _switch_input_checks(vae, True)
    ratios = per_round_ratios(timings.wall, dict.fromkeys(("on", "off"), steps_per_block),
                              "on", "off")
    return {"rounds": len(ratios), "steps_per_block": steps_per_block, **ratio_interval(ratios)}


def ratio_interval(ratios: list[float], *, draws: int = 2000, seed: int = 0) -> dict:
    """The median of ``ratios`` and a 95 % percentile-bootstrap interval for it."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                     for _ in range(draws))
    return {"ratio": statistics.median(ratios), "ratio_low": medians[int(0.025 * draws)],
            "ratio_high": medians[int(0.975 * draws) - 1]}


def input_checks_in_step(config: OverheadConfig, images: torch.Tensor, batch_size: int,
                         estimator: str, seconds: float = 3.0) -> dict:
    """The model's input checks timed inside real steps of ``estimator``: the seconds spent in
    them over the steps' seconds. An upper bound on their cost: as a step's first reads, they
    also pay for caches the optimizer swept, which the step would otherwise pay later."""
    vae = identical_vaes(["timed"], images.shape[1], seed=config.seed, device=config.device,
                         **config.vae_kwargs())["timed"]
    spent = [0.0]

    def timed(method):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return call

    # the two entry points of the checks (the Pyro programs' and the hand-written losses')
    vae._check_input, vae.check_data = timed(vae._check_input), timed(vae.check_data)
    step = stepper(Variant(estimator, estimator).trainer(vae, config.lr),
                   fixed_minibatch(config, images, batch_size))
    for _ in range(5):
        step()
    spent[0], steps, start = 0.0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 10:
        step()
        steps += 1
    total = time.perf_counter() - start
    return {"steps": steps, "check_us": 1e6 * spent[0] / steps, "step_ms": 1e3 * total / steps,
            "share": spent[0] / total}


# --- report ------------------------------------------------------------------------------------
def markdown(document: dict) -> str:
    c = document["config"]
    load = document["machine"]["load_average_1_5_15_min"]
    lines = [
        "# Pyro's ELBOs: step time against the hand-written PyTorch loss",
        "",
        f"Network {document['network']}, Bernoulli likelihood, Adam (lr {c['lr']}), one fixed "
        f"minibatch; device {c['device']}, {document['machine']['torch_threads']} torch "
        "thread(s), validation checks (Pyro's and torch's) on each stepper's first step only, "
        "as in `fit`. One step = loss + gradients + Adam update. First table: ratio of "
        "the median step time to `analytic`'s at the same batch size, wall-clock "
        "[quartiles of the per-round ratio] and in CPU time of the process (which leaves out "
        "the time the process waited for a core); second table: median wall-clock ms per "
        "step. Timed on a machine shared with other jobs (load average at the start: "
        f"{'—' if load is None else f'{load[0]:.2f}'}): the ratios, from interleaved rounds, "
        "are more trustworthy than the absolute times.",
        "",
        f"Command: `{document['command']}`",
        "",
    ]
    several = len({r["device"] for r in document["results"]}) > 1
    headers = ["stepper"] + [(f"{r['device']} " if several else "") + f"B={r['batch_size']}"
                             for r in document["results"]]
    labels = list(document["results"][0]["steppers"])
    ratio_rows, ms_rows = [], []
    for label in labels:
        ratio_row, ms_row = [label], [label]
        for r in document["results"]:
            s = r["steppers"][label]
            cpu = "" if r["device"] != "cpu" else f" · cpu {s['cpu_ratio']:.2f}×"
            ratio_row.append(f"{s['ratio']:.2f}× [{s['round_ratio_q1']:.2f}–"
                             f"{s['round_ratio_q3']:.2f}]{cpu}")
            ms_row.append(f"{s['median_ms']:.2f}")
        ratio_rows.append(ratio_row)
        ms_rows.append(ms_row)
    lines += [markdown_table(headers, ratio_rows), "", "Median wall-clock ms per step:", "",
              markdown_table(headers, ms_rows)]
    for prof in document.get("profiles", []):
        parts = prof["ms_per_step"]
        lines += ["", f"## Where meanfield's time goes, batch {prof['batch_size']} (cProfile, "
                  f"{prof['steps']} steps, ms per step; the profiler inflates Python-heavy parts)",
                  ""]
        names = list(next(iter(parts.values())).keys())
        lines.append(markdown_table(["part", *parts], [
            [name] + [f"{parts[label][name]:.2f}" if parts[label][name] else "—"
                      for label in parts]
            for name in names]))
    for ablation in document.get("validation", []):
        lines += ["", f"## Validation checks, batch {ablation['batch_size']} (interleaved, "
                  "median ms per step, × analytic validated on its first step only)", ""]
        lines.append(markdown_table(["stepper", "median ms", "×", "× in CPU time"], [
            [label, f"{s['median_ms']:.2f}", f"{s['ratio']:.2f}", f"{s['cpu_ratio']:.2f}"]
            for label, s in ablation["steppers"].items()]))
        steppers = ablation["steppers"]
        for name in ("analytic", "meanfield"):
            on, off = steppers[name], steppers.get(f"{name}, no input checks")
            if off is not None:
                lines += ["", f"The model's input checks cost {name} "
                          f"{100 * (on['median_ms'] / off['median_ms'] - 1):+.1f} % of its step "
                          f"({100 * (on['cpu_ratio'] / off['cpu_ratio'] - 1):+.1f} % in CPU time)."]
        for name, paired in ablation.get("input_checks_ratio", {}).items():
            lines += ["", f"One network, checks on and off in turn ({paired['rounds']} rounds "
                      f"of {paired['steps_per_block']} steps each way): the input checks cost "
                      f"{name} **{100 * (paired['ratio'] - 1):.1f} %** of its step (95 % "
                      f"interval {100 * (paired['ratio_low'] - 1):.1f}–"
                      f"{100 * (paired['ratio_high'] - 1):.1f} %; target: under 2 %)."]
        for name, timed in ablation.get("input_checks_in_step", {}).items():
            lines += ["", f"Timed inside {timed['steps']} steps of {name}: the input checks "
                      f"take {timed['check_us']:.0f} µs of its {timed['step_ms']:.2f} ms step, "
                      f"{100 * timed['share']:.1f} % (an upper bound: the step's first reads "
                      "also pay for the caches that the optimizer swept)."]
    if "load_average_end" in document:
        load = document["load_average_end"]
        lines += ["", "Load average at the end: " + ", ".join(f"{v:.1f}" for v in load)
                  + " (1, 5 and 15 minutes)"]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    default = OverheadConfig()
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+",
                        help=f"default {' '.join(map(str, default.batch_sizes))}")
    parser.add_argument("--estimators", nargs="+",
                        help=f"Pyro estimators to time (default {' '.join(default.estimators)})")
    parser.add_argument("--preset", choices=("pyro", "burda"),
                        help=f"network preset (default {default.preset})")
    parser.add_argument("--hidden-sizes", type=positive_int, nargs="+",
                        help="override the preset's (default: the preset's)")
    parser.add_argument("--latent-dim", type=positive_int,
                        help="override the preset's (default: the preset's)")
    parser.add_argument("--seconds", type=positive_float, help="interleaved seconds per batch size "
                        f"(default {default.seconds_per_batch_size:g})")
    parser.add_argument("--no-pyro-svi", action="store_true",
                        help="skip the Pyro SVI twins")
    parser.add_argument("--profile", action="store_true",
                        help="profile meanfield and time the validation checks at batch 32, 128")
    parser.add_argument("--device", nargs="+", default=None,
                        help="cpu and/or cuda (default: cpu, and cuda when present)")
    add_common_arguments(parser, DEFAULT_OUT, threads=1)
    return parser.parse_args(argv)


def overhead_config(args: argparse.Namespace, device: str) -> OverheadConfig:
    config = OverheadConfig(**QUICK) if args.quick else OverheadConfig()
    config.device = device
    for option, name in (("batch_sizes", "batch_sizes"), ("estimators", "estimators"),
                         ("hidden_sizes", "hidden_sizes")):
        if getattr(args, option):
            setattr(config, name, tuple(getattr(args, option)))
    config.preset = args.preset or config.preset
    config.latent_dim = args.latent_dim or config.latent_dim
    config.seconds_per_batch_size = args.seconds or config.seconds_per_batch_size
    config.pyro_twins = not args.no_pyro_svi
    if args.profile and not args.quick:
        config.profile_batch_sizes = (32, 128)
    return config


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log, progress = output(args)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    images = preprocess(load_dataset("mnist").test_images)
    document = {"command": command_line("benchmarks.overhead", argv), "machine": machine(),
                "results": [], "profiles": [], "validation": []}
    configs = [overhead_config(args, device) for device in devices]
    work = sum(len(c.batch_sizes) + 2 * len(c.profile_batch_sizes) for c in configs)
    with Progress(work, "overhead", "measurements", mode=progress) as bar:
        for config in configs:
            kwargs = config.vae_kwargs()
            document["network"] = (f"{images.shape[1]}-"
                                   + "-".join(map(str, kwargs["hidden_sizes"]))
                                   + f"-{kwargs['latent_dim']} {kwargs['activation']}")
            document["config"] = {**config.__dict__}
            chosen = variants(config.estimators, pyro_twins=config.pyro_twins)
            for batch_size in config.batch_sizes:
                result = measure_batch_size(config, chosen, images, batch_size, floor=True)
                result["device"] = config.device
                document["results"].append(result)
                log(f"{config.device} B={batch_size}: " + ", ".join(
                    f"{label} {s['median_ms']:.2f} ms ({s['ratio']:.2f}×)"
                    for label, s in result["steppers"].items()))
                write_results(args.out, "overhead", document, markdown(document))
                bar.update(1)
            for batch_size in config.profile_batch_sizes:
                document["profiles"].append({**profile_meanfield(config, images, batch_size),
                                             "device": config.device})
                bar.update(1)
                document["validation"].append({**validation_ablation(config, images,
                                                                     batch_size),
                                               "device": config.device})
                bar.update(1)
                write_results(args.out, "overhead", document, markdown(document))
    document["load_average_end"] = machine()["load_average_1_5_15_min"]
    write_results(args.out, "overhead", document, markdown(document))
    log(markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, "benchmarks.overhead"))
