"""The ELBO identity made numeric, on the linear-Gaussian model (pPCA) where all is exact.

    python examples/elbo_identity.py                # about 20 s on 2 CPU cores
    python examples/elbo_identity.py --quick        # a few seconds
    python examples/elbo_identity.py --out figures  # where the PNG goes (default: runs/examples)

For one datapoint x of a pPCA model p(z) = N(0, I), p(x|z) = N(W z + μ, σ² I):

    log p(x) = ELBO(q) + KL(q(z|x) ‖ p(z|x))           for every q            (1)
    ELBO(q) = E[IWAE_1] ≤ E[IWAE_K] ≤ E[IWAE_K+1] ≤ log p(x),  IWAE_K → log p(x)  (2)

(1) is checked along a path of Gaussians q_t from a poor q_0 (the prior) to the exact posterior
q_1: ELBO and KL trade places while their sum stays at log p(x), to rounding. (2) is the
importance-weighted estimate of :func:`pyro_vae.evaluation.estimate_log_px` for growing K with
q_0.7 from that path: it starts at the ELBO (K = 1) and climbs to log p(x).

Prints both tables (nats) and writes ``elbo_identity.png``.
"""

import argparse
import math
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg canvas: no display
from matplotlib.figure import Figure

from pyro_vae.commands.options import DefaultsHelpFormatter
from pyro_vae.evaluation import Execution, estimate_log_px
from pyro_vae.models.linear_gaussian import (
    PPCAParams,
    closed_form_elbo,
    exact_posterior,
    kl_to_posterior,
    linear_gaussian_vae,
    log_marginal,
    sample_model,
)

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=DefaultsHelpFormatter)
parser.add_argument("--quick", action="store_true", help="fewer K and repeats: a few seconds")
parser.add_argument("--out", type=Path, default=Path("runs") / "examples",
                    help="folder for the PNG (default: runs/examples, which git ignores)")
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)  # tiny problem: threads only add overhead

# --- the model: D = 10 observed, L = 2 latent dimensions, float64 so identities hold to 1e-12
F64 = torch.float64
g = torch.Generator().manual_seed(0)
Q, _ = torch.linalg.qr(torch.randn(10, 2, generator=g, dtype=F64))
params = PPCAParams(W=Q * torch.tensor([3.0, 1.5], dtype=F64),  # Wᵀ W diagonal
                    mu=torch.randn(10, generator=g, dtype=F64), sigma=torch.tensor(0.5, dtype=F64))
x = sample_model(params, 1, g)  # (1, 10): one datapoint
log_px = float(log_marginal(x, params))
post_loc, post_cov = exact_posterior(x, params)  # (1, 2), (2, 2)

# --- (1) along q_t: mean t·m and standard deviations (1 − t)·1 + t·s, from the prior to p(z|x)
post_sd = post_cov.diagonal().sqrt()
ts = torch.linspace(0, 1, 11 if args.quick else 41, dtype=F64)
elbos, kls = [], []
for t in ts:
    q_loc = t * post_loc
    q_cov = torch.diag(((1 - t) + t * post_sd) ** 2)
    elbos.append(float(closed_form_elbo(x, q_loc, q_cov, params)))
    kls.append(float(kl_to_posterior(x, q_loc, q_cov, params)))
print(f"log p(x) = {log_px:.6f} nats (exact, closed form)\n")
print(f"{'t':>5} {'ELBO':>11} {'KL(q||p(z|x))':>14} {'ELBO + KL':>11}  (nats)")
for t, e, k in list(zip(ts.tolist(), elbos, kls, strict=True))[:: 2 if args.quick else 8]:
    print(f"{t:5.2f} {e:11.4f} {k:14.4f} {e + k:11.6f}")
worst = max(abs(e + k - log_px) for e, k in zip(elbos, kls, strict=True))
print(f"largest |ELBO + KL - log p(x)| on the path: {worst:.1e} nats\n")

# --- (2) IWAE_K with q_0.7, the encoder of the linear VAE set to it, over growing K
vae = linear_gaussian_vae(params, learn_model=False)
t_q = 0.7
with torch.no_grad():
    vae.encoder.A.zero_()
    vae.encoder.c.copy_(t_q * post_loc[0])
    vae.encoder.log_scale.copy_(torch.log((1 - t_q) + t_q * post_sd))
q_loc, q_scale = vae.encode(x)
elbo_q = float(closed_form_elbo(x, q_loc.detach(), torch.diag_embed(q_scale.detach() ** 2),
                                   params))
ks = [1, 3, 10, 30, 100, 300, 1000] if args.quick else [1, 2, 5, 10, 20, 50, 100, 200, 500,
                                                        1000, 2000, 5000, 10000]
repeats = 100 if args.quick else 400
# many independent estimates of the one datapoint: rows of a batch of copies of x
copies = x.expand(repeats, -1)
iwae, iwae_se = [], []
print(f"q = q_0.7: ELBO {elbo_q:.4f}, KL {log_px - elbo_q:.4f} nats\n")
print(f"{'K':>6} {'IWAE_K':>10} {'s.e.':>8} {'log p(x) - IWAE_K':>18}  (nats, mean of {repeats})")
for k in ks:
    est = estimate_log_px(vae, copies, num_samples=k, execution=Execution(seed=k))
    iwae.append(est.mean)
    iwae_se.append(float(est.log_px.std()) / math.sqrt(repeats))
    print(f"{k:6d} {est.mean:10.4f} {iwae_se[-1]:8.4f} {log_px - est.mean:18.4f}")

# --- the picture
fig = Figure(figsize=(11, 4.2))
FigureCanvasAgg(fig)
left, right = fig.subplots(1, 2)
left.axhline(log_px, color="k", lw=1.5, label="log p(x) (exact)")
left.plot(ts, elbos, "C0-", label="ELBO(q_t)")
left.plot(ts, [e + k for e, k in zip(elbos, kls, strict=True)], "k:", lw=3,
          label="ELBO + KL(q_t || p(z|x))")
left.fill_between(ts, elbos, log_px, color="C1", alpha=0.25,
                  label="KL(q_t || p(z|x)): the gap")
left.set_xlabel("t: q_t from the prior (t = 0) to the exact posterior (t = 1)")
left.set_ylabel("nats (one datapoint)")
left.set_title("log p(x) = ELBO + KL for every q")
left.legend(loc="lower right", fontsize=8)

right.axhline(log_px, color="k", lw=1.5, label="log p(x) (exact)")
right.axhline(elbo_q, color="C0", lw=1.5, ls="--", label="ELBO(q_0.7) (closed form)")
right.errorbar(ks, iwae, yerr=[2 * s for s in iwae_se], fmt="o-", color="C3", capsize=3,
               label="IWAE_K estimate, ±2 s.e. (a lower bound)")
right.set_xscale("log")
right.set_xlabel("K, importance samples")
right.set_ylabel("nats (one datapoint)")
right.set_title("IWAE_K climbs from the ELBO to log p(x)")
right.legend(loc="lower right", fontsize=8)
fig.tight_layout()
png = args.out / "elbo_identity.png"
fig.savefig(png, dpi=110)
print(f"\nwrote {png}")
