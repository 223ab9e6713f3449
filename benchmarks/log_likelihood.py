"""log p(x) you can trust: importance sampling (IS) at K = 5000 beside annealed importance
sampling (AIS) at three budgets, BDMC bounds and the inference gaps, on three trained models,
with the time and peak memory of each, and AIS's throughput against a plain matmul.

    python -m benchmarks.log_likelihood --part linear-gaussian   # AIS against exact log p(x)
    python -m benchmarks.log_likelihood --part default           # the default 10-epoch model
    python -m benchmarks.log_likelihood --part iwae              # the same, trained with iwae
    python -m benchmarks.log_likelihood --part burda             # one-layer Burda architecture
    python -m benchmarks.log_likelihood --part burda-timing --threads 2   # 1000 images, FLOPs
    python benchmarks/log_likelihood.py --quick --out /tmp/ll --quiet     # smoke run

Each part trains the model it needs (or reuses it from ``--models``, by default
``runs/log_likelihood_models``: checkpoints are not committed), measures, and merges its
numbers into ``OUT/log_likelihood.json``; the tables (``OUT/log_likelihood.md``) and the plot
of the estimate against compute (``OUT/log_likelihood.png``) are rewritten from every part
present. Every figure is in nats per datapoint; IS gives the IWAE_K lower bound (Burda et al.
2016), AIS a stochastic lower bound (Neal 2001; Wu et al. 2017), BDMC a stochastic lower and
upper bound on simulated data (Grosse et al. 2015), and the gaps follow Cremer et al. (2018).

The models (``MODELS``): ``default`` is ``pyro-vae train`` (784-400-50 softplus, ``meanfield``,
10 epochs, batch 128); ``iwae`` the same with ``--estimator iwae`` (K = 5); ``burda`` Burda et
al.'s one-layer architecture (784-200-200-50 tanh, ``meanfield``) trained for **80 epochs**
(batch 100, the paper's eight learning rates for 10 epochs each), not the paper's 3280: a
shorter budget, so its log p(x) is a few nats below the paper's.

Comparisons are paired, on the first ``--images`` test images (the same for every model and
method), seeds fixed. Peak memory is the growth of the process's resident set during a run,
sampled every 20 ms. AIS throughput: floating-point operations of the decoder's matrix products
in the HMC steps (forward and input gradient, 4 Σ in·out per chain and datapoint per gradient
evaluation) per second, divided by the rate of the same matrix products timed alone, at the
same row count, in the same process.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: python benchmarks/log_likelihood.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from matplotlib.figure import Figure

from benchmarks.common import (
    RESULTS,
    add_common_arguments,
    command_line,
    fmt,
    linear_weights,
    machine,
    markdown_table,
    output,
    run_main,
    save_figure,
    write_results,
)
from pyro_vae.build import load_data
from pyro_vae.commands.options import Parser, positive_int
from pyro_vae.config import TrainConfig
from pyro_vae.data import load_dataset, preprocess
from pyro_vae.evaluation import (
    AISSettings,
    Execution,
    GapSettings,
    LayeredTarget,
    ais,
    bdmc,
    estimate_log_px,
    inference_gaps,
    pareto_k_hat,
)
from pyro_vae.evaluation.ais import block_size_for
from pyro_vae.fit import fit
from pyro_vae.models.linear_gaussian import (
    closed_form_elbo,
    linear_gaussian_vae,
    log_marginal,
    max_likelihood,
    set_to_posterior,
)
from pyro_vae.runs import RunFolder, load_checkpoint, vae_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "default": TrainConfig(),
    "iwae": TrainConfig(estimator="iwae"),
    "burda": TrainConfig(preset="burda", batch_size=100, lr_schedule="burda-even", epochs=80),
}
PUBLISHED = AISSettings(num_steps=500, num_chains=16, num_leapfrog=5)  # the CLI's defaults
BUDGETS = (AISSettings(num_steps=30), AISSettings(num_steps=100), PUBLISHED)
IS_SAMPLES = (100, 1000, 5000)
PARTS = ("linear-gaussian", *MODELS, "burda-timing")


# --- measuring: each run in a fresh process, for its own peak memory ------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _summary(log_px: torch.Tensor, se: torch.Tensor, pareto_k=None) -> dict:
    n = log_px.numel()
    return {"mean": float(log_px.mean()), "mc_stderr": float(se.pow(2).sum().sqrt()) / n,
            "data_stderr": float(log_px.std()) / math.sqrt(n), "per_datapoint": log_px.tolist(),
            "per_datapoint_se": se.tolist(), "fraction_k_above_07": None if pareto_k is None
            else float((pareto_k > 0.7).double().mean())}


def _run_is(vae, x, task) -> dict:
    est = estimate_log_px(vae, x, num_samples=task["K"], pareto_k=task["K"] >= 21)
    return {"method": "is", "settings": {"num_samples": task["K"]},
            **_summary(est.log_px, est.log_px_mc_stderr, est.pareto_k)}


def _run_ais(vae, x, task) -> dict:
    settings = AISSettings(**task["settings"])
    est = ais(vae, x, settings, execution=Execution(progress=task["progress"]))
    return {"method": "ais", "settings": task["settings"],
            "acceptance": float(est.acceptance_rate.mean()),
            **_summary(est.log_px, est.log_px_mc_stderr, est.pareto_k)}


def _run_bdmc(vae, x, task) -> dict:
    settings = AISSettings(**task["settings"])
    r = bdmc(vae, torch.zeros(task["n"], vae.x_dim), settings,
             execution=Execution(seed=1, progress=task["progress"]))
    return {"settings": task["settings"], "num_datapoints": task["n"], "lower": r.mean_lower,
            "upper": r.mean_upper, "gap": r.mean_gap, "gap_mc_stderr": r.gap_mc_stderr,
            "gap_median": float(r.gap.median()),
            "acceptance": [float(r.forward_acceptance.mean()),
                           float(r.reverse_acceptance.mean())]}


def _run_gaps(vae, x, task) -> dict:
    g = inference_gaps(vae, x, torch.tensor(task["log_px"], dtype=torch.float64),
                       GapSettings(**task["settings"]),
                       log_px_mc_stderr=torch.tensor(task["log_px_se"], dtype=torch.float64),
                       execution=Execution(seed=2, progress=task["progress"]))
    return {"settings": task["settings"], "means": g.means, "mc_stderrs": g.mean_mc_stderrs}


def _run_timing(vae, x, task) -> dict:
    """AIS at the published budget, and its throughput against :func:`matmul_rate` measured
    just before and after, at the row count of AIS's blocks."""
    settings = AISSettings(**task["settings"])
    rows = block_size_for(LayeredTarget(vae), (x,), settings.num_chains, 128.0) * \
        settings.num_chains
    before, load_before = matmul_rate(vae, rows), os.getloadavg()
    t0 = time.perf_counter()
    est = ais(vae, x, settings, execution=Execution(progress=task["progress"]))
    seconds = time.perf_counter() - t0
    after = matmul_rate(vae, rows)
    weights = sum(w.numel() for w in linear_weights(vae.decoder))
    evaluations = x.shape[0] * settings.num_chains * settings.density_evaluations(
        LayeredTarget(vae).closed_form_start)
    rate = 4 * weights * evaluations / seconds
    return {"settings": task["settings"], "log_px_mean": est.mean,
            "mc_stderr": est.mean_mc_stderr, "acceptance": float(est.acceptance_rate.mean()),
            "rows_per_block": rows, "threads": torch.get_num_threads(),
            "ais_flops_per_second": rate, "matmul_flops_per_second": [before, after],
            "throughput_ratio": rate / (0.5 * (before + after)),
            "load_average_before": list(load_before), "load_average_after": list(
                os.getloadavg())}


RUNNERS = {"is": _run_is, "ais": _run_ais, "bdmc": _run_bdmc, "gaps": _run_gaps,
           "timing": _run_timing}


def _child(task: dict) -> dict:
    """In a fresh process: load the model and the test images, run ``task``; its wall time,
    and the process's peak resident set (with torch, the model and the data) and its size
    before the run."""
    torch.set_num_threads(task["threads"])
    checkpoint = load_checkpoint(task["checkpoint"])
    vae, _ = vae_from_checkpoint(checkpoint)
    x = load_data(checkpoint.config, train=False).test[: task["images"]]
    pareto_k_hat(torch.randn(1, 30))  # ArviZ's import, before the measurement
    before = _rss_bytes()
    t0 = time.perf_counter()
    row = RUNNERS[task["kind"]](vae, x, task)
    row["seconds"] = time.perf_counter() - t0
    row["seconds_per_image"] = row["seconds"] / task.get("n", task["images"])
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["rss_before_mb"] = before / 2**20
    return row


def measured(kind: str, checkpoint: Path, images: int, args, **task) -> dict:
    """``_child`` of this task, in a process of its own (``spawn``); in this one with
    ``--quick``, where memory is not the point."""
    task.update(kind=kind, checkpoint=str(checkpoint), images=images, threads=args.threads,
                progress=output(args).progress)
    if args.quick:
        return _child(task)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_child, task).result()


# --- the parts -------------------------------------------------------------------------------
def trained(name: str, config: TrainConfig, models: Path, log) -> tuple:
    """The checkpoint of model ``name`` (trained now unless ``models/name`` holds it,
    finished) and the seconds its training took."""
    folder = models / name
    if RunFolder(folder).checkpoint.exists():
        checkpoint = load_checkpoint(folder)
        if checkpoint.config.to_dict() == config.to_dict() and checkpoint.epoch == config.epochs:
            return checkpoint, checkpoint.history[-1]["wall_seconds"]
    log(f"training {name}: {config.epochs} epochs into {folder}")
    fit(config, folder, overwrite=True, progress=False, log=log)
    checkpoint = load_checkpoint(folder)
    return checkpoint, checkpoint.history[-1]["wall_seconds"]


def model_part(name: str, args, budgets, is_samples, published, log) -> dict:
    config = MODELS[name] if not args.quick else quick_config(MODELS[name])
    checkpoint, train_seconds = trained(name, config, args.models, log)
    path, n = checkpoint.path, args.images
    rows = []
    for K in is_samples:
        log(f"{name}: IS, K = {K}")
        rows.append(measured("is", path, n, args, K=K))
    for settings in budgets:
        log(f"{name}: AIS, T = {settings.num_steps}")
        rows.append(measured("ais", path, n, args, settings=settings._asdict()))
    main_ais = next(r for r in rows if r["method"] == "ais"
                    and r["settings"]["num_steps"] == published.num_steps)
    bdmc_rows = []
    for settings in budgets if name == "burda" else [published]:
        log(f"{name}: BDMC, T = {settings.num_steps}")
        bdmc_rows.append(measured("bdmc", path, n, args, n=args.bdmc_images,
                                  settings=settings._asdict()))
    log(f"{name}: inference gaps")
    gaps = measured("gaps", path, n, args, log_px=main_ais["per_datapoint"],
                    log_px_se=main_ais["per_datapoint_se"],
                    settings=GapSettings(num_steps=20 if args.quick else 500)._asdict())
    return {"model": name, "config": config.to_dict(), "train_seconds": train_seconds,
            "test_elbo": checkpoint.history[-1]["test_elbo"], "images": n,
            "runs": rows, "bdmc": bdmc_rows, "gaps": gaps}


def quick_config(config: TrainConfig) -> TrainConfig:
    d = config.to_dict()
    d.update(epochs=1, train_size=512, test_size=64, hidden_sizes=[32], latent_dim=4)
    return TrainConfig.from_dict(d)


def linear_gaussian_part(args, budgets, published, log, progress) -> dict:
    """pPCA fitted by maximum likelihood to MNIST grey levels (784 → L = 50; exact log p(x),
    in float64), AIS in float32 (as the command runs) from an encoder a few nats from the
    posterior (mean × 0.9, standard deviations × 1.5): from it at every budget, from the prior
    at the published one."""
    n_train, L = (2000, 8) if args.quick else (10000, 50)
    x_all = preprocess(load_dataset("mnist").train_images[:n_train]).double()
    params = max_likelihood(x_all, L)
    vae = linear_gaussian_vae(params, learn_model=False)
    set_to_posterior(vae, params)
    with torch.no_grad():
        vae.encoder.A.mul_(0.9)
        vae.encoder.c.mul_(0.9)
        vae.encoder.log_scale.add_(math.log(1.5))
    x = preprocess(load_dataset("mnist").test_images[: args.images]).double()
    truth = log_marginal(x, params)
    with torch.no_grad():
        loc, scale = vae.encode(x)
        encoder_elbo = closed_form_elbo(x, loc, torch.diag_embed(scale**2), params)
    vae, x = vae.float(), x.float()
    rows = []
    for start, settings in [("guide", s) for s in budgets] + [("prior", published)]:
        log(f"linear-Gaussian: AIS from the {start}, T = {settings.num_steps}")
        t0 = time.perf_counter()
        est = ais(vae, x, settings._replace(start=start), execution=Execution(progress=progress))
        error = truth - est.log_px
        rows.append({"start": start, "settings": settings._asdict(),
                     "error_mean": float(error.mean()), "error_mc_stderr": est.mean_mc_stderr,
                     "error_abs_max": float(error.abs().max()),
                     "seconds": time.perf_counter() - t0})
    return {"D": 784, "L": L, "images": int(x.shape[0]), "exact_log_px": float(truth.mean()),
            "encoder_gap": float((truth - encoder_elbo).mean()), "runs": rows}


def matmul_rate(vae, rows: int, repeats: int = 20) -> float:
    """FLOP/s of the decoder's matrix products alone, forward and input gradient, on ``rows``
    rows, as the HMC steps run them (same dtype, same threads)."""
    weights = linear_weights(vae.decoder)
    inputs = [torch.randn(rows, w.shape[1]) for w in weights]
    grads = [torch.randn(rows, w.shape[0]) for w in weights]
    flops = 4 * rows * sum(w.numel() for w in weights)

    def once():
        for h, g, w in zip(inputs, grads, weights, strict=True):
            torch.nn.functional.linear(h, w)
            g @ w

    once()
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    return flops * repeats / (time.perf_counter() - t0)


def timing_part(args, published: AISSettings, log) -> dict:
    """AIS over ``--timing-images`` test images of the Burda model at the published budget,
    with its throughput (:func:`_run_timing`)."""
    config = MODELS["burda"] if not args.quick else quick_config(MODELS["burda"])
    checkpoint, _ = trained("burda", config, args.models, log)
    log(f"burda: AIS over {args.timing_images} test images, T = {published.num_steps}")
    row = measured("timing", checkpoint.path, args.timing_images, args,
                   settings=published._asdict())
    return {"images": args.timing_images, **row}


# --- the report ------------------------------------------------------------------------------
def _paired(a: list, b: list) -> tuple[float, float]:
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    return float(d.mean()), float(d.std()) / math.sqrt(d.numel())


def _label(run: dict) -> str:
    s = run["settings"]
    if run["method"] == "is":
        return f"IS, K = {s['num_samples']}"
    return f"AIS, T = {s['num_steps']}, {s['num_chains']} chains, L = {s['num_leapfrog']}"


def _model_table(part: dict) -> str:
    reference = next(r for r in reversed(part["runs"]) if r["method"] == "is")
    rows = []
    for r in part["runs"]:
        diff, se = _paired(r["per_datapoint"], reference["per_datapoint"])
        k = r.get("fraction_k_above_07")
        rows.append([_label(r), f"{fmt(r['mean'])} ± {fmt(r['mc_stderr'], 3)}",
                     f"{diff:+.2f} ± {se:.2f}", "—" if k is None else f"{100 * k:.0f} %",
                     fmt(r.get("acceptance")), f"{r['seconds_per_image']:.3f}",
                     f"{r['peak_rss_mb']:.0f} ({r['peak_rss_mb'] - r['rss_before_mb']:+.0f})"])
    return markdown_table(
        ["method", "log p(x) (bound) ± MC s.e.",
         f"paired − {_label(reference)}", "k̂ > 0.7", "HMC accept", "s / image",
         "peak RSS MB (run)"], rows)


def _bdmc_table(parts: dict) -> str:
    rows = []
    for name, part in parts.items():
        for b in part["bdmc"]:
            s = b["settings"]
            rows.append([name, f"T = {s['num_steps']}, {s['num_chains']} chains, "
                         f"L = {s['num_leapfrog']}", fmt(b["lower"]), fmt(b["upper"]),
                         f"{fmt(b['gap'])} ± {fmt(b['gap_mc_stderr'])}", fmt(b["gap_median"]),
                         "yes" if b["gap"] < 1 else "no", f"{b['seconds'] / 60:.1f}"])
    return markdown_table(["model", "AIS settings", "forward (lower)", "reverse (upper)",
                           "gap ± s.e.", "median gap", "gap < 1 nat", "minutes"], rows)


def _gaps_table(parts: dict) -> str:
    rows = []
    for name, part in parts.items():
        g, se = part["gaps"]["means"], part["gaps"]["mc_stderrs"]
        rows.append([name, fmt(g["log_px"]), fmt(g["encoder_elbo"]), fmt(g["fitted_elbo"]),
                     f"{fmt(g['amortization'])} ± {fmt(se['amortization'])}",
                     f"{fmt(g['approximation'])} ± {fmt(se['approximation'])}",
                     fmt(g["total"])])
    return markdown_table(["model", "log p(x) (AIS)", "ELBO, encoder", "ELBO, fitted q",
                           "amortization gap", "approximation gap", "total"], rows)


def _ranking(parts: dict, published: AISSettings) -> str:
    if not {"default", "iwae"} <= set(parts):
        return ""

    def runs(name, method):
        return next(r for r in reversed(parts[name]["runs"]) if r["method"] == method and (
            method == "is" or r["settings"]["num_steps"] == published.num_steps))

    lines, signs = [], set()
    for method in ("is", "ais"):
        diff, se = _paired(runs("iwae", method)["per_datapoint"],
                           runs("default", method)["per_datapoint"])
        signs.add(diff > 0)
        lines.append(f"- {_label(runs('iwae', method))}: `iwae` − `default` = "
                     f"{diff:+.2f} ± {se:.2f} nats per datapoint (paired, same images)")
    lines.append("- the ranking " + ("is the same" if len(signs) == 1 else "changes")
                 + " under both estimators of log p(x)")
    return "\n".join(lines)


def _linear_table(part: dict) -> str:
    rows = [[r["start"], _label({"method": "ais", "settings": r["settings"]})[5:],
             f"{r['error_mean']:+.3f} ± {r['error_mc_stderr']:.3f}", fmt(r["error_abs_max"], 3),
             f"{r['seconds']:.0f}"] for r in part["runs"]]
    return markdown_table(["start", "AIS budget", "log p(x) − AIS, mean ± s.e.",
                           "largest error on one image", "seconds"], rows)


def _targets(document: dict, published: AISSettings) -> str:
    parts, rows = document["parts"], []
    if "linear-gaussian" in parts:
        r = next(r for r in parts["linear-gaussian"]["runs"] if r["start"] == "guide"
                 and r["settings"]["num_steps"] == published.num_steps)
        rows.append(["AIS error on the linear-Gaussian model (784 → 50)",
                     f"{r['error_mean']:+.3f} ± {r['error_mc_stderr']:.3f} nats", "< 0.05",
                     "met" if abs(r["error_mean"]) < 0.05 else "not met"])
    if "burda" in parts:
        b = next(b for b in parts["burda"]["bdmc"]
                 if b["settings"]["num_steps"] == published.num_steps)
        rows.append(["BDMC gap, data simulated from the Burda VAE, published budget",
                     f"{b['gap']:.2f} ± {b['gap_mc_stderr']:.2f} nats", "< 1",
                     "met" if b["gap"] < 1 else "not met"])
    if "burda-timing" in parts:
        t = parts["burda-timing"]
        rows.append(["AIS FLOP rate ÷ matmul FLOP rate (decoder shapes, same run)",
                     f"{100 * t['throughput_ratio']:.0f} %", ">= 40 %",
                     "met" if t["throughput_ratio"] >= 0.4 else "not met"])
        threads = f"{t['threads']} thread" + ("s" if t["threads"] > 1 else "")
        rows.append([f"AIS over {t['images']} Burda test images, {threads}",
                     f"{t['seconds'] / 60:.1f} min", "< 15 min",
                     "met" if t["seconds"] < 900 else "not met"])
    return markdown_table(["target", "measured", "aim", ""], rows) if rows else ""


def render(document: dict, published: AISSettings) -> str:
    parts = document["parts"]
    models = {k: parts[k] for k in MODELS if k in parts}
    lines = ["# log p(x): IS, AIS, BDMC and the inference gaps", "",
             "Nats per datapoint. IS: IWAE_K, a lower bound; AIS: a stochastic lower bound; "
             "BDMC: stochastic lower and upper bounds on simulated data.", ""]
    if target_table := _targets(document, published):
        lines += ["## Targets", "", target_table, ""]
    if "linear-gaussian" in parts:
        p = parts["linear-gaussian"]
        gap = (f"; the encoder is {p['encoder_gap']:.2f} nats (log p(x) − its ELBO) from the "
               "posterior" if "encoder_gap" in p else "")
        lines += [f"## AIS against the exact log p(x): pPCA fitted to MNIST ({p['D']} → "
                  f"{p['L']}), {p['images']} test images", "",
                  f"Exact mean log p(x) {p['exact_log_px']:.2f} nats{gap}.", "",
                  _linear_table(p), ""]
    for name, part in models.items():
        lines += [f"## `{name}`: {part['images']} test images (trained "
                  f"{part['train_seconds'] / 60:.1f} min, test ELBO {fmt(part['test_elbo'])})",
                  "", _model_table(part), ""]
    if models:
        lines += ["## BDMC on simulated data", "", _bdmc_table(models), "",
                  f"## Inference gaps (AIS at T = {published.num_steps})", "",
                  _gaps_table(models), ""]
    if ranking := _ranking(models, published):
        lines += ["## Ranking of the two estimators", "", ranking, ""]
    if "burda-timing" in parts:
        t = parts["burda-timing"]
        lines += ["## AIS timing and throughput (Burda model)", "", markdown_table(
            ["images", "minutes", "log p(x)", "AIS GFLOP/s", "matmul GFLOP/s", "ratio",
             "threads", "load before/after"],
            [[str(t["images"]), f"{t['seconds'] / 60:.1f}", fmt(t["log_px_mean"]),
              f"{t['ais_flops_per_second'] / 1e9:.1f}",
              " / ".join(f"{r / 1e9:.1f}" for r in t["matmul_flops_per_second"]),
              f"{100 * t['throughput_ratio']:.0f} %", str(t["threads"]),
              f"{t['load_average_before'][0]:.1f} / {t['load_average_after'][0]:.1f}"]]), ""]
    for name, part in parts.items():
        load = part["machine"]["load_average_1_5_15_min"]
        lines.append(f"- `{name}`: `{part['command']}`, {part['part_seconds'] / 60:.1f} min, "
                     f"load average at the end {load[0]:.1f}")
    return "\n".join(lines)


def plot(document: dict, path: Path) -> None:
    models = {k: document["parts"][k] for k in MODELS if k in document["parts"]}
    if not models:
        return
    fig = Figure(figsize=(5 * len(models), 4))
    for ax, (name, part) in zip(fig.subplots(1, len(models), squeeze=False)[0],
                                models.items(), strict=True):
        for method, marker in (("is", "o"), ("ais", "s")):
            runs = [r for r in part["runs"] if r["method"] == method]
            ax.errorbar([r["seconds_per_image"] for r in runs], [r["mean"] for r in runs],
                        yerr=[r["mc_stderr"] for r in runs], marker=marker, capsize=3,
                        label="IS (IWAE_K bound)" if method == "is" else "AIS (stochastic "
                        "lower bound)")
        ax.set_xscale("log")
        ax.set_xlabel("seconds per test image")
        ax.set_ylabel("log p(x) estimate, nats per datapoint")
        ax.set_title(f"{name}: {part['images']} test images")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def write_report(out: Path, document: dict, published: AISSettings) -> None:
    write_results(out, "log_likelihood", document, render(document, published))
    plot(document, out / "log_likelihood.png")


# --- main ------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=PARTS, action="append",
                        help="what to measure (repeatable; default: all, in order)")
    parser.add_argument("--models", type=Path, default=ROOT / "runs" / "log_likelihood_models",
                        help="where trained models are kept (default: runs/log_likelihood_models)")
    parser.add_argument("--images", type=positive_int, default=100,
                        help="test images for the paired comparisons (default 100)")
    parser.add_argument("--bdmc-images", type=positive_int, default=100,
                        help="datapoints simulated for BDMC (default 100)")
    parser.add_argument("--timing-images", type=positive_int, default=1000,
                        help="test images of the Burda model timed at the published budget "
                        "(default 1000)")
    add_common_arguments(parser, RESULTS / "log_likelihood", threads=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.bdmc_images, args.timing_images = 6, 4, 8
        if args.models == ROOT / "runs" / "log_likelihood_models":
            args.models = args.out / "models"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pareto_k_hat(torch.randn(1, 30))  # imports ArviZ now, not inside a measured run
    out = output(args)
    log, progress = out.log, out.progress
    if args.quick:
        budgets = tuple(AISSettings(num_steps=t, num_chains=4, num_leapfrog=2) for t in (5, 10, 20))
        published, is_samples = budgets[1], (10, 30, 50)
    else:
        budgets, published, is_samples = BUDGETS, PUBLISHED, IS_SAMPLES
    path = args.out / "log_likelihood.json"
    document = json.loads(path.read_text()) if path.exists() else {"parts": {}}
    for part in args.part or PARTS:
        t0 = time.perf_counter()
        if part == "linear-gaussian":
            result = linear_gaussian_part(args, budgets, published, log, progress)
        elif part == "burda-timing":
            result = timing_part(args, published, log)
        else:
            result = model_part(part, args, budgets, is_samples, published, log)
        result.update(machine=machine(), command=command_line("benchmarks.log_likelihood",
                                                              argv), quick=args.quick,
                      part_seconds=time.perf_counter() - t0)
        document["parts"][part] = result
        write_report(args.out, document, published)
        log(f"{part}: done in {result['part_seconds'] / 60:.1f} min; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, "benchmarks.log_likelihood"))
