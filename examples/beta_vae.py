"""The KL weight β and its warm-up: what β ≠ 1 does to the ELBO, its two terms and the number
of latent dimensions in use.

    python examples/beta_vae.py            # β = 0.5, 1, 4, 10 epochs each on MNIST: about
                                           # 3.5 min on one CPU core
    python examples/beta_vae.py --quick    # β = 1, 4, 3 epochs on 2,000 images: about 5 s on
                                           # one CPU core, of which ~2 s importing torch and pyro

Training maximizes E_q[log p(x|z)] − β·KL(q(z|x) ‖ p(z)) (Higgins et al. 2017); β = 1 is the
ELBO, and only then is the objective a bound on log p(x). With a warm-up the weight rises
linearly from β/W to β over the first W epochs (Bowman et al. 2016; Sønderby et al. 2016),
which keeps the KL term from switching latent dimensions off early. The test figures are
always at β = 1, in nats per datapoint:
  test ELBO = E_q[log p(x|z)] − KL,
where larger β buys a smaller KL (a simpler code) with a worse reconstruction term, and
fewer active units (Cov_x E_q[z_d] > 0.01, Burda et al. 2016). It draws ``beta_terms.png``
into ``--out``: KL(q ‖ p(z)), E_q[log p(x|z)] and the test ELBO against β, one point per β.
"""

import dataclasses
from pathlib import Path

import torch

from pyro_vae.build import load_data
from pyro_vae.commands.options import (
    DefaultsHelpFormatter,
    Parser,
    non_negative_float,
    non_negative_int,
    output_folder,
    positive_int,
)
from pyro_vae.config import TrainConfig
from pyro_vae.evaluation import active_units
from pyro_vae.fit import fit
from pyro_vae.losses import analytic_elbo, gaussian_kl_to_standard_normal
from pyro_vae.plots.canvas import figure, save

parser = Parser(description=__doc__.split("\n\n")[0],
                formatter_class=DefaultsHelpFormatter)
parser.add_argument("--epochs", type=positive_int, default=10, help="training epochs")
parser.add_argument("--betas", type=non_negative_float, nargs="+", default=[0.5, 1.0, 4.0],
                    help="KL weights to train with")
parser.add_argument("--warmup", type=non_negative_int, default=3, metavar="W",
                    help="warm-up epochs")
parser.add_argument("--quick", action="store_true", help="β = 1, 4; 3 epochs on 2,000 images")
parser.add_argument("--out", type=Path, default="runs/examples/beta_vae",
                    help="folder for the picture (default: runs/examples/beta_vae, which git "
                    "ignores)")
args = parser.parse_args()
output_folder(parser, args.out)

# --- config --------------------------------------------------------------------------------
betas = [1.0, 4.0] if args.quick else args.betas
base = TrainConfig(
    epochs=3 if args.quick else args.epochs,
    beta_warmup_epochs=2 if args.quick else args.warmup,
    train_size=2000 if args.quick else None,  # None: all 60,000 images
    test_size=500 if args.quick else None,  # None: all 10,000 test images
    hidden_sizes=(128,) if args.quick else None,  # None: the "pyro" preset's (400,)
    latent_dim=10 if args.quick else 20,
    batch_size=100,
    seed=0,
)
data = load_data(base)  # one binarized test set for every β


@torch.no_grad()
def elbo_terms(vae, x, seed=0):
    """(test ELBO, E_q[log p(x|z)], KL(q ‖ p(z))) at β = 1, means over ``x``, nats."""
    g = torch.Generator().manual_seed(seed)
    elbo = analytic_elbo(vae, x, generator=g, beta=1.0)  # (N,)
    loc, scale = vae.encode(x)
    kl = gaussian_kl_to_standard_normal(loc, scale)  # (N,)
    return float(elbo.mean()), float((elbo + kl).mean()), float(kl.mean())


# --- one run per β ---------------------------------------------------------------------------
rows = []
for beta in betas:
    print(f"--- β = {beta:g}, warm-up over {base.beta_warmup_epochs} epoch(s) ---")
    config = dataclasses.replace(base, beta=beta)
    result = fit(config, data=data)  # prints one line per epoch; "train beta-ELBO" if β ≠ 1
    print("β per epoch:", ", ".join(f"{r['beta']:.3g}" for r in result.history))
    vae = result.vae.eval()
    elbo, reconstruction, kl = elbo_terms(vae, data.test)
    rows.append((beta, elbo, reconstruction, kl, active_units(vae, data.test)[0]))

# --- the trade-off ---------------------------------------------------------------------------
print(f"\non {data.test.shape[0]} test images, at β = 1, nats per datapoint:")
print(f"{'β':>5} {'test ELBO':>10} {'E_q[log p(x|z)]':>16} {'KL(q‖p(z))':>11} "
      f"{'active units':>13}")
for beta, elbo, reconstruction, kl, active in rows:
    print(f"{beta:5g} {elbo:10.2f} {reconstruction:16.2f} {kl:11.2f} "
          f"{active:6d} of {base.latent_dim}")
print("(test ELBO = E_q[log p(x|z)] - KL: a lower bound on log p(x); higher is better)")

# --- the picture: the two terms of the test ELBO against β ----------------------------------
ordered = sorted(rows)
bs = [r[0] for r in ordered]
fig = figure(11.0, 4.2)
kl_ax, rec_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
kl_ax.plot(bs, [r[3] for r in ordered], "o-", color="C1")
for beta, _, _, kl, active in ordered:
    kl_ax.annotate(f"{active} of {base.latent_dim} units active", (beta, kl), xytext=(5, 5),
                   textcoords="offset points", fontsize=8)
kl_ax.set_ylabel("KL(q(z|x) ‖ p(z)), nats per datapoint")
kl_ax.set_ylim(0, 1.15 * max(r[3] for r in ordered))
kl_ax.set_title("the code's cost: KL to the prior (lower: a simpler code)", fontsize=10)
rec_ax.plot(bs, [r[2] for r in ordered], "o-", color="C0", label="E_q[log p(x|z)]")
rec_ax.plot(bs, [r[1] for r in ordered], "s--", color="C2",
            label="test ELBO = E_q[log p(x|z)] − KL (a lower bound on log p(x))")
values = [v for r in ordered for v in r[1:3]]
span = max(values) - min(values) or 1.0
rec_ax.set_ylim(min(values) - 0.12 * span, max(values) + 0.5 * span)  # room for the legend
rec_ax.set_ylabel("nats per datapoint (higher is better)")
rec_ax.set_title("reconstruction term and test ELBO (at β = 1)", fontsize=10)
rec_ax.legend(fontsize=8, loc="upper right")
for ax in (kl_ax, rec_ax):
    ax.set_xscale("log", base=2)
    ax.set_xticks(bs, [f"{b:g}" for b in bs])
    ax.minorticks_off()
    ax.set_xlabel("β, the KL weight in training (log scale)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15)
fig.suptitle(f"β-VAE on {data.test.shape[0]:,} test images: larger β buys a smaller KL with a "
             f"worse reconstruction ({base.epochs} epochs, {base.beta_warmup_epochs} of warm-up)",
             fontsize=10)
png = save(fig, args.out / "beta_terms.png")
print(f"wrote {png}")
