"""Plug a convolutional decoder into the same Pyro model and guide: ``VAE(decoder=...)``.

    python examples/custom_decoder.py            # 5 epochs on MNIST: about 2 min on one CPU core
    python examples/custom_decoder.py --quick    # 1 epoch on 2,000 images: about 5 s on one
                                                 # CPU core, of which ~2 s importing torch and pyro

The decoder is any ``nn.Module`` mapping z ``(..., latent_dim)`` (and an optional context)
to the likelihood's parameter ``(..., 784)``: here Bernoulli logits from transposed
convolutions. Nothing else changes: the same ``vae.model`` / ``vae.guide``, the same
estimators, the same SVI loop. Prints the training loss (= −ELBO) and the test ELBO of the
convolutional decoder and of the default MLP decoder on the same budget, in nats per datapoint,
and draws ``reconstructions.png`` into ``--out``: the same test images, reconstructed by each.
"""

from pathlib import Path

import pyro
import torch
from torch import nn

from pyro_vae import VAE, make_objective
from pyro_vae.commands.options import DefaultsHelpFormatter, Parser, output_folder, positive_int
from pyro_vae.data import binarize, load_dataset, preprocess
from pyro_vae.evaluation import mean_elbo
from pyro_vae.plots import decoder_mean, image_grid
from pyro_vae.plots.canvas import figure, save, show

parser = Parser(description=__doc__.split("\n\n")[0],
                formatter_class=DefaultsHelpFormatter)
parser.add_argument("--epochs", type=positive_int, default=5, help="training epochs")
parser.add_argument("--quick", action="store_true", help="1 epoch on 2,000 images")
parser.add_argument("--out", type=Path, default="runs/examples/custom_decoder",
                    help="folder for the picture (default: runs/examples/custom_decoder, which "
                    "git ignores)")
args = parser.parse_args()
output_folder(parser, args.out)

# --- config --------------------------------------------------------------------------------
latent_dim = 16
channels = 16 if args.quick else 32  # feature maps of the last hidden convolution
epochs = 1 if args.quick else args.epochs
batch_size = 100
lr = 1e-3

# --- data: grey levels in [0, 1], binarized afresh for every minibatch ------------------------
pyro.set_rng_seed(0)
mnist = load_dataset("mnist")
rows, cols = mnist.image_shape  # (28, 28)
train = preprocess(mnist.train_images[: 2000 if args.quick else None])  # (N, 784)
test = binarize(preprocess(mnist.test_images[: 500 if args.quick else 2000]),
                torch.Generator().manual_seed(0))


class ConvDecoder(nn.Module):
    """z ``(..., latent_dim)`` → Bernoulli logits ``(..., rows·cols)``: a linear layer to a
    (2c, rows/4, cols/4) feature map, then two stride-2 transposed convolutions."""

    def __init__(self, latent_dim, image_shape, channels):
        super().__init__()
        self.rows, self.cols = image_shape
        self.start = (2 * channels, self.rows // 4, self.cols // 4)  # (2c, 7, 7) for MNIST
        self.fc = nn.Sequential(nn.Linear(latent_dim, 2 * channels * self.rows * self.cols // 16),
                                nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),  # 7 → 14
            nn.ReLU(),
            nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),  # 14 → 28
        )

    def forward(self, z, context=None):
        batch_shape = z.shape[:-1]  # (B,) or (K, B) with vectorized particles
        h = self.fc(z.reshape(-1, z.shape[-1])).view(-1, *self.start)
        logits = self.deconv(h)  # (prod(batch_shape), 1, rows, cols)
        return logits.reshape(*batch_shape, self.rows * self.cols)


def train_and_test(vae, name):
    """Train ``vae`` with Pyro's MeanField_ELBO through SVI; print nats per datapoint."""
    pyro.clear_param_store()
    objective = make_objective("meanfield", vae)  # the registry's MeanField_ELBO
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), objective.elbo)
    n = train.shape[0]
    for epoch in range(1, epochs + 1):
        total = 0.0
        for idx in torch.randperm(n).split(batch_size):
            total += svi.step(binarize(train[idx]))  # −ELBO summed over the minibatch
        vae.eval()
        elbo = mean_elbo(vae, test)
        vae.train()
        print(f"{name}, epoch {epoch}: train loss {total / n:.2f} nats/datapoint (= -ELBO), "
              f"test ELBO {elbo:.2f} nats/datapoint")
    parameters = sum(p.numel() for p in vae.decoder.parameters())
    return elbo, parameters


# --- the same model and guide, two decoders -------------------------------------------------
conv = VAE(rows * cols, latent_dim=latent_dim, hidden_sizes=(256,),
           decoder=ConvDecoder(latent_dim, (rows, cols), channels))
mlp = VAE(rows * cols, latent_dim=latent_dim, hidden_sizes=(256,))  # default MLP decoder
results = {"convolutional": train_and_test(conv, "conv decoder"),
           "MLP": train_and_test(mlp, "MLP decoder")}

print(f"\ntest ELBO after {epochs} epoch(s) on {train.shape[0]} images, nats per datapoint "
      "(a lower bound on log p(x), higher is better):")
for name, (elbo, parameters) in results.items():
    print(f"  {name:>13} decoder ({parameters:,} parameters): {elbo:8.2f} nats")


# --- the picture: the same test images, reconstructed by each model ---------------------------
@torch.no_grad()
def reconstruct(vae, x):
    """E[x | z = E_q[z|x]]: the decoder's mean (pixel probabilities) at the posterior mean."""
    vae.eval()
    return decoder_mean(vae, vae.encode(x)[0])


shown = test[:24]  # (24, 784) binarized test images
panels = [("test inputs (binarized)", shown)] + [
    (f"{name} decoder: test ELBO {elbo:.1f} nats", reconstruct(vae, shown))
    for (name, (elbo, _)), vae in zip(results.items(), (conv, mlp), strict=True)]
fig = figure(13.5, 3.8)
for i, (title, images) in enumerate(panels, 1):
    show(fig.add_subplot(1, 3, i), image_grid(images, (rows, cols), ncols=6), title)
fig.suptitle(f"reconstructions E[x | z = posterior mean] after {epochs} epoch(s) on "
             f"{train.shape[0]:,} images; each image in the same place in every panel",
             fontsize=10)
png = save(fig, args.out / "reconstructions.png")
print(f"wrote {png}")
if args.quick:
    print("(--quick trains 20 steps: neither decoder has learnt digits yet, the convolutional "
          "one least; the full run reconstructs them)")
