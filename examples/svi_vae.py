"""Train pyro_vae's model and guide with plain Pyro SVI, the way you would in your own code.

    python examples/svi_vae.py            # 10 epochs on MNIST, about a minute on 2 CPU cores
    python examples/svi_vae.py --quick    # a few seconds

Prints the training loss (= −ELBO) and the test ELBO, both in nats per datapoint.
"""

import argparse

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import Adam

from pyro_vae import VAE
from pyro_vae.commands.options import DefaultsHelpFormatter
from pyro_vae.data import binarize, load_dataset, preprocess
from pyro_vae.losses import analytic_elbo

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=DefaultsHelpFormatter)
parser.add_argument("--epochs", type=int, default=10, help="training epochs")
parser.add_argument("--quick", action="store_true", help="2 epochs on 5,000 images")
args = parser.parse_args()

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
