"""Every estimator of the registry side by side: the same network, data, seed and budget.

    python -m benchmarks.compare_estimators                      # the table in README.md
    python -m benchmarks.compare_estimators --seconds 60         # a wall-clock budget instead
    python -m benchmarks.compare_estimators --preset conv --estimators meanfield iwae:5
    python benchmarks/compare_estimators.py --quick --out /tmp/compare   # smoke run

Every estimator in :data:`pyro_vae.objectives.ESTIMATORS` runs, the multi-sample ones (``iwae``,
``dreg``, ``renyi``, ``rws``, ``miwae``, ``ciwae``, ``piwae``, any whose bound is not the ELBO)
once per K in ``--iwae-ks`` (5 and 50), with the registry's default options; ``--estimators``
picks some, with K and options: ``renyi:5,alpha=0.2 miwae:8,num_estimates=8``. For each:

1. **Step time.** One training step on one fixed minibatch, timed in interleaved rounds with
   all the other estimators (each on its own copy of the same initial network), so that the
   load of a shared machine hits all alike: the median, and its ratio to ``analytic``'s in
   the same run, with the quartiles of the round-by-round ratio.
2. **Training** with :func:`pyro_vae.fit.fit`, one epoch at a time (resuming from the
   checkpoint, which equals a straight run), for ``--epochs`` epochs or until ``--seconds``
   of training have passed (whole epochs). After each epoch, outside the training clock, the
   IWAE_K estimate of log p(x) with a small K (``curve_samples``) on the evaluation images.
3. **Evaluation** after training: train bound and test ELBO of the last epoch, test log p(x)
   with K = ``--eval-samples`` (5000) on the first ``--eval-size`` test images (the same
   images for all, so differences are paired), its Monte Carlo standard error and the
   standard error from the choice of images, and the number of active units.

Writes ``OUT/compare.json`` (everything, with per-epoch curves), ``OUT/compare.md`` (the
table) and ``OUT/compare.png`` (test ELBO and log p(x) against epochs and wall-clock time).
All figures are nats per datapoint; an ELBO or IWAE_K is a lower bound (higher is better).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file, python benchmarks/compare_estimators.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import tempfile
import time
from dataclasses import dataclass

import matplotlib
import pyro
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

from benchmarks.common import (
    RESULTS,
    Spec,
    add_common_arguments,
    command_line,
    count_active_units,
    evaluate_log_px,
    evaluate_log_px_ais,
    fmt,
    identical_vaes,
    machine,
    make_trainer,
    markdown_table,
    measure_steps,
    output,
    paired_difference,
    parse_spec,
    registry_specs,
    run_main,
    save_figure,
    stepper,
    write_results,
)
from pyro_vae.build import load_data
from pyro_vae.commands.options import Parser, dataset_name, positive_float, positive_int, seed
from pyro_vae.config import TrainConfig
from pyro_vae.data import binarize
from pyro_vae.fit import fit
from pyro_vae.models.presets import get_preset
from pyro_vae.progress import Progress
from pyro_vae.threads import set_threads

DEFAULT_OUT = RESULTS / "compare"
BASELINE = Spec("analytic", 1)


@dataclass
class CompareConfig:
    iwae_ks: tuple[int, ...] = (5, 50)  # K of every IWAE_K estimator
    estimators: tuple[str, ...] | None = None  # None: the whole registry
    preset: str = "pyro"
    dataset: str = "mnist"  # or fashion-mnist, or an .npz file (as pyro-vae train --dataset)
    hidden_sizes: tuple[int, ...] | None = (200,)  # smaller than the preset's 400: K = 50
    # decodes 50 samples per image; None: the preset's
    latent_dim: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    epochs: int | None = 5  # the budget, in epochs ...
    seconds: float | None = None  # ... or in seconds of training (whole epochs)
    train_size: int | None = 10_000  # the first N training images
    test_size: int = 1000  # test images of the per-epoch test ELBO and the active units
    eval_size: int = 200  # test images of the log p(x) estimates (paired across estimators)
    eval_samples: int = 5000  # K of the final log p(x) estimate
    curve_samples: int = 100  # K of the per-epoch log p(x) estimate
    ais_steps: int = 100  # T of the AIS estimate on the same images (a yardstick that does not
    ais_chains: int = 16  # lean on each estimator's own encoder, as importance sampling does)
    timing_seconds: float = 60.0  # budget of the interleaved step timing
    block_seconds: float = 0.3
    seed: int = 0


QUICK = dict(hidden_sizes=(16,), latent_dim=4, batch_size=32, epochs=2, train_size=128,
             test_size=48, eval_size=16, eval_samples=100, curve_samples=10, timing_seconds=1.0,
             block_seconds=0.01, ais_steps=5, ais_chains=2)


PRESETS = ("pyro", "conv")  # one stochastic layer: what the step timing builds


def network_name(config: CompareConfig, x_dim: int) -> str:
    arch = get_preset(config.preset)
    hidden = config.hidden_sizes or arch.hidden_sizes[0]
    kind = "convolutional, channels " if config.preset == "conv" else ""
    return f"{x_dim}-{kind}{'-'.join(map(str, hidden))}-{config.latent_dim} {arch.activation}"


def train_config(config: CompareConfig, spec: Spec, epochs: int) -> TrainConfig:
    return TrainConfig(
        dataset=config.dataset, preset=config.preset, hidden_sizes=config.hidden_sizes,
        latent_dim=config.latent_dim, estimator=spec.name, num_particles=spec.k,
        estimator_options=dict(spec.options),
        batch_size=config.batch_size, lr=config.lr, epochs=epochs,
        train_size=config.train_size, test_size=config.test_size, seed=config.seed,
        extra={"benchmark": "compare_estimators"},
    )


def time_steps(config: CompareConfig, specs: list[Spec], data) -> dict:
    """Interleaved step times of every estimator on one fixed minibatch, each on its own copy
    of the same initial network and validated on its first step, as in ``fit``."""
    pyro.clear_param_store()
    x = binarize(data.train[: config.batch_size], torch.Generator().manual_seed(config.seed))
    sizes = {} if config.hidden_sizes is None else {"hidden_sizes": config.hidden_sizes}
    vaes = identical_vaes([s.label for s in specs], x.shape[1], seed=config.seed,
                          preset=config.preset, image_shape=data.dataset.image_shape,
                          latent_dim=config.latent_dim, **sizes)
    steppers = {s.label: stepper(make_trainer(s, vaes[s.label], config.lr), x) for s in specs}
    times = measure_steps(steppers, baseline=BASELINE.label, block_seconds=config.block_seconds,
                          budget_seconds=config.timing_seconds)
    pyro.clear_param_store()
    return times.summary


def train(config: CompareConfig, spec: Spec, data, run_dir: Path, eval_x, *, log) -> dict:
    """Train ``spec`` epoch by epoch within the budget; the fit result and the curve."""
    curve = []
    epoch = 0
    while True:
        epoch += 1
        # fit leaves the previous run's parameters in Pyro's param store, under the same
        # names; a JIT-compiled ELBO would take them for this VAE's.
        pyro.clear_param_store()
        result = fit(train_config(config, spec, epoch), run_dir, resume=epoch > 1,
                     progress=False, data=data, log=lambda *a, **k: None)
        record = result.history[-1]
        point = evaluate_log_px(result.vae, eval_x, config.curve_samples, seed=config.seed)
        log(f"{spec.label}: epoch {epoch}, {record['wall_seconds']:.0f} s, test ELBO "
            f"{record['test_elbo']:.2f}, log p(x) {point['log_px_mean']:.2f} (K = "
            f"{config.curve_samples}) nats per datapoint")
        curve.append({"epoch": epoch, "wall_seconds": record["wall_seconds"],
                      "test_elbo": record["test_elbo"],
                      "train_objective_nats": record["train_objective_nats"],
                      "log_px_mean": point["log_px_mean"], "log_px_samples": config.curve_samples})
        if config.epochs is not None and epoch >= config.epochs:
            break
        if config.seconds is not None and record["wall_seconds"] >= config.seconds:
            break
    return {"result": result, "curve": curve}


def markdown(document: dict) -> str:
    c = document["config"]
    budget = (f"{c['epochs']} epochs" if c["epochs"] is not None
              else f"{c['seconds']:g} s of training (whole epochs)")
    load = document["machine"]["load_average_1_5_15_min"]
    lines = [
        "# The registry's estimators side by side",
        "",
        f"Network {document['network']}, Bernoulli likelihood, dynamically binarized "
        f"{c['dataset']} (first {document['train_images']} training images), "
        f"batch {c['batch_size']}, Adam lr {c['lr']}, seed {c['seed']}, budget {budget} each. "
        "Step: median ms of one training step on one minibatch (wall-clock), timed in "
        "interleaved rounds; × = ratio to analytic's [quartiles of the per-round ratio], and "
        "the same ratio in CPU time of the process (without the time spent waiting for a "
        "core). Train objective: its value over the last epoch (the bound it names: ELBO, "
        "IWAE_K, VR, MIWAE, ...); test ELBO: analytic-KL "
        f"ELBO on {document['test_images']} test images; log p(x): IWAE_K estimate with K = "
        f"{c['eval_samples']} on the first {c['eval_size']} test images, ± Monte Carlo "
        "standard error (standard error from the choice of images); AIS: the AIS estimate "
        f"(T = {c['ais_steps']}, {c['ais_chains']} chains, from the encoder) on the same "
        "images, a yardstick that does not lean on each estimator's own encoder; Δ analytic: "
        "paired difference to analytic's log p(x) on the same images ± its standard error, by "
        "IS and by AIS. Nats per "
        "datapoint, higher is better; timed on a machine shared with other jobs (load average "
        f"at the start: {'—' if load is None else f'{load[0]:.2f}'}).",
        "",
        f"Command: `{document['command']}`",
        "",
    ]
    rows = []
    for r in document["results"]:
        t = r["step"]
        delta = r.get("log_px_minus_analytic")
        ais_delta = r.get("ais_log_px_minus_analytic")
        rows.append([
            r["label"], r["train_objective"], f"{t['median_ms']:.2f}",
            f"{t['ratio']:.2f} [{t['round_ratio_q1']:.2f}–{t['round_ratio_q3']:.2f}]",
            f"{t['cpu_ratio']:.2f}",
            str(r["epochs"]), f"{r['train_seconds']:.0f}", fmt(r["train_objective_nats"]),
            fmt(r["test_elbo"]),
            f"{r['log_px_mean']:.2f} ± {r['log_px_mean_mc_stderr']:.2f} "
            f"({r['log_px_data_stderr']:.2f})",
            "—" if delta is None else f"{delta['mean']:+.2f} ± {delta['stderr']:.2f}",
            f"{r['ais_log_px_mean']:.2f} ± {r['ais_log_px_mean_mc_stderr']:.2f}",
            "—" if ais_delta is None else f"{ais_delta['mean']:+.2f} ± {ais_delta['stderr']:.2f}",
            str(r["active_units"]),
        ])
    lines.append(markdown_table(
        ["estimator", "objective", "step ms", "× analytic", "× (CPU time)", "epochs", "train s",
         "train objective", "test ELBO", f"test log p(x), K={c['eval_samples']}", "Δ analytic",
         f"test log p(x), AIS T={c['ais_steps']}", "Δ analytic (AIS)", "active units"],
        rows))
    return "\n".join(lines)


def plot(document: dict, path: Path) -> None:
    """Test ELBO and per-epoch log p(x) against epochs and against training seconds (log
    scale); one colour per estimator, the line style by K (1 solid, then dashed, dotted)."""
    fig = Figure(figsize=(11, 8))
    axes = fig.subplots(2, 2, sharey="row")
    k = document["config"]["curve_samples"]
    colours = matplotlib.colormaps["tab10"]
    names = list(dict.fromkeys(r["estimator"] for r in document["results"]))
    ks = sorted({r["K"] for r in document["results"]})
    for r in document["results"]:
        style = dict(color=colours(names.index(r["estimator"]) % 10), marker="o", ms=3,
                     linestyle=("-", "--", ":", "-.")[ks.index(r["K"]) % 4], label=r["label"])
        epochs = [p["epoch"] for p in r["curve"]]
        seconds = [p["wall_seconds"] for p in r["curve"]]
        for row, key in enumerate(("test_elbo", "log_px_mean")):
            values = [p[key] for p in r["curve"]]
            axes[row, 0].plot(epochs, values, **style)
            axes[row, 1].plot(seconds, values, **style)
    axes[1, 0].set_xlabel("epoch")
    axes[1, 1].set_xlabel("training wall-clock seconds (log scale; shared machine)")
    for ax in axes[:, 0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
    for ax in axes[:, 1]:
        ax.set_xscale("log")
        # decades labelled, the ticks between them unlabelled: no overlapping numbers
        ax.xaxis.set_major_locator(LogLocator(base=10))
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0, 0].set_ylabel("test ELBO (bound), nats per datapoint")
    axes[1, 0].set_ylabel(f"test log p(x) estimate (IWAE, K={k}), nats")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    axes[1, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    default = CompareConfig()
    parser.add_argument("--estimators", nargs="+", metavar="NAME[:K][,OPTION=VALUE]",
                        help="a subset, e.g. iwae:50 renyi:5,alpha=0.2 (default: the whole "
                             "registry; analytic is always run)")
    parser.add_argument("--iwae-ks", type=positive_int, nargs="+",
                        help="K of the multi-sample estimators (default "
                             f"{' '.join(map(str, default.iwae_ks))})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=positive_int, help=f"epochs per estimator (default "
                                                   f"{default.epochs})")
    budget.add_argument("--seconds", type=positive_float, help="training seconds per estimator "
                        "(default: none, --epochs)")
    parser.add_argument("--train-size", type=positive_int,
                        help=f"training images (default {default.train_size})")
    parser.add_argument("--eval-size", type=positive_int,
                        help=f"test images of the log p(x) estimates (default {default.eval_size})")
    parser.add_argument("--eval-samples", type=positive_int,
                        help=f"K of the final log p(x) estimate (default {default.eval_samples})")
    parser.add_argument("--preset", choices=PRESETS, default=default.preset,
                        help="the network: pyro, an MLP with one hidden layer of 200 units "
                             "(default), or conv, the convolutional preset's")
    parser.add_argument("--dataset", type=dataset_name, default=default.dataset,
                        metavar="NAME|FILE.npz", help="the data set, as pyro-vae train "
                        f"--dataset takes it (default {default.dataset})")
    parser.add_argument("--seed", type=seed, default=0, help="default 0")
    add_common_arguments(parser, DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = CompareConfig(**QUICK) if args.quick else CompareConfig()
    for name in ("train_size", "eval_size", "eval_samples"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.epochs is not None or args.seconds is not None:
        config.epochs, config.seconds = args.epochs, args.seconds
    if args.iwae_ks:
        config.iwae_ks = tuple(args.iwae_ks)
    if args.estimators:
        config.estimators = tuple(args.estimators)
    config.seed, config.dataset = args.seed, args.dataset
    if args.preset != config.preset:  # the preset's own network sizes, but in a quick run
        config.preset = args.preset
        config.hidden_sizes = config.hidden_sizes if args.quick else None
    set_threads(args.threads)
    log, progress = output(args)

    specs = ([parse_spec(s) for s in config.estimators] if config.estimators
             else registry_specs(config.iwae_ks))
    specs = [BASELINE] + [s for s in specs if s != BASELINE]
    data = load_data(train_config(config, BASELINE, 1))
    eval_x = data.test[: config.eval_size]
    document = {
        "units": "nats per datapoint; test_elbo and train_objective_nats are lower bounds on "
                 "log p(x) (train_objective names which), log_px_mean an IWAE_K estimate of it",
        "command": command_line("benchmarks.compare_estimators", argv),
        "config": {**config.__dict__, "estimators": [s.label for s in specs]},
        "network": network_name(config, data.train.shape[1]),
        "train_images": int(data.train.shape[0]), "test_images": int(data.test.shape[0]),
        "machine": machine(), "results": [],
    }
    log(f"timing one step of {len(specs)} estimators, interleaved, "
        f"{config.timing_seconds:g} s")
    steps = time_steps(config, specs, data)
    baseline_log_px = baseline_ais = None
    with tempfile.TemporaryDirectory() as runs, \
            Progress(len(specs), "compare", "estimators", mode=progress) as bar:
        for spec in specs:
            t0 = time.perf_counter()
            trained = train(config, spec, data, Path(runs) / spec.slug, eval_x, log=log)
            vae, history = trained["result"].vae, trained["result"].history
            final = evaluate_log_px(vae, eval_x, config.eval_samples, seed=config.seed)
            per_datapoint = final.pop("log_px_per_datapoint")
            final.update(evaluate_log_px_ais(vae, eval_x, steps=config.ais_steps,
                                             chains=config.ais_chains, seed=config.seed))
            ais_per_datapoint = final.pop("ais_log_px_per_datapoint")
            if spec == BASELINE:
                baseline_log_px, baseline_ais = per_datapoint, ais_per_datapoint
            record = {
                "estimator": spec.name, "K": spec.k, "options": spec.all_options,
                "label": spec.label,
                "bound": spec.bound.value, "step": steps[spec.label],
                "epochs": len(history), "train_seconds": history[-1]["wall_seconds"],
                "train_objective": history[-1]["train_objective"],
                "train_objective_nats": history[-1]["train_objective_nats"],
                "test_elbo": history[-1]["test_elbo"], **final,
                "log_px_minus_analytic": paired_difference(per_datapoint, baseline_log_px),
                "ais_log_px_minus_analytic": paired_difference(ais_per_datapoint,
                                                               baseline_ais),
                "active_units": count_active_units(vae, data.test),
                "curve": trained["curve"], "seconds_in_all": time.perf_counter() - t0,
            }
            document["results"].append(record)
            log(f"{spec.label}: {record['epochs']} epochs, {record['train_seconds']:.0f} s; "
                f"test ELBO {record['test_elbo']:.2f}, log p(x) {record['log_px_mean']:.2f} nats")
            write_results(args.out, "compare", document, markdown(document))
            bar.update(1)
    document["load_average_end"] = machine()["load_average_1_5_15_min"]
    write_results(args.out, "compare", document, markdown(document))
    plot(document, args.out / "compare.png")
    log(markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, "benchmarks.compare_estimators"))
