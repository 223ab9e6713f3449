"""Evaluate a checkpoint: log p(x) by importance sampling, with standard errors and PSIS k-hat.

Rebuilds the test set exactly as training did (the same data set, test size and, for the
Bernoulli likelihood, the same fixed-seed binarization), draws K importance samples per test
image from the encoder, and writes a JSON report (nats per datapoint): the IWAE_K estimate of
log p(x) (a lower bound, biased low, see docs/evaluation.md), its Monte Carlo standard error,
the Pareto k-hat summary, the test ELBO (on the same K samples, and as training reports it),
the gap log p(x) - ELBO, the KL to the prior per latent dimension and the active units.

Example: pyro-vae evaluate runs/meanfield -K 5000
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path

from pyro_vae.commands.options import existing_path, positive_float, positive_int, seed
from pyro_vae.config import check_device, load_data
from pyro_vae.evaluation import ReliabilityWarning, evaluate, mean_elbo
from pyro_vae.runs import RunFolder, load_checkpoint, vae_from_checkpoint


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=existing_path, metavar="CHECKPOINT",
                   help="a checkpoint.pt, or the run folder that holds one")
    p.add_argument("--importance-samples", "-K", type=positive_int, default=5000,
                   metavar="K", help="importance samples per test image (default: 5000)")
    p.add_argument("--data-dir", help="folder with the IDX files (default: the one the "
                   "checkpoint was trained with, else $PYRO_VAE_DATA or the packaged copy)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--test-size", type=positive_int, metavar="N",
                   help="use only the first N test images (default: the checkpoint's test set)")
    p.add_argument("--seed", type=seed, default=0,
                   help="seed of the importance samples (default: 0)")
    p.add_argument("--memory-mb", type=positive_float, default=128.0,
                   help="approximate bound on the working memory of each worker thread, MB "
                   "(default: 128)")
    p.add_argument("--no-psis", action="store_true", help="skip the Pareto k-hat diagnostic")
    p.add_argument("--output", "-o", type=Path, metavar="FILE",
                   help="JSON report (default: evaluation.json in the run folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def run(args) -> int:
    device = check_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint)
    vae, _ = vae_from_checkpoint(checkpoint, device=device)
    config = dataclasses.replace(checkpoint.config, device=str(device))
    if args.data_dir is not None:
        config.data_dir = args.data_dir
    if args.test_size is not None:
        config.test_size = args.test_size
    data = load_data(config, train=False)
    vae.check_data(data.test, where=f"{data.dataset.source} test set")
    n, K = data.test.shape[0], args.importance_samples
    print(f"evaluating {checkpoint.path} (epoch {checkpoint.epoch}) on {n} {data.dataset.name} "
          f"test images with K = {K} importance samples each", file=sys.stderr)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReliabilityWarning)  # listed in the report instead
        report = evaluate(vae, data.test, num_samples=K, seed=args.seed,
                          memory_mb=args.memory_mb, pareto_k=not args.no_psis,
                          progress="off" if args.quiet else "auto")
    training_elbo = mean_elbo(vae, data.test, batch_size=config.eval_batch_size)
    report = {
        "checkpoint": str(checkpoint.path),
        "epoch": checkpoint.epoch,
        "dataset": data.dataset.name,
        "data_source": data.dataset.source,
        "likelihood": config.likelihood,
        "device": str(device),
        "wall_seconds": time.perf_counter() - t0,
        **report,
        "test_elbo_as_in_training": {
            "what": "the test ELBO as training reports it: analytic KL, one posterior sample "
            "per image from a fixed seed; it differs from elbo.analytic_kl, which averages K "
            "samples per image, by Monte Carlo noise only",
            "mean": training_elbo,
        },
        "config": config.to_dict(),
    }
    output = RunFolder(checkpoint.path.parent).write_evaluation(report, args.output)
    _print_summary(report, K)
    print(f"wrote {output} ({report['wall_seconds']:.0f} s)")
    return 0


def _print_summary(report: dict, K: int) -> None:
    lp, elbo, gap = report["log_px"], report["elbo"], report["gap"]
    au = report["active_units"]
    print(f"log p(x) >= IWAE_{K}: {_fmt(lp['mean'])} +- {_fmt(lp['mc_stderr'])} (Monte Carlo "
          f"s.e.; +- {_fmt(lp['data_stderr'])} over test images) nats/datapoint")
    print(f"test ELBO: {_fmt(elbo['analytic_kl']['mean'])} (analytic KL, K samples), "
          f"{_fmt(elbo['monte_carlo']['mean'])} (Monte Carlo), "
          f"{_fmt(report['test_elbo_as_in_training']['mean'])} (as training reports it) "
          f"nats/datapoint")
    print(f"gap log p(x) - ELBO ~ E KL(q(z|x) || p(z|x)): {_fmt(gap['mean'])} nats")
    print(f"KL(q || p(z)): {report['kl_to_prior']['total']:.3f} nats; active units: "
          f"{au['count']} of {au['latent_dim']}")
    if report["pareto_k"] is not None:
        pk = report["pareto_k"]
        print(f"Pareto k-hat: median {_fmt(pk['median'], 2)}, max {_fmt(pk['max'], 2)}, "
              f"{100 * pk['fraction_above_0.7']:.1f}% of test images above 0.7")
    for message in report["warnings"]:
        print(f"pyro-vae: warning: {message}", file=sys.stderr)

