"""Train pyro_vae's model and guide with plain Pyro SVI, the way you would in your own code.

    python examples/svi_vae.py            # 10 epochs on MNIST: about 1 min on one CPU core
    python examples/svi_vae.py --quick    # 2 epochs on 5,000 images: about 5 s on one CPU
                                          # core, of which ~2 s importing torch and pyro

Prints the training loss (= −ELBO) and the test ELBO, both in nats per datapoint, and draws
``reconstructions.png`` (test images beside the decoder's mean at their posterior mean) and
``prior_samples.png`` (decoder means of 64 draws from the prior) into ``--out``.
"""

from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import Adam

from pyro_vae import VAE
from pyro_vae.commands.options import DefaultsHelpFormatter, Parser, output_folder, positive_int
from pyro_vae.data import binarize, load_dataset, preprocess
from pyro_vae.losses import analytic_elbo
from pyro_vae.plots import plot_prior_samples, plot_reconstructions

parser = Parser(description=__doc__.split("\n\n")[0],
                formatter_class=DefaultsHelpFormatter)
parser.add_argument("--epochs", type=positive_int, default=10, help="training epochs")
parser.add_argument("--quick", action="store_true", help="2 epochs on 5,000 images")
parser.add_argument("--out", type=Path, default="runs/examples/svi_vae",
                    help="folder for the pictures (default: runs/examples/svi_vae, which git "
                    "ignores)")
args = parser.parse_args()
output_folder(parser, args.out)

# --- data: MNIST ships with pyro_vae; grey levels in [0, 1], binarized afresh per minibatch
pyro.set_rng_seed(0)
mnist = load_dataset("mnist")
n_train = 5000 if args.quick else None
train = preprocess(mnist.train_images[:n_train])  # (N, 784)
test = binarize(preprocess(mnist.test_images[:1000]), torch.Generator().manual_seed(0))
epochs = 2 if args.quick else args.epochs

# --- the model p(z) p(x|z) and the guide q(z|x): ordinary Pyro callables
vae = VAE.from_preset("pyro", x_dim=train.shape[1])  # 784-400-50, softplus, Bernoulli
svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=TraceMeanField_ELBO())

# --- the loop: svi.step returns the loss = −ELBO summed over the minibatch, in nats
batch_size = 128
for epoch in range(1, epochs + 1):
    total = 0.0
    for idx in torch.randperm(train.shape[0]).split(batch_size):
        total += svi.step(binarize(train[idx]))
    with torch.no_grad():
        elbo = analytic_elbo(vae, test).mean().item()
    print(f"epoch {epoch}: train loss {total / train.shape[0]:.2f} nats/datapoint (= -ELBO), "
          f"test ELBO {elbo:.2f} nats/datapoint (a lower bound on log p(x))")

# --- pictures: test images beside their reconstructions, and decoded draws from the prior
vae.eval()
for png in (plot_reconstructions(vae, test, mnist.image_shape, args.out / "reconstructions.png"),
            plot_prior_samples(vae, mnist.image_shape, args.out / "prior_samples.png")):
    print(f"wrote {png}")
if args.quick:
    print("(--quick trains 80 steps: the reconstructions and samples are still blurred "
          "averages of digits; the full run draws digits)")
