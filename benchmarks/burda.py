"""Reproduce Table 1 of Burda, Grosse & Salakhutdinov (2016), one or two stochastic layers:
test log p(x) of the VAE and the IWAE (K = 5, 50) on dynamically binarized MNIST.

    python -m benchmarks.burda --minutes 60 --estimators meanfield --out runs/burda_60min
    python -m benchmarks.burda --epochs 3280                   # the paper's full schedule
    python -m benchmarks.burda --preset burda2 --minutes 60 --estimators iwae:5
    python -m benchmarks.burda --flow iaf --flow-layers 2 --minutes 60 --estimators iwae:5
    python benchmarks/burda.py --quick --out /tmp/burda        # smoke run

The paper's setup, as ``TrainConfig(preset="burda", batch_size=20, lr_schedule="burda")``:
784-200-200-50 tanh encoder and decoder (``--preset burda2``: 784-200-200-100-100-100-50, two
stochastic layers; ``--flow iaf``: the guide pushed through inverse autoregressive flows, an
addition to the paper), decoder output bias at the logit of the training
mean, Adam (β = 0.9, 0.999, ε = 1e-4 in the paper; here torch's default ε = 1e-8), batch 20,
learning rate 10^(−3 − i/7) over passes i = 0..7 of 3^i epochs, 3280 epochs in all
(``--batch-size`` changes the batch, not the schedule in epochs). A budget
(``--epochs`` or ``--minutes``) shrinks every pass in proportion, or with
``--lr-schedule burda-even`` gives the same eight rates an equal share of the epochs each
(a short budget then is not spent mostly at the last rate); ``--minutes`` times a
one-minute probe of the estimator and plans the number of epochs to take 90 % of the budget
(the margin absorbs the drift of a shared machine's speed); the realized training time
varies with the machine's load and is reported beside each number.

The figure of merit is the IWAE_K estimate of log p(x) with K = 5000 (Burda et al., sec. 5.1)
on the 10 000 test images binarized once with a fixed seed; the paper reports it as the
negative log-likelihood NLL = −log p(x), nats per datapoint. Writes per estimator the run
folder ``OUT/<estimator>/`` (``metrics.json``, ``checkpoint.pt``), and ``OUT/burda.json`` and
``OUT/burda.md`` (``OUT`` defaults to ``runs/burda``). Running the same command again resumes
unfinished training from the checkpoints (with the number of epochs chosen the first time) and
evaluates again.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file, python benchmarks/burda.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import math
import time
from dataclasses import dataclass

import pyro
import torch

from benchmarks.common import (
    Spec,
    add_common_arguments,
    command_line,
    count_active_units,
    evaluate_log_px,
    evaluate_log_px_ais,
    fit_progress,
    fmt,
    machine,
    markdown_table,
    output,
    paired_difference,
    parse_spec,
    run_main,
    seconds_per_epoch,
    write_results,
)
from pyro_vae.build import build_vae, check_training_memory, load_data
from pyro_vae.commands.options import Parser, positive_float, positive_int, seed
from pyro_vae.config import LR_SCHEDULES, TrainConfig
from pyro_vae.fit import fit
from pyro_vae.runs import RunFolder
from pyro_vae.threads import set_threads

# Long, resumable runs (a run folder per estimator, checkpoints every epoch) go under runs/,
# which git ignores; benchmarks/README.md's tables archive each run's burda.json in results/.
DEFAULT_OUT = Path("runs") / "burda"
FULL_EPOCHS = 3280  # Σ_{i=0}^{7} 3^i
# --minutes plans the epochs to take this fraction of the budget by a probe's speed: the speed
# of a shared machine drifts within minutes (benchmarks/README.md), and training must not
# overrun.
BUDGET_MARGIN = 0.9

# Burda et al. (2016), Table 1, MNIST, one stochastic layer: the VAE rows (the ELBO with k
# samples, our ``meanfield`` with K = k) and the IWAE rows. (NLL in nats, active units.)
PAPER = {
    Spec("meanfield", 1): ("VAE k=1", 86.76, 19),
    Spec("meanfield", 5): ("VAE k=5", 86.47, 20),
    Spec("meanfield", 50): ("VAE k=50", 86.35, 20),
    Spec("iwae", 1): ("IWAE k=1", 86.76, 19),
    Spec("iwae", 5): ("IWAE k=5", 85.54, 22),
    Spec("iwae", 50): ("IWAE k=50", 84.78, 25),
}
# The same table, two stochastic layers (active units of the first layer, of 100).
PAPER_TWO_LAYERS = {
    Spec("meanfield", 1): ("VAE k=1, 2 layers", 85.33, None),
    Spec("iwae", 5): ("IWAE k=5, 2 layers", 83.89, None),
    Spec("iwae", 50): ("IWAE k=50, 2 layers", 82.90, None),
}


@dataclass
class BurdaConfig:
    estimators: tuple[str, ...] = ("meanfield", "iwae:5", "iwae:50")
    epochs: int | None = None  # None with minutes None: the paper's 3280
    minutes: float | None = None  # training budget per estimator, wall-clock
    eval_samples: int = 5000  # K of the log p(x) estimate
    eval_size: int | None = None  # test images (per-epoch ELBO and log p(x)); None: all
    train_size: int | None = None  # None: all 60 000 training images
    batch_size: int = 20  # the paper's; larger batches take fewer, cheaper steps per epoch
    lr_schedule: str = "burda"  # the paper's; or "burda-even" (see pyro_vae.config)
    lr: float = 1e-3  # the first rate of the schedule (the paper's 10^-3)
    seed: int = 0
    device: str = "cpu"
    preset: str = "burda"  # or "burda2": two stochastic layers
    flow: str | None = None  # "iaf": a flow guide (not in the paper)
    flow_layers: int = 2  # TrainConfig's default
    ais_size: int = 1000  # the first N test images get an AIS estimate too
    ais_steps: int = 100  # its T (16 chains, 5 leapfrog steps, from the encoder)


QUICK = dict(estimators=("meanfield", "iwae:5"), epochs=2, eval_samples=50, eval_size=100,
             train_size=400, ais_size=10, ais_steps=5)


def train_config(config: BurdaConfig, spec: Spec, epochs: int) -> TrainConfig:
    """The paper's training configuration for ``spec`` over ``epochs`` epochs."""
    return TrainConfig(
        dataset="mnist", preset=config.preset, flow=config.flow,
        flow_layers=config.flow_layers if config.flow else TrainConfig.flow_layers,
        likelihood="bernoulli", estimator=spec.name, estimator_options=dict(spec.options),
        num_particles=spec.k, batch_size=config.batch_size, lr=config.lr,
        lr_schedule=config.lr_schedule, epochs=epochs,
        train_size=config.train_size, test_size=config.eval_size, seed=config.seed,
        device=config.device, extra={"benchmark": "burda", "budget_minutes": config.minutes},
    )


def choose_epochs(config: BurdaConfig, spec: Spec, data, run: RunFolder, log) -> tuple[int, str]:
    """Epochs for ``spec`` and how they were chosen: those of an existing checkpoint, the
    ``--epochs`` given, or as many as fit ``--minutes`` by a timed probe."""
    if run.checkpoint.exists():
        return run.load_checkpoint().config.epochs, "from the checkpoint"
    if config.minutes is None:
        return config.epochs or FULL_EPOCHS, "given"
    probe = train_config(config, spec, 1)
    epoch_seconds = seconds_per_epoch(probe, data, probe_seconds=60.0)
    epochs = max(1, int(BUDGET_MARGIN * config.minutes * 60 / epoch_seconds))
    log(f"{spec.label}: about {epoch_seconds:.1f} s per epoch on this machine now, so "
        f"{epochs} epochs should take {BUDGET_MARGIN:.0%} of {config.minutes:g} minutes")
    return epochs, (f"{config.minutes:g} min budget: probe {epoch_seconds:.1f} s/epoch, "
                    f"planned for {BUDGET_MARGIN:.0%} of it")


def run_one(config: BurdaConfig, spec: Spec, data, out: Path, *, progress: str, log) -> dict:
    """Train (or resume) one estimator, then estimate its test log p(x)."""
    run = RunFolder(out / spec.slug)
    epochs, how = choose_epochs(config, spec, data, run, log)
    pyro.clear_param_store()  # no other run's parameters under this VAE's names (JIT ELBOs)
    result = fit(train_config(config, spec, epochs), run, resume=run.checkpoint.exists(),
                 progress=fit_progress(progress), data=data, log=log)
    history = result.history
    log(f"{spec.label}: estimating log p(x) with K = {config.eval_samples} on "
        f"{data.test.shape[0]} test images")
    evaluation = evaluate_log_px(result.vae, data.test, config.eval_samples, seed=config.seed,
                                 progress=progress)
    is_per_datapoint = evaluation.pop("log_px_per_datapoint")
    n_ais = min(config.ais_size, data.test.shape[0])
    log(f"{spec.label}: AIS on the first {n_ais} test images, T = {config.ais_steps}")
    evaluation.update(evaluate_log_px_ais(result.vae, data.test[:n_ais], steps=config.ais_steps,
                                          seed=config.seed, progress=progress))
    evaluation["ais_minus_is_same_images"] = paired_difference(
        evaluation.pop("ais_log_px_per_datapoint"), is_per_datapoint[:n_ais])
    paper = None if config.flow else (PAPER_TWO_LAYERS if config.preset == "burda2"
                                       else PAPER).get(spec)
    return {
        "estimator": spec.name, "K": spec.k, "epochs": epochs,
        "label": spec.label + ("" if config.preset == "burda" else f", {config.preset}")
        + (f", {config.flow} x{config.flow_layers}" if config.flow else ""),
        "batch_size": config.batch_size, "lr_schedule": config.lr_schedule, "lr": config.lr,
        "epochs_chosen": how,
        "train_seconds": history[-1]["wall_seconds"],  # training + per-epoch test ELBO
        "train_objective": history[-1]["train_objective"],
        "train_objective_nats": history[-1]["train_objective_nats"],
        "test_elbo": history[-1]["test_elbo"],
        **evaluation,
        "nll": -evaluation["log_px_mean"],
        "ais_nll": -evaluation["ais_log_px_mean"],
        "active_units": count_active_units(result.vae, data.test),
        "paper": None if paper is None else {"row": paper[0], "nll": paper[1],
                                             "active_units": paper[2]},
        "run_dir": str(run.path),
    }


def markdown(document: dict) -> str:
    c = document["config"]
    lines = [
        "# Burda et al. (2016), Table 1: test NLL on MNIST",
        "",
        "NLL = −log p(x), the IWAE_K estimate with K = "
        f"{c['eval_samples']} on {document['test_images']} binarized test images (an upper "
        "bound on the true NLL in expectation), nats per datapoint, ± its Monte Carlo standard "
        "error; in brackets the standard error from the choice of test images (sd / √N). "
        f"AIS NLL: −log p(x) by AIS (T = {c['ais_steps']}, 16 chains, from the encoder) on "
        f"the first {c['ais_size']} test images, and in brackets its log p(x) minus that of IS "
        "on the same images, paired (AIS is the tighter bound, and does not lean on the "
        "encoder). Test ELBO: the analytic-KL ELBO on the test set after the last "
        "epoch (nats, higher is better). Training time: wall-clock seconds of training with "
        "the per-epoch test ELBO, on a machine shared with other jobs.",
        "",
        f"Command: `{document['command']}`",
        "",
    ]
    rows = []
    for r in document["results"]:
        paper = r["paper"] or {}
        rows.append([
            r["label"], str(r["epochs"]), str(r["batch_size"]),
            f"{r['lr_schedule']} from {r['lr']:g}", f"{r['train_seconds'] / 60:.1f}",
            fmt(r["test_elbo"]),
            f"{r['nll']:.2f} ± {r['log_px_mean_mc_stderr']:.2f} ({r['log_px_data_stderr']:.2f})",
            f"{r['ais_nll']:.2f} (AIS − IS {r['ais_minus_is_same_images']['mean']:+.2f} ± "
            f"{r['ais_minus_is_same_images']['stderr']:.2f})",
            str(r["active_units"]), paper.get("row", "—"), fmt(paper.get("nll")),
            str(paper.get("active_units") or "—"),
            fmt(r["nll"] - paper["nll"]) if paper else "—",
        ])
    lines.append(markdown_table(
        ["estimator", "epochs", "batch", "learning rate", "training min", "test ELBO",
         f"test NLL (K={c['eval_samples']})", f"AIS NLL, {c['ais_size']} images",
         "active units", "paper row", "paper NLL",
         "paper active units", "NLL − paper"],
        rows))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(description=__doc__.split("\n\n")[0])
    default = BurdaConfig()
    parser.add_argument("--estimators", nargs="+", metavar="NAME[:K]",
                        help=f"estimators with their K (default {' '.join(default.estimators)})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=positive_int,
                        help=f"epochs per estimator (default: the paper's {FULL_EPOCHS})")
    budget.add_argument("--minutes", type=positive_float, help="training minutes per estimator "
                        "(default: none, --epochs)")
    parser.add_argument("--eval-samples", type=positive_int,
                        help=f"K of the log p(x) estimate (default {default.eval_samples})")
    parser.add_argument("--eval-size", type=positive_int,
                        help="test images evaluated (default: all)")
    parser.add_argument("--train-size", type=positive_int,
                        help="training images (default: all)")
    parser.add_argument("--batch-size", type=positive_int,
                        help=f"minibatch size (default: the paper's {default.batch_size}); the "
                             "schedule stays in epochs")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES[1:],
                        help="burda (the paper's, default) or burda-even (equal passes)")
    parser.add_argument("--lr", type=positive_float,
                        help=f"first learning rate (default: the paper's {default.lr:g})")
    parser.add_argument("--preset", choices=("burda", "burda2"), default="burda",
                        help="burda: one stochastic layer (default); burda2: two")
    parser.add_argument("--flow", choices=("iaf",), help="a flow guide (default: none)")
    parser.add_argument("--flow-layers", type=positive_int, default=TrainConfig.flow_layers,
                        help=f"transforms of the flow guide (default {TrainConfig.flow_layers})")
    parser.add_argument("--seed", type=seed, default=0, help="default 0")
    parser.add_argument("--device", default="cpu", help="default cpu")
    add_common_arguments(parser, DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = BurdaConfig(**QUICK) if args.quick else BurdaConfig()
    for name in ("epochs", "minutes", "eval_samples", "eval_size", "train_size", "batch_size",
                 "lr_schedule", "lr"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.minutes is not None:
        config.epochs = None
    if args.estimators:
        config.estimators = tuple(args.estimators)
    config.seed, config.device = args.seed, args.device
    config.preset, config.flow, config.flow_layers = args.preset, args.flow, args.flow_layers
    specs = [parse_spec(s) for s in config.estimators]
    for spec in specs:  # every row's model, estimator and memory, before the first trains
        row_config = train_config(config, spec, 1).validate()
        with torch.device("meta"):  # sizes only
            model = build_vae(row_config, 28 * 28, (28, 28))
        check_training_memory(row_config, model, config.device)
    set_threads(args.threads)
    log, progress = output(args)
    pyro.set_rng_seed(config.seed)

    data = load_data(train_config(config, specs[0], 1))
    document = {
        "units": "nats per datapoint; nll = -log_px_mean, log_px_mean an IWAE_K estimate of "
                 "log p(x); test_elbo and train_objective_nats lower bounds on it",
        "command": command_line("benchmarks.burda", argv),
        "config": {**config.__dict__, "estimators": list(config.estimators)},
        "test_images": data.test.shape[0], "machine": machine(), "results": [],
    }
    t0 = time.perf_counter()
    for spec in specs:
        result = run_one(config, spec, data, args.out, progress=progress, log=log)
        document["results"].append(result)
        document["total_seconds"] = time.perf_counter() - t0
        document["load_average_end"] = machine()["load_average_1_5_15_min"]
        write_results(args.out, "burda", document, markdown(document))  # after every estimator
        log(f"{spec.label}: test NLL {result['nll']:.2f} ± {result['log_px_mean_mc_stderr']:.2f}"
            f" nats (K = {config.eval_samples}) after {result['epochs']} epochs, "
            f"{result['train_seconds'] / 60:.1f} min of training")
    log(markdown(document))
    return 0 if all(math.isfinite(r["nll"]) for r in document["results"]) else 1


if __name__ == "__main__":
    raise SystemExit(run_main(main, "benchmarks.burda"))
