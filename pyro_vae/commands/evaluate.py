"""Evaluate a checkpoint: importance-weighted log p(x) with standard errors and PSIS k̂.

Rebuilds the test set exactly as training did (the same data set, test size and, for the
Bernoulli likelihood, the same fixed-seed binarization), draws K importance samples per test
image, and writes a JSON report (nats per datapoint): the IWAE_K estimate of log p(x) (a lower
bound, biased low, see docs/evaluation.md), its Monte Carlo standard error, the Pareto k̂
summary, the test ELBO (analytic-KL and Monte Carlo forms), the gap log p(x) − ELBO, the KL to
the prior per latent dimension and the active units.

Example: pyro-vae evaluate runs/meanfield/checkpoint.pt --num-samples 5000
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

from pyro_vae.checkpoint import atomic_write_json
from pyro_vae.cli import existing_path, positive_float, positive_int
from pyro_vae.evaluation import ReliabilityWarning, evaluate
from pyro_vae.training import check_device, load_vae, prepare_data


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=existing_path, metavar="CHECKPOINT",
                   help="a checkpoint.pt, or the run folder that holds one")
    p.add_argument("--num-samples", "-K", type=positive_int, default=5000,
                   help="importance samples per test datapoint (default: 5000)")
    p.add_argument("--data-dir", help="folder with the IDX files (default: the one the "
                   "checkpoint was trained with, else $PYRO_VAE_DATA or the packaged copy)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--test-size", type=positive_int,
                   help="use only the first N test images (default: the checkpoint's test set)")
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    p.add_argument("--memory-mb", type=positive_float, default=128.0,
                   help="approximate bound on the working memory of the estimate (MB)")
    p.add_argument("--no-psis", action="store_true", help="skip the Pareto k̂ diagnostic")
    p.add_argument("--output", "-o", type=Path,
                   help="JSON report (default: evaluation.json next to the checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    device = check_device(args.device)
    path = args.checkpoint / "checkpoint.pt" if args.checkpoint.is_dir() else args.checkpoint
    vae, config, ckpt = load_vae(path, device=device)
    config.device = str(device)
    if args.data_dir is not None:
        config.data_dir = args.data_dir
    if args.test_size is not None:
        config.test_size = args.test_size
    config.train_size = 1  # the test set does not depend on the training images: load one
    data = prepare_data(config)
    vae.check_data(data.test, where=f"{data.dataset.source} test set")
    n, K = data.test.shape[0], args.num_samples
    print(f"evaluating {path} (epoch {ckpt['epoch']}) on {n} {data.dataset.name} test images "
          f"with K = {K} importance samples each", file=sys.stderr)

    generator = torch.Generator(device=device).manual_seed(args.seed)
    progress = False if args.quiet else sys.stderr.isatty()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReliabilityWarning)
        report = evaluate(vae, data.test, num_samples=K, memory_mb=args.memory_mb,
                          generator=generator, progress=progress, pareto_k=not args.no_psis)
    for w in caught:
        if not issubclass(w.category, ReliabilityWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    report = {
        "checkpoint": str(path),
        "epoch": ckpt["epoch"],
        "dataset": data.dataset.name,
        "data_source": data.dataset.source,
        "likelihood": config.likelihood,
        "seed": args.seed,
        "device": str(device),
        "wall_seconds": time.perf_counter() - t0,
        **report,
        "config": config.to_dict(),
    }
    output = args.output or path.parent / "evaluation.json"
    atomic_write_json(output, report)

    lp, elbo, gap = report["log_px"], report["elbo"], report["gap"]
    au = report["active_units"]
    print(f"log p(x) >= IWAE_{K}: {lp['mean']:.3f} +- {lp['mc_stderr']:.3f} (Monte Carlo s.e.; "
          f"+- {lp['data_stderr']:.3f} over test images) nats/datapoint")
    print(f"test ELBO: {elbo['analytic_kl']['mean']:.3f} (analytic KL), "
          f"{elbo['monte_carlo']['mean']:.3f} (Monte Carlo) nats/datapoint; gap log p(x) - ELBO "
          f"~ E KL(q(z|x) || p(z|x)): {gap['mean']:.3f} nats")
    print(f"KL(q || p(z)): {report['kl_to_prior']['total']:.3f} nats; active units: "
          f"{au['count']} of {au['latent_dim']}")
    if report["pareto_k"] is not None:
        pk = report["pareto_k"]
        print(f"Pareto k-hat: median {pk['median']:.2f}, max {pk['max']:.2f}, "
              f"{100 * pk['fraction_above_0.7']:.1f}% of test images above 0.7")
    for message in report["warnings"]:
        print(f"pyro-vae: warning: {message}", file=sys.stderr)
    print(f"wrote {output} ({report['wall_seconds']:.0f} s)")
    return 0
