"""The VAE's model and guide as parts of a larger Pyro program: the semi-supervised "M2" model
of Kingma, Rezende, Mohamed & Welling (2014), trained with SVI on MNIST with few labels.

    python examples/composed_model.py            # 3,000 labels, 10 epochs, ~22 min on 2 CPUs
    python examples/composed_model.py --quick    # 100 labels, 2,000 images, seconds

Generative model (Kingma et al. 2014, eq. 2):  y ~ Cat(1/10),  z ~ N(0, I),  x ~ p_θ(x | y, z).
Guide (their eq. 4):  q(y|x) = Cat(classifier(x)),  q(z | x, y) = N(loc(x, y), diag(scale(x, y)²)).

``VAE(context_dim=10, prefix="m2_")`` supplies p(z) p(x|y,z) and q(z|x,y), with the one-hot y
as context; this program adds the label y around them, inside its own ``pyro.plate``, by
calling ``vae.model(x, y, plate=False)`` and ``vae.guide(x, y, plate=False)``. On labelled
data y is observed; on unlabelled data the guide samples y from the classifier, and
``TraceEnum_ELBO`` sums over its 10 values exactly instead (``config_enumerate``), which gives
the bound U(x) of their eq. 7 on log p(x). As in their eq. 9 the labelled loss also carries
α·(−log q(y|x)), so that the classifier learns from the labels directly.

Prints the test classification accuracy of q(y|x) and the test ELBO on log p(x) (y summed
out, one z sample per datapoint), in nats per datapoint. At the end it estimates log p(x)
itself with ``pyro_vae.evaluation.estimate_log_px`` on a ``Program``, importance sampling that works
from Pyro's traces for any model and guide whose observations sit in a data plate: here the
guide enumerates y, so y is summed out exactly and only z is sampled, K times per image,
log p̂(x) = log (1/K) Σ_k Σ_y p(x, y, z_k) / q(z_k | x, y), an IWAE_K lower bound that is
tighter than the ELBO.
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch import nn

from pyro_vae import VAE
from pyro_vae.commands.options import DefaultsHelpFormatter
from pyro_vae.data import binarize, load_dataset, preprocess
from pyro_vae.evaluation import Program, estimate_log_px

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=DefaultsHelpFormatter)
parser.add_argument("--epochs", type=int, default=10, help="training epochs")
parser.add_argument("--labels", type=int, default=3000, help="labelled training images")
parser.add_argument("--quick", action="store_true", help="100 labels, 2,000 images, 2 epochs")
args = parser.parse_args()

# --- config --------------------------------------------------------------------------------
num_classes = 10
num_labelled = 100 if args.quick else args.labels
num_train = 2000 if args.quick else None  # None: all 60,000 images
epochs = 2 if args.quick else args.epochs
hidden = 128 if args.quick else 400
latent_dim = 10 if args.quick else 20
batch_size = 100
alpha = 50.0  # weight of the classification loss (their eq. 9; Pyro's ss-vae example: 46)
log_px_samples = 50 if args.quick else 200  # K importance samples per test image

# --- data: a few labelled images, the rest unlabelled -------------------------------------
pyro.set_rng_seed(0)
mnist = load_dataset("mnist")
train = preprocess(mnist.train_images[:num_train])  # (N, 784) grey levels, binarized per batch
train_y = nn.functional.one_hot(mnist.train_labels[:num_train], num_classes).float()  # (N, 10)
x_labelled, y_labelled = train[:num_labelled], train_y[:num_labelled]
x_unlabelled = train[num_labelled:]
test = binarize(preprocess(mnist.test_images[: 500 if args.quick else None]),
                torch.Generator().manual_seed(0))
test_labels = mnist.test_labels[: test.shape[0]]

# --- the parts: a conditional VAE and a classifier ----------------------------------------------
vae = VAE(train.shape[1], latent_dim=latent_dim, hidden_sizes=(hidden,), context_dim=num_classes,
          prefix="m2_")  # sites m2_z, m2_x; modules m2_encoder, m2_decoder
classifier = nn.Sequential(nn.Linear(train.shape[1], hidden), nn.Softplus(),
                           nn.Linear(hidden, num_classes))  # x (B, 784) → logits of q(y|x)


def model(x, y=None):
    """p(y) p(z) p(x | y, z) for a minibatch ``x`` (B, 784); ``y`` (B, 10) one-hot or None."""
    pyro.module("classifier", classifier)
    with pyro.plate("data", x.shape[0]):
        prior = x.new_full((x.shape[0], num_classes), 1.0 / num_classes)
        y_obs = y
        y = pyro.sample("y", dist.OneHotCategorical(probs=prior), obs=y)  # enumerated if None
        vae.model(x, y, plate=False)  # z ~ N(0, I), x ~ p(x | z, y), inside our plate
        if y_obs is not None:  # α · log q(y|x) on labelled data (eq. 9)
            with poutine.scale(scale=alpha):
                pyro.sample("y_aux", dist.OneHotCategorical(logits=classifier(x)), obs=y_obs)


@config_enumerate(default="parallel", expand=True)
def guide(x, y=None):
    """q(y|x) q(z|x, y); y is enumerated over its 10 values when unobserved."""
    pyro.module("classifier", classifier)
    with pyro.plate("data", x.shape[0]):
        if y is None:
            y = pyro.sample("y", dist.OneHotCategorical(logits=classifier(x)))  # (10, B, 10)
        # x (B, 784) broadcast against an enumerated y (10, B, 10): x (10, B, 784)
        vae.guide(x.expand(y.shape[:-1] + x.shape[-1:]), y, plate=False)


# --- training: SVI over labelled and unlabelled minibatches, interleaved -----------------------
# One optimizer, two losses: labelled batches have nothing to enumerate (plain Trace_ELBO);
# unlabelled ones sum over y with TraceEnum_ELBO.
optimizer = Adam({"lr": 1e-3})
elbo = TraceEnum_ELBO(max_plate_nesting=1)
svi_unlabelled = SVI(model, guide, optimizer, loss=elbo)
svi_labelled = SVI(model, guide, optimizer, loss=Trace_ELBO(max_plate_nesting=1))


@torch.no_grad()
def test_figures():
    """(accuracy of argmax q(y|x), mean ELBO on log p(x) with y summed out) on the test set."""
    accuracy = float((classifier(test).argmax(-1) == test_labels).float().mean())
    loss = sum(elbo.loss(model, guide, xb) for xb in test.split(1000))  # −ELBO, summed
    return accuracy, -loss / test.shape[0]


for epoch in range(1, epochs + 1):
    unlabelled_loss, labelled_batches = 0.0, torch.randperm(num_labelled).split(batch_size)
    for i, idx in enumerate(torch.randperm(x_unlabelled.shape[0]).split(batch_size)):
        lab = labelled_batches[i % len(labelled_batches)]  # cycle through the few labels
        svi_labelled.step(binarize(x_labelled[lab]), y_labelled[lab])
        unlabelled_loss += svi_unlabelled.step(binarize(x_unlabelled[idx]))  # −U(x), summed
    accuracy, test_elbo = test_figures()
    print(f"epoch {epoch}: unlabelled train loss {unlabelled_loss / x_unlabelled.shape[0]:.2f} "
          f"nats/datapoint (= -ELBO), test ELBO {test_elbo:.2f} nats/datapoint, "
          f"test accuracy {100 * accuracy:.1f}%")

print(f"\nM2 with {num_labelled} labels and {x_unlabelled.shape[0]} unlabelled images: "
      f"test accuracy {100 * accuracy:.1f}% ({test.shape[0]} test images), "
      f"test ELBO {test_elbo:.2f} nats per datapoint (a lower bound on log p(x), y summed out)")

# --- log p(x) by generic importance sampling, from Pyro's traces of this program ---------------
# model and guide take the images as their first argument; the observations sit in the plate
# "data"; the guide enumerates y, which is summed out exactly. y_aux is not sampled (y=None).
images = test[: 200 if args.quick else 1000]  # K = 200 on 1,000 images: about 2 min
estimate = estimate_log_px(Program(model, guide), images, num_samples=log_px_samples,
                           pareto_k=True)
print(f"log p(x) >= IWAE_{log_px_samples} = {estimate.mean:.2f} +- {estimate.mean_mc_stderr:.2f} "
      f"nats per datapoint ({images.shape[0]} test images, y summed out; ELBO on them: "
      f"{-elbo.loss(model, guide, images) / images.shape[0]:.2f}); Pareto k-hat > 0.7 for "
      f"{100 * float((estimate.pareto_k > 0.7).double().mean()):.0f}% of the images")
