"""Step time of Pyro's SVI against the hand-written PyTorch loss on the same network.

    python -m benchmarks.overhead                            # CPU, batch 32..1024, ~5 min
    python -m benchmarks.overhead --batch-sizes 32 128 --profile
    python -m benchmarks.overhead --quick --out /tmp/overhead   # smoke run, < 60 s

One training step = loss, gradients and an Adam update of every parameter, on one fixed
minibatch of binarized MNIST images (the data do not change the work). Steppers:

==========================  ==============================================================
``analytic``                the baseline: hand-written loss, one torch Adam (``TorchTrainer``)
``meanfield``, ``trace``    Pyro SVI with :class:`pyro_vae.estimators.JointAdam` (this
``jit-meanfield``           project's ``SVITrainer``), and the JIT ELBOs of the registry
``jit-trace``
``… [pyro Adam]``           the same with ``pyro.optim.Adam`` (one torch Adam per parameter),
                            i.e. before the optimisation; ``jit-meanfield [pyro Adam]`` also
                            uses Pyro's own ``JitTraceMeanField_ELBO``, which recompiles its
                            trace at every step (see :mod:`pyro_vae.estimators`)
``meanfield [pyro ELBO]``   ``meanfield`` with Pyro's own ``TraceMeanField_ELBO``, which also
                            computes log-densities that it does not use
==========================  ==============================================================

Every stepper trains its own copy of the same initial network. Steps run in interleaved
blocks (all steppers in turn, for many rounds) so that the load of a shared machine hits all
alike; a step's time is its wall-clock time (with CUDA, up to a synchronize). Reported: the
median step time in ms, and its ratio to ``analytic`` at the same batch size, with the
spread (quartiles) of the per-round ratios. ``--profile`` adds where meanfield's time goes
(cProfile of ``SVI.step``, which inflates Python-heavy parts) and the cost of validation.

Validation is timed as :func:`pyro_vae.training.fit` runs it: Pyro's and torch.distributions'
checks on a stepper's first step, then ``pyro.validation_enabled(False)`` (which switches off
the baseline's torch checks alike). The ``--profile`` ablation also times both steppers with
the checks on every step (``fit(validate_every_step=True)``, Pyro's own default). Writes
``OUT/overhead.json`` and ``OUT/overhead.md``.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyro
import pyro.optim
import torch

from benchmarks.common import (
    Spec,
    add_common_arguments,
    command_line,
    machine,
    make_trainer,
    markdown_table,
    stepper,
    steps_for_block,
    time_interleaved,
    timing_summary,
    write_results,
)
from pyro_vae.data import binarize, load_dataset, preprocess
from pyro_vae.model import VAE
from pyro_vae.networks import get_preset

DEFAULT_OUT = Path(__file__).parent / "results" / "overhead"
BASELINE = "analytic"


class Variant(NamedTuple):
    """One stepper: an estimator, the optimizer behind SVI, and whether Pyro's and torch's
    validation checks run on every step or, as in ``fit`` by default, on the first only."""

    label: str
    estimator: str
    pyro_adam: bool = False  # pyro.optim.Adam (and Pyro's JIT meanfield class) instead of ours
    validate_every_step: bool = False
    pyro_elbo: bool = False  # Pyro's own ELBO class where the registry has its own subclass

    def trainer(self, vae, lr: float):
        optim = pyro.optim.Adam({"lr": lr}) if self.pyro_adam else None
        trainer = make_trainer(Spec(self.estimator, 1), vae, lr, optim=optim)
        if self.pyro_elbo or (self.pyro_adam and self.estimator == "jit-meanfield"):
            elbo = PYRO_ELBOS[self.estimator]()
            trainer.objective.elbo = elbo
            trainer.svi = pyro.infer.SVI(trainer.objective.model, trainer.objective.guide,
                                         trainer.optim, elbo)
        return trainer


# Pyro's own classes for the registry's subclasses that change what a step computes.
PYRO_ELBOS = {
    "meanfield": lambda: pyro.infer.TraceMeanField_ELBO(max_plate_nesting=1),
    "jit-meanfield": lambda: pyro.infer.JitTraceMeanField_ELBO(max_plate_nesting=1,
                                                               ignore_jit_warnings=True),
}


def variants(names: tuple[str, ...], *, before: bool) -> list[Variant]:
    """The steppers of the main table: each estimator, and with ``before`` its pyro-Adam twin
    and, for ``meanfield``, its twin with Pyro's own ELBO class."""
    out = [Variant(BASELINE, BASELINE)]
    for name in names:
        if name == BASELINE:
            continue
        out.append(Variant(name, name))
        if before:
            out.append(Variant(f"{name} [pyro Adam]", name, pyro_adam=True))
            if name == "meanfield":
                out.append(Variant(f"{name} [pyro ELBO]", name, pyro_elbo=True))
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
    before: bool = True  # also time the pyro.optim.Adam twins
    profile_batch_sizes: tuple[int, ...] = ()
    profile_steps: int = 200
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"


QUICK = dict(batch_sizes=(8, 32), hidden_sizes=(32,), latent_dim=5, seconds_per_batch_size=2.0,
             block_seconds=0.02, max_rounds=4, profile_batch_sizes=(8,), profile_steps=5)


def build_vaes(config: OverheadConfig, x_dim: int, labels: list[str]) -> dict[str, VAE]:
    """One VAE per stepper, all with the same initial weights; distinct Pyro prefixes keep
    their parameters apart in the global param store."""
    arch = get_preset(config.preset)
    kwargs = dict(latent_dim=config.latent_dim or arch.latent_dim,
                  hidden_sizes=config.hidden_sizes or arch.hidden_sizes,
                  activation=arch.activation)
    torch.manual_seed(config.seed)
    base = VAE(x_dim, **kwargs).to(config.device)
    vaes = {}
    for i, label in enumerate(labels):
        vae = VAE(x_dim, prefix=f"s{i}_", **kwargs).to(config.device)
        vae.load_state_dict(copy.deepcopy(base.state_dict()))
        vaes[label] = vae
    return vaes


def make_stepper(variant: Variant, vae: VAE, x: torch.Tensor, lr: float) -> Callable[[], None]:
    trainer = variant.trainer(vae, lr)
    step = stepper(trainer, x, validate_every_step=variant.validate_every_step)
    step.trainer = trainer
    return step


def measure_batch_size(config: OverheadConfig, chosen: list[Variant], images: torch.Tensor,
                       batch_size: int) -> dict:
    """Interleaved step times of every variant at one batch size."""
    pyro.clear_param_store()
    generator = torch.Generator().manual_seed(config.seed)
    x = binarize(images[:batch_size], generator).to(config.device)
    vaes = build_vaes(config, x.shape[1], [v.label for v in chosen])
    steppers = {v.label: make_stepper(v, vaes[v.label], x, config.lr) for v in chosen}
    for step in steppers.values():  # warm-up: JIT compilation, allocator, optimizer state
        for _ in range(3):
            step()
    per_block = steps_for_block(steppers, config.block_seconds)
    timings = time_interleaved(steppers, blocks=config.max_rounds, steps_per_block=per_block,
                               warmup=2, budget_seconds=config.seconds_per_batch_size)
    rows = timing_summary(timings, per_block, BASELINE)
    return {"batch_size": batch_size, "steps_per_block": per_block,
            "rounds": len(timings.wall[BASELINE]) // per_block[BASELINE], "steppers": rows}


# --- where the time goes ---------------------------------------------------------------------
# Functions whose cumulative time cProfile attributes to a part of a training step.
PROFILE_PARTS = {
    "trace model and guide (forward pass, pyro.module, log-densities)": (
        "estimators.py:_get_trace", "get_importance_trace"),
    "– of which pyro.module (parameter registration)": "primitives.py:module",
    "hand-written loss (forward pass, log-densities)": "losses.py:analytic_loss",
    "validation checks (Pyro's and torch.distributions')": "VALIDATION",
    "ELBO from the traces (KL, sums)": ("estimators.py:_differentiable_loss_particle",
                                        "trace_mean_field_elbo.py:_differentiable_loss_particle"),
    "backward": "_tensor.py:backward",
    "optimizer (Pyro's wrapper around torch Adam)": "OPTIMIZER",
    "torch Adam.step": "adam.py:step",
    "zero_grads (Pyro)": "util.py:zero_grads",
}
VALIDATION_FUNCTIONS = ("check_site_shape", "_check_mean_field_requirement",
                        "check_model_guide_match", "warn_if_nan", "warn_if_inf",
                        "check_fully_reparametrized", "_validate_sample", "_validate_args",
                        "check_if_enumerated")


def _cumulative(stats: pstats.Stats, key: str | tuple[str, ...]) -> float:
    """Cumulative seconds of the functions ``key`` names; for a tuple, of the first one that
    ran (a method of :mod:`pyro_vae.estimators`, then the Pyro method it overrides, which
    the override may call in turn)."""
    if isinstance(key, tuple):
        return next((t for t in (_cumulative(stats, k) for k in key) if t), 0.0)
    total = 0.0
    for (filename, _line, name), (_, _, _tottime, cumtime, _) in stats.stats.items():
        if key == "VALIDATION":
            total += cumtime if name in VALIDATION_FUNCTIONS else 0.0
        elif key == "OPTIMIZER":
            if name == "__call__" and ("pyro/optim/optim.py" in filename
                                       or "estimators.py" in filename):
                total += cumtime
        elif f"{Path(filename).name}:{name}" == key or (":" not in key and name == key):
            total += cumtime
    return total


def profile_meanfield(config: OverheadConfig, images: torch.Tensor, batch_size: int) -> dict:
    """cProfile of ``steps`` SVI steps of meanfield with each optimizer: ms per step in each
    part, and the profiled step time of the analytic baseline for scale."""
    pyro.clear_param_store()
    x = binarize(images[:batch_size], torch.Generator().manual_seed(config.seed))
    x = x.to(config.device)
    chosen = [Variant("meanfield [pyro Adam]", "meanfield", pyro_adam=True),
              Variant("meanfield [pyro ELBO]", "meanfield", pyro_elbo=True),
              Variant("meanfield", "meanfield"), Variant(BASELINE, BASELINE)]
    vaes = build_vaes(config, x.shape[1], [v.label for v in chosen])
    out = {}
    for variant in chosen:
        step = make_stepper(variant, vaes[variant.label], x, config.lr)
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
        out[variant.label] = parts
    return {"batch_size": batch_size, "steps": config.profile_steps, "ms_per_step": out}


def validation_ablation(config: OverheadConfig, images: torch.Tensor, batch_size: int) -> dict:
    """Interleaved step times with validation on the first step only (``fit``'s default) and
    on every step."""
    chosen = [Variant(BASELINE, BASELINE),
              Variant("analytic, validated every step", BASELINE, validate_every_step=True),
              Variant("meanfield", "meanfield"),
              Variant("meanfield, validated every step", "meanfield", validate_every_step=True)]
    return measure_batch_size(config, chosen, images, batch_size)


# --- report ----------------------------------------------------------------------------------
def markdown(document: dict) -> str:
    c = document["config"]
    arch = document["network"]
    lines = [
        "# Pyro's overhead: step time against the hand-written PyTorch loss",
        "",
        f"Network {arch}, Bernoulli likelihood, Adam (lr {c['lr']}), one fixed minibatch; "
        f"device {c['device']}, {document['machine']['torch_threads']} torch thread(s), "
        "validation checks (Pyro's and torch's) on each stepper's first step only, as in "
        "`fit`. One step = loss + gradients + Adam update. First table: ratio of "
        "the median step time to `analytic`'s at the same batch size, wall-clock "
        "[quartiles of the per-round ratio] and in CPU time of the process (which leaves out "
        "the time the process waited for a core); second table: median wall-clock ms per "
        "step. Timed on a machine shared with other jobs: the ratios, from interleaved "
        "rounds, are more trustworthy than the absolute times.",
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
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--estimators", nargs="+", help="Pyro estimators to time")
    parser.add_argument("--preset", choices=("pyro", "burda"))
    parser.add_argument("--hidden-sizes", type=int, nargs="+", help="override the preset's")
    parser.add_argument("--latent-dim", type=int, help="override the preset's")
    parser.add_argument("--seconds", type=float, help="interleaved seconds per batch size")
    parser.add_argument("--no-before", action="store_true",
                        help="skip the pyro.optim.Adam twins")
    parser.add_argument("--profile", action="store_true",
                        help="profile meanfield and time the validation checks at batch 32, 128")
    parser.add_argument("--device", nargs="+", default=None,
                        help="cpu and/or cuda (default: cpu, and cuda when present)")
    add_common_arguments(parser, DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = (lambda *a, **k: None) if args.quiet else print
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    images = preprocess(load_dataset("mnist").test_images)
    document = {"command": command_line("benchmarks.overhead", argv), "machine": machine(),
                "results": [], "profiles": [], "validation": []}
    for device in devices:
        config = OverheadConfig(**QUICK) if args.quick else OverheadConfig()
        config.device = device
        if args.batch_sizes:
            config.batch_sizes = tuple(args.batch_sizes)
        if args.estimators:
            config.estimators = tuple(args.estimators)
        if args.preset:
            config.preset = args.preset
        if args.hidden_sizes:
            config.hidden_sizes = tuple(args.hidden_sizes)
        if args.latent_dim:
            config.latent_dim = args.latent_dim
        if args.seconds:
            config.seconds_per_batch_size = args.seconds
        config.before = not args.no_before
        if args.profile and not args.quick:
            config.profile_batch_sizes = (32, 128)
        arch = get_preset(config.preset)
        hidden = config.hidden_sizes or arch.hidden_sizes
        document["network"] = (f"{images.shape[1]}-" + "-".join(map(str, hidden))
                               + f"-{config.latent_dim or arch.latent_dim} {arch.activation}")
        document["config"] = {**config.__dict__}
        chosen = variants(config.estimators, before=config.before)
        for batch_size in config.batch_sizes:
            result = measure_batch_size(config, chosen, images, batch_size)
            result["device"] = device
            document["results"].append(result)
            log(f"{device} B={batch_size}: " + ", ".join(
                f"{label} {s['median_ms']:.2f} ms ({s['ratio']:.2f}×)"
                for label, s in result["steppers"].items()))
            write_results(args.out, "overhead", document, markdown(document))
        for batch_size in config.profile_batch_sizes:
            document["profiles"].append({**profile_meanfield(config, images, batch_size),
                                         "device": device})
            document["validation"].append({**validation_ablation(config, images, batch_size),
                                           "device": device})
            write_results(args.out, "overhead", document, markdown(document))
    if not args.quiet:
        print(markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
