"""Draw images from a trained VAE's generative model and save them as a PNG grid.

Each image is the decoder's mean E[x|z] (pixel probabilities for the Bernoulli likelihood) at
z = T·eps, eps ~ N(0, I): T = 1 samples the prior, T < 1 gives more typical, less varied images.

Example: pyro-vae sample runs/meanfield -n 64 --temperature 0.8 --out s.png
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from pyro_vae.commands.options import existing_path, positive_int, seed, temperature
from pyro_vae.errors import ConfigError
from pyro_vae.resources import check_fits

MAX_PICTURE_PIXELS = 50_000_000  # a grid larger than this is no picture to look at


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=existing_path, metavar="CHECKPOINT",
                   help="checkpoint.pt written by pyro-vae train, or its run folder")
    p.add_argument("-n", "--num-images", type=positive_int, default=64,
                   help="number of images (default: 64)")
    p.add_argument("--temperature", "-T", type=temperature, default=1.0,
                   help="scale T of the prior's standard deviation, 0 to 100 (default: 1, "
                   "the prior)")
    p.add_argument("--seed", type=seed, default=None,
                   help="seed of the draws (default: a new random seed, printed)")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="PNG to write (default: samples_seed<SEED>.png in the run folder)")
    p.add_argument("--ncols", type=positive_int,
                   help="images per row (default: about the square root of -n)")
    p.add_argument("--save-arrays", action="store_true",
                   help="also save FILE's stem + .npy (decoder means, (N, D) float32) and "
                   "+ _z.npy (latent draws, (N, latent_dim))")


def _check_sizes(args, x_dim: int, image_shape) -> None:
    ncols = args.ncols or math.ceil(math.sqrt(args.num_images))
    nrows = math.ceil(args.num_images / ncols)
    rows, cols = image_shape
    pixels = (nrows * (rows + 1)) * (ncols * (cols + 1))
    if pixels > MAX_PICTURE_PIXELS:
        raise ConfigError(f"-n {args.num_images} with --ncols {ncols} makes a picture of "
                          f"{pixels:,} pixels, more than {MAX_PICTURE_PIXELS:,}; draw fewer "
                          "images or choose --ncols near the square root of -n")
    check_fits(16 * args.num_images * x_dim, f"-n {args.num_images}", "draw fewer images")


def run(args) -> int:
    """Draw the samples, write the PNG (and arrays); exit status 0."""
    from pyro_vae.plots import plot_images, sample_prior
    from pyro_vae.runs import RunFolder, load_checkpoint, vae_from_checkpoint

    vae, checkpoint = vae_from_checkpoint(load_checkpoint(args.checkpoint))
    if checkpoint.image_shape is None:
        raise ConfigError(f"{checkpoint.path}: no image shape for {vae.x_dim} features in the "
                          "checkpoint; cannot draw images")
    _check_sizes(args, vae.x_dim, checkpoint.image_shape)
    seed_used = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    out = args.out or RunFolder(checkpoint.path.parent).output_folder / \
        f"samples_seed{seed_used}.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the picture is written as PNG; name it *.png")
    generator = torch.Generator().manual_seed(seed_used)
    sample = sample_prior(vae, args.num_images, temperature=args.temperature,
                          generator=generator)
    what = "the prior N(0, I)" if args.temperature == 1 else f"N(0, {args.temperature:g}² I)"
    plot_images(sample.mean, checkpoint.image_shape, out, ncols=args.ncols,
                title=f"{args.num_images} samples from {what}, seed {seed_used}: decoder "
                "means E[x|z]")
    written = [out]
    if args.save_arrays:
        means, latents = out.with_suffix(".npy"), out.with_name(out.stem + "_z.npy")
        np.save(means, sample.mean.cpu().numpy().astype(np.float32))
        np.save(latents, sample.z.cpu().numpy().astype(np.float32))
        written += [means, latents]
    print(f"wrote {', '.join(map(str, written))} ({args.num_images} images of "
          f"{'x'.join(map(str, checkpoint.image_shape))} pixels, decoder means, temperature "
          f"{args.temperature:g}, seed {seed_used})")
    return 0
