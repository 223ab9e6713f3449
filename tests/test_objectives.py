"""pyro_vae.objectives: the registry, Pyro's ELBOs against the hand-written baselines sample by
sample, IWAE, the JIT fixes and the leaner mean-field ELBO."""

import copy
import math

import pyro
import pyro.infer
import pytest
import torch
from torch.distributions import Normal

from pyro_vae import ESTIMATORS, VAE, ConfigError, make_objective
from pyro_vae.losses import analytic_elbo, mc_elbo
from pyro_vae.objectives import Bound, MeanField_ELBO
from pyro_vae.trainer import Trainer
from tests.conftest import assert_close, binary_batch

LIKELIHOODS = ["bernoulli", "continuous-bernoulli", "gaussian"]


def make_vae(likelihood="bernoulli", **kwargs):
    kwargs.setdefault("latent_dim", 3)
    kwargs.setdefault("hidden_sizes", (16,))
    return VAE(12, likelihood=likelihood, **kwargs)


def data_for(likelihood, batch_size=16):
    x = binary_batch(batch_size, 12)
    return x if likelihood == "bernoulli" else 0.1 + 0.8 * x * torch.rand(x.shape)


def loss_and_grads(objective, x, seed, **kwargs):
    vae = objective.vae
    vae.zero_grad()
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(x, **kwargs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in vae.named_parameters()}
    return loss.detach(), grads


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize(
    "pyro_name, torch_name",
    [("meanfield", "analytic"), ("trace", "mc")],
    ids=["meanfield=analytic", "trace=mc"],
)
@pytest.mark.parametrize("num_data", [None, 1000], ids=["batch", "scaled"])
def test_pyro_loss_and_gradient_equal_hand_written(pyro_name, torch_name, likelihood, num_data):
    vae = make_vae(likelihood)
    x = data_for(likelihood)
    a_loss, a_grads = loss_and_grads(make_objective(pyro_name, vae), x, 7, num_data=num_data)
    b_loss, b_grads = loss_and_grads(make_objective(torch_name, vae), x, 7, num_data=num_data)
    assert_close(a_loss, b_loss, rtol=1e-5)
    assert a_grads.keys() == b_grads.keys()
    for name in a_grads:
        assert_close(a_grads[name], b_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_same_seed_means_same_sample():
    """The premise of the test above: Pyro's guide and the baseline draw the same z."""
    vae = make_vae()
    x = data_for("bernoulli")
    pyro.set_rng_seed(3)
    z_pyro = pyro.poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    pyro.set_rng_seed(3)
    loc, scale = vae.encode(x)
    z_torch = Normal(loc, scale).rsample()
    assert_close(z_pyro, z_torch, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["trace", "meanfield", "analytic", "mc"])
def test_svi_step_returns_minus_elbo(name):
    """The sign: the loss a training step returns is −ELBO, computed independently here
    on a copy of the parameters from before the step, with the same posterior sample."""
    vae = make_vae()
    before = copy.deepcopy(vae)
    x = data_for("bernoulli")
    trainer = Trainer(make_objective(name, vae), lr=1e-3)
    pyro.set_rng_seed(11)
    loss = trainer.step(x)
    elbo_fn = analytic_elbo if name in ("meanfield", "analytic") else mc_elbo
    pyro.set_rng_seed(11)
    with torch.no_grad():
        elbo = float(elbo_fn(before, x).sum())
    assert elbo < 0 < loss  # log p(x) ≤ 0 for binary data, so ELBO < 0 and the loss > 0
    assert_close(loss, -elbo, rtol=1e-5)
    assert any((p != q).any() for p, q in zip(vae.parameters(), before.parameters(), strict=False))


def test_svi_step_minimizes_the_loss():
    vae = make_vae()
    x = data_for("bernoulli", 64)
    trainer = Trainer(make_objective("meanfield", vae), lr=1e-2)
    first = sum(trainer.step(x) for _ in range(5))
    for _ in range(200):
        trainer.step(x)
    last = sum(trainer.step(x) for _ in range(5))
    assert last < first


def hand_written_iwae(vae, x, k, generator):
    """log (1/K) Σ_k p(x, z_k) / q(z_k|x) per datapoint, written from the definition."""
    with torch.no_grad():
        loc, scale = vae.encode(x)
        q = Normal(loc, scale)
        z = loc + scale * torch.randn((k, *loc.shape), generator=generator)
        log_p = Normal(0.0, 1.0).log_prob(z).sum(-1) + vae.decode(z).log_prob(x)
        log_w = log_p - q.log_prob(z).sum(-1)
        return torch.logsumexp(log_w, 0) - math.log(k)


@pytest.mark.parametrize("k", [5, 50])
def test_iwae_matches_hand_written_iwae(k):
    vae = make_vae()
    x = data_for("bernoulli", 4)
    iwae = make_objective("iwae", vae, num_particles=k)
    draws = 400
    pyro_bounds = torch.tensor([-iwae.loss(x) for _ in range(draws)])
    g = torch.Generator().manual_seed(0)
    ours = torch.stack([hand_written_iwae(vae, x, k, g).sum() for _ in range(draws)])
    diff = pyro_bounds.mean() - ours.mean()
    se = (pyro_bounds.var() / draws + ours.var() / draws).sqrt()
    assert abs(diff) < 4 * se, (diff, se)


def test_iwae_at_k1_equals_the_elbo():
    vae = make_vae()
    x = data_for("bernoulli")
    pyro.set_rng_seed(2)
    iwae = make_objective("iwae", vae, num_particles=1).differentiable_loss(x)
    pyro.set_rng_seed(2)
    trace = make_objective("trace", vae).differentiable_loss(x)
    assert_close(iwae, trace, rtol=1e-6)


def test_iwae_bound_is_not_below_the_elbo():
    """IWAE_K ≥ ELBO for K > 1, in expectation (here per datapoint, far beyond MC error)."""
    vae = make_vae()
    x = data_for("bernoulli", 8)
    g = torch.Generator().manual_seed(1)
    elbo = torch.stack([hand_written_iwae(vae, x, 1, g) for _ in range(2000)]).mean(0)
    for k in (5, 50):
        iwae = make_objective("iwae", vae, num_particles=k)
        bound = -torch.tensor([iwae.loss(x) for _ in range(200)]).mean()
        assert bound >= elbo.sum()
        elbo_k = torch.stack([hand_written_iwae(vae, x, k, g) for _ in range(200)]).mean(0)
        assert (elbo_k >= elbo - 0.05).all()


def test_iwae_differentiable_loss_gradient_matches_renyi_surrogate():
    """Our IWAE_ELBO.differentiable_loss and Pyro's RenyiELBO.loss_and_grads agree."""
    vae = make_vae()
    x = data_for("bernoulli", 6)
    iwae = make_objective("iwae", vae, num_particles=5)
    a_loss, a_grads = loss_and_grads(iwae, x, 4)
    vae.zero_grad()
    pyro.set_rng_seed(4)
    b_loss = pyro.infer.RenyiELBO.loss_and_grads(iwae.elbo, vae.model, vae.guide, x)
    assert_close(a_loss, b_loss, rtol=1e-5)
    for name, p in vae.named_parameters():
        assert_close(a_grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


def svi_gradients(objective, x, seed):
    """Loss and gradients the way SVI computes them (``elbo.loss_and_grads``)."""
    objective.vae.zero_grad()
    pyro.set_rng_seed(seed)
    args, kwargs = objective.arguments(x)
    loss = objective.elbo.loss_and_grads(objective.model, objective.guide, *args, **kwargs)
    return loss, {n: p.grad.clone() for n, p in objective.vae.named_parameters()}


def test_jit_trace_equals_trace_including_a_smaller_last_batch():
    """Same seed, same sample: loss and gradients equal, through SVI's path and through
    differentiable_loss (where pyro 1.9.2's own pyro.infer.JitTrace_ELBO doubles the gradient,
    which our CompiledTrace_ELBO corrects: pyro_vae/objectives/jit.py; the canary of that bug is
    in test_upstream.py)."""
    vae = make_vae()
    x = data_for("bernoulli", 16)
    jit, eager = make_objective("jit-trace", vae), make_objective("trace", vae)
    for batch in (x, x[:5], x):  # a last minibatch of another size compiles its own trace
        jit.differentiable_loss(batch)  # compile first: compiling consumes random numbers
        for compute in (svi_gradients, loss_and_grads):
            j_loss, j_grads = compute(jit, batch, 9)
            e_loss, e_grads = compute(eager, batch, 9)
            assert_close(j_loss, e_loss, rtol=1e-5)
            for name in e_grads:
                assert_close(j_grads[name], e_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_jit_meanfield_equals_meanfield_with_a_pinned_sample():
    """The compiled meanfield ELBO draws its noise from another random stream, so pin the
    sample: with posterior scales of e^-20 the sample is the posterior mean, and loss and
    gradients must agree exactly; for every batch size."""
    vae = make_vae()
    with torch.no_grad():
        vae.encoder.log_scale.bias.fill_(-20.0)
    x = data_for("bernoulli", 16)
    jit, eager = make_objective("jit-meanfield", vae), make_objective("meanfield", vae)
    for batch in (x, x[:5]):
        jit.differentiable_loss(batch)
        for compute in (svi_gradients, loss_and_grads):
            j_loss, j_grads = compute(jit, batch, 9)
            e_loss, e_grads = compute(eager, batch, 9)
            assert_close(j_loss, e_loss, rtol=1e-5)
            for name in e_grads:
                assert_close(j_grads[name], e_grads[name], rtol=1e-4, atol=1e-4, msg=name)


def test_jit_meanfield_equals_meanfield_in_expectation():
    vae = make_vae()
    x = data_for("bernoulli", 16)
    jit, eager = make_objective("jit-meanfield", vae), make_objective("meanfield", vae)
    jit.differentiable_loss(x)
    a = torch.tensor([jit.loss(x) for _ in range(300)])
    b = torch.tensor([eager.loss(x) for _ in range(300)])
    assert abs(a.mean() - b.mean()) < 4 * (a.var() / 300 + b.var() / 300).sqrt()


def test_jit_follows_a_changing_beta():
    vae = make_vae()
    with torch.no_grad():
        vae.encoder.log_scale.bias.fill_(-20.0)  # pin the sample (see above)
    x = data_for("bernoulli")
    jit, eager = make_objective("jit-meanfield", vae), make_objective("meanfield", vae)
    for beta in (0.5, 1.0):
        vae.beta = beta
        jit.differentiable_loss(x)
        pyro.set_rng_seed(1)
        a = jit.loss(x)
        pyro.set_rng_seed(1)
        assert_close(a, eager.loss(x), rtol=1e-5)


def test_compiled_meanfield_compiles_once_per_batch_size(monkeypatch):
    """CompiledMeanField_ELBO keeps its compiled function (Pyro's JitTraceMeanField_ELBO
    compiles at every call: the canary is in test_upstream.py): torch.jit.trace runs once per
    distinct minibatch size, whatever the number of steps, through differentiable_loss and
    through SVI's loss_and_grads."""
    compilations = []
    torch_jit_trace = torch.jit.trace

    def counting_trace(*args, **kwargs):
        compilations.append(1)
        return torch_jit_trace(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", counting_trace)
    vae = make_vae()
    x = data_for("bernoulli", 16)
    jit = make_objective("jit-meanfield", vae)
    for batch in (x, x, x[:5], x, x[:5]):
        jit.differentiable_loss(batch)
        svi_gradients(jit, batch, 1)
    assert len(compilations) == 2


def test_registry_lists_every_estimator_and_rejects_unknown_names():
    assert set(ESTIMATORS) >= {"trace", "meanfield", "jit-trace", "jit-meanfield", "iwae",
                               "analytic", "mc"}
    with pytest.raises(ConfigError, match="known estimators: trace, meanfield"):
        make_objective("elbo", make_vae())
    with pytest.raises(ConfigError, match="num_particles"):
        make_objective("trace", make_vae(), num_particles=0)
    assert {e.bound for e in ESTIMATORS.values()} <= set(Bound)
    assert Bound.IWAE_K.label(50) == "IWAE_50" and Bound.ELBO.label(1, beta=0.5) == "beta-ELBO"


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_with_particles_reports_a_finite_loss_per_datapoint(name):
    vae = make_vae()
    x = data_for("bernoulli", 8)
    objective = make_objective(name, vae, num_particles=3)
    loss = objective.loss(x)
    # nats per datapoint: between the data's entropy floor (0) and a generous ceiling
    assert 0 < loss / 8 < 12 * math.log(2) * 10


# --- MeanField_ELBO: Pyro's TraceMeanField_ELBO without the log-densities it does not use ---
def _elbo_loss_and_grads(elbo, model, guide, params, x, seed, **kwargs):
    for p in params:
        p.grad = None
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, x, **kwargs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


@pytest.mark.parametrize("validation", [False, True], ids=["unvalidated", "validated"])
@pytest.mark.parametrize(
    "beta, num_data, k", [(1.0, None, 1), (0.5, 1000, 1), (1.0, None, 3)],
    ids=["elbo", "beta-scaled", "3-particles"],
)
def test_lean_meanfield_equals_pyro_bit_for_bit(validation, beta, num_data, k):
    """Our MeanField_ELBO and Pyro's pyro.infer.TraceMeanField_ELBO on the one-layer VAE."""
    vae = make_vae(beta=beta)
    x = data_for("bernoulli")
    params = list(vae.parameters())
    kwargs = {} if num_data is None else {"num_data": num_data}
    elbos = [cls(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)
             for cls in (MeanField_ELBO, pyro.infer.TraceMeanField_ELBO)]
    with pyro.validation_enabled(validation):
        (a_loss, a_grads), (b_loss, b_grads) = (
            _elbo_loss_and_grads(e, vae.model, vae.guide, params, x, 5, **kwargs) for e in elbos
        )
        pyro.set_rng_seed(6)
        a_float = elbos[0].loss(vae.model, vae.guide, x, **kwargs)
        pyro.set_rng_seed(6)
        b_float = elbos[1].loss(vae.model, vae.guide, x, **kwargs)
    assert torch.equal(a_loss, b_loss) and a_float == b_float
    for a, b in zip(a_grads, b_grads, strict=True):
        assert torch.equal(a, b)


def test_lean_meanfield_skips_the_unused_log_densities_only_when_unvalidated():
    vae = make_vae()
    x = data_for("bernoulli")
    elbo = MeanField_ELBO(max_plate_nesting=1)
    for validation, computed in ((False, False), (True, True)):
        with pyro.validation_enabled(validation):
            model_trace, guide_trace = elbo._get_trace(vae.model, vae.guide, (x,), {})
        assert ("log_prob" in model_trace.nodes["z"]) is computed
        assert ("score_parts" in guide_trace.nodes["z"]) is computed
        assert "log_prob_sum" in model_trace.nodes["x"]


def _no_closed_form_kl_program(auxiliary: bool):
    """A model and guide with a latent site ``u`` whose KL(q ‖ p) torch does not know (Normal
    against Cauchy), so that the estimator falls back to log p(u) − log q(u); a site ``v``
    whose KL it knows; and, with ``auxiliary``, an auxiliary guide site (entropy term)."""
    net = torch.nn.Linear(1, 3)

    def model(x):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("u", pyro.distributions.Cauchy(0.0, 1.0).expand([x.shape[0]]))
            v = pyro.sample("v", pyro.distributions.Normal(0.0, 2.0).expand([x.shape[0]]))
            pyro.sample("x", pyro.distributions.Normal(u + v, 1.0), obs=x)

    def guide(x):
        loc = pyro.module("net", net)(x.unsqueeze(-1))
        with pyro.plate("data", x.shape[0]):
            if auxiliary:
                pyro.sample("aux", pyro.distributions.Normal(loc[:, 2], 1.0),
                            infer={"is_auxiliary": True})
            pyro.sample("u", pyro.distributions.Normal(loc[:, 0], 0.5))
            pyro.sample("v", pyro.distributions.Normal(loc[:, 1], 0.5))

    return model, guide, list(net.parameters())


@pytest.mark.parametrize("validation", [False, True], ids=["unvalidated", "validated"])
@pytest.mark.parametrize("auxiliary", [False, True], ids=["no-kl", "no-kl+auxiliary"])
def test_lean_meanfield_falls_back_to_pyro_where_it_needs_the_log_densities(validation,
                                                                            auxiliary):
    model, guide, params = _no_closed_form_kl_program(auxiliary)
    x = torch.linspace(-2.0, 2.0, 7)
    with pyro.validation_enabled(validation):
        (a_loss, a_grads), (b_loss, b_grads) = (
            _elbo_loss_and_grads(cls(max_plate_nesting=1), model, guide, params, x, 2)
            for cls in (MeanField_ELBO, pyro.infer.TraceMeanField_ELBO)
        )
    assert torch.equal(a_loss, b_loss)
    for a, b in zip(a_grads, b_grads, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_svi_takes_every_objective_as_its_loss_and_returns_minus_the_bound(name):
    """``SVI(vae.model, vae.guide, optim, make_objective(name, vae))``: ``svi.step`` returns the
    objective's loss (−bound, a float, for rws too) on the same random numbers, and steps every
    parameter of the VAE."""
    vae = VAE(6, latent_dim=2, hidden_sizes=(8,))
    x = binary_batch(5, 6)
    objective = make_objective(name, vae)
    objective.differentiable_loss(x)  # a compiled estimator compiles (and draws) at first
    pyro.set_rng_seed(3)
    expected = float(objective.differentiable_loss(x).detach())
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), objective)
    pyro.set_rng_seed(3)
    got = svi.step(x)
    assert isinstance(got, float) and got == pytest.approx(expected, rel=1e-5)
    assert all(not torch.equal(before[k], v) for k, v in vae.named_parameters()), name
