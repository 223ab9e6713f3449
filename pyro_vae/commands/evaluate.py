"""Evaluate a checkpoint: log p(x) by AIS or importance sampling, BDMC and inference gaps.

Rebuilds the test set as training did (for the Bernoulli likelihood, the same fixed-seed
binarization) and writes a JSON report in nats per datapoint. --method ais (the default):
annealed importance sampling from the encoder, a stochastic lower bound that does not depend
on how good the encoder is, with HMC acceptance rates and k-hat over the chains. --method is
(the default when -K is given): the IWAE_K estimate with the encoder as proposal (a lower
bound, biased low: docs/evaluation.md), its Monte Carlo standard error and Pareto k-hat, the
test ELBO on the same K samples, the gap log p(x) - ELBO, the KL to the prior per latent
dimension and the active units. --bdmc N adds forward and reverse AIS bounds on N datapoints
simulated from the model; --gaps adds the amortization and approximation gaps of every test
image. Under torchrun the test images are split across the processes, with the same numbers.

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

from pyro_vae import checks
from pyro_vae.build import load_data
from pyro_vae.commands.options import (
    existing_path,
    positive_float,
    positive_int,
    seed,
    thread_count,
)
from pyro_vae.distributed import DEFAULT_TIMEOUT_SECONDS, process_group
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.evaluation import (
    MIN_PSIS_SAMPLES,
    SCHEDULES,
    AISSettings,
    Execution,
    GapSettings,
    ReliabilityWarning,
    ais,
    bdmc,
    bdmc_section,
    estimate_log_px,
    gaps_section,
    inference_gaps,
    mean_elbo,
    report,
)
from pyro_vae.evaluation.elbo import elbo_terms
from pyro_vae.files import check_writable
from pyro_vae.runs import RunFolder, load_checkpoint, vae_from_checkpoint
from pyro_vae.threads import set_threads

_AIS = AISSettings()
_GAPS = GapSettings()
DEFAULT_IMPORTANCE_SAMPLES = 5000  # K of --method is (Burda et al. 2016's evaluation)
_STARTS = {"encoder": "guide", "prior": "prior"}
# AIS's options: (flag, destination, default); used by --method ais and by --bdmc.
AIS_OPTIONS = (("--ais-steps", "ais_steps", _AIS.num_steps), ("--chains", "chains",
               _AIS.num_chains), ("--leapfrog-steps", "leapfrog_steps", _AIS.num_leapfrog),
               ("--ais-start", "ais_start", "encoder"), ("--schedule", "schedule",
               _AIS.schedule), ("--target-accept", "target_accept", _AIS.target_accept))


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
    p.add_argument("--gap-steps", type=positive_int, default=None, metavar="S",
                   help=f"Adam steps fitting a Gaussian to each image, with --gaps "
                   f"(default: {_GAPS.num_steps})")
    p.add_argument("--data-dir", help="folder with the IDX files (default: the one the "
                   "checkpoint was trained with, else $PYRO_VAE_DATA or the packaged copy)")
    p.add_argument("--device", default="cpu", help="cpu or cuda, whatever the run was trained "
                   "on (default: cpu)")
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
                   help="JSON report, the pictures beside it (default: evaluation.json in the "
                   "run folder; for a run that git tracks, in runs/<its name>)")
    p.add_argument("--no-plots", action="store_true",
                   help="write no pictures (default: the ELBO's decomposition, and AIS's "
                   "diagnostics or the posterior against the guide where they apply)")
    p.add_argument("--threads", type=thread_count, metavar="N",
                   help="torch threads per process (default: torch's, one per core or "
                   "$OMP_NUM_THREADS; on a busy machine, fewer are faster: the command says "
                   "so)")
    p.add_argument("--dist-timeout", type=positive_float, default=DEFAULT_TIMEOUT_SECONDS,
                   metavar="SECONDS", help="under torchrun: how long a rank waits for the "
                   f"others before the command fails (default: {DEFAULT_TIMEOUT_SECONDS:g})")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or progress lines (default: progress on rank 0)")


def _add_ais_arguments(p) -> None:
    """AIS's options, ``None`` unless given (so that a mode they do nothing in refuses them)."""
    helps = {
        "ais_steps": ("T", positive_int, "AIS: intermediate distributions"),
        "chains": ("C", positive_int, "AIS: chains per datapoint; Pareto k-hat needs 21 or "
                   "more"),
        "leapfrog_steps": ("L", positive_int, "AIS: leapfrog steps per HMC transition"),
        "target_accept": ("P", _probability, "AIS: acceptance probability the step sizes adapt "
                          "towards"),
    }
    for flag, dest, default in AIS_OPTIONS:
        if dest in helps:
            metavar, kind, text = helps[dest]
            p.add_argument(flag, dest=dest, type=kind, default=None, metavar=metavar,
                           help=f"{text} (default: {default})")
    p.add_argument("--ais-start", dest="ais_start", choices=tuple(_STARTS), default=None,
                   help="AIS: start from the encoder q(z|x) or the prior p(z) (default: encoder)")
    p.add_argument("--schedule", dest="schedule", choices=SCHEDULES, default=None,
                   help=f"AIS: annealing schedule (default: {_AIS.schedule})")


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ais_settings(args) -> AISSettings:
    return AISSettings(num_steps=args.ais_steps, num_chains=args.chains,
                       num_leapfrog=args.leapfrog_steps, schedule=args.schedule,
                       target_accept=args.target_accept,
                       start=_STARTS[args.ais_start]).validate()


def run(args) -> int:
    _resolve_options(args)
    busy = set_threads(args.threads)
    if busy and "RANK" not in os.environ:
        print(busy, file=sys.stderr)
    device = checks.device(args.device)
    with process_group(device=str(device), timeout=args.dist_timeout) as world:
        return _run(args, device, world)


def _resolve_options(args) -> None:
    """``--method``: AIS unless ``-K`` asks for importance sampling. An option that the
    chosen mode would ignore is refused: ``-K`` with AIS, AIS's options with importance
    sampling (unless ``--bdmc`` runs AIS), ``--gap-steps`` without ``--gaps``."""
    if args.method is None:
        args.method = "is" if args.importance_samples is not None else "ais"
    if args.method == "ais" and args.importance_samples is not None:
        raise ConfigError("-K/--importance-samples sets importance sampling's K; with "
                          "--method ais set --ais-steps and --chains instead")
    given = [flag for flag, dest, _ in AIS_OPTIONS if getattr(args, dest) is not None]
    if args.method == "is" and given and not args.bdmc:
        raise ConfigError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} AIS, which "
                          "--method is does not run; drop "
                          f"{'it' if len(given) == 1 else 'them'}, or use --method ais or --bdmc")
    if args.gap_steps is not None and not args.gaps:
        raise ConfigError("--gap-steps sets the fit of --gaps; add --gaps or drop --gap-steps")
    for _, dest, default in AIS_OPTIONS:
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    if args.importance_samples is None:
        args.importance_samples = DEFAULT_IMPORTANCE_SAMPLES
    if args.gap_steps is None:
        args.gap_steps = _GAPS.num_steps


def _run(args, device, world) -> int:
    main = world is None or world.is_main
    checkpoint = load_checkpoint(args.checkpoint)
    if main:  # before the work, not after it
        check_writable(RunFolder(checkpoint.path.parent).evaluation_path(args.output))
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
    execution = Execution(seed=args.seed, memory_mb=args.memory_mb, world=world,
                          progress="off" if args.quiet or not main else "auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReliabilityWarning)  # listed in the report instead
        if args.method == "ais":
            estimate = ais(vae, data.test, settings, pareto_k=not args.no_psis,
                           execution=execution)
        else:
            estimate = estimate_log_px(vae, data.test, num_samples=args.importance_samples,
                                       pareto_k=not args.no_psis and args.importance_samples
                                       >= MIN_PSIS_SAMPLES, execution=execution)
        test_elbo = mean_elbo(vae, data.test, execution=Execution(
            block_size=config.eval_batch_size, world=world))
        terms = elbo_terms(vae, data.test, execution=execution)
        out = report(vae, data.test, estimate, execution=execution, test_elbo=test_elbo,
                     terms=terms)
    _add_sections(out, args, vae, data.test, settings, execution)
    out = {
        "checkpoint": str(checkpoint.path), "epoch": checkpoint.epoch,
        "dataset": data.dataset.name, "data_source": data.dataset.source,
        "likelihood": config.likelihood, "log_px_is": vae.likelihood.density,
        "device": str(device),
        "processes": 1 if world is None else world.world_size,
        "wall_seconds": time.perf_counter() - t0,
        **out,
        "config": config.to_dict(),
    }
    if main:
        folder = RunFolder(checkpoint.path.parent)
        previous = _previous_estimate(folder, out)
        output = folder.write_evaluation(out, args.output)
        _print_summary(out)
        pictures = [] if args.no_plots else _pictures(vae, data.test, out, output.parent,
                                                      previous)
        print(f"wrote {', '.join(str(p) for p in (output, *pictures))} "
              f"({out['wall_seconds']:.0f} s)")
    return 0


def _previous_estimate(folder: RunFolder, out: dict) -> dict | None:
    """The other method's estimates of the same images from the run's last evaluation, for
    IS against AIS image by image."""
    try:
        previous = folder.read_evaluation()
    except (DataError, OSError):
        return None
    if (previous is None or previous.get("method") == out["method"]
            or previous["num_datapoints"] != out["num_datapoints"]
            or previous.get("data_source") != out["data_source"]):
        return None
    return previous


def _pictures(vae, x: torch.Tensor, out: dict, folder: Path, previous: dict | None
              ) -> list[Path]:
    """The identity, drawn: the ELBO's decomposition; AIS's path (with IS against AIS where an
    IS evaluation of the same images is at hand); q(z|x) against p(z|x) in two dimensions."""
    from pyro_vae.plots.identity import (
        plot_ais_diagnostics,
        plot_elbo_decomposition,
        plot_posterior_vs_guide,
    )

    per = {k: out["per_datapoint"][k] for k in ("expected_loglik", "kl_to_prior", "log_px")}
    if "gaps" in out:
        per.update({k: out["gaps"]["per_datapoint"][k] for k in ("amortization",
                                                                  "approximation")})
    method = "AIS" if out["method"] == "ais" else f"IWAE_{out['settings']['num_samples']}"
    pictures = [plot_elbo_decomposition(per, folder / "elbo_decomposition.png",
                                        log_px_from=method)]
    if out["method"] == "ais":
        pairs = None if previous is None else (previous["per_datapoint"]["log_px"],
                                               out["per_datapoint"]["log_px"])
        pictures.append(plot_ais_diagnostics({**out["by_step"], "target": out["acceptance"][
            "target"]}, folder / "ais_diagnostics.png", is_vs_ais=pairs))
    capabilities = vae.capabilities
    if capabilities.layered and capabilities.layers == 1 and vae.latent_dim == 2:
        pictures.append(plot_posterior_vs_guide(vae, x, folder / "posterior_vs_guide.png"))
    return pictures


def _add_sections(out: dict, args, vae, x: torch.Tensor, settings: AISSettings,
                  execution: Execution) -> None:
    """BDMC on simulated data and the inference gaps, when asked for."""
    if args.bdmc:
        template = x.new_zeros(1, x.shape[1]).expand(args.bdmc, -1)  # only its shape matters
        out["bdmc"] = bdmc_section(bdmc(vae, template, settings, execution=execution),
                                   seed=args.seed)
    if args.gaps:
        per = out["per_datapoint"]
        se = torch.tensor([float("nan") if v is None else v for v in per["log_px_mc_stderr"]],
                          dtype=torch.float64)
        gaps = inference_gaps(vae, x, torch.tensor(per["log_px"], dtype=torch.float64),
                              GapSettings(num_steps=args.gap_steps, start=settings.start),
                              log_px_mc_stderr=se, execution=execution)
        out["gaps"] = gaps_section(gaps, log_px_from="AIS" if args.method == "ais" else
                                   "IS (IWAE_K: a looser lower bound than AIS)")


def _print_summary(report: dict) -> None:
    lp, au, n = report["log_px"], report["active_units"], report["num_datapoints"]
    if report["method"] == "is":
        K = report["settings"]["num_samples"]
        print(f"log p(x) >= IWAE_{K}: {_fmt(lp['mean'])} +- {_fmt(lp['mc_stderr'])} (Monte "
              f"Carlo s.e.; +- {_fmt(lp['data_stderr'])} over test images) nats/datapoint")
    else:
        s = report["settings"]
        print(f"log p(x) >= AIS (T={s['num_steps']}, {s['num_chains']} chains, "
              f"{s['num_leapfrog']} leapfrog steps, from {s['start']}): {_fmt(lp['mean'])} +- "
              f"{_fmt(lp['mc_stderr'])} (Monte Carlo s.e.; +- {_fmt(lp['data_stderr'])} over "
              f"test images) nats/datapoint; HMC acceptance "
              f"{_fmt(report['acceptance']['mean'], 2)}")
    d = report["elbo_decomposition"]
    print(f"on these {n} images, log p(x) = E_q[log p(x|z)] - KL(q || p(z)) + KL(q || p(z|x)): "
          f"{_fmt(d['log_px'], 2)} = {_fmt(d['expected_loglik'], 2)} - "
          f"{_fmt(d['kl_to_prior'], 2)} + {_fmt(d['kl_to_posterior'], 2)} nats; the test ELBO "
          f"(the first two) is {_fmt(d['elbo'], 2)} = -loss")
    print(f"active units: {au['count']} of {au['latent_dim']}")
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
