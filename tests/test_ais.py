"""pyro_vae.evaluation.ais, .hmc and .targets: AIS against the exact log p(x) of the
linear-Gaussian model over several data and latent dimensions, its convergence in T, the fast
VAE target against the generic Pyro-program target, and AIS on programs with two latent
sites, a flow in the guide, a positive latent and an enumerated discrete latent."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import VAE, ConfigError
from pyro_vae.evaluation import Execution, Program, estimate_log_px
from pyro_vae.evaluation.ais import AISSettings, ais, anneal, annealing_schedule
from pyro_vae.evaluation.targets import LayeredTarget, ProgramTarget, target_for
from pyro_vae.models.linear_gaussian import (
    LayerParams,
    linear_gaussian_vae,
    log_marginal,
    sample_model,
    set_to_posterior,
)
from tests.conftest import assert_close, binary_batch
from tests.known_models import FlowGuide, GammaPoisson, Mixture, TwoLayer, random_ppca
from tests.test_importance import float64_default  # noqa: F401 (a fixture)


def ppca_problem(D, L, *, n=12, seed=0, shrink=1.0):
    """pPCA data and a VAE whose encoder has the posterior mean (× ``shrink``) and the
    posterior marginal standard deviations: close to, not at, p(z|x)."""
    params = random_ppca(D, L, seed=seed)
    vae = linear_gaussian_vae(params, learn_model=False)
    set_to_posterior(vae, params)
    with torch.no_grad():
        vae.encoder.A.mul_(shrink)
    x = sample_model(params, n, torch.Generator().manual_seed(seed + 1))
    return vae, x, log_marginal(x, params)


@pytest.mark.parametrize("D,L", [(4, 1), (10, 3), (20, 6)], ids=["D4-L1", "D10-L3", "D20-L6"])
def test_ais_is_within_005_nats_of_the_exact_log_px(D, L):
    """A modest budget (T = 200, 16 chains, 5 leapfrog steps) from an encoder 0.1–4 nats
    from the posterior (its mean shrunk by 10 %): within 0.05 nats per datapoint on average,
    and every datapoint within its reported standard error of the truth."""
    vae, x, truth = ppca_problem(D, L, shrink=0.9)
    est = ais(vae, x, AISSettings(num_steps=200), execution=Execution(seed=1))
    error = truth - est.log_px
    assert abs(float(error.mean())) < 0.05
    assert (error.abs() < 0.05 + 4 * est.log_px_mc_stderr).all()
    assert 0.55 < float(est.acceptance_rate.mean()) < 0.75  # adapted towards 0.65


@pytest.mark.parametrize("start", ["guide", "prior"])
def test_ais_on_a_two_layer_linear_gaussian_vae_recovers_the_exact_log_px(start):
    """The layered target of L = 2 stochastic layers (u = (z_1, z_2) in the guide's or the
    prior's coordinates) against the exact log p(x) of the linear-Gaussian chain, the guide
    set to the posterior's conditionals (close to, not at, the posterior: its covariances are
    not diagonal)."""
    g = torch.Generator().manual_seed(2)
    params = (random_ppca(8, 3, seed=2),
              LayerParams(torch.randn(3, 2, generator=g, dtype=torch.float64),
                          torch.randn(3, generator=g, dtype=torch.float64),
                          torch.tensor(0.7, dtype=torch.float64)))
    vae = linear_gaussian_vae(params, learn_model=False)
    set_to_posterior(vae, params)
    x = sample_model(params, 12, torch.Generator().manual_seed(3))
    truth = log_marginal(x, params)
    est = ais(vae, x, AISSettings(num_steps=200, start=start), execution=Execution(seed=1))
    error = truth - est.log_px
    assert abs(float(error.mean())) < 0.05
    assert (error.abs() < 0.05 + 4 * est.log_px_mc_stderr).all()


def test_ais_converges_as_the_number_of_steps_grows():
    """From the prior, tens of nats from the posterior: the bound's bias falls with T, by
    more than its Monte Carlo error at every step (measured: 51, 4.4, 0.72, 0.17 nats)."""
    vae, x, truth = ppca_problem(20, 6, n=30)
    errors, stderrs = [], []
    for T in (10, 30, 100, 300):
        est = ais(vae, x, AISSettings(num_steps=T, start="prior"), execution=Execution(seed=2))
        errors.append(float((truth - est.log_px).mean()))
        stderrs.append(est.mean_mc_stderr)
    for k in range(3):
        assert errors[k] - errors[k + 1] > 3 * (stderrs[k] + stderrs[k + 1])
    assert 0 < errors[-1] < 0.3


@pytest.mark.parametrize("start", ["guide", "prior"])
def test_fast_vae_target_equals_the_generic_program_target(start):
    vae, x, _ = ppca_problem(6, 2, n=5)
    fast, generic = LayeredTarget(vae, start=start).bind(x), ProgramTarget(
        Program(vae.model, vae.guide), start=start).bind(x)
    u = torch.randn(3, 5, 2, dtype=torch.float64)
    for a, b in zip(fast.start_and_ratio(u), generic.start_and_ratio(u), strict=True):
        assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert_close(fast.log_joint(u), generic.log_joint(u), rtol=1e-12, atol=1e-12)
    for seed in (1, 2):
        torch.manual_seed(seed)
        a = fast.sample_guide(4)
        torch.manual_seed(seed)
        b = generic.sample_guide(4)
        for left, right in zip(a, b, strict=True):
            assert_close(left, right, rtol=1e-12, atol=1e-12)
    # the whole run, on the same random numbers (short: HMC amplifies rounding differences):
    # both draw from torch's global generator, reseeded for each block
    settings = AISSettings(num_steps=8, num_chains=4, start=start)
    execution = Execution(seed=3, block_size=5)
    a = ais(vae, x, settings, execution=execution)
    b = ais(Program(vae.model, vae.guide), x, settings, execution=execution)
    assert_close(b.log_weights, a.log_weights, rtol=1e-9, atol=1e-9)
    assert_close(b.acceptance_rate, a.acceptance_rate, rtol=1e-9, atol=1e-9)


def program(name):
    if name == "two-latent-sites":
        m = TwoLayer.random()
        n = m.A.shape[0] + m.A.shape[1]
        x = m.mu + torch.randn(6, m.mu.shape[0], dtype=torch.float64) @ torch.linalg.cholesky(
            m.joint_cov()[n:, n:]).T
        return m.model, m.guide, x, m.log_marginal(x)
    if name in ("flow-guide", "flow-guide-from-prior"):
        params = random_ppca(5, 2)
        x = sample_model(params, 6, torch.Generator().manual_seed(1))
        vae = linear_gaussian_vae(params, learn_model=False)
        return vae.model, FlowGuide(params), x, log_marginal(x, params)
    if name == "positive-latent":
        m = GammaPoisson()
        x = torch.tensor([0.0, 1.0, 3.0, 6.0, 10.0, 20.0], dtype=torch.float64)
        return m.model, m.guide, x, m.log_marginal(x)
    m = Mixture.random(exact_guide=True)
    x = m.sample(6)
    return m.model, m.guide, x, m.log_marginal(x)


@pytest.mark.parametrize("name,start", [
    ("two-latent-sites", "guide"), ("flow-guide", "guide"), ("flow-guide-from-prior", "prior"),
    ("positive-latent", "prior"), ("enumerated-label", "guide")])
def test_ais_on_pyro_programs_recovers_the_exact_log_px(name, start, float64_default):  # noqa: F811
    """Several latent sites, a flow's density by its inverse, a latent moved on log scale
    (the Jacobian in the targets), a label summed out of the targets by enumeration."""
    torch.manual_seed(0)
    model, guide, x, truth = program(name)
    est = ais(Program(model, guide), x, AISSettings(num_steps=150, num_chains=32, start=start),
              execution=Execution(seed=4))
    error = truth - est.log_px
    assert float(error.mean()) < 0.05
    assert float(error.mean()) > -3 * est.mean_mc_stderr - 0.01
    assert est.pareto_k is not None and est.pareto_k.shape == x.shape[:1]


def test_step_sizes_adapt_towards_the_target_acceptance():
    vae, x, _ = ppca_problem(10, 3)
    low = ais(vae, x, AISSettings(num_steps=200, target_accept=0.5), execution=Execution(seed=5))
    high = ais(vae, x, AISSettings(num_steps=200, target_accept=0.9),
               execution=Execution(seed=5))
    assert abs(float(low.acceptance_rate.mean()) - 0.5) < 0.05
    assert abs(float(high.acceptance_rate.mean()) - 0.9) < 0.05
    assert float(high.step_size.mean()) < 0.8 * float(low.step_size.mean())


def test_fixed_step_sizes_are_used_as_given():
    vae, x, _ = ppca_problem(6, 2, n=4)
    density = LayeredTarget(vae).bind(x)
    betas = annealing_schedule(20)
    torch.manual_seed(0)
    tiny = anneal(density, betas, density.sample_start(8), AISSettings(),
                  step_sizes=torch.full((21, 4), 1e-4, dtype=torch.float64))
    assert_close(tiny.step_sizes[1:-1], 1e-4)
    assert float(tiny.acceptance.min()) > 0.99  # tiny steps are almost always accepted


@pytest.mark.parametrize("kind", ["sigmoid", "geometric", "linear"])
def test_annealing_schedules_rise_from_0_to_1(kind):
    betas = annealing_schedule(50, kind)
    assert betas.shape == (51,) and betas[0] == 0 and betas[-1] == 1
    assert (betas[1:] > betas[:-1]).all()
    if kind == "geometric":
        assert betas[1] == pytest.approx(1e-4)
        assert_close(betas[2:] / betas[1:-1], betas[2] / betas[1])  # a constant ratio


def test_pareto_k_needs_21_chains_and_settings_are_checked():
    vae, x, _ = ppca_problem(4, 1, n=3)
    est = ais(vae, x, AISSettings(num_steps=5, num_chains=8))
    assert est.pareto_k is None and est.log_weights.shape == (3, 8)
    assert math.isfinite(est.mean)
    for bad, match in [(dict(num_steps=0), "num_steps"), (dict(num_chains=1.5), "num_chains"),
                       (dict(schedule="cosine"), "schedule"),
                       (dict(target_accept=1.0), "target_accept"),
                       (dict(initial_step_size=-1.0), "initial_step_size"),
                       (dict(start="posterior"), "start")]:
        with pytest.raises(ConfigError, match=match):
            ais(vae, x, AISSettings(**bad))
    with pytest.raises(ConfigError, match="start"):
        LayeredTarget(vae, start="posterior")
    with pytest.raises(ConfigError, match="start"):
        ProgramTarget(Program(vae.model, vae.guide), start="posterior")


def test_a_flow_without_an_inverse_asks_for_the_prior_start():
    from pyro.distributions.transforms import Planar

    params = random_ppca(4, 2)
    vae = linear_gaussian_vae(params, learn_model=False)
    flow = Planar(2).double()

    def guide(x):
        pyro.module("planar", flow)
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, [flow]))

    x = sample_model(params, 3)
    with pytest.raises(ConfigError, match="start AIS from the prior"):
        ais(Program(vae.model, guide), x, AISSettings(num_steps=3, num_chains=2))
    est = ais(Program(vae.model, guide), x, AISSettings(num_steps=3, num_chains=2,
                                                        start="prior"))
    assert torch.isfinite(est.log_px).all()


@pytest.mark.parametrize("kind", ["hierarchical", "hierarchical-iaf", "vae-iaf"])
def test_ais_and_generic_is_agree_on_every_model_the_package_trains(kind):
    """No closed form here: two independent estimators of log p(x) (AIS with HMC on the
    layered target, importance sampling with the guide on the generic path, from Pyro's
    traces) agree within their noise, on the two-layer VAE and the flow guides."""
    torch.manual_seed(0)
    if kind.startswith("hierarchical"):
        vae = VAE(12, latent_dim=(3, 2), hidden_sizes=((8,), (6,)), activation="tanh",
                  flow="iaf" if kind.endswith("iaf") else None)
    else:
        vae = VAE(12, latent_dim=3, hidden_sizes=(16,), flow="iaf")
    x = binary_batch(5, 12, seed=3)
    assert isinstance(target_for(vae), LayeredTarget)  # every built-in VAE: the fast path
    est = ais(vae, x, AISSettings(num_steps=30, num_chains=8), execution=Execution(seed=1))
    reference = estimate_log_px(Program(vae.model, vae.guide), x, num_samples=1000)
    assert not reference.fast
    tolerance = 0.1 + 3 * (est.mean_mc_stderr + reference.mean_mc_stderr)
    assert abs(est.mean - reference.mean) < tolerance


def test_a_two_layer_flow_guide_starts_from_the_gaussians_its_flows_transform():
    """Program(start_guide=...) starts AIS at q_0(z_1|x) q_0(z_2|z_1), the Gaussians before
    the flows (a density without the flow's inverse; the guide is written here by hand, with
    the VAE's encoders), and ℓ = log p(x, z) − log q_0 with log p(x, z) written out layer by
    layer."""
    torch.manual_seed(0)
    vae = VAE(6, latent_dim=(3, 2), hidden_sizes=((5,), (4,)), activation="tanh", flow="iaf")
    x = binary_batch(5, 6, seed=1)

    def base_guide(x):
        with pyro.plate(vae.plate_name, x.shape[0]):
            z1 = pyro.sample(vae.z_sites[0], dist.Normal(*vae.encoders[0](x)).to_event(1))
            pyro.sample(vae.z_sites[1], dist.Normal(*vae.encoders[1](z1)).to_event(1))

    target = ProgramTarget(Program(vae.model, vae.guide, start_guide=base_guide))
    assert target.describe_start() == "the guide's Gaussians, before their flows"
    density = target.bind(x)
    u = density.sample_start(4)
    log_start, ratio = density.start_and_ratio(u)
    z = density.unpack(u)[0]
    z1, z2 = z[vae.z_sites[0]], z[vae.z_sites[1]]
    normal = torch.distributions.Normal
    by_hand_start = (normal(*vae.encoders[0](x)).log_prob(z1).sum(-1)
                     + normal(*vae.encoders[1](z1)).log_prob(z2).sum(-1))
    log_joint = (normal(0.0, 1.0).log_prob(z2).sum(-1)
                 + normal(*vae.priors[0](z2)).log_prob(z1).sum(-1)
                 + torch.distributions.Bernoulli(logits=vae.decoder(z1)).log_prob(x).sum(-1))
    assert_close(log_start, by_hand_start, rtol=1e-5)
    assert_close(ratio, log_joint - by_hand_start, rtol=1e-5)
    # the encoder's own ELBO still comes from the flow guide
    _, log_q = density.sample_guide(3)
    assert log_q.shape == (3, 5) and torch.isfinite(log_q).all()


def test_a_flow_vae_anneals_in_its_flows_input_where_the_start_is_q_itself():
    """LayeredTarget of a one-layer IAF VAE: u is the flow's input, z = T_x(u). The start is the
    encoder's Gaussian on u, and ℓ(u) = log p(x, z) − log q(z|x), with log q from the flow's
    own density at z (through its inverse, computed independently): the first AIS weight is
    the importance weight of q. Also: pull_back inverts the guide's push, and log_joint
    carries the Jacobian."""
    torch.manual_seed(0)
    vae = VAE(x_dim=6, latent_dim=3, hidden_sizes=(5,), flow="iaf")
    with torch.no_grad():  # a flow far from the identity
        for p in vae.flows[0].parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = binary_batch(4, 6, seed=1)
    target = LayeredTarget(vae)
    assert target.describe_start() == "the encoder q(z|x), in its flows' input coordinates"
    density = target.bind(x)
    u = density.sample_start(5)
    log_start, ratio = density.start_and_ratio(u)
    path = vae.guide_path(x, u=u)
    z, log_det = path.zs[0], path.log_det
    assert_close(vae.pull_back(x, path.zs), u, rtol=1e-4, atol=1e-5)
    q = vae.posterior(x)
    fresh = z.detach().clone()  # no cached pair: the flow's density at z needs its inverse
    log_q = q.log_prob(fresh)
    log_pxz = (torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
               + torch.distributions.Bernoulli(logits=vae.decoder(z)).log_prob(x).sum(-1))
    assert_close(log_start - log_det, log_q, rtol=1e-4, atol=1e-4)
    assert_close(ratio, log_pxz - log_q, rtol=1e-4, atol=1e-4)
    assert_close(density.log_joint(u), log_pxz + log_det, rtol=1e-5)
    assert not torch.allclose(log_det, torch.zeros_like(log_det))


def test_a_two_layer_flow_vae_anneals_in_its_flows_inputs_where_the_start_is_q_itself():
    """target_for(a two-layer VAE with IAFs): u = (ε_1, ε_2), the flows' inputs. AIS agrees
    with the exact log p(x) of this tiny model (prior sampling with 400 000 draws) within its
    noise; with flows pushed far from their initial values, the start density at u minus the
    flows' log-Jacobian is the guide's own log q(z_1, z_2|x) (Pyro's flow densities through
    their inverses, written out here), ℓ = log p(x, z) − log q, and simulate gives finite u."""
    torch.manual_seed(0)
    vae = VAE(6, latent_dim=(3, 2), hidden_sizes=((5,), (4,)), activation="tanh", flow="iaf")
    x = binary_batch(5, 6, seed=1)
    target = target_for(vae)
    assert target.describe_start() == "the encoder q(z|x), in its flows' input coordinates"
    with torch.no_grad():
        z2s = torch.randn(400_000, 1, 2, generator=torch.Generator().manual_seed(3))
        loc, scale = vae.priors[0](z2s)
        z1s = loc + scale * torch.randn(400_000, 1, 3, generator=torch.Generator().manual_seed(4))
        log_lik = torch.distributions.Bernoulli(logits=vae.decoder(z1s)).log_prob(x).sum(-1)
        exact = torch.logsumexp(log_lik, 0) - math.log(400_000)
    est = ais(vae, x, AISSettings(num_steps=300), execution=Execution(seed=2))
    assert (est.log_px - exact).abs().max() < 0.2
    assert abs(float((est.log_px - exact).mean())) < 0.06

    with torch.no_grad():
        for p in vae.flows.parameters():
            p.add_(0.3 * torch.randn_like(p))
    density = target.bind(x)
    u = density.sample_start(4)
    log_start, ratio = density.start_and_ratio(u)
    path = vae.guide_path(x, u=u)
    z1, z2 = (z.detach().clone() for z in path.zs)  # fresh tensors: no cached flow pairs
    log_det = path.log_det
    normal = torch.distributions.Normal
    log_q = (vae.posterior(x, layer=0).log_prob(z1)
             + vae.posterior(z1, layer=1).log_prob(z2))
    log_pxz = (normal(0.0, 1.0).log_prob(z2).sum(-1)
               + normal(*vae.priors[0](z2)).log_prob(z1).sum(-1)
               + torch.distributions.Bernoulli(logits=vae.decoder(z1)).log_prob(x).sum(-1))
    assert_close(log_start - log_det, log_q, rtol=1e-4, atol=1e-4)
    assert_close(ratio, log_pxz - log_q, rtol=1e-4, atol=1e-4)
    # simulate: z ~ p(z) (its draws replayed here), x ~ p(x|z), and u pulled back through
    # the flows, so that the guide's walk at u gives z again
    torch.manual_seed(7)
    zs = vae.sample_prior((5,))
    torch.manual_seed(7)
    (x_sim,), u_sim = target.simulate(x)
    assert u_sim.shape == (1, 5, 5) and torch.isfinite(u_sim).all()
    with torch.no_grad():
        walked = vae.guide_path(x_sim, u=u_sim).zs
    for z_walked, z_drawn in zip(walked, zs, strict=True):
        assert_close(z_walked[0], z_drawn, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(u_sim[0], torch.cat(zs, -1), atol=1e-2)  # the flows matter


# --- the by-step diagnostics and the memory checks -------------------------------------------


def test_by_step_diagnostics_have_one_column_per_beta():
    """T + 1 columns per datapoint, one per β_t: the HMC transition at β_t (t = 1..T−1) with
    its step size and mean acceptance, NaN at β_0 and β_T where none runs; their means are the
    per-datapoint acceptance rate, the last transition's step size the reported one."""
    vae, x, _ = ppca_problem(6, 2, n=5, shrink=0.9)
    T, C = 12, 3
    est = ais(vae, x, AISSettings(num_steps=T, num_chains=C), execution=Execution(seed=1))
    assert est.betas.shape == (T + 1,) and est.log_weights.shape == (5, C)
    assert_close(est.betas, annealing_schedule(T), rtol=0, atol=0)
    for column in (est.accept_by_step, est.step_size_by_step):
        assert column.shape == (5, T + 1)
        assert column[:, [0, T]].isnan().all() and not column[:, 1:T].isnan().any()
    assert ((est.accept_by_step[:, 1:T] >= 0) & (est.accept_by_step[:, 1:T] <= 1)).all()
    assert (est.step_size_by_step[:, 1:T] > 0).all()
    assert_close(est.step_size_by_step[:, 1], AISSettings().initial_step_size, rtol=0, atol=0)
    assert_close(est.acceptance_rate, est.accept_by_step[:, 1:T].mean(1), rtol=1e-12, atol=0)
    assert_close(est.step_size, est.step_size_by_step[:, T - 1], rtol=0, atol=0)
    for name in ("log_px", "log_px_mc_stderr", "acceptance_rate", "step_size"):
        assert getattr(est, name).shape == (5,), name
    assert est.settings.num_steps == T and est.num_chains == C


def test_chains_or_steps_beyond_the_memory_are_refused_before_anything_is_allocated(
        monkeypatch):
    """With $PYRO_VAE_MEMORY_LIMIT_MB small, AIS refuses chains of one datapoint, or a
    schedule and per-step diagnostics, that would not fit, naming the option to lower; a
    billion chains or steps would take gigabytes to allocate, so an error that comes fast
    came first."""
    vae, x, _ = ppca_problem(6, 2, n=5)
    monkeypatch.setenv("PYRO_VAE_MEMORY_LIMIT_MB", "1")
    with pytest.raises(ConfigError, match=r"--chains 1000000000 .*lower --chains to at most"):
        ais(vae, x, AISSettings(num_steps=3, num_chains=10**9))
    with pytest.raises(ConfigError, match=r"--chains 100000 .*lower --chains to at most"):
        ais(vae, x, AISSettings(num_steps=3, num_chains=100_000))
    with pytest.raises(ConfigError, match=r"T = 1000000000 steps.*--ais-steps"):
        ais(vae, x, AISSettings(num_steps=10**9, num_chains=2))
    with pytest.raises(ConfigError, match=r"T = 100000 steps.*--ais-steps"):
        ais(vae, x, AISSettings(num_steps=100_000, num_chains=2))
    assert torch.isfinite(ais(vae, x, AISSettings(num_steps=3, num_chains=2)).log_px).all()
