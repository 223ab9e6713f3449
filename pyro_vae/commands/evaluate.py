"""Evaluate a checkpoint: log p(x) by importance sampling or AIS, with BDMC bounds and the
inference gaps on request.

Rebuilds the test set exactly as training did (the same data set, test size and, for the
Bernoulli likelihood, the same fixed-seed binarization) and writes a JSON report (nats per
datapoint). --method ais (the default): log p(x) by annealed importance sampling from the
encoder, a stochastic lower bound that does not depend on how good the encoder is, with HMC
acceptance rates and k-hat over the chains. --method is (the default when -K is given): the
IWAE_K estimate with the encoder as proposal (a lower bound, biased low, see
docs/evaluation.md; its Pareto k-hat flags most test images of a trained VAE as unreliable,
which is why AIS is the default), its Monte Carlo standard error, the Pareto k-hat summary,
the test ELBO on the same K samples, the gap log p(x) - ELBO, the KL to the prior per latent
dimension and the active units. --bdmc N adds
forward and reverse AIS bounds on N datapoints simulated from the model; --gaps adds the
amortization and approximation gaps of every test image. Under torchrun the test images are
split across the processes, with the same numbers as one process.

Examples: pyro-vae evaluate runs/meanfield                  # AIS, T = 100, 16 chains
          pyro-vae evaluate runs/meanfield -K 5000          # importance sampling
          torchrun --standalone --nproc-per-node 2 -m pyro_vae evaluate runs/meanfield
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from pyro_vae.commands.options import existing_path, positive_float, positive_int, seed
from pyro_vae.config import check_device, load_data
from pyro_vae.distributed import process_group
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation import (
    SCHEDULES,
    AISSettings,
    GapSettings,
    ReliabilityWarning,
    ais_report,
    bdmc,
    bdmc_section,
    evaluate,
    gaps_section,
    generic_is_report,
    inference_gaps,
    mean_elbo,
)
from pyro_vae.evaluation.targets import target_for
from pyro_vae.model import VAE
from pyro_vae.resources import set_threads
from pyro_vae.runs import RunFolder, load_checkpoint, vae_from_checkpoint

_AIS = AISSettings()
_GAPS = GapSettings()
DEFAULT_IMPORTANCE_SAMPLES = 5000  # K of --method is (Burda et al. 2016's evaluation)
# T of the command's AIS: within 0.06 nats of T = 500 on test images, a BDMC gap of 0.09 on a
# Burda model's samples, at a fifth of its cost (benchmarks/README.md, log p(x) section).
DEFAULT_AIS_STEPS = 100
_STARTS = {"encoder": "guide", "prior": "prior"}


def _probability(text: str) -> float:
    """argparse type: a number in (0, 1)."""
    value = positive_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=existing_path, metavar="CHECKPOINT",
                   help="a checkpoint.pt, or the run folder that holds one")
    p.add_argument("--method", choices=("is", "ais"), default=None,
                   help="ais: annealed importance sampling (tighter; its figure does not "
                   "depend on the encoder); is: importance sampling with the encoder as "
                   "proposal (faster) (default: ais, or is when -K is given)")
    p.add_argument("--importance-samples", "-K", type=positive_int, default=None,
                   metavar="K", help=f"importance samples per test image, --method is "
                   f"(default: {DEFAULT_IMPORTANCE_SAMPLES})")
    _add_ais_arguments(p)
    p.add_argument("--bdmc", type=positive_int, metavar="N",
                   help="also run BDMC on N datapoints simulated from the model, with the AIS "
                   "settings (default: off)")
    p.add_argument("--gaps", action="store_true", help="also measure the amortization and "
                   "approximation gaps of every test image (default: off)")
    p.add_argument("--gap-steps", type=positive_int, default=_GAPS.num_steps, metavar="S",
                   help=f"Adam steps fitting a Gaussian to each image for --gaps "
                   f"(default: {_GAPS.num_steps})")
    p.add_argument("--data-dir", help="folder with the IDX files (default: the one the "
                   "checkpoint was trained with, else $PYRO_VAE_DATA or the packaged copy)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--test-size", type=positive_int, metavar="N",
                   help="use only the first N test images (default: the checkpoint's test set)")
    p.add_argument("--seed", type=seed, default=0,
                   help="seed of the samples and chains (default: 0)")
    p.add_argument("--memory-mb", type=positive_float, default=128.0,
                   help="approximate bound on the working memory of each worker, MB "
                   "(default: 128)")
    p.add_argument("--no-psis", action="store_true",
                   help="skip the Pareto k-hat diagnostic (default: computed)")
    p.add_argument("--output", "-o", type=Path, metavar="FILE",
                   help="JSON report (default: evaluation.json in the run folder)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="torch threads per process (default: torch's, one per core or "
                   "$OMP_NUM_THREADS; on a busy machine, fewer are faster: the command says "
                   "so)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or progress lines (default: progress on rank 0)")


def _add_ais_arguments(p) -> None:
    p.add_argument("--ais-steps", type=positive_int, default=DEFAULT_AIS_STEPS, metavar="T",
                   help=f"AIS: intermediate distributions (default: {DEFAULT_AIS_STEPS}; "
                   f"the library's is {_AIS.num_steps}: docs/evaluation.md compares them)")
    p.add_argument("--chains", type=positive_int, default=_AIS.num_chains, metavar="C",
                   help=f"AIS: chains per datapoint; Pareto k-hat needs 21 or more "
                   f"(default: {_AIS.num_chains})")
    p.add_argument("--leapfrog-steps", type=positive_int, default=_AIS.num_leapfrog,
                   metavar="L", help=f"AIS: leapfrog steps per HMC transition "
                   f"(default: {_AIS.num_leapfrog})")
    p.add_argument("--ais-start", choices=tuple(_STARTS), default="encoder",
                   help="AIS: start from the encoder q(z|x) or the prior p(z) "
                   "(default: encoder)")
    p.add_argument("--schedule", choices=SCHEDULES, default=_AIS.schedule,
                   help=f"AIS: annealing schedule (default: {_AIS.schedule})")
    p.add_argument("--target-accept", type=_probability, default=_AIS.target_accept,
                   metavar="P", help=f"AIS: acceptance probability the step sizes adapt "
                   f"towards (default: {_AIS.target_accept})")


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ais_settings(args) -> AISSettings:
    return AISSettings(num_steps=args.ais_steps, num_chains=args.chains,
                       num_leapfrog=args.leapfrog_steps, schedule=args.schedule,
                       target_accept=args.target_accept).validate()


def run(args) -> int:
    _resolve_method(args)
    busy = set_threads(args.threads)
    if busy and "RANK" not in os.environ:
        print(busy, file=sys.stderr)
    device = check_device(args.device)
    with process_group(device=str(device)) as world:
        return _run(args, device, world)


def _resolve_method(args) -> None:
    """``--method``: AIS unless ``-K`` asks for importance sampling; ``-K`` with AIS is a
    contradiction."""
    if args.method is None:
        args.method = "is" if args.importance_samples is not None else "ais"
    if args.method == "ais" and args.importance_samples is not None:
        raise ConfigError("-K/--importance-samples sets importance sampling's K; with "
                          "--method ais set --ais-steps and --chains instead")
    if args.importance_samples is None:
        args.importance_samples = DEFAULT_IMPORTANCE_SAMPLES


def _run(args, device, world) -> int:
    main = world is None or world.is_main
    checkpoint = load_checkpoint(args.checkpoint)
    vae, _ = vae_from_checkpoint(checkpoint, device=device)
    config = dataclasses.replace(checkpoint.config, device=str(device))
    if args.data_dir is not None:
        config.data_dir = args.data_dir
    if args.test_size is not None:
        config.test_size = args.test_size
    data = load_data(config, train=False)
    vae.check_data(data.test, where=f"{data.dataset.source} test set")
    settings = _ais_settings(args)
    how = (f"K = {args.importance_samples} importance samples" if args.method == "is" else
           f"AIS (T = {settings.num_steps}, {settings.num_chains} chains, "
           f"{settings.num_leapfrog} leapfrog steps)")
    if main:
        processes = "" if world is None else f" in {world.world_size} processes"
        print(f"evaluating {checkpoint.path} (epoch {checkpoint.epoch}) on {data.test.shape[0]} "
              f"{data.dataset.name} test images by {how}{processes}", file=sys.stderr)
    t0 = time.perf_counter()
    common = dict(seed=args.seed, memory_mb=args.memory_mb, world=world,
                  progress="off" if args.quiet or not main else "auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReliabilityWarning)  # listed in the report instead
        if args.method == "ais":
            report = ais_report(vae, data.test, settings, start=_STARTS[args.ais_start],
                                pareto_k=not args.no_psis, **common)
        else:  # the fast path for the one-layer Gaussian VAE, Pyro's traces otherwise
            fast = isinstance(vae, VAE) and vae.flow is None and not vae.context_dim
            report = (evaluate if fast else generic_is_report)(
                vae, data.test, num_samples=args.importance_samples,
                pareto_k=not args.no_psis, **common)
    _add_sections(report, args, vae, data.test, settings, common)
    training_elbo = mean_elbo(vae, data.test, batch_size=config.eval_batch_size, world=world)
    report = {
        "checkpoint": str(checkpoint.path), "epoch": checkpoint.epoch,
        "dataset": data.dataset.name, "data_source": data.dataset.source,
        "likelihood": config.likelihood, "log_px_is": vae.likelihood.density,
        "device": str(device),
        "processes": 1 if world is None else world.world_size,
        "wall_seconds": time.perf_counter() - t0,
        **report,
        "test_elbo_as_in_training": {
            "what": "the test ELBO as training reports it: analytic KL, one posterior sample "
            "per image from a fixed seed",
            "mean": training_elbo,
        },
        "config": config.to_dict(),
    }
    if main:
        output = RunFolder(checkpoint.path.parent).write_evaluation(report, args.output)
        _print_summary(report)
        print(f"wrote {output} ({report['wall_seconds']:.0f} s)")
    return 0


def _add_sections(report: dict, args, vae, x: torch.Tensor, settings: AISSettings,
                  common: dict) -> None:
    """BDMC on simulated data and the inference gaps, when asked for."""
    target = target_for(vae, start=_STARTS[args.ais_start])
    if args.bdmc:
        template = x.new_zeros(args.bdmc, x.shape[1])  # only the shape: x is simulated
        report["bdmc"] = bdmc_section(bdmc(target, template, settings, **common),
                                      start=target.describe_start(), seed=args.seed)
    if args.gaps:
        per = report["per_datapoint"]
        se = torch.tensor([float("nan") if v is None else v for v in per["log_px_mc_stderr"]],
                          dtype=torch.float64)
        gaps = inference_gaps(target, x, torch.tensor(per["log_px"], dtype=torch.float64),
                              GapSettings(num_steps=args.gap_steps), log_px_mc_stderr=se,
                              **common)
        report["gaps"] = gaps_section(gaps, log_px_from="AIS" if args.method == "ais" else
                                      "IS (IWAE_K: a looser lower bound than AIS)")


def _print_summary(report: dict) -> None:
    lp, au = report["log_px"], report["active_units"]
    if report["method"] == "is":
        elbo, K = report["elbo"], report["num_samples"]
        print(f"log p(x) >= IWAE_{K}: {_fmt(lp['mean'])} +- {_fmt(lp['mc_stderr'])} (Monte "
              f"Carlo s.e.; +- {_fmt(lp['data_stderr'])} over test images) nats/datapoint")
        analytic = elbo.get("analytic_kl", {}).get("mean")
        print(f"test ELBO: {_fmt(analytic)} (analytic KL, K samples), "
              f"{_fmt(elbo['monte_carlo']['mean'])} (Monte Carlo) nats/datapoint; gap "
              f"log p(x) - ELBO ~ E KL(q(z|x) || p(z|x)): {_fmt(report['gap']['mean'])} nats")
    else:
        s = report["settings"]
        print(f"log p(x) >= AIS (T={s['num_steps']}, {s['num_chains']} chains, "
              f"{s['num_leapfrog']} leapfrog steps, from {s['start']}): {_fmt(lp['mean'])} +- "
              f"{_fmt(lp['mc_stderr'])} (Monte Carlo s.e.; +- {_fmt(lp['data_stderr'])} over "
              f"test images) nats/datapoint; HMC acceptance "
              f"{_fmt(report['acceptance']['mean'], 2)}")
    print(f"test ELBO as training reports it: "
          f"{_fmt(report['test_elbo_as_in_training']['mean'])} nats/datapoint; KL(q || p(z)): "
          f"{report['kl_to_prior']['total']:.3f} nats; active units: {au['count']} of "
          f"{au['latent_dim']}")
    if report["pareto_k"] is not None:
        pk = report["pareto_k"]
        print(f"Pareto k-hat: median {_fmt(pk['median'], 2)}, max {_fmt(pk['max'], 2)}, "
              f"{100 * pk['fraction_above_0.7']:.1f}% of test images above 0.7")
    if "bdmc" in report:
        b = report["bdmc"]
        print(f"BDMC on {b['num_datapoints']} simulated datapoints: {_fmt(b['lower']['mean'])} "
              f"<= log p(x) <= {_fmt(b['upper']['mean'])}, gap {_fmt(b['gap']['mean'])} +- "
              f"{_fmt(b['gap']['mc_stderr'])} nats/datapoint")
    if "gaps" in report:
        g = report["gaps"]
        print(f"inference gap by {g['log_px_from'].split()[0]}: {_fmt(g['total'])} = "
              f"amortization {_fmt(g['amortization']['mean'])} + approximation "
              f"{_fmt(g['approximation']['mean'])} nats/datapoint")
    if report["likelihood"] != "bernoulli":
        print(f"(log p(x) here is {report['log_px_is']})")
    for message in report["warnings"]:
        print(f"pyro-vae: warning: {message}", file=sys.stderr)
