"""Draw images from a trained VAE's generative model and save them as a PNG grid.

Each image is the decoder's mean E[x|z] (pixel probabilities for the Bernoulli likelihood)
at z = T·ε, ε ~ N(0, I): T = 1 samples the prior, T < 1 gives more typical, less varied
images. With --save-arrays the means are also saved as a (N, D) float32 .npy file beside
the PNG, and the latent draws as a (N, latent_dim) one.

Example: pyro-vae sample runs/meanfield/checkpoint.pt -n 64 --temperature 0.8 --out s.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyro_vae.cli import existing_path, positive_int
from pyro_vae.errors import ConfigError


def _temperature(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def add_arguments(p) -> None:
    """The arguments of ``pyro-vae sample``."""
    p.add_argument("checkpoint", type=existing_path, metavar="CHECKPOINT",
                   help="checkpoint.pt written by pyro-vae train, or its run folder")
    p.add_argument("-n", "--num-samples", type=positive_int, default=64,
                   help="number of images (default: 64)")
    p.add_argument("--temperature", "-T", type=_temperature, default=1.0,
                   help="scale of the prior's standard deviation (default: 1, the prior)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="PNG to write (default: samples.png in the run folder)")
    p.add_argument("--ncols", type=positive_int, help="images per row (default: ~sqrt(n))")
    p.add_argument("--save-arrays", action="store_true",
                   help="also save FILE's stem + .npy (decoder means, (N, D) float32) and "
                   "+ _z.npy (latent draws, (N, latent_dim))")


def run(args) -> int:
    """Draw the samples, write the PNG (and arrays); exit status 0."""
    from pyro_vae.plots import plot_images, sample_prior
    from pyro_vae.training import load_vae

    vae, _, ckpt = load_vae(args.checkpoint)
    image_shape = ckpt.get("image_shape")
    if not image_shape or int(np.prod(image_shape)) != vae.x_dim:
        raise ConfigError(f"{args.checkpoint}: no image shape for {vae.x_dim} features in the "
                          "checkpoint; cannot draw images")
    run_dir = args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent
    out = args.out or run_dir / "samples.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the picture is written as PNG; name it *.png")
    generator = torch.Generator().manual_seed(args.seed)
    sample = sample_prior(vae, args.num_samples, temperature=args.temperature,
                          generator=generator)
    what = "the prior N(0, I)" if args.temperature == 1 else f"N(0, {args.temperature:g}² I)"
    plot_images(sample.mean, image_shape, out, ncols=args.ncols,
                title=f"{args.num_samples} samples from {what}, seed {args.seed}: decoder "
                "means E[x|z]")
    written = [out]
    if args.save_arrays:
        means, latents = out.with_suffix(".npy"), out.with_name(out.stem + "_z.npy")
        np.save(means, sample.mean.cpu().numpy().astype(np.float32))
        np.save(latents, sample.z.cpu().numpy().astype(np.float32))
        written += [means, latents]
    print(f"wrote {', '.join(map(str, written))} ({args.num_samples} images of "
          f"{'x'.join(map(str, image_shape))} pixels, decoder means, temperature "
          f"{args.temperature:g}, seed {args.seed})")
    return 0
