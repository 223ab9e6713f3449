"""pyro_vae.models.flows: the IAF guide's log-density against the change-of-variables formula
computed independently (the forward map written out, its Jacobian's determinant from autograd),
push and pull (the layered evaluators' forward and inverse maps), the flow inside the VAE's
guide, meanfield's Monte Carlo fallback on it, and its checkpoints."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch.autograd.functional import jacobian

from pyro_vae import VAE, ConfigError, make_objective
from pyro_vae.build import build_vae, load_data
from pyro_vae.config import TrainConfig
from pyro_vae.distributed import derive_seed
from pyro_vae.fit import fit
from pyro_vae.models.flows import InverseAutoregressiveFlow, make_flow
from pyro_vae.objectives import trace_log_weight
from pyro_vae.runs import load_checkpoint, vae_from_checkpoint
from tests.conftest import assert_close, binary_batch

F64 = torch.float64
L, H, B = 4, 3, 5


def flow_and_inputs(num_layers=2, seed=0):
    torch.manual_seed(seed)
    flow = InverseAutoregressiveFlow(L, H, num_layers).to(F64)
    g = torch.Generator().manual_seed(seed + 1)
    loc = torch.randn(B, L, generator=g, dtype=F64)
    scale = torch.rand(B, L, generator=g, dtype=F64) + 0.3
    h = torch.randn(B, H, generator=g, dtype=F64)
    return flow, loc, scale, h


def forward_by_hand(flow, z0, h):
    """z_K from z_0, each step z ← m + exp(clip(log s)) ⊙ z written out from the MADE's outputs
    (Kingma et al. 2016, eq. 10; Pyro clips log s to [−5, 3]); returns z_K and Σ log s."""
    z, log_det = z0, torch.zeros(z0.shape[:-1], dtype=z0.dtype)
    for transform in flow.transforms:
        mean, log_scale = transform.nn(z, context=h)
        log_scale = log_scale.clamp(-5.0, 3.0)
        z = mean + log_scale.exp() * z
        log_det = log_det + log_scale.sum(-1)
    return z, log_det


@pytest.mark.parametrize("num_layers", [1, 3])
def test_log_density_is_the_change_of_variables_formula(num_layers):
    """log q(z_K) = log N(z_0; μ, σ²) − log |det ∂z_K/∂z_0|, with the determinant from the
    autograd Jacobian of the map written out by hand, for a fresh z (Pyro inverts the flow)
    and for the sample Pyro just drew (Pyro's cache)."""
    flow, loc, scale, h = flow_and_inputs(num_layers)
    base = dist.Normal(loc, scale).to_event(1)
    q = flow(base, h)
    z0 = base.sample()
    z, log_det = forward_by_hand(flow, z0, h)
    for b in range(B):
        J = jacobian(lambda v, b=b: forward_by_hand(flow, v, h[b])[0], z0[b])
        sign, logabsdet = torch.linalg.slogdet(J)
        assert_close(logabsdet, log_det[b], rtol=1e-10, atol=1e-10)  # triangular Jacobian
        assert sign != 0
    expected = base.log_prob(z0) - log_det
    assert_close(q.log_prob(z.detach().clone()), expected, rtol=1e-9, atol=1e-9)

    pyro.set_rng_seed(4)
    sample = q.rsample()
    pyro.set_rng_seed(4)
    z0 = base.rsample()
    z, log_det = forward_by_hand(flow, z0, h)
    assert_close(sample, z, rtol=1e-12, atol=1e-12)
    assert_close(q.log_prob(sample), base.log_prob(z0) - log_det, rtol=1e-9, atol=1e-9)


def test_the_flow_changes_the_density_and_keeps_batch_and_event_shapes():
    flow, loc, scale, h = flow_and_inputs()
    base = dist.Normal(loc, scale).to_event(1)
    q = flow(base, h)
    assert q.batch_shape == (B,) and q.event_shape == (L,)
    z = q.sample((7,))
    assert z.shape == (7, B, L)
    assert not torch.allclose(q.log_prob(z), base.log_prob(z))


@pytest.mark.parametrize("kwargs, match", [
    ({"latent_dim": 1, "context_dim": 3, "num_layers": 2}, "at least 2 latent dimensions"),
    ({"latent_dim": 4, "context_dim": 3, "num_layers": 0}, "flow_layers"),
    ({"latent_dim": 4, "context_dim": 0, "num_layers": 2}, "hidden layer"),
])
def test_misuse_is_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        InverseAutoregressiveFlow(**kwargs)
    with pytest.raises(ConfigError, match="known flows: iaf"):
        make_flow("planar", latent_dim=4, context_dim=3, num_layers=2)
    with pytest.raises(ConfigError, match="features"):
        VAE(12, latent_dim=3, encoder=torch.nn.Linear(12, 6), flow="iaf")


def flow_vae(**kwargs):
    return VAE(12, latent_dim=3, hidden_sizes=(16,), flow="iaf", flow_layers=2, **kwargs)


def test_the_guide_samples_through_the_flow_conditioned_on_the_hidden_layer():
    vae = flow_vae()
    x = binary_batch(6, 12)
    trace = pyro.poutine.trace(vae.guide).get_trace(x)
    site = trace.nodes["z"]
    h = vae.encoder.features(x)
    expected = vae.flows[0](dist.Normal(*vae.encoder.heads(h)).to_event(1), h)
    assert site["value"].shape == (6, 3)
    assert_close(site["fn"].log_prob(site["value"]),
                 expected.log_prob(site["value"].detach().clone()), rtol=1e-4, atol=1e-5)
    assert vae.capabilities.flow == "iaf" and vae.capabilities.flow_layers == 2
    assert len(vae.flows) == 1 and vae.flows[0].num_layers == 2
    assert {n for n, _ in vae.named_parameters()} >= {"flows.0.transforms.1.nn.layers.0.weight"}


def test_every_layer_of_a_two_layer_guide_has_its_flow():
    """One IAF per stochastic layer, each conditioned on its own encoder's last hidden layer:
    q(z_2|z_1) is the second flow pushing the Gaussian of the second encoder at z_1."""
    vae = VAE(12, latent_dim=(4, 3), hidden_sizes=((16,), (8,)), flow="iaf", flow_layers=3)
    assert [f.latent_dim for f in vae.flows] == [4, 3]
    assert [f.num_layers for f in vae.flows] == [3, 3]
    assert vae.capabilities.flow_layers == 3 and vae.capabilities.layers == 2
    x = binary_batch(6, 12)
    trace = pyro.poutine.trace(vae.guide).get_trace(x)
    z1, site = trace.nodes["z1"]["value"], trace.nodes["z2"]
    h = vae.encoders[1].features(z1)
    assert h.shape == (6, 8)
    expected = vae.flows[1](dist.Normal(*vae.encoders[1].heads(h)).to_event(1), h)
    assert_close(site["fn"].log_prob(site["value"]),
                 expected.log_prob(site["value"].detach().clone()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_push_is_the_map_written_out_and_pull_is_its_inverse(num_layers):
    """push(u, h) = (z_K, log |det ∂z_K/∂u|), the forward map and Σ log s written out; pull
    inverts it; and log N(u; μ, σ²) − log det is the flow distribution's log-density at z_K."""
    flow, loc, scale, h = flow_and_inputs(num_layers)
    base = dist.Normal(loc, scale).to_event(1)
    u = base.sample((2,))  # (2, B, L): a sample dimension in front, h broadcast
    z, log_det = flow.push(u, h)
    by_hand, log_det_by_hand = forward_by_hand(flow, u, h.expand(2, B, H))
    assert z.shape == u.shape and log_det.shape == (2, B)
    assert_close(z, by_hand, rtol=1e-12, atol=1e-12)
    assert_close(log_det, log_det_by_hand, rtol=1e-12, atol=1e-12)
    assert_close(flow.pull(z, h), u, rtol=1e-9, atol=1e-9)
    assert_close(flow(base, h).log_prob(z.detach().clone()), base.log_prob(u) - log_det,
                 rtol=1e-9, atol=1e-9)


def loss_and_grads(objective, x, seed):
    objective.vae.zero_grad()
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(x)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in objective.vae.named_parameters()}


@pytest.mark.parametrize("validation", [False, True], ids=["unvalidated", "validated"])
@pytest.mark.parametrize("pair", [("meanfield", "trace"), ("jit-trace", "trace")],
                         ids=["meanfield=trace", "jit-trace=trace"])
def test_with_a_flow_meanfield_and_jit_trace_are_trace_sample_by_sample(pair, validation):
    """No KL(IAF ‖ N(0, I)) is registered, so meanfield takes the Monte Carlo term: its loss
    and gradients are Trace_ELBO's for the same sample; the compiled trace too."""
    vae = flow_vae(beta=0.7)
    x = binary_batch(8, 12)
    a, b = (make_objective(name, vae) for name in pair)
    with pyro.validation_enabled(validation):
        a.differentiable_loss(x)  # jit: compile first (compiling draws random numbers)
        a_loss, a_grads = loss_and_grads(a, x, 3)
        b_loss, b_grads = loss_and_grads(b, x, 3)
    assert_close(a_loss, b_loss, rtol=1e-5)
    for name in b_grads:
        assert_close(a_grads[name], b_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_building_on_the_meta_device_gives_the_shapes_and_leaves_the_rng_alone():
    """A checkpoint is checked against a model built on the meta device; Pyro's MADE cannot be
    built there, so the flow builds it on the CPU with the RNG state restored."""
    config = TrainConfig(flow="iaf", flow_layers=3)
    state = torch.get_rng_state()
    with torch.device("meta"):
        meta = build_vae(config, 20)
    assert torch.equal(torch.get_rng_state(), state)
    real = build_vae(config, 20)
    assert {k: v.shape for k, v in meta.state_dict().items()} == \
        {k: v.shape for k, v in real.state_dict().items()}
    assert all(v.is_meta for v in meta.state_dict().values())


def test_a_flow_vae_checkpoint_restores_the_same_guide(tmp_path):
    """The flow's orderings (integer buffers) travel in the checkpoint: the rebuilt guide gives
    the trained one's log-densities. The recorded test ELBO is log p(x, z) − log q(z|x) at one
    sample per image, drawn from torch's generator seeded as documented."""
    config = TrainConfig(flow="iaf", epochs=1, train_size=256, test_size=64, batch_size=64,
                         hidden_sizes=(16,), latent_dim=3, seed=2)
    result = fit(config, tmp_path, log=lambda *a: None, progress=False)
    test = load_data(config, train=False).test
    torch.manual_seed(derive_seed(0, 0))  # one batch of 64 images
    with torch.no_grad():
        guide = poutine.trace(result.vae.eval().guide).get_trace(test)
        model = poutine.trace(poutine.replay(result.vae.model, trace=guide)).get_trace(test)
        model.compute_log_prob()
        guide.compute_log_prob()
        elbo = trace_log_weight(prune_subsample_sites(model), prune_subsample_sites(guide))
    assert_close(result.history[-1]["test_elbo"], elbo.mean(), rtol=1e-6)
    torch.manual_seed(99)  # another ordering, if the checkpoint did not carry it
    vae, checkpoint = vae_from_checkpoint(load_checkpoint(tmp_path))
    assert checkpoint.config.flow == "iaf"
    x = binary_batch(4, 784)
    z = torch.randn(4, 3)
    with torch.no_grad():
        expected = result.vae.eval().posterior(x).log_prob(z)
        assert_close(vae.posterior(x).log_prob(z), expected, rtol=1e-6, atol=1e-6)
