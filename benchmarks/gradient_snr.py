"""Gradient signal-to-noise ratio of the registry's estimators, per parameter group, against K.

    python -m benchmarks.gradient_snr                                 # MNIST
    python -m benchmarks.gradient_snr --model ppca                    # control, trained
    python -m benchmarks.gradient_snr --model ppca --ppca-settings perturbation
    python benchmarks/gradient_snr.py --quick --out /tmp/snr --quiet  # smoke run

Rainforth et al. (2018, "Tighter variational bounds are not necessarily better") show that the
IWAE_K gradient's signal-to-noise ratio for the inference network falls as O(1/√K) while the
generative network's rises as O(√K); the doubly reparameterized gradient of Tucker et al.
(2019) is built to remove the fall (its inference-network SNR grows as O(√K) for large K).
This script measures both on MNIST:

1. train a small VAE with :func:`pyro_vae.fit.fit` (the ``meanfield`` estimator) and keep
   parameter snapshots after an early, a middle and a late epoch;
2. at each snapshot, for each estimator and K (``num_particles``), draw ``draws`` independent
   gradient estimates of the loss in nats per datapoint on one fixed minibatch of binarized
   test images;
3. per parameter i, SNR_i = |mean_i| / std_i over the draws (Rainforth et al. 2018);
   per group (encoder φ; decoder θ, with the likelihood's parameters if any) report the
   average of SNR_i over the group's parameters with std_i > 0.

The estimators are the registry's (all of them by default, or ``--estimators``, each with its
options if wanted: ``renyi,alpha=0.2 miwae,num_estimates=8``). For an ELBO estimator
(``trace``, ``stl``, ``meanfield``, …) K particles average K ELBO gradients (SNR should rise as
√K for both groups); for a multi-sample estimator (``iwae``, ``dreg``, ``renyi``, ``rws``,
``miwae``, ``ciwae``, ``piwae``) K is the K of its bound (MIWAE and PIWAE draw M·K). A K below
an estimator's smallest (``rws`` needs 2) is reported as refused.

Both predictions are asymptotic: they hold once K is large enough for Σ_k w_k to concentrate,
i.e. when the importance weights are not degenerate. Their effective sample size 1/Σ_k w̃_k² is
reported with every IWAE_K cell. ``--model ppca`` is the control where the posterior is known:
the linear-Gaussian model of :mod:`pyro_vae.models.linear_gaussian` (float64) with W's columns
orthogonal, so that p(z|x) is mean-field and the linear encoder can equal it; the decoder is
fixed at the true parameters and the SNR is measured on ``batch_size`` datapoints drawn from
the model. Its encoder comes from one of two setting sources (``--ppca-settings``):

- ``training`` (default): trained from its initialisation q(z|x) = N(0, I) by Adam on the
  ``analytic`` estimator's ELBO, on minibatches of a training set drawn from the model, with
  snapshots after an early, a middle and a late step (``--snapshot-steps``);
- ``perturbation``: the exact posterior plus Gaussian noise of a given size on each encoder
  parameter (small noise: nearly equal weights; large noise: degenerate ones).

Either way every setting reports KL(q ‖ p(z|x)) on the SNR minibatch, in nats per datapoint.

Writes ``OUT/gradient_snr.json`` (every number, with the configuration), ``OUT/gradient_snr.md``
(tables) and ``OUT/gradient_snr.png`` (SNR against K). SNR is dimensionless; the bounds
reported beside it are in nats per datapoint (ELBO or IWAE_K, higher is better).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file, python benchmarks/gradient_snr.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import copy
import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass

import pyro
import torch
from matplotlib.figure import Figure

from benchmarks.common import (
    RESULTS,
    Spec,
    add_common_arguments,
    command_line,
    fit_progress,
    machine,
    output,
    parse_spec,
    run_main,
    save_figure,
    write_results,
)
from pyro_vae.build import load_data
from pyro_vae.commands.options import Parser, positive_int
from pyro_vae.config import TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.fit import fit
from pyro_vae.models.linear_gaussian import (
    PPCAParams,
    kl_to_posterior,
    linear_gaussian_vae,
    sample_model,
    set_to_posterior,
)
from pyro_vae.objectives import ESTIMATORS, IWAE_ELBO, Bound, get_estimator, make_objective
from pyro_vae.progress import Progress


# --- configuration -----------------------------------------------------------------------------
@dataclass
class SNRConfig:
    model: str = "mnist"  # "mnist" (a trained VAE) or "ppca" (the linear-Gaussian control)
    ppca_settings: str = "training"  # ppca: "training" (snapshots) or "perturbation" (by hand)
    estimators: tuple[str, ...] = tuple(ESTIMATORS)  # the whole registry; NAME[,OPTION=VALUE]
    ks: tuple[int, ...] = (1, 5, 50)  # particles per datapoint (the K of IWAE_K)
    draws: int = 100  # gradient estimates per (setting, estimator, K); see noise_floor
    batch_size: int = 32  # the fixed minibatch (MNIST: the first test images, binarized once)
    seed: int = 0
    # mnist: one setting per snapshot
    snapshot_epochs: tuple[int, ...] = (1, 3, 8)  # early, mid, late in training
    hidden_sizes: tuple[int, ...] = (200,)  # small, so that every cell's draws fit on a CPU
    latent_dim: int = 20
    train_size: int | None = None  # None: all 60 000 training images
    test_size: int | None = None  # test images evaluated after each training epoch
    # ppca (both setting sources)
    ppca_dims: tuple[int, int] = (10, 3)  # data and latent dimensions D, L
    # ppca, training: one setting per snapshot; KL(q ‖ p(z|x)) 6.3, 0.025, 5e-4 nats/datapoint
    snapshot_steps: tuple[int, ...] = (30, 1000, 20000)  # Adam steps on the encoder
    ppca_train_size: int = 2000  # training datapoints drawn from the model
    ppca_train_batch: int = 100  # training minibatch
    ppca_lr: float = 1e-2  # Adam's learning rate at step 0 ...
    # ... times 1 / (1 + step / ppca_lr_decay): at a constant 1e-2 (1e-3) q only hovers around
    # the posterior, at KL ≈ 0.02-0.06 (0.002-0.007) nats/datapoint
    ppca_lr_decay: int = 300
    # ppca, perturbation: one setting per perturbation
    perturbations: tuple[float, ...] = (0.01, 0.1, 0.3)  # noise std on the exact encoder


QUICK = dict(ks=(1, 5), draws=20, batch_size=16, snapshot_epochs=(1, 2), hidden_sizes=(32,),
             latent_dim=5, train_size=1000, test_size=200, perturbations=(0.01,),
             snapshot_steps=(10, 200), ppca_train_size=500)


# --- helpers -----------------------------------------------------------------------------------
class RunningMoments:
    """Mean and standard deviation (ddof = 1) of a stream of vectors, by Welford's update in
    float64 (stable when |mean| ≫ std, and no draws kept in memory)."""

    def __init__(self, size: int):
        self.n = 0
        self.mean = torch.zeros(size, dtype=torch.float64)
        self._m2 = torch.zeros(size, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)

    @property
    def std(self) -> torch.Tensor:
        return (self._m2 / (self.n - 1)).sqrt()


def noise_floor(draws: int) -> float:
    """The SNR that a parameter with zero mean gradient shows on average: E|mean| / std ≈
    √(2 / (π · draws)) for Gaussian noise. Group SNRs near it carry no signal."""
    return math.sqrt(2 / (math.pi * draws))


def group_snr(moments: RunningMoments) -> dict:
    """Average over the group's parameters of |mean_i| / std_i; parameters whose gradient has
    zero variance over the draws are left out and counted."""
    std = moments.std
    varying = std > 0
    snr = moments.mean[varying].abs() / std[varying]
    return {"snr": float(snr.mean()), "snr_median": float(snr.median()),
            "parameters": int(std.numel()), "zero_variance": int((~varying).sum())}


def parameter_groups(vae) -> dict[str, list[torch.nn.Parameter]]:
    """φ (the encoder) and θ (the decoder, with the likelihood's parameters if it has any)."""
    return {"encoder": list(vae.encoder.parameters()),
            "decoder": list(vae.decoder.parameters()) + list(vae.likelihood.parameters())}


@torch.no_grad()
def importance_ess(vae, x: torch.Tensor, k: int, draws: int = 10) -> float:
    """Mean over datapoints and ``draws`` of the effective sample size 1 / Σ_k w̃_k² of the K
    normalized importance weights w_k = p(x, z_k) / q(z_k|x), z_k ~ q(z|x) (1: one particle
    carries all the weight; K: all weights equal). It depends on the VAE and K only, not on
    the estimator of the gradient."""
    elbo = IWAE_ELBO(num_particles=k)
    ess = []
    for _ in range(draws):
        log_w = elbo.log_weights(vae.model, vae.guide, x)  # (K, B)
        ess.append(1 / torch.softmax(log_w, 0).pow(2).sum(0))  # (B,)
    return float(torch.stack(ess).mean())


def measure(vae, spec: Spec, x: torch.Tensor, draws: int, seed: int) -> dict:
    """``draws`` gradient estimates of ``spec`` (an estimator and its K) at the VAE's current
    parameters: SNR per group, the mean of the bound (nats per datapoint), and for the
    multi-sample estimators the effective sample size of K importance weights. Every cell
    starts from the same seed, so estimators at the same K see the same random numbers. A K
    below the estimator's smallest gives a record with ``refused`` (why) and no SNR."""
    estimator = get_estimator(spec.name)
    if spec.k < estimator.min_particles:
        return {"estimator": spec.name, "bound": spec.bound.value, "K": spec.k,
                "options": dict(spec.options), "draws": draws, "encoder": None, "decoder": None,
                "refused": f"K = {spec.k} < {estimator.min_particles}: "
                           f"{estimator.min_particles_reason}"}
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    objective = make_objective(spec.name, vae, num_particles=spec.k, **dict(spec.options))
    groups = parameter_groups(vae)
    params = [p for group in groups.values() for p in group]
    moments = {g: RunningMoments(sum(p.numel() for p in ps)) for g, ps in groups.items()}
    bounds = []
    t0 = time.perf_counter()
    for _ in range(draws):
        loss = objective.differentiable_loss(x) / x.shape[0]  # nats per datapoint
        grads = iter(torch.autograd.grad(loss, params))
        for g, ps in groups.items():
            moments[g].update(torch.cat([next(grads).reshape(-1) for _ in ps]))
        bounds.append(float(loss.detach()))
    bounds = -torch.tensor(bounds, dtype=torch.float64)
    iwae = spec.bound is not Bound.ELBO
    return {
        "estimator": spec.name,
        "bound": spec.bound.value,
        "K": spec.k,
        "options": dict(objective.options),  # as the objective received them
        "draws": draws,
        "encoder": group_snr(moments["encoder"]),
        "decoder": group_snr(moments["decoder"]),
        "bound_mean": float(bounds.mean()),
        "bound_stderr": float(bounds.std() / math.sqrt(draws)),
        "seconds": time.perf_counter() - t0,
        "importance_ess": importance_ess(vae, x, spec.k) if iwae else None,
    }


def mnist_settings(config: SNRConfig, *, progress: str, log) -> tuple:
    """Train once, resuming from the checkpoint to each snapshot epoch in turn; returns the
    VAE, the fixed minibatch, one setting per snapshot (with its parameters), and facts."""
    train_config = TrainConfig(
        dataset="mnist", preset="pyro", hidden_sizes=config.hidden_sizes,
        latent_dim=config.latent_dim, estimator="meanfield", batch_size=128, lr=1e-3,
        train_size=config.train_size, test_size=config.test_size, seed=config.seed, epochs=1,
    )
    data = load_data(train_config)
    settings = []
    with tempfile.TemporaryDirectory() as run_dir:
        for i, epoch in enumerate(config.snapshot_epochs):
            train_config.epochs = epoch
            result = fit(train_config, run_dir, resume=i > 0, data=data, log=log,
                         progress=fit_progress(progress))
            test_elbo = result.history[-1]["test_elbo"]
            settings.append({
                "label": f"epoch {epoch}", "epoch": epoch, "test_elbo": test_elbo,
                "heading": f"After epoch {epoch} (test ELBO {test_elbo:.2f} nats/datapoint)",
                "state": copy.deepcopy(result.vae.state_dict()),
            })
    facts = {"data": f"one fixed minibatch of {config.batch_size} binarized MNIST test images",
             "train_config": train_config.to_dict()}
    return result.vae, data.test[: config.batch_size], settings, facts


def ppca_problem(config: SNRConfig) -> tuple:
    """pPCA with orthogonal columns of W (Wᵀ W diagonal, so p(z|x) is mean-field and the
    encoder can equal it), ``batch_size`` datapoints drawn from it, and the generator that drew
    them, for what the setting source draws next."""
    g = torch.Generator().manual_seed(config.seed)
    D, L = config.ppca_dims
    f64 = torch.float64
    Q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=f64))
    # W = Q diag(s): Wᵀ W diagonal. Contiguous: QR's Q is column-major, and pyro.module
    # registers a contiguous copy of a strided parameter, which a JIT-compiled ELBO then
    # cannot tell from the module's own.
    W = (Q * torch.linspace(2.0, 1.0, L, dtype=f64)).contiguous()
    params = PPCAParams(W, torch.randn(D, generator=g, dtype=f64), torch.tensor(0.5, dtype=f64))
    x = sample_model(params, config.batch_size, g)
    facts = {"data": f"{config.batch_size} datapoints drawn from a pPCA model (D = {D}, "
                     f"L = {L}, σ = 0.5, float64)"}
    return params, x, g, facts


@torch.no_grad()
def encoder_kl_to_posterior(vae, x: torch.Tensor, params: PPCAParams) -> float:
    """KL(q(z|x) ‖ p(z|x)) of the VAE's encoder, mean over ``x``: nats per datapoint."""
    loc, scale = vae.encode(x)
    return float(kl_to_posterior(x, loc, torch.diag_embed(scale[0] ** 2), params).mean())


def minibatches(data: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless shuffled minibatches ``(batch_size, D)``; each pass over ``data`` is a new
    permutation, its last partial minibatch dropped."""
    while True:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data) - batch_size + 1, batch_size):
            yield data[order[start : start + batch_size]]


def ppca_setting(vae, x: torch.Tensor, params: PPCAParams, *, label: str, heading: str,
                 **facts) -> dict:
    """One setting of the pPCA control: the encoder's KL(q ‖ p(z|x)) on the SNR minibatch,
    in nats per datapoint, and a copy of the parameters."""
    kl = encoder_kl_to_posterior(vae, x, params)
    return {"label": label, **facts, "kl_to_posterior": kl,
            "heading": f"{heading} (KL(q ‖ p(z|x)) = {kl:.3g} nats/datapoint)",
            "state": copy.deepcopy(vae.state_dict())}


def ppca_trained_settings(config: SNRConfig) -> tuple:
    """The linear-Gaussian control at training checkpoints: the decoder fixed at the true
    parameters, the encoder trained from q(z|x) = N(0, I) by Adam on the ``analytic`` ELBO
    (nats per datapoint) over minibatches of a training set of ``ppca_train_size`` datapoints
    drawn from the model, one setting per snapshot step. The ELBO's maximum is the exact
    posterior for every x at once, so KL(q ‖ p(z|x)) measures how far training has got."""
    params, x, g, facts = ppca_problem(config)
    train = sample_model(params, config.ppca_train_size, g)  # (N, D), apart from x
    vae = linear_gaussian_vae(params)  # decoder parameters kept, for their SNR; never stepped
    encoder = list(vae.encoder.parameters())
    objective = make_objective("analytic", vae)
    optimizer = torch.optim.Adam(encoder, lr=config.ppca_lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1 / (1 + step / config.ppca_lr_decay)
    )
    batches = minibatches(train, config.ppca_train_batch, g)
    pyro.set_rng_seed(config.seed)  # the reparameterization noise
    settings = []
    for step in range(1, config.snapshot_steps[-1] + 1):
        loss = objective.differentiable_loss(next(batches)) / config.ppca_train_batch
        for p, grad in zip(encoder, torch.autograd.grad(loss, encoder), strict=True):
            p.grad = grad
        optimizer.step()
        schedule.step()
        if step in config.snapshot_steps:
            settings.append(ppca_setting(
                vae, x, params, label=f"step {step}", step=step,
                heading=f"After {step} steps of training the encoder"))
    facts["training"] = (
        f"Encoder trained from q(z|x) = N(0, I) by Adam (learning rate {config.ppca_lr:g} / "
        f"(1 + step / {config.ppca_lr_decay})) on the `analytic` ELBO, on minibatches of "
        f"{config.ppca_train_batch} of {config.ppca_train_size} training datapoints drawn from "
        "the model; decoder fixed at the true parameters. KL(q ‖ p(z|x)) is measured on the "
        "SNR minibatch."
    )
    return vae, x, settings, facts


def ppca_perturbed_settings(config: SNRConfig) -> tuple:
    """The linear-Gaussian control set by hand: one setting per perturbation, the exact
    encoder plus N(0, perturbation²) noise on each of its parameters."""
    params, x, g, facts = ppca_problem(config)
    vae = linear_gaussian_vae(params)
    settings = []
    for size in config.perturbations:
        set_to_posterior(vae, params)
        with torch.no_grad():
            for p in vae.encoder.parameters():
                p.add_(size * torch.randn(p.shape, generator=g, dtype=torch.float64))
        settings.append(ppca_setting(
            vae, x, params, label=f"perturbation {size}", perturbation=size,
            heading=f"Encoder = exact posterior + N(0, {size}²) noise on each parameter"))
    return vae, x, settings, facts


def markdown(document: dict) -> str:
    """One table per setting: encoder and decoder SNR for every estimator and K."""
    ks = document["config"]["ks"]
    lines = [
        "# Gradient signal-to-noise ratio",
        "",
        "SNR = average over a group's parameters of |mean| / std of the gradient of the loss",
        f"(nats per datapoint), over {document['config']['draws']} draws on "
        f"{document['data']} (Rainforth et al. 2018). Dimensionless; higher is better. "
        "Every cell starts from the same seed. A parameter whose mean gradient is zero shows "
        f"SNR ≈ {document['noise_floor']:.3f} from sampling noise alone (the noise floor).",
        "",
        f"Command: `{document['command']}`",
        "",
    ]
    if "training" in document:
        lines += [document["training"], ""]
    head = ("| estimator | bound | " + " | ".join(f"encoder K={k}" for k in ks) + " | "
            + " | ".join(f"decoder K={k}" for k in ks) + " |")
    for setting in document["settings"]:
        lines += [f"## {setting['heading']}", "", head, "|" + "---|" * (2 + 2 * len(ks))]
        cells = {(r["entry"], r["K"]): r for r in document["results"]
                 if r["setting"] == setting["label"]}
        for entry in document["config"]["estimators"]:
            row = [entry, cells[entry, ks[0]]["bound"]]
            row += [_snr(cells[entry, k]["encoder"]) for k in ks]
            row += [_snr(cells[entry, k]["decoder"]) for k in ks]
            lines.append("| " + " | ".join(row) + " |")
        ess = dict(sorted({r["K"]: r["importance_ess"] for r in cells.values()
                           if r.get("importance_ess") is not None}.items()))
        if ess:
            lines += ["", "Effective sample size 1/Σ w̃² of the K importance weights (mean per "
                      "datapoint): " + ", ".join(f"K={k}: {e:.2f}" for k, e in ess.items()) + "."]
        lines.append("")
    return "\n".join(lines)


def _snr(group: dict | None) -> str:
    """A table cell: the group's SNR, or "—" for a K the estimator refuses."""
    return "—" if group is None else f"{group['snr']:.3g}"


def plot(document: dict, path: Path) -> None:
    """SNR against K, log-log: one row per setting, encoder and decoder side by side."""
    settings = document["settings"]
    fig = Figure(figsize=(9, 3.2 * len(settings)))
    axes = fig.subplots(len(settings), 2, squeeze=False, sharex=True)
    for row, setting in zip(axes, settings, strict=True):
        for ax, group in zip(row, ("encoder", "decoder"), strict=True):
            for entry in document["config"]["estimators"]:
                cells = sorted((r["K"], r[group]["snr"]) for r in document["results"]
                               if r["setting"] == setting["label"] and r["entry"] == entry
                               and r[group] is not None)
                ax.plot(*zip(*cells, strict=True), marker="o", label=entry)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{document['config']['model']}: {group}, {setting['label']}")
            ax.set_ylabel("gradient SNR (mean |mean|/std)")
            ax.grid(True, which="both", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("K (particles per datapoint)")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


# --- the run -----------------------------------------------------------------------------------
def default_folder(config: SNRConfig) -> Path:
    """results/gradient_snr_mnist, _ppca_trained (training) or _ppca_perturbation."""
    if config.model == "mnist":
        return RESULTS / "gradient_snr_mnist"
    return RESULTS / ("gradient_snr_ppca_trained" if config.ppca_settings == "training"
                      else "gradient_snr_ppca_perturbation")


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    default = SNRConfig()
    parser.add_argument("--model", choices=("mnist", "ppca"), default="mnist",
                        help="a trained MNIST VAE (default), or the linear-Gaussian control")
    parser.add_argument("--draws", type=positive_int,
                        help=f"gradient estimates per cell (default {default.draws})")
    parser.add_argument("--ks", type=positive_int, nargs="+",
                        help=f"particle numbers K (default {' '.join(map(str, default.ks))})")
    parser.add_argument("--estimators", nargs="+",
                        help="estimator names from the registry (default: all of them)")
    parser.add_argument("--snapshot-epochs", type=positive_int, nargs="+",
                        help="mnist: training epochs after which to measure, increasing "
                             f"(default {' '.join(map(str, default.snapshot_epochs))})")
    parser.add_argument("--ppca-settings", choices=("training", "perturbation"),
                        help="ppca: encoder trained to snapshot steps (default), or the exact "
                             "posterior plus noise")
    parser.add_argument("--snapshot-steps", type=positive_int, nargs="+",
                        help="ppca training: Adam steps after which to measure, increasing "
                             f"(default {' '.join(map(str, default.snapshot_steps))})")
    add_common_arguments(parser, None, threads=1,
                         out_default_text="runs/benchmarks/gradient_snr_"
                         "{mnist,ppca_trained,ppca_perturbation} by --model and --ppca-settings")
    args = parser.parse_args(argv)
    for entry in args.estimators or ():
        try:
            if ":" in entry:
                raise ConfigError(f"{entry!r}: give K with --ks, not in the estimator")
            parse_spec(entry)
        except ConfigError as e:
            parser.error(str(e))
    for option in ("snapshot_epochs", "snapshot_steps"):
        snapshots = getattr(args, option)
        if snapshots is not None and (snapshots != sorted(set(snapshots)) or snapshots[0] < 1):
            parser.error(f"--{option.replace('_', '-')} must be increasing positive integers, "
                         f"got {snapshots}")
    if args.model == "mnist" and (args.ppca_settings or args.snapshot_steps):
        parser.error("--ppca-settings and --snapshot-steps apply to --model ppca only")
    if args.model == "ppca" and args.snapshot_epochs:
        parser.error("--snapshot-epochs applies to --model mnist only")
    if args.ppca_settings == "perturbation" and args.snapshot_steps:
        parser.error("--snapshot-steps applies to --ppca-settings training only")
    if any(v < 1 for v in (args.ks or []) + [args.draws or 2, args.threads]) or args.draws == 1:
        parser.error("--ks and --threads must be positive and --draws at least 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    config = SNRConfig(model=args.model, **(QUICK if args.quick else {}))
    for option in ("draws", "ks", "estimators", "snapshot_epochs", "ppca_settings",
                   "snapshot_steps"):
        value = getattr(args, option)
        if value is not None:
            setattr(config, option, tuple(value) if isinstance(value, list) else value)
    torch.set_num_threads(args.threads)
    log, progress = output(args)
    out = args.out or default_folder(config)
    start = time.perf_counter()

    if config.model == "mnist":
        vae, x, settings, facts = mnist_settings(config, progress=progress, log=log)
    elif config.ppca_settings == "training":
        vae, x, settings, facts = ppca_trained_settings(config)
    else:
        vae, x, settings, facts = ppca_perturbed_settings(config)
    cells = [(s, entry, parse_spec(entry)._replace(k=k)) for s in settings
             for entry in config.estimators for k in config.ks]
    results = []
    with Progress(len(cells), "gradient SNR", "cells", mode=progress) as bar:
        for setting, entry, spec in cells:
            vae.load_state_dict(setting["state"])
            record = measure(vae, spec, x, config.draws, config.seed)
            results.append({"setting": setting["label"], "entry": entry, **record})
            if "refused" in record:
                log(f"{setting['label']:18s} {entry:13s} K={spec.k:<3d}  refused: "
                    f"{record['refused']}")
            else:
                log(f"{setting['label']:18s} {entry:13s} K={spec.k:<3d}  SNR encoder "
                    f"{record['encoder']['snr']:.3g}  decoder {record['decoder']['snr']:.3g}  "
                    f"({record['bound']} {record['bound_mean']:.2f} nats/datapoint)")
            bar.update(1)

    document = {
        "description": "gradient SNR = mean over a parameter group of |mean_i| / std_i of the "
                       "gradient of the loss (nats per datapoint) over independent draws on one "
                       "fixed minibatch (Rainforth et al. 2018); dimensionless",
        "units": "snr: dimensionless; bound_mean, bound_stderr, test_elbo, kl_to_posterior: "
                 "nats per datapoint (bounds are lower bounds on log p(x): ELBO or IWAE_K, "
                 "higher is better); importance_ess: particles, out of K",
        "command": command_line("benchmarks.gradient_snr", argv),
        "config": dataclasses.asdict(config),
        **facts,
        "noise_floor": noise_floor(config.draws),
        "settings": [{k: v for k, v in s.items() if k != "state"} for s in settings],
        "results": results,
        "machine": machine(),
        "total_seconds": time.perf_counter() - start,
    }
    write_results(out, "gradient_snr", document, markdown(document))
    plot(document, out / "gradient_snr.png")
    log(f"wrote {out}/gradient_snr.{{json,md,png}} in {document['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, "benchmarks.gradient_snr"))
