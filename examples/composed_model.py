"""The VAE's model and guide as parts of a larger Pyro program: the semi-supervised "M2" model
of Kingma, Rezende, Mohamed & Welling (2014), trained with SVI on MNIST with few labels.

    python examples/composed_model.py            # 3,000 labels, 40 epochs on all 60,000 images
    python examples/composed_model.py --quick    # 100 labels, 2,000 images, seconds
    python examples/composed_model.py --out DIR  # where the pictures go (default: runs/m2)

The first command, on one CPU thread (``OMP_NUM_THREADS=1``) beside another job, trained for
43 minutes and reached 96.37 % on the 10,000 MNIST test images (96.08 % on one binarization of
them; 93.1 % after the first epoch, 95.5 % after 10, 96.0–96.5 % over the last ten), test ELBO
−95.52 and IWAE_200 −90.35 nats per datapoint (first 1,000 test images; Pareto k̂ > 0.7 for
90 % of them). Kingma et al. report 96.1 % for M2 with 3,000 labels (3.92 % ± 0.63 error),
Pyro's ``examples/vae/ss_vae_M2.py`` about 95.8 %.

Generative model (Kingma et al. 2014, eq. 2):  y ~ Cat(1/10),  z ~ N(0, I),  x ~ p_θ(x | y, z).
Guide (their eq. 4):  q(y|x) = Cat(classifier(x)),  q(z | x, y) = N(loc(x, y), diag(scale(x, y)²)).

``VAE(context_dim=10, prefix="m2_")`` supplies p(z) p(x|y,z) and q(z|x,y), with the one-hot y
as context; this program adds the label y around them, inside its own ``pyro.plate``, by
calling ``vae.model(x, y, plate=False)`` and ``vae.guide(x, y, plate=False)``. On labelled
data y is observed; on unlabelled data the guide samples y from the classifier, and
``TraceEnum_ELBO`` sums over its 10 values exactly instead (``config_enumerate``), which gives
the bound U(x) of their eq. 7 on log p(x). As in their eq. 9 the labelled loss also carries
α·(−log q(y|x)), so that the classifier learns from the labels directly. The encoder of
q(z|x,y) is the VAE's usual one-hidden-layer network on [x, y], written so that its x part is
computed once for the 10 values of an enumerated y (``VAE(encoder=...)``): half the time.

What it takes to reach the paper's accuracy in minutes rather than hours (short runs compared
on the same machine): every unlabelled batch comes with a labelled one; a classifier with two
hidden layers of 1,000 units and dropout 0.2 (it sees each label ~19 times an epoch and would
otherwise fit them by heart); α = 10; Adam at 1e-3, decayed by 0.95 per epoch over 40 epochs
(with 0.9 over 30 epochs and the first 3,000 images labelled: 95.73 %); 300 labels of each
digit, as Kingma et al. spread them;
hidden layers of 500 units and z of 50 dimensions, as in Pyro's example. Subnormal floats are
flushed to zero: without it, the same settings' epochs slowed from 1.1 to 3.4 minutes as the
classifier grew sure (with it, the 40th took 1.1). Images are binarized afresh in each
batch; the accuracy is that of argmax q(y|x) on the test images as they are (grey levels),
and, beside it, on one binarization of them.

Prints per epoch the test accuracy and the test ELBO on log p(x) (y summed out, one z sample
per datapoint), in nats per datapoint. At the end it estimates log p(x) itself, from Pyro's
traces of this program (``Program(model, guide)``: any model and guide whose observations sit
in a data plate), with y summed out exactly by enumeration and only z sampled: by importance
sampling (``estimate_log_px``), log p̂(x) = log (1/K) Σ_k Σ_y p(x, y, z_k) / q(z_k | x, y), the
IWAE_K bound, and by annealed importance sampling (``ais``). Both are stochastic lower bounds
on log p(x). Writes ``accuracy.png`` (test accuracy against epochs) and ``class_samples.png``
(one row per digit y: the decoder's mean for the same few z ~ N(0, I) in every row).
"""

import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from matplotlib.ticker import MaxNLocator
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import ExponentialLR
from torch import nn

from pyro_vae import VAE
from pyro_vae.commands.options import DefaultsHelpFormatter, Parser, output_folder, positive_int
from pyro_vae.data import binarize, load_dataset, preprocess
from pyro_vae.evaluation import AISSettings, Program, ais, estimate_log_px
from pyro_vae.plots.canvas import figure, image_figsize, save, show
from pyro_vae.plots.images import image_grid

parser = Parser(description=__doc__.split("\n\n")[0],
                formatter_class=DefaultsHelpFormatter)
parser.add_argument("--epochs", type=positive_int, default=40, help="training epochs")
parser.add_argument("--labels", type=positive_int, default=3000,
                    help="labelled training images, as many of each digit (a multiple of 10)")
parser.add_argument("--alpha", type=float, default=10.0,
                    help="weight α of the classification loss (their eq. 9)")
parser.add_argument("--dropout", type=float, default=0.2,
                    help="dropout of q(y|x) on its input and hidden layers")
parser.add_argument("--lr-decay", type=float, default=0.95,
                    help="factor of Adam's learning rate (1e-3 at first) after each epoch")
parser.add_argument("--quick", action="store_true", help="100 labels, 2,000 images, 2 epochs")
parser.add_argument("--out", type=Path, default="runs/m2",
                    help="folder for the pictures (default: runs/m2, which git ignores)")
args = parser.parse_args()
for option, bad, wanted in (
        ("--labels", not 10 <= args.labels <= 50_000 or args.labels % 10,
         "a multiple of 10 in [10, 50000]"),
        ("--alpha", not 0 <= args.alpha < float("inf"), "a number >= 0"),
        ("--dropout", not 0 <= args.dropout < 1, "a number in [0, 1)"),
        ("--lr-decay", not 0 < args.lr_decay <= 1, "a number in (0, 1]")):
    if bad:
        value = getattr(args, option[2:].replace("-", "_"))
        parser.error(f"{option} must be {wanted}, got {value}")
output_folder(parser, args.out)
# Subnormal floats (most likely the tiny probabilities and gradients of the digits a sure
# classifier rules out) are slow on CPUs: flushed to zero, an epoch stays at 1.1 minutes
torch.set_flush_denormal(True)

# --- config --------------------------------------------------------------------------------
num_classes = 10
num_labelled = 100 if args.quick else args.labels
num_train = 2000 if args.quick else None  # None: all 60,000 images
epochs = 2 if args.quick else args.epochs
hidden = 128 if args.quick else 500  # of q(z|x,y) and p(x|y,z)
latent_dim = 10 if args.quick else 50
classifier_hidden = 128 if args.quick else 1000  # two hidden layers of q(y|x)
dropout = args.dropout  # in q(y|x), on its input and hidden layers
batch_size = 100  # unlabelled images a step, and as many labelled ones
alpha = args.alpha  # weight of the classification loss (their eq. 9; Pyro's ss-vae: 46)
lr, lr_decay = 1e-3, args.lr_decay  # Adam's learning rate, times lr_decay after each epoch
log_px_samples = 50 if args.quick else 200  # K importance samples per test image
ais_settings = AISSettings(num_steps=10 if args.quick else 100, num_chains=4)

# --- data: a few labelled images, the rest unlabelled -------------------------------------
pyro.set_rng_seed(0)
mnist = load_dataset("mnist")
train = preprocess(mnist.train_images[:num_train])  # (N, 784) grey levels, binarized per batch
train_y = nn.functional.one_hot(mnist.train_labels[:num_train], num_classes).float()  # (N, 10)
# the first num_labelled / 10 images of each digit are labelled (as in Kingma et al.: the labels
# evenly distributed among the classes), the rest unlabelled
labels = mnist.train_labels[: train.shape[0]]
rank = torch.zeros_like(labels)  # how many earlier images show the same digit
for digit in range(num_classes):
    rank[labels == digit] = torch.arange(int((labels == digit).sum()))
is_labelled = rank < num_labelled // num_classes
x_labelled, y_labelled = train[is_labelled], train_y[is_labelled]
x_unlabelled = train[~is_labelled]
test_grey = preprocess(mnist.test_images[: 500 if args.quick else None])  # all 10,000
test = binarize(test_grey, torch.Generator().manual_seed(0))
test_labels = mnist.test_labels[: test.shape[0]]


# --- the parts: a conditional VAE and a classifier ----------------------------------------------
class LabelledEncoder(nn.Module):
    """q(z|x, y) = N(loc(h), diag(exp(log_scale(h))²)), h = softplus(A x + B y + b): the VAE's
    own encoder on [x, y], with A x computed once for all the values of an enumerated y."""

    def __init__(self, x_dim, y_dim, hidden, latent_dim):
        super().__init__()
        self.x_in, self.y_in = nn.Linear(x_dim, hidden), nn.Linear(y_dim, hidden, bias=False)
        self.loc, self.log_scale = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)

    def forward(self, x, y):  # x (B, 784); y (B, 10), or (10, B, 10) enumerated
        h = nn.functional.softplus(self.x_in(x) + self.y_in(y))
        return self.loc(h), self.log_scale(h).exp()


D = train.shape[1]
vae = VAE(D, latent_dim=latent_dim, hidden_sizes=(hidden,), context_dim=num_classes,
          encoder=LabelledEncoder(D, num_classes, hidden, latent_dim),
          prefix="m2_")  # sites m2_z, m2_x; modules m2_encoders, m2_decoder
H = classifier_hidden
classifier = nn.Sequential(  # x (B, 784) → logits of q(y|x)
    nn.Dropout(dropout), nn.Linear(D, H), nn.Softplus(), nn.Dropout(dropout),
    nn.Linear(H, H), nn.Softplus(), nn.Dropout(dropout), nn.Linear(H, num_classes))


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
        vae.guide(x, y, plate=False)  # q(z | x, y): z (10, B, 50) for an enumerated y


# --- training: SVI over labelled and unlabelled minibatches, interleaved -----------------------
# One optimizer, two losses: labelled batches have nothing to enumerate (plain Trace_ELBO);
# unlabelled ones sum over y with TraceEnum_ELBO.
optimizer = ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": lr},
                           "gamma": lr_decay})
elbo = TraceEnum_ELBO(max_plate_nesting=1)
svi_unlabelled = SVI(model, guide, optimizer, loss=elbo)
svi_labelled = SVI(model, guide, optimizer, loss=Trace_ELBO(max_plate_nesting=1))


def accuracy(images) -> float:
    """Percentage of ``images`` that argmax q(y|x) labels right."""
    return 100 * float((classifier(images).argmax(-1) == test_labels).float().mean())


@torch.no_grad()
def test_figures():
    """(accuracy % on the grey-level test images, on their binarization, the mean ELBO on log
    p(x) with y summed out): the classifier without dropout."""
    classifier.eval()
    loss = sum(elbo.loss(model, guide, xb) for xb in test.split(1000))  # −ELBO, summed
    figures = accuracy(test_grey), accuracy(test), -loss / test.shape[0]
    classifier.train()
    return figures


history, start = [], time.perf_counter()
for epoch in range(1, epochs + 1):
    unlabelled_loss, labelled_batches = 0.0, torch.randperm(num_labelled).split(batch_size)
    for i, idx in enumerate(torch.randperm(x_unlabelled.shape[0]).split(batch_size)):
        lab = labelled_batches[i % len(labelled_batches)]  # cycle through the few labels
        svi_labelled.step(binarize(x_labelled[lab]), y_labelled[lab])
        unlabelled_loss += svi_unlabelled.step(binarize(x_unlabelled[idx]))  # −U(x), summed
    optimizer.step()  # the learning rate's decay, once an epoch
    history.append(test_figures())
    acc_grey, acc_binary, test_elbo = history[-1]
    print(f"epoch {epoch}: unlabelled train loss {unlabelled_loss / x_unlabelled.shape[0]:.2f} "
          f"nats/datapoint (= -ELBO), test ELBO {test_elbo:.2f} nats/datapoint, test accuracy "
          f"{acc_grey:.2f}% ({acc_binary:.2f}% binarized), "
          f"{(time.perf_counter() - start) / 60:.1f} min", flush=True)

print(f"\nM2 with {num_labelled} labels and {x_unlabelled.shape[0]} unlabelled images, "
      f"{epochs} epochs: test accuracy {acc_grey:.2f}% on the {test.shape[0]} test images "
      f"({acc_binary:.2f}% on one binarization of them), test ELBO {test_elbo:.2f} nats per "
      "datapoint (a lower bound on log p(x), y summed out)")

# --- pictures: accuracy against epochs; p(x | y, z) for each digit y, the same z in every row --
fig = figure(6, 4)
ax = fig.add_subplot()
ax.plot(range(1, epochs + 1), [h[0] for h in history], "o-", label="test images (grey levels)")
ax.plot(range(1, epochs + 1), [h[1] for h in history], "s--", label="binarized test images")
ax.axhline(96.1, color="k", lw=1, ls=":", label="Kingma et al. (2014), M2: 96.1%")
ax.set_xlabel("epoch")
ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
ax.set_ylabel("test accuracy of argmax q(y|x), %")
ax.set_title(f"M2 on MNIST with {num_labelled} labels", fontsize=10)
ax.legend(loc="lower right", fontsize=8)
print(f"wrote {save(fig, args.out / 'accuracy.png')}")

classifier.eval()
columns = 8  # z ~ N(0, I), one per column
with torch.no_grad():
    z = torch.randn(columns, latent_dim).repeat(num_classes, 1)  # (10·8, latent_dim)
    y = torch.eye(num_classes).repeat_interleave(columns, 0)  # row r: digit r
    grid = image_grid(vae.decode(z, y).mean, (28, 28), ncols=columns)
fig = figure(*image_figsize(grid, 4))
show(fig.add_subplot(), grid, "p(x | y, z): digit y = 0..9 by row, the same z by column")
print(f"wrote {save(fig, args.out / 'class_samples.png')}")

# --- log p(x) from Pyro's traces of this program: importance sampling and AIS --------------------
# model and guide take the images as their first argument; the observations sit in the plate
# "data"; y is summed out exactly by enumeration. y_aux is not sampled (y=None).
program = Program(model, guide)
images = test[: 200 if args.quick else 1000]  # K = 200 on 1,000 images: about a minute
estimate = estimate_log_px(program, images, num_samples=log_px_samples, pareto_k=True)
print(f"\nlog p(x) >= IWAE_{log_px_samples} = {estimate.mean:.2f} +- "
      f"{estimate.mean_mc_stderr:.2f} nats per datapoint ({images.shape[0]} test images, y "
      f"summed out; ELBO on them: {-elbo.loss(model, guide, images) / images.shape[0]:.2f}); "
      f"Pareto k-hat > 0.7 for {100 * float((estimate.pareto_k > 0.7).double().mean()):.0f}% "
      "of the images")
few = test[:20]  # AIS: (L + 1)(T - 1) gradients of log p(x, z) a chain, through Pyro's traces
annealed = ais(program, few, ais_settings)
iwae_few = estimate_log_px(program, few, num_samples=log_px_samples)
print(f"on the first {few.shape[0]} of them, each a stochastic lower bound on log p(x), in nats "
      f"per image: IWAE_{log_px_samples} {iwae_few.mean:.2f} +- {iwae_few.mean_mc_stderr:.2f}, "
      f"AIS {annealed.mean:.2f} +- {annealed.mean_mc_stderr:.2f} (T = {ais_settings.num_steps} "
      f"steps, {ais_settings.num_chains} chains from q(z|x) = sum_y q(y|x) q(z|x,y), HMC "
      f"acceptance {float(annealed.acceptance_rate.mean()):.2f})")
