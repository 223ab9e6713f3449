"""Train a VAE (SVI or a hand-written loss); write metrics.json, checkpoint.pt and pictures.

Example: pyro-vae train --estimator meanfield --epochs 20 --out runs/meanfield
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import datetime
from pathlib import Path

from pyro_vae.cli import positive_float, positive_int
from pyro_vae.data import DATASETS
from pyro_vae.distributed import DEFAULT_TIMEOUT_SECONDS, barrier, process_group
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.networks import ACTIVATIONS, PRESETS
from pyro_vae.training import LR_SCHEDULES, TrainConfig, fit, prepare_data

DEFAULTS = TrainConfig()


def add_arguments(p) -> None:
    p.add_argument("--dataset", choices=list(DATASETS), default=DEFAULTS.dataset)
    p.add_argument("--data-dir", help="folder with the four IDX files (.gz or raw); default: "
                   "$PYRO_VAE_DATA, else the copy shipped with the package")
    p.add_argument("--download", action="store_true",
                   help="download the data set (checksum-verified) if it is not found")
    p.add_argument("--preset", choices=list(PRESETS), default=DEFAULTS.preset,
                   help="architecture: pyro = 784-400-50 softplus, burda = 784-200-200-50 tanh")
    p.add_argument("--latent-dim", type=positive_int, help="size of z (default: the preset's)")
    p.add_argument("--hidden-sizes", type=positive_int, nargs="+",
                   help="encoder hidden sizes; the decoder mirrors them (default: the preset's)")
    p.add_argument("--activation", choices=list(ACTIVATIONS))
    p.add_argument("--likelihood", choices=list(LIKELIHOODS), default=DEFAULTS.likelihood)
    p.add_argument("--estimator", choices=list(ESTIMATORS), default=DEFAULTS.estimator)
    p.add_argument("--num-particles", "-K", type=positive_int,
                   help="samples per datapoint (default: 1, or 5 for iwae)")
    p.add_argument("--epochs", type=positive_int,
                   help=f"epochs in all (default: {DEFAULTS.epochs}; with --resume: the "
                   "checkpoint's, or this many in all to extend the run)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=positive_float, default=DEFAULTS.lr)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=DEFAULTS.lr_schedule)
    p.add_argument("--beta", type=float, default=DEFAULTS.beta, help="KL weight (1: the ELBO)")
    p.add_argument("--beta-warmup", type=int, default=0, metavar="EPOCHS",
                   help="rise β linearly over this many epochs")
    p.add_argument("--scale-to-data", action="store_true",
                   help="scale minibatch losses to the full-data ELBO")
    p.add_argument("--validate-every-step", action="store_true",
                   help="run Pyro's and torch's validation checks on every step (default: "
                   "on the first step only; they cost 5-10%% of a step)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--device", default=DEFAULTS.device, help="cpu or cuda")
    p.add_argument("--train-size", type=positive_int, help="use only the first N training images")
    p.add_argument("--test-size", type=positive_int, help="use only the first N test images")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<estimator>-<time>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true",
                   help="write no pictures at the end (see pyro-vae plot)")
    p.add_argument("--dist-timeout", type=positive_float, default=DEFAULT_TIMEOUT_SECONDS,
                   metavar="SECONDS", help="under torchrun: how long a rank waits for the "
                   "others before the run fails (see docs/distributed.md)")


def config_from_args(args) -> TrainConfig:
    return TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, preset=args.preset,
        latent_dim=args.latent_dim,
        hidden_sizes=tuple(args.hidden_sizes) if args.hidden_sizes else None,
        activation=args.activation, likelihood=args.likelihood, estimator=args.estimator,
        num_particles=args.num_particles,
        epochs=DEFAULTS.epochs if args.epochs is None else args.epochs, batch_size=args.batch_size,
        lr=args.lr, lr_schedule=args.lr_schedule, beta=args.beta,
        beta_warmup_epochs=args.beta_warmup, scale_to_data=args.scale_to_data, seed=args.seed,
        validate_every_step=args.validate_every_step,
        device=args.device, train_size=args.train_size, test_size=args.test_size,
    )


def run(args) -> int:
    """Train in one process, or under torchrun in each rank of a data-parallel group (rank 0
    alone prints and writes; see :mod:`pyro_vae.distributed`)."""
    if args.resume is not None:
        from pyro_vae.checkpoint import load_checkpoint

        device = TrainConfig.from_dict(load_checkpoint(args.resume)["config"]).device
    else:
        device = args.device
    with process_group(device=device, timeout=args.dist_timeout) as world:
        return _run(args, world)


def _run(args, world) -> int:
    main_process = world is None or world.is_main
    progress = False if args.quiet else None
    data = None
    if args.resume is not None:
        config = None
        if args.epochs is not None:  # extend (or shorten) the run; nothing else may change
            from pyro_vae.checkpoint import load_checkpoint

            saved = TrainConfig.from_dict(load_checkpoint(args.resume)["config"])
            config = dataclasses.replace(saved, epochs=args.epochs)
        result = fit(config, args.resume, resume=True, progress=progress)
        out = args.resume
    else:
        config = config_from_args(args).validate()
        if args.download and main_process:
            from pyro_vae.data import load_dataset

            load_dataset(config.dataset, config.data_dir, download=True)
        barrier(world)  # the other ranks read what rank 0 downloaded
        out = args.out or Path("runs") / f"{config.estimator}-{datetime.now():%Y%m%d-%H%M%S}"
        data = prepare_data(config)
        if main_process:
            processes = "" if world is None else f" in {world.world_size} processes"
            print(f"training {config.estimator} on {data.dataset.name} "
                  f"({data.train.shape[0]} train / {data.test.shape[0]} test images from "
                  f"{data.dataset.source}) for {config.epochs} epochs{processes}",
                  file=sys.stderr)
        result = fit(config, out, progress=progress, data=data)
    last = result.history[-1]
    if not main_process:
        return 0
    pictures = []
    if not args.no_plots:
        from pyro_vae.plots import write_run_figures  # matplotlib: imported only when drawing

        pictures = write_run_figures(out, vae=result.vae, data=data)
    print(f"done: test ELBO {last['test_elbo']:.3f} nats/datapoint (a lower bound on log p(x)) "
          f"after {last['epoch']} epochs, {last['wall_seconds']:.0f} s; wrote "
          f"{out / 'metrics.json'} and {out / 'checkpoint.pt'}")
    if pictures:
        print(f"pictures in {out}: {', '.join(p.name for p in pictures)}")
    return 0
