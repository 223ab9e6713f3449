"""Train a VAE; write metrics.json, checkpoint.pt and pictures into a run folder.

A folder that already holds a run is refused unless given --resume (continue it) or
--overwrite (replace it). On --resume only --epochs, --data-dir and --device may change.

Examples:
  pyro-vae train                                    # meanfield, 10 epochs, runs/meanfield-<time>
  pyro-vae train --estimator iwae -K 50 --out runs/iwae50
  pyro-vae train --resume runs/iwae50 --epochs 20   # continue, to 20 epochs in all
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from datetime import datetime
from pathlib import Path

from pyro_vae.build import load_data
from pyro_vae.commands.options import (
    dataset_name,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed,
    thread_count,
)
from pyro_vae.config import LR_SCHEDULES, TrainConfig, resumed_config
from pyro_vae.data import DATASETS, load_dataset
from pyro_vae.distributed import DEFAULT_TIMEOUT_SECONDS, barrier, process_group
from pyro_vae.errors import ConfigError
from pyro_vae.fit import fit
from pyro_vae.models import FLOWS, LIKELIHOODS, PRESETS
from pyro_vae.models.networks import ACTIVATIONS
from pyro_vae.objectives import ESTIMATORS, estimator_options
from pyro_vae.runs import RunFolder
from pyro_vae.threads import set_threads

DEFAULTS = TrainConfig()
OPTION_NAMES: dict[str, str] = {}  # config field → its option, for messages


def _config_option(group, *flags: str, field: str, help: str, **kwargs) -> None:
    """An option that sets config ``field``: left ``None`` unless given, so that a resumed
    run can tell what the user asked to change; its help shows the config's default."""
    default = getattr(DEFAULTS, field)
    shown = default if not isinstance(default, tuple) else " ".join(map(str, default))
    if default is None:
        shown = "the preset's" if field in ("latent_dim", "hidden_sizes", "activation") else "all"
        shown = "none, a diagonal Gaussian guide" if field == "flow" else shown
    if field == "num_particles":
        shown = "the estimator's: " + ", ".join(
            f"{n} {e.default_num_particles}" for n, e in ESTIMATORS.items()
            if e.default_num_particles != 1) + ", 1 for the others"
    group.add_argument(*flags, dest=field, default=None, help=f"{help} (default: {shown})",
                       **kwargs)
    OPTION_NAMES[field] = flags[0]


def estimators_epilog() -> str:
    """The registry as a table: name, what −loss estimates, and how (and its options)."""
    width = max(map(len, ESTIMATORS))
    bound_width = max(len(e.bound.value) for e in ESTIMATORS.values())
    lines = [f"  {name:<{width}}  {e.bound.value:<{bound_width}}  {e.summary}"
             + "".join(f"; {o.flags[0]} (default {o.default})" for o in e.options)
             for name, e in ESTIMATORS.items()]
    return "estimators (--estimator NAME; the bound that -loss estimates, and how):\n" + \
        "\n".join(lines)


def add_arguments(p) -> None:
    p.epilog = estimators_epilog()
    _model_options(p.add_argument_group("model and estimator"))
    _optimization_options(p.add_argument_group("optimization"))
    _data_options(p.add_argument_group("data"))
    _output_options(p.add_argument_group("run folder and output"))


def _model_options(model) -> None:
    _config_option(model, "--estimator", field="estimator", choices=list(ESTIMATORS),
                   metavar="NAME", help="training objective, listed below")
    _config_option(model, "--num-particles", "-K", field="num_particles", type=positive_int,
                   metavar="K", help="samples per datapoint")
    _estimator_options(model)
    _config_option(model, "--preset", field="preset", choices=list(PRESETS),
                   help="architecture: " + "; ".join(f"{name} = {arch.summary}"
                                                       for name, arch in PRESETS.items()))
    _config_option(model, "--model", field="model", metavar="MODULE:FUNCTION",
                   help="a model of your own: FUNCTION(x_dim=..., image_shape=..., "
                   "likelihood=..., beta=...) returns it (docs/models.md)")
    _config_option(model, "--flow", field="flow", choices=list(FLOWS),
                   help="push q(z|x) (each layer's) through an inverse autoregressive flow")
    _config_option(model, "--flow-layers", field="flow_layers", type=positive_int, metavar="K",
                   help="transforms of the flow (with --flow)")
    _config_option(model, "--latent-dim", field="latent_dim", type=positive_int,
                   metavar="L", help="size of z")
    _config_option(model, "--hidden-sizes", field="hidden_sizes", type=positive_int,
                   nargs="+", metavar="SIZE", help="encoder hidden sizes; the decoder mirrors them")
    _config_option(model, "--activation", field="activation", choices=list(ACTIVATIONS),
                   help="hidden-layer activation")
    _config_option(model, "--likelihood", field="likelihood", choices=list(LIKELIHOODS),
                   help="p(x|z): bernoulli for binarized pixels, continuous-bernoulli or "
                   "gaussian for grey levels")
    _config_option(model, "--likelihood-scale", field="likelihood_scale", type=positive_float,
                   metavar="SIGMA", help="gaussian likelihood: its standard deviation σ, in "
                   "grey levels (or where a learned σ starts)")
    _config_option(model, "--learn-likelihood-scale", field="learn_likelihood_scale",
                   action="store_const", const=True, help="gaussian likelihood: learn one σ "
                   "shared by all pixels")
    _config_option(model, "--beta", field="beta", type=non_negative_float,
                   help="KL weight (1: the ELBO; other values: the beta-VAE objective)")
    _config_option(model, "--beta-warmup", field="beta_warmup_epochs", type=non_negative_int,
                   metavar="EPOCHS", help="raise beta linearly over this many epochs")


def _estimator_options(model) -> None:
    """One flag per option that the registry's estimators declare (--alpha, -M, ...): each
    value goes into the config's ``estimator_options``, checked against the option's range."""
    for option in estimator_options():
        takers = [name for name, e in ESTIMATORS.items() if option in e.options]
        model.add_argument(*option.flags, dest=f"estimator_option_{option.name}", default=None,
                           type=_option_type(option), metavar=option.metavar,
                           help=f"{', '.join(takers)}: {option.help} (default: {option.default}; "
                           f"{option.describe()})")


def _option_type(option):
    """argparse type: a value of ``option``'s kind within its range."""

    def parse(text: str):
        try:
            value = option.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {option.describe()}, got {text!r}"
                                             ) from None
        try:
            return option.check(value)
        except ConfigError:
            raise argparse.ArgumentTypeError(f"expected {option.describe()}, got {text}"
                                             ) from None

    return parse


def _optimization_options(opt) -> None:
    _config_option(opt, "--epochs", field="epochs", type=positive_int, metavar="N",
                   help="epochs in all (with --resume: to extend the run)")
    _config_option(opt, "--batch-size", field="batch_size", type=positive_int, metavar="B",
                   help="images per minibatch")
    _config_option(opt, "--lr", field="lr", type=positive_float, metavar="LR",
                   help="Adam's learning rate")
    _config_option(opt, "--lr-schedule", field="lr_schedule", choices=LR_SCHEDULES,
                   help="constant, or Burda et al.'s decay (burda: passes of 3^i epochs; "
                   "burda-even: eight equal passes)")
    _config_option(opt, "--scale-to-data", field="scale_to_data", action="store_const",
                   const=True, help="scale minibatch losses to the full-data ELBO")
    _config_option(opt, "--validate-every-step", field="validate_every_step",
                   action="store_const", const=True, help="run Pyro's and torch's validation "
                   "checks on every step, not only the first (their cost: benchmarks/README.md)")
    _config_option(opt, "--seed", field="seed", type=seed, metavar="S",
                   help="decides the initial weights, the data order and every sample")
    _config_option(opt, "--device", field="device", help="cpu or cuda")


def _data_options(data) -> None:
    _config_option(data, "--dataset", field="dataset", type=dataset_name,
                   metavar="NAME|FILE.npz", help=f"{' or '.join(DATASETS)}, or an .npz file of "
                   "your own with 'train' and 'test' image arrays (docs/data.md)")
    _config_option(data, "--data-dir", field="data_dir", metavar="DIR",
                   help="folder with the four IDX files (.gz or raw); the default looks in "
                   "$PYRO_VAE_DATA, then the copy shipped with the package")
    data.add_argument("--download", action="store_true",
                      help="download the data set (checksum-verified) if it is not found")
    _config_option(data, "--train-size", field="train_size", type=positive_int, metavar="N",
                   help="use only the first N training images")
    _config_option(data, "--test-size", field="test_size", type=positive_int, metavar="N",
                   help="use only the first N test images")


def _output_options(out) -> None:
    out.add_argument("--out", type=Path, metavar="RUN_DIR",
                     help="run folder (default: runs/<estimator>-<date>-<time>)")
    out.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue the run in RUN_DIR from its last checkpoint")
    out.add_argument("--overwrite", action="store_true",
                     help="replace the run that --out holds (it is refused otherwise)")
    out.add_argument("--quiet", action="store_true",
                     help="no progress bar or progress lines (the per-epoch lines remain)")
    out.add_argument("--no-plots", action="store_true",
                     help="write no pictures at the end (see pyro-vae plot)")
    out.add_argument("--tensorboard", nargs="?", const="RUN_DIR/tensorboard", metavar="DIR",
                     help="also log every epoch to TensorBoard in DIR (default with no DIR: "
                     "RUN_DIR/tensorboard; needs pip install -e \".[tensorboard]\")")
    out.add_argument("--threads", type=thread_count, metavar="N",
                     help="torch threads per process, fixed (default: $OMP_NUM_THREADS if set, "
                     "else the fastest of 1 to one per core, timed while the steps run and "
                     "again as the machine's load changes; the metrics do not depend on it)")
    out.add_argument("--dist-timeout", type=positive_float, default=DEFAULT_TIMEOUT_SECONDS,
                     metavar="SECONDS", help="under torchrun: how long a rank waits for the "
                     f"others before the run fails (default: {DEFAULT_TIMEOUT_SECONDS:g})")


def _given(args) -> dict:
    """The config fields the user gave on the command line."""
    given = {field: getattr(args, field) for field in OPTION_NAMES
             if getattr(args, field) is not None}
    if "hidden_sizes" in given:
        given["hidden_sizes"] = tuple(given["hidden_sizes"])
    options = {o.name: getattr(args, f"estimator_option_{o.name}")
               for o in estimator_options()
               if getattr(args, f"estimator_option_{o.name}") is not None}
    if options:
        given["estimator_options"] = options
    return given


def _folder(args, given: dict) -> RunFolder:
    if args.resume is not None and args.out is not None:
        raise ConfigError("--resume continues the run in its own folder; leave out --out")
    if args.resume is not None and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: choose one")
    estimator = given.get("estimator", DEFAULTS.estimator)
    path = args.resume or args.out or Path("runs") / f"{estimator}-{datetime.now():%Y%m%d-%H%M%S}"
    args.out = path  # for the interruption message
    return RunFolder(path)


def run(args) -> int:
    """Train in one process, or under torchrun in each rank of a data-parallel group (rank 0
    alone prints, holds the folder's lock and writes; see :mod:`pyro_vae.distributed`)."""
    busy = set_threads(args.threads)
    given = _given(args)
    folder = _folder(args, given)
    main_rank = os.environ.get("RANK", "0") == "0"
    config = None if args.resume is not None else TrainConfig(**given).validate()
    with folder.lock() if main_rank else contextlib.nullcontext():
        if config is None:
            checkpoint = folder.load_checkpoint()
            config = resumed_config(checkpoint.config, given, names={
                **OPTION_NAMES, "estimator_options": "estimator options"})
        else:
            checkpoint = None
            if main_rank:
                folder.prepare_new(overwrite=args.overwrite,
                                   log=lambda m: print(m, file=sys.stderr))
        with process_group(device=config.device, timeout=args.dist_timeout) as world:
            return _train(args, config, folder, checkpoint, world, busy)


def _train(args, config: TrainConfig, folder: RunFolder, checkpoint, world,
           busy: str | None) -> int:
    main_process = world is None or world.is_main
    if args.download and main_process:
        load_dataset(config.dataset, config.data_dir, download=True)
    barrier(world)  # the other ranks read what rank 0 downloaded
    data = load_data(config)
    if main_process:
        processes = "" if world is None else f" in {world.world_size} processes"
        epochs = f"{config.epochs} epoch{'' if config.epochs == 1 else 's'}"
        print(f"training {config.estimator} on {data.dataset.name} ({data.train.shape[0]} "
              f"train / {data.test.shape[0]} test images from {data.dataset.source}) for "
              f"{epochs}{processes}, into {folder.path}", file=sys.stderr)
        if busy and world is None:
            print(busy, file=sys.stderr)
        if config.likelihood == "bernoulli" and config.dataset != "mnist":
            print(f"note: the bernoulli likelihood models binary pixels, so {config.dataset}'s "
                  "grey levels are binarized at random (a new draw each epoch; the test set "
                  "once, seed 0); --likelihood continuous-bernoulli or gaussian models them "
                  "as grey levels", file=sys.stderr)
    board = args.tensorboard
    if board == "RUN_DIR/tensorboard":
        board = folder.path / "tensorboard"
    result = fit(config, folder, resume=checkpoint or False, data=data, world=world,
                 progress=False if args.quiet else None, tensorboard=board)
    if not main_process:
        return 0
    pictures = []
    if not args.no_plots:
        from pyro_vae.plots import write_run_figures  # matplotlib: imported only when drawing

        pictures = write_run_figures(folder, vae=result.vae, data=data)
    last = result.history[-1] if result.history else None
    if last is None:
        print(f"nothing to train: {folder.path} has no epoch to run")
        return 0
    print(f"done: test ELBO {last['test_elbo']:.3f} nats/datapoint (a lower bound on log p(x), "
          f"{result.vae.likelihood.density}) after {last['epoch']} "
          f"epoch{'' if last['epoch'] == 1 else 's'}, "
          f"{last['wall_seconds']:.0f} s; wrote {folder.metrics} and {folder.checkpoint}")
    if pictures:
        print(f"pictures in {folder.path}: {', '.join(p.name for p in pictures)}")
    return 0
