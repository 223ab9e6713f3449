"""The ELBO identity made numeric, on the linear-Gaussian model (pPCA) where all is exact.

    python examples/elbo_identity.py                # about 15 s on one CPU core
    python examples/elbo_identity.py --quick        # about 4 s on one CPU core, of which ~2 s
                                                    # importing torch and pyro
    python examples/elbo_identity.py --out figures  # where the PNG goes (default:
                                                    # runs/examples/elbo_identity)

For one datapoint x of a pPCA model p(z) = N(0, I), p(x|z) = N(W z + μ, σ² I):

    log p(x) = ELBO(q) + KL(q(z|x) ‖ p(z|x))           for every q            (1)
    ELBO(q) = E[IWAE_1] ≤ E[IWAE_K] ≤ E[IWAE_K+1] ≤ log p(x),  IWAE_K → log p(x)  (2)

(1) is checked along a path of Gaussians q_t from a poor q_0 (the prior) to the exact posterior
q_1: ELBO and KL trade places while their sum stays at log p(x), to rounding. (2) is the
importance-weighted estimate of :func:`pyro_vae.evaluation.estimate_log_px` for K = 1, 10, 100,
1000 (1, 10, 100 with --quick) with q_0.7 from that path: it starts at the ELBO (K = 1) and
climbs to log p(x). Each IWAE_K is the mean of R = 20,000 independent draws (2,000 with --quick);
the script prints its standard error and the rise from each K to the next in standard errors,
and asserts that every rise exceeds 3 of them: the gap to log p(x) falls like 1/K while the
noise of one draw falls only like 1/√K, so K a decade apart and many draws are needed to see
the last rises above the noise.

Prints both tables (nats) and writes ``elbo_identity.png`` into ``--out``: the identity along
the path, IWAE_K against K, and the gap log p(x) − IWAE_K against K on log–log axes.
"""

import math
from pathlib import Path

import torch

from pyro_vae.commands.options import DefaultsHelpFormatter, Parser, output_folder
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
from pyro_vae.plots.canvas import figure, save

parser = Parser(description=__doc__.split("\n\n")[0],
                formatter_class=DefaultsHelpFormatter)
parser.add_argument("--quick", action="store_true", help="fewer K and repeats: a few seconds")
parser.add_argument("--out", type=Path, default="runs/examples/elbo_identity",
                    help="folder for the PNG (default: runs/examples/elbo_identity, which git "
                    "ignores)")
args = parser.parse_args()
output_folder(parser, args.out)
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

# --- (2) IWAE_K with q_0.7, the encoder of the linear VAE set to it, over K a decade apart
vae = linear_gaussian_vae(params, learn_model=False)
t_q = 0.7
with torch.no_grad():
    vae.encoder.A.zero_()
    vae.encoder.c.copy_(t_q * post_loc[0])
    vae.encoder.log_scale.copy_(torch.log((1 - t_q) + t_q * post_sd))
q_loc, q_scale = vae.encode(x)
elbo_q = float(closed_form_elbo(x, q_loc.detach(), torch.diag_embed(q_scale.detach() ** 2),
                                   params))
# The gap log p(x) − IWAE_K shrinks like 1/K (about se²/2, the delta method), while the Monte
# Carlo noise of one draw shrinks like 1/√K: K a decade apart, and R draws, make each rise
# several standard errors (R = 20,000 puts the rise from K = 100 to 1000 near 8 s.e.).
ks = [1, 10, 100] if args.quick else [1, 10, 100, 1000]
repeats = 2000 if args.quick else 20000  # R independent draws of IWAE_K at each K
copies = x.expand(repeats, -1)  # the one datapoint, R times: one draw per row
iwae, iwae_se, bias = [], [], []
print(f"q = q_0.7: ELBO {elbo_q:.4f}, KL {log_px - elbo_q:.4f} nats\n")
print(f"{'K':>5} {'IWAE_K':>10} {'s.e.':>8} {'log p(x) - IWAE_K':>18}  (nats; mean of R = "
      f"{repeats:,} draws, its standard error)")
for k in ks:
    # a seed per K: the draws at different K are independent
    est = estimate_log_px(vae, copies, num_samples=k, execution=Execution(seed=k))
    iwae.append(est.mean)
    iwae_se.append(float(est.log_px.std()) / math.sqrt(repeats))
    bias.append(float(est.log_px_mc_stderr.pow(2).mean()) / 2)  # delta method: se²/2 (NaN: K=1)
    print(f"{k:5d} {est.mean:10.4f} {iwae_se[-1]:8.4f} {log_px - est.mean:18.4f}")

print("\nthe rise from each K to the next, in units of its standard error (independent draws):")
for i in range(1, len(ks)):
    rise, se = iwae[i] - iwae[i - 1], math.hypot(iwae_se[i], iwae_se[i - 1])
    print(f"  IWAE_{ks[i]:<4d} - IWAE_{ks[i - 1]:<4d} = {rise:8.4f} nats, s.e. {se:.4f} "
          f"= {rise / se:5.1f} s.e.")
    assert rise > 3 * se, f"IWAE_{ks[i]} rose {rise:.4f} nats over IWAE_{ks[i - 1]}: < 3 s.e."
assert abs(iwae[0] - elbo_q) < 3 * iwae_se[0], "IWAE_1 should be the ELBO"
assert all(m < log_px + 3 * s for m, s in zip(iwae, iwae_se, strict=True)), "above log p(x)"
print("each rise exceeds 3 standard errors; IWAE_1 matches the closed-form ELBO and every "
      "IWAE_K lies below log p(x), within 3 s.e.")

# --- the picture: the identity along the path; IWAE_K against K; the gap against K
fig = figure(16, 4.6)
left, middle, right = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
left.axhline(log_px, color="k", lw=1.5, label="log p(x) (exact)")
left.plot(ts, elbos, "C0-", label="ELBO(q_t)")
left.plot(ts, [e + k for e, k in zip(elbos, kls, strict=True)], "k:", lw=3,
          label="ELBO + KL(q_t || p(z|x))")
left.fill_between(ts, elbos, log_px, color="C1", alpha=0.25,
                  label="KL(q_t || p(z|x)): the gap")
left.set_xlabel("t: q_t from the prior (t = 0) to the exact posterior (t = 1)")
left.set_ylabel("nats (one datapoint)")
left.set_title("log p(x) = ELBO + KL for every q", fontsize=10)
left.legend(loc="lower right", fontsize=8)

middle.axhline(log_px, color="k", lw=1.5, label="log p(x) (exact)")
middle.axhline(elbo_q, color="C0", lw=1.5, ls="--", label="ELBO(q_0.7) (closed form)")
middle.errorbar(ks, iwae, yerr=[2 * s for s in iwae_se], fmt="o-", color="C3", capsize=3,
                label=f"IWAE_K, mean of {repeats:,} draws, ±2 s.e.")
middle.set_xscale("log")
middle.set_xlabel("K, importance samples")
middle.set_ylabel("nats (one datapoint)")
middle.set_title("IWAE_K climbs from the ELBO to log p(x)", fontsize=10)
middle.legend(loc="lower right", fontsize=8)

gaps = [log_px - m for m in iwae]
right.errorbar(ks, gaps, fmt="o-", color="C3", capsize=3, label="log p(x) - IWAE_K, ±2 s.e.",
               yerr=[[min(2 * s, 0.9 * g) for s, g in zip(iwae_se, gaps, strict=True)],
                     [2 * s for s in iwae_se]])  # the lower bars cut off above 0 (log axis)
right.plot(ks[1:], bias[1:], "k--", lw=1, label="se²/2 (delta method: the bias ~ 1/K)")
right.set_xscale("log")
right.set_yscale("log")
right.set_xlabel("K, importance samples")
right.set_ylabel("log p(x) - IWAE_K, nats (log scale)")
right.set_title("the gap shrinks like 1/K", fontsize=10)
right.legend(loc="lower left", fontsize=8)
png = save(fig, args.out / "elbo_identity.png")
print(f"\nwrote {png}")
