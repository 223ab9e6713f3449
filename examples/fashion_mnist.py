"""Grey-level Fashion-MNIST with the continuous Bernoulli likelihood (Loaiza-Ganem &
Cunningham 2019): the pixels stay grey levels in [0, 1], no binarization.

    python examples/fashion_mnist.py               # 10 epochs: about 1.5 min on one CPU core
    python examples/fashion_mnist.py --quick       # 3 epochs on 10,000 images: about 7 s on
                                                   # one CPU core, of which ~2 s importing
                                                   # torch and pyro
    python examples/fashion_mnist.py --out figures # where the pictures go

It draws ``reconstructions.png`` (grey-level test images beside the decoder's mean at their
posterior mean) and ``prior_samples.png`` into ``--out`` (default runs/examples/fashion_mnist).

Fashion-MNIST is read from --data-dir, $PYRO_VAE_DATA or /usr/share/datasets/fashion-mnist
(Debian's dataset-fashion-mnist), or downloaded with --download. Where it is not installed the
script says so in one line and exits (status 0: a skip, not a failure).

The continuous Bernoulli is a density on [0, 1] per pixel, so its ELBO is a lower bound on a
log-density (nats per datapoint, and it may be positive); it is not comparable with ELBOs of
binarized data. Writing the ELBO's likelihood term with the
"Bernoulli cross-entropy" x·log λ + (1−x)·log(1−λ), as many VAE codes do for grey levels,
leaves out the normalizer log C(λ) of each pixel; the last line prints how many nats that is.
"""

import sys
from pathlib import Path

import torch

from pyro_vae import DataNotFoundError, PyroVAEError
from pyro_vae.build import load_data
from pyro_vae.commands.options import DefaultsHelpFormatter, Parser, output_folder, positive_int
from pyro_vae.config import TrainConfig
from pyro_vae.data import load_dataset
from pyro_vae.fit import fit
from pyro_vae.losses import analytic_elbo
from pyro_vae.plots import plot_prior_samples, plot_reconstructions

parser = Parser(description=__doc__.split("\n\n")[0],
                formatter_class=DefaultsHelpFormatter)
parser.add_argument("--epochs", type=positive_int, default=10, help="training epochs")
parser.add_argument("--data-dir", help="folder of the four Fashion-MNIST IDX files (default: "
                    "$PYRO_VAE_DATA, else the installed /usr/share/datasets/fashion-mnist)")
parser.add_argument("--download", action="store_true",
                    help="download Fashion-MNIST (checksum-verified) if it is not installed")
parser.add_argument("--out", type=Path, default="runs/examples/fashion_mnist",
                    help="folder for the pictures (default: runs/examples/fashion_mnist, which "
                    "git ignores)")
parser.add_argument("--quick", action="store_true",
                    help="3 epochs on 10,000 images, seconds")
args = parser.parse_args()
output_folder(parser, args.out)

# --- config --------------------------------------------------------------------------------
config = TrainConfig(
    dataset="fashion-mnist",
    data_dir=args.data_dir,
    likelihood="continuous-bernoulli",  # grey levels in [0, 1], exactly as stored
    epochs=3 if args.quick else args.epochs,
    train_size=10000 if args.quick else None,  # None: all 60,000 images
    lr=3e-3 if args.quick else 1e-3,  # a few hundred steps: a larger step size
    test_size=500 if args.quick else None,  # None: all 10,000 test images
    hidden_sizes=(128,) if args.quick else (400,),
    latent_dim=10 if args.quick else 20,
    batch_size=100,
    seed=0,
)

# --- data: optional, so its absence is a skip ------------------------------------------------
try:
    dataset = load_dataset(config.dataset, config.data_dir, download=args.download)
    data = load_data(config, dataset=dataset)  # (N, 784) floats in [0, 1], not binarized
except DataNotFoundError as e:
    looked = str(e).split(";")[1].strip()  # "looked in <folders>"
    print(f"fashion_mnist.py: skipped: Fashion-MNIST is not installed ({looked}); install Debian's "
          "dataset-fashion-mnist, pass --data-dir, or --download",
          file=sys.stderr)
    sys.exit(0)
except PyroVAEError as e:  # a damaged file, a failed download: an error, in one line
    print(f"fashion_mnist.py: error: {e}", file=sys.stderr)
    sys.exit(2)

# --- train ---------------------------------------------------------------------------------
print(f"{data.dataset.name}: {data.train.shape[0]} training images from {data.dataset.source}")
result = fit(config, data=data)  # one line per epoch
vae = result.vae.eval()


# --- the continuous Bernoulli's normalizer ------------------------------------------------------
@torch.no_grad()
def normalizer_nats(vae, x):
    """Σ_pixels log C(λ) at the posterior mean, averaged over ``x``: the continuous Bernoulli
    log-density minus the Bernoulli cross-entropy term, nats per datapoint."""
    logits = vae.decoder(vae.encode(x)[0])
    log_density = vae.likelihood(logits).log_prob(x).sum(-1)  # (N,)
    cross_entropy = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x, reduction="none").sum(-1)
    return float((log_density - cross_entropy).mean())


elbo = float(analytic_elbo(vae, data.test, generator=torch.Generator().manual_seed(0),
                           beta=1.0).mean().detach())
print(f"\ntest ELBO {elbo:.2f} nats per datapoint (a lower bound on log p(x), a log-density "
      f"on [0, 1]^784) on {data.test.shape[0]} test images")
print(f"of which the continuous Bernoulli normalizer Σ log C(λ) contributes "
      f"{normalizer_nats(vae, data.test):+.2f} nats per datapoint")

# --- pictures: grey-level test images beside their reconstructions; decoded prior draws ------
shape = data.dataset.image_shape  # (28, 28)
for png in (plot_reconstructions(vae, data.test, shape, args.out / "reconstructions.png"),
            plot_prior_samples(vae, shape, args.out / "prior_samples.png")):
    print(f"wrote {png}")
if args.quick:
    print("(--quick trains 300 steps: the reconstructions are already recognisable garments, "
          "the prior samples blurred; the full run's samples are more distinct)")
