"""pyro_vae.models.vae: the VAE as a Pyro program with one stochastic layer or L (sites, plates,
prefixes, scaling, β, composition with a user's program), the input checks, its layered
log-densities (guide_path, log_prior, log_likelihood) against the program's traces, the
hand-written two-layer losses equal to Pyro's estimators sample by sample (loss and gradients),
meanfield's closed-form KL at the top layer only, the burda2 preset, and training from Python
and from the command line, with resume."""

import dataclasses

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import prune_subsample_sites

from pyro_vae import VAE, ConfigError, DataError, DataTypeError, checks, make_objective
from pyro_vae.build import load_data
from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.distributed import derive_seed
from pyro_vae.fit import fit
from pyro_vae.losses import analytic_elbo, gaussian_kl_to_standard_normal, mc_elbo
from pyro_vae.models.presets import get_preset
from pyro_vae.objectives import closed_form_kl_sites
from pyro_vae.runs import load_checkpoint
from tests.conftest import assert_close, binary_batch

F64 = torch.float64


def small_vae(**kwargs):
    kwargs.setdefault("latent_dim", 3)
    kwargs.setdefault("hidden_sizes", (16,))
    return VAE(12, **kwargs)


def make_hvae(likelihood="bernoulli", **kwargs):
    """The two-layer VAE of the old HierarchicalVAE's tests (its default activation, tanh)."""
    kwargs.setdefault("latent_dim", (4, 3))
    kwargs.setdefault("hidden_sizes", ((16,), (8,)))
    kwargs.setdefault("activation", "tanh")
    return VAE(12, likelihood=likelihood, **kwargs)


def data_for(likelihood, batch_size=16):
    x = binary_batch(batch_size, 12)
    return x if likelihood == "bernoulli" else 0.1 + 0.8 * x * torch.rand(x.shape)


def trace_of(vae, x, **kwargs):
    guide_trace = poutine.trace(vae.guide).get_trace(x, **kwargs)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
        x, **kwargs
    )
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return model_trace, guide_trace


def traces(vae, x, **kwargs):
    """The model's and guide's traces, plates left out, as the estimators see them."""
    guide = poutine.trace(vae.guide).get_trace(x, **kwargs)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, **kwargs)
    return prune_subsample_sites(model), prune_subsample_sites(guide)


def sample_sites(trace):
    """The sample sites in order, the plates' subsample sites left out."""
    return [n for n, s in prune_subsample_sites(trace).nodes.items() if s["type"] == "sample"]


# --- one layer: the program ------------------------------------------------------------------


def test_sites_shapes_and_plate():
    vae = small_vae()
    x = binary_batch(5, 12)
    model_trace, guide_trace = trace_of(vae, x)
    z, obs = model_trace.nodes["z"], model_trace.nodes["x"]
    assert z["fn"].event_shape == (3,) and z["fn"].batch_shape == (5,)
    assert obs["fn"].event_shape == (12,) and obs["is_observed"]
    assert [f.name for f in obs["cond_indep_stack"]] == ["data"]
    assert isinstance(z["fn"].base_dist, dist.Normal)
    assert_close(z["fn"].base_dist.loc, 0.0, atol=0)
    assert_close(z["fn"].base_dist.scale, 1.0, atol=0)
    assert_close(guide_trace.nodes["z"]["value"], z["value"], atol=0)


def test_names_and_modules_of_one_layer_and_of_l_layers():
    one, three = small_vae(), make_hvae(latent_dim=(4, 3, 2),
                                        hidden_sizes=((16,), (8,), (6,)))
    assert (one.num_layers, one.latent_dims, one.latent_dim) == (1, (3,), 3)
    assert (one.z_sites, one.x_site, one.plate_name) == (("z",), "x", "data")
    assert one.encoder is one.encoders[0] and len(one.encoders) == 1
    assert len(one.priors) == 0 and one.flows is None
    assert (three.num_layers, three.latent_dims, three.latent_dim) == (3, (4, 3, 2), 2)
    assert three.z_sites == ("z1", "z2", "z3") and three.encoder is three.encoders[0]
    assert len(three.encoders) == 3 and len(three.priors) == 2
    prefixed = small_vae(prefix="p_", flow="iaf")
    assert (prefixed.z_sites, prefixed.x_site, prefixed.plate_name) == (("p_z",), "p_x",
                                                                         "p_data")
    assert len(prefixed.flows) == 1


def test_the_encoder_attribute_is_read_only():
    """vae.encoder is vae.encoders[0], read-only: assigning to it must not pass silently
    (nn.Module.__setattr__ would register the module as a new submodule ``encoder`` that the
    property hides, which the guide never uses and the state dict then carries)."""
    vae = small_vae()
    keys = set(vae.state_dict())
    with pytest.raises(AttributeError):
        vae.encoder = torch.nn.Linear(12, 6)
    assert set(vae.state_dict()) == keys


def test_log_joint_is_the_sum_of_the_distributions_log_densities():
    vae = small_vae()
    x = binary_batch(4, 12)
    model_trace, guide_trace = trace_of(vae, x)
    z = guide_trace.nodes["z"]["value"]
    loc, scale = vae.encode(x)
    expected_model = (torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
                      + torch.distributions.Bernoulli(logits=vae.decoder(z)).log_prob(x).sum())
    assert_close(model_trace.log_prob_sum(), expected_model, rtol=1e-6)
    expected_guide = torch.distributions.Normal(loc, scale).log_prob(z).sum()
    assert_close(guide_trace.log_prob_sum(), expected_guide, rtol=1e-6)


def test_num_data_scales_every_site_by_n_over_b():
    vae = small_vae()
    x = binary_batch(4, 12)
    pyro.set_rng_seed(0)
    full = TraceMeanField_ELBO().loss(vae.model, vae.guide, x, num_data=1000)
    pyro.set_rng_seed(0)
    batch = TraceMeanField_ELBO().loss(vae.model, vae.guide, x)
    assert_close(full, batch * 1000 / 4, rtol=1e-5)


def test_beta_scales_only_the_latent_site():
    vae = small_vae(beta=0.25)
    x = binary_batch(4, 12)
    model_trace, guide_trace = trace_of(vae, x)
    assert model_trace.nodes["z"]["scale"] == 0.25 and guide_trace.nodes["z"]["scale"] == 0.25
    assert model_trace.nodes["x"]["scale"] == 1.0
    # meanfield with beta: −loss = E log p(x|z) − β KL, checked against the closed-form KL
    pyro.set_rng_seed(1)
    loss = TraceMeanField_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    loc, scale = vae.encode(x)
    expected = -(vae.decode(z).log_prob(x).sum()
                 - 0.25 * gaussian_kl_to_standard_normal(loc, scale).sum())
    assert_close(loss, expected, rtol=1e-5)


def test_prefix_lets_two_vaes_share_one_program():
    a, b = small_vae(prefix="left_"), small_vae(prefix="right_")
    x = binary_batch(4, 12)

    def model(x):
        a.model(x)
        b.model(x)

    def guide(x):
        a.guide(x)
        b.guide(x)

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    loss = svi.step(x)
    names = set(pyro.get_param_store().keys())
    # one layer: no prior networks to register, and the Bernoulli has no parameters
    assert {n.split("$$$")[0] for n in names} == {
        "left_encoders", "left_decoder", "right_encoders", "right_decoder"}
    trace = poutine.trace(model).get_trace(x)
    assert {"left_z", "left_x", "right_z", "right_x"} <= set(trace.nodes)
    assert loss > 0


def test_called_under_an_outer_plate_beside_another_latent():
    """A user's model: a per-datapoint label latent y and the VAE conditioned on it."""
    vae = small_vae(context_dim=2, prefix="vae_")
    x = binary_batch(6, 12)

    def model(x):
        with pyro.plate("batch", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(2)))
            vae.model(x, y, plate=False)

    def guide(x):
        with pyro.plate("batch", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(2)))
            vae.guide(x, y, plate=False)

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO(max_plate_nesting=1))
    losses = [svi.step(x) for _ in range(3)]
    trace = poutine.trace(model).get_trace(x)
    assert trace.nodes["vae_z"]["fn"].batch_shape == (6,)
    assert [f.name for f in trace.nodes["vae_x"]["cond_indep_stack"]] == ["batch"]
    assert all(loss > 0 for loss in losses)


def test_vectorized_particles_broadcast():
    vae = small_vae()
    x = binary_batch(4, 12)
    elbo = Trace_ELBO(num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    guide_trace = poutine.trace(elbo._vectorized_num_particles(vae.guide)).get_trace(x)
    assert guide_trace.nodes["z"]["value"].shape == (7, 4, 3)
    assert elbo.loss(vae.model, vae.guide, x) > 0


@pytest.mark.parametrize("x_dim", [10, 784])
def test_nothing_hard_codes_784(x_dim):
    vae = VAE(x_dim, latent_dim=2, hidden_sizes=(5, 6))
    x = binary_batch(3, x_dim)
    assert vae.decode(vae.encode(x)[0]).event_shape == (x_dim,)


def test_check_data_names_shape_and_support():
    vae = small_vae()
    with pytest.raises(DataError,
                       match=r"^mine\.idx must have shape \(N, 12\), found \(4, 13\)$"):
        vae.check_data(torch.zeros(4, 13), where="mine.idx")
    with pytest.raises(DataError, match=r"^grey: .*binarize"):
        vae.check_data(torch.full((4, 12), 0.5), where="grey")
    with pytest.raises(DataError, match=r"^data is empty, shape \(0, 12\)$"):
        vae.check_data(torch.zeros(0, 12))
    for likelihood in ("bernoulli", "continuous-bernoulli", "gaussian"):
        with pytest.raises(DataError, match=r"^data: 24 of 24 values are NaN or infinite$"):
            small_vae(likelihood=likelihood).check_data(torch.full((2, 12), float("nan")))
    with pytest.raises(DataTypeError, match=r"torch\.uint8"):
        vae.check_data(torch.zeros(2, 12, dtype=torch.uint8))


def test_constructor_rejects_bad_sizes_and_prefix():
    with pytest.raises(ConfigError, match="latent_dim"):
        VAE(12, latent_dim=0)
    with pytest.raises(ConfigError, match="latent_dim"):
        VAE(12, latent_dim=())
    with pytest.raises(ConfigError, match="x_dim"):
        VAE(-1)
    with pytest.raises(ConfigError, match="prefix"):
        VAE(12, prefix="a$$$b")


# --- the input checks: always, one line -------------------------------------------------------

BAD_INPUTS = {
    "grey levels": (lambda: torch.full((3, 12), 0.5), DataError,
                    r"^x: the bernoulli likelihood needs binary values .*binarize"),
    "NaN": (lambda: binary_batch(3, 12).index_put_((torch.tensor(0), torch.tensor(2)),
                                                   torch.tensor(float("nan"))),
            DataError, r"^x: 1 of 36 values are NaN or infinite$"),
    "a pixel of 2": (lambda: binary_batch(3, 12).index_put_((torch.tensor(1), torch.tensor(4)),
                                                            torch.tensor(2.0)),
                     DataError, r"found 1 other values \(e\.g\. 2\)"),
    "-1": (lambda: -binary_batch(3, 12), DataError, r"e\.g\. -1\)"),
    "uint8": (lambda: binary_batch(3, 12).to(torch.uint8), DataTypeError,
              r"^x has dtype torch\.uint8, expected floating-point values"),
    "float64": (lambda: binary_batch(3, 12).double(), DataTypeError,
                r"^x has dtype torch\.float64, the model's parameters torch\.float32"),
    "empty": (lambda: torch.zeros(0, 12), DataError, r"^x is empty, shape \(0, 12\)$"),
    "meta": (lambda: torch.zeros(3, 12, device="meta"), DataError,
             r"^x is on device meta, the model on cpu"),
    "a list": (lambda: [[0.0] * 12] * 3, DataTypeError, r"^x must be a torch\.Tensor, got a list$"),
    "one datapoint": (lambda: torch.zeros(12), DataError,
                      r"^x must have shape \(N, 12\), found \(12,\); one datapoint is "
                      r"x\.unsqueeze\(0\)$"),
    "wrong width": (lambda: torch.zeros(3, 13), DataError,
                    r"^x must have shape \(N, 12\), found \(3, 13\)$"),
}


@pytest.mark.parametrize("layers", [1, 2], ids=["one-layer", "two-layer"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_input_checks_run_without_pyros_validation(case, layers):
    """x is checked whatever Pyro's validation flag says: the model and the guide refuse it
    with a DataError (DataTypeError for a wrong type) of one line."""
    make, error, match = BAD_INPUTS[case]
    vae = small_vae() if layers == 1 else make_hvae()
    pyro.enable_validation(False)
    for program in (vae.model, vae.guide):
        with pytest.raises(error, match=match) as raised:
            program(make())
        assert "\n" not in str(raised.value), str(raised.value)
    program(binary_batch(3, 12))  # a good x after a bad one


def test_gaussian_nan_and_a_missing_context_are_refused_without_validation():
    pyro.enable_validation(False)
    gaussian = small_vae(likelihood="gaussian")
    x = torch.zeros(3, 12)
    x[0, 0] = float("nan")
    for program in (gaussian.model, gaussian.guide):
        with pytest.raises(DataError, match=r"^x: 1 of 36 values are NaN or infinite$"):
            program(x)
    conditional = small_vae(context_dim=2)
    with pytest.raises(ConfigError, match="context of 2 features"):
        conditional.guide(binary_batch(3, 12))
    with pytest.raises(DataError, match=r"^context must have shape \(N, 2\), found \(3, 5\)$"):
        conditional.guide(binary_batch(3, 12), torch.zeros(3, 5))


def test_the_context_is_checked_at_every_call_and_beside_z_too():
    vae = small_vae(context_dim=2)
    x, context = binary_batch(3, 12), torch.zeros(3, 2)
    vae.guide(x, context)
    # x was checked already: the context's check must not be skipped with it
    with pytest.raises(DataError, match=r"^context: 3 of 6 values are NaN or infinite$"):
        vae.guide(x, torch.full((3, 2), float("nan")).index_fill(1, torch.tensor([1]), 0.0))
    with pytest.raises(DataError, match=r"^context has shape \(4, 2\) and x \(3, 12\): one row "
                       r"of context for each of x$"):
        vae.model(x, torch.zeros(4, 2))
    with pytest.raises(DataTypeError, match=r"^context has dtype torch\.float64"):
        vae.model(x, context.double())
    vae.model(x, torch.zeros(5, 1, 2))  # a context enumerated in parallel broadcasts
    with pytest.raises(ConfigError, match=r"context of 2 features beside x: call it with "
                       r"\(x, context\)$"):
        vae.encode(x)
    with pytest.raises(ConfigError, match=r"beside z: call it with \(z, context\)$"):
        vae.decode(torch.zeros(4, 3))
    loc = vae.encode(x, context)[0]
    assert_close(vae.decode(loc, context).mean, vae.decode(loc, torch.zeros(1, 2)).mean)
    with pytest.raises(ConfigError, match=r"^this VAE reads no context: call it with x alone$"):
        small_vae().guide(x, context)


def test_an_x_changed_in_place_after_a_check_is_checked_again():
    vae = small_vae()
    x = binary_batch(3, 12)
    vae.guide(x)
    vae.model(x)
    x[0, 0] = 0.5
    with pytest.raises(DataError, match="binary values"):
        vae.model(x)


def test_the_dtype_check_follows_the_model_through_to_and_an_assigning_load():
    """The check reads the model's parameters as they are now: after ``.double()``, and after
    ``load_state_dict(assign=True)`` puts new parameter objects in place."""
    vae = small_vae()
    vae.guide(binary_batch(3, 12))  # the holder of the first parameter is found here
    vae.double()
    vae.guide(binary_batch(3, 12).double())
    with pytest.raises(DataTypeError, match=r"float32, the model's parameters torch\.float64"):
        vae.guide(binary_batch(3, 12))
    vae.load_state_dict({k: v.float() for k, v in vae.state_dict().items()}, assign=True)
    vae.guide(binary_batch(3, 12))
    with pytest.raises(DataTypeError, match=r"float64, the model's parameters torch\.float32"):
        vae.guide(binary_batch(3, 12).double())


def test_the_fast_path_of_the_x_checks_agrees_with_the_general_checks(monkeypatch):
    """Each x meets the same outcome, error and message included, with the few-call fast path
    as with the general checks alone: it may only skip work, never let a bad x through."""
    def outcome(vae, x):
        try:
            vae.check_data(x, where="x")
            vae.guide(x, plate=x.dim() == 2)
        except Exception as e:  # the outcome itself is compared
            return type(e), str(e)
        return None

    b = binary_batch(3, 12)
    xs = [b, b.double(), b.half(), b.to(torch.uint8), b.t().contiguous().t(), b[:, :11],
          b[:0], b.unsqueeze(0), b[0], torch.nn.Parameter(b), b.requires_grad_(False) * 0.5,
          torch.full((3, 12), float("nan")), torch.full((3, 12), -0.0), b + 1,
          torch.empty(3, 12, device="meta"), [[0.0] * 12]]
    cpu, meta = small_vae(), small_vae().to("meta")
    cases = [(vae, x) for vae in (cpu, meta) for x in xs]
    fast = [outcome(vae, x) for vae, x in cases]
    assert sum(out is None for out in fast) >= 3  # some pass: the comparison is not all errors
    monkeypatch.setattr(checks, "is_plain_batch", lambda *args: False)
    assert [outcome(vae, x) for vae, x in cases] == fast


@pytest.mark.parametrize("validation", [True, False], ids=["validated", "unvalidated"])
def test_a_data_error_inside_svi_is_one_line_without_the_trace_shapes(validation):
    """Pyro's trace re-raises an error from inside a program with its shapes appended; the
    package's errors show the message that was raised."""
    pyro.enable_validation(validation)
    for vae in (small_vae(), make_hvae()):
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        with pytest.raises(DataError) as raised:
            svi.step(torch.full((4, 12), 0.5))
        message = str(raised.value)
        assert "Trace Shapes" not in message and "\n" not in message, message
        assert message.startswith("x: the bernoulli likelihood needs binary values"), message


# --- the data plate inside a user's plate ------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2], ids=["one-layer", "two-layer"])
def test_inside_a_users_plate_the_vae_needs_plate_false(layers):
    """The user's plate takes the rightmost batch dimension, x's: with its own plate the VAE
    would broadcast against it, so it refuses and names plate=False; with plate=False its
    sites live in the user's plate and their log-densities are the VAE's own."""
    vae = small_vae() if layers == 1 else make_hvae()
    x = binary_batch(64, 12)
    for program in (vae.model, vae.guide):
        with pytest.raises(ConfigError, match="plate=False") as raised:
            with pyro.plate("outer", 64):
                program(x)
        assert "'outer'" in str(raised.value) and "\n" not in str(raised.value)
        with pytest.raises(ConfigError, match="plate=False") as raised:  # Pyro's trace too
            poutine.trace(lambda program=program: _in_outer_plate(program, x)).get_trace()
        assert "Trace Shapes" not in str(raised.value) and "\n" not in str(raised.value)

    def model(x):
        with pyro.plate("outer", 64):
            return vae.model(x, plate=False)

    def guide(x):
        with pyro.plate("outer", 64):
            return vae.guide(x, plate=False)

    inner_model, inner_guide = trace_of(vae, x)
    guide_trace = poutine.trace(poutine.replay(guide, trace=inner_guide)).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    for name in (*vae.z_sites, vae.x_site):
        assert [f.name for f in model_trace.nodes[name]["cond_indep_stack"]] == ["outer"]
        assert_close(model_trace.nodes[name]["log_prob"], inner_model.nodes[name]["log_prob"],
                     rtol=1e-6, msg=name)
    for name in vae.z_sites:
        assert_close(guide_trace.nodes[name]["log_prob"], inner_guide.nodes[name]["log_prob"],
                     rtol=1e-6, msg=name)
    elbo = Trace_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(2)
    outer = elbo.loss(model, guide, x)
    pyro.set_rng_seed(2)
    assert_close(outer, elbo.loss(vae.model, vae.guide, x), rtol=1e-6)


def _in_outer_plate(program, x):
    with pyro.plate("outer", x.shape[0]):
        program(x)


# --- L layers: the program ---------------------------------------------------------------------


def hierarchical_program(vae):
    """The old HierarchicalVAE's model and guide written out with the VAE's networks:
    p(z_L) ⋯ p(z_1|z_2) p(x|z_1) and q(z_1|x) ⋯ q(z_L|z_(L-1)), sites z1..zL and x in the
    plate "data"."""
    L = vae.num_layers

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(f"z{L}", dist.Normal(x.new_zeros(x.shape[0], vae.latent_dim), 1.0)
                            .to_event(1))
            for i in reversed(range(L - 1)):
                z = pyro.sample(f"z{i + 1}", dist.Normal(*vae.priors[i](z)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=vae.decoder(z)).to_event(1), obs=x)

    def guide(x):
        below = x
        with pyro.plate("data", x.shape[0]):
            for i in range(L):
                below = pyro.sample(f"z{i + 1}", dist.Normal(*vae.encoders[i](below)).to_event(1))

    return model, guide


@pytest.mark.parametrize("dims", [(4, 3), (4, 3, 2)], ids=["2-layer", "3-layer"])
def test_l_layers_are_the_hierarchical_program(dims):
    """VAE(latent_dim=(d_1, ..., d_L)) is the old hierarchical VAE: the same sites in the same
    order, the same draws from the same seed, the same log-density at every site."""
    hidden = ((16,), (8,), (6,))[:len(dims)]
    vae = make_hvae(latent_dim=dims, hidden_sizes=hidden)
    model, guide = hierarchical_program(vae)
    x = data_for("bernoulli", 5)
    pyro.set_rng_seed(4)
    ours_model, ours_guide = trace_of(vae, x)
    pyro.set_rng_seed(4)
    ref_guide = poutine.trace(guide).get_trace(x)
    ref_model = poutine.trace(poutine.replay(model, trace=ref_guide)).get_trace(x)
    ref_model.compute_log_prob()
    ref_guide.compute_log_prob()
    names = [f"z{i + 1}" for i in range(len(dims))]
    assert sample_sites(ours_guide) == sample_sites(ref_guide) == names
    assert sample_sites(ours_model) == sample_sites(ref_model) == [*reversed(names), "x"]
    for name in names:
        assert torch.equal(ours_guide.nodes[name]["value"], ref_guide.nodes[name]["value"])
        assert_close(ours_guide.nodes[name]["log_prob"], ref_guide.nodes[name]["log_prob"],
                     rtol=1e-6, msg=name)
    for name in [*names, "x"]:
        assert_close(ours_model.nodes[name]["log_prob"], ref_model.nodes[name]["log_prob"],
                     rtol=1e-6, msg=name)
        assert [f.name for f in ours_model.nodes[name]["cond_indep_stack"]] == ["data"]
    pyro.set_rng_seed(5)
    returned = vae.guide(x)
    assert isinstance(returned, tuple) and len(returned) == len(dims)


def test_a_one_element_latent_dim_is_the_one_layer_vae():
    """latent_dim=(d,) with one tuple of hidden sizes is the one-layer VAE, sites and all
    (HierarchicalVAE refused one layer; VAE is one class for every L)."""
    torch.manual_seed(0)
    tuple_vae = VAE(12, latent_dim=(4,), hidden_sizes=((8,),))
    torch.manual_seed(0)
    int_vae = VAE(12, latent_dim=4, hidden_sizes=(8,))
    assert tuple_vae.num_layers == 1 and tuple_vae.z_sites == ("z",)
    assert tuple_vae.capabilities == int_vae.capabilities
    for (name, a), (other, b) in zip(tuple_vae.state_dict().items(),
                                     int_vae.state_dict().items(), strict=True):
        assert name == other and torch.equal(a, b), name
    x = binary_batch(5, 12)
    pyro.set_rng_seed(3)
    a_model, a_guide = trace_of(tuple_vae, x)
    pyro.set_rng_seed(3)
    b_model, b_guide = trace_of(int_vae, x)
    assert sample_sites(a_model) == sample_sites(b_model) == ["z", "x"]
    assert_close(a_model.log_prob_sum() - a_guide.log_prob_sum(),
                 b_model.log_prob_sum() - b_guide.log_prob_sum(), rtol=0, atol=0)


def test_the_model_and_guide_sample_each_layer_in_the_data_plate():
    vae = make_hvae(latent_dim=(4, 3, 2), hidden_sizes=((16,), (8,), (6,)))
    x = data_for("bernoulli", 5)
    model, guide = traces(vae, x)
    latent = sample_sites(guide)
    assert latent == ["z1", "z2", "z3"]  # bottom up
    assert sample_sites(model) == ["z3", "z2", "z1", "x"]
    for name, dim in zip(latent, (4, 3, 2), strict=True):
        assert guide.nodes[name]["value"].shape == (5, dim)
        assert [f.name for f in model.nodes[name]["cond_indep_stack"]] == ["data"]
    assert vae.capabilities.layers == 3 and vae.latent_dim == 2


def test_log_joint_is_the_sum_of_the_layers_written_out():
    """log p(x, z) − log q(z|x) from Pyro's traces against the densities written out."""
    vae = make_hvae()
    x = data_for("bernoulli", 6)
    model, guide = traces(vae, x)
    z1, z2 = guide.nodes["z1"]["value"], guide.nodes["z2"]["value"]
    normal = torch.distributions.Normal
    expected = (normal(0.0, 1.0).log_prob(z2).sum(-1)
                + normal(*vae.priors[0](z2)).log_prob(z1).sum(-1)
                + vae.likelihood(vae.decoder(z1)).log_prob(x).sum(-1)
                - normal(*vae.encoders[0](x)).log_prob(z1).sum(-1)
                - normal(*vae.encoders[1](z1)).log_prob(z2).sum(-1))
    model.compute_log_prob()
    guide.compute_log_prob()
    log_w = sum(s["log_prob"] for s in model.nodes.values() if s["type"] == "sample") - sum(
        s["log_prob"] for s in guide.nodes.values() if s["type"] == "sample")
    assert_close(log_w, expected, rtol=1e-5)


def test_prefix_and_plate_flag_compose_two_models_in_one_program():
    """Two two-layer VAEs with prefixes inside the user's own plate: their sites and
    modules do not collide, and the loss is the sum of each one's alone."""
    a, b = make_hvae(prefix="a_"), make_hvae(prefix="b_")
    x = data_for("bernoulli", 4)

    def model(x):
        with pyro.plate("batch", x.shape[0]):
            a.model(x, plate=False)
            b.model(x, plate=False)

    def guide(x):
        with pyro.plate("batch", x.shape[0]):
            a.guide(x, plate=False)
            b.guide(x, plate=False)

    elbo = pyro.infer.Trace_ELBO()
    pyro.set_rng_seed(0)
    both = elbo.differentiable_loss(model, guide, x)
    pyro.set_rng_seed(0)
    alone = elbo.differentiable_loss(a.model, a.guide, x) + elbo.differentiable_loss(
        b.model, b.guide, x)
    assert_close(both, alone, rtol=1e-6)
    names = set(poutine.trace(guide).get_trace(x).nodes)
    assert {"a_z1", "a_z2", "b_z1", "b_z2"} <= names
    assert "a_encoders$$$0.body.0.weight" in pyro.get_param_store()
    poutine.trace(model).get_trace(x)
    assert "b_priors$$$0.body.0.weight" in pyro.get_param_store()


def test_num_data_scales_the_minibatch_loss():
    vae = make_hvae()
    x = data_for("bernoulli", 8)
    objective = make_objective("trace", vae)
    pyro.set_rng_seed(1)
    plain = objective.differentiable_loss(x)
    pyro.set_rng_seed(1)
    scaled = objective.differentiable_loss(x, num_data=100)
    assert_close(scaled, plain * 100 / 8, rtol=1e-6)


def test_bad_input_and_bad_sizes_are_refused():
    vae = make_hvae()
    with pytest.raises(DataError, match=r"^x must have shape \(N, 12\), found \(12,\)"):
        vae.model(torch.zeros(12))
    with pytest.raises(DataError, match="binary values"):
        vae.check_data(torch.full((3, 12), 0.5))
    with pytest.raises(ConfigError, match="hidden_sizes gives 1 layers' hidden sizes for 2 "
                                          "stochastic layers"):
        VAE(12, latent_dim=(4, 3), hidden_sizes=((8,),))
    with pytest.raises(ConfigError, match="hidden_sizes gives 3 layers' hidden sizes for 2 "
                                          "stochastic layers"):
        VAE(12, latent_dim=(4, 3), hidden_sizes=((8,), (6,), (4,)))
    with pytest.raises(ConfigError, match=r"encoder: expected 2 torch modules, got 1"):
        VAE(12, latent_dim=(4, 3), hidden_sizes=((8,), (6,)),
            encoder=[torch.nn.Linear(12, 8)])
    with pytest.raises(ConfigError, match=r"priors: expected 1 torch modules, got 2"):
        VAE(12, latent_dim=(4, 3), hidden_sizes=((8,), (6,)),
            priors=[torch.nn.Linear(3, 8), torch.nn.Linear(3, 8)])


def test_from_preset_builds_one_layer_or_two():
    """One class for every preset (HierarchicalVAE.from_preset refused one-layer presets and
    VAE.from_preset two-layer ones)."""
    burda, burda2 = VAE.from_preset("burda", 20), VAE.from_preset("burda2", 20)
    assert burda.num_layers == 1 and burda.latent_dims == get_preset("burda").latent_dims
    assert burda2.num_layers == 2 and burda2.latent_dims == (100, 50)
    assert burda2.z_sites == ("z1", "z2")


def test_burda2_is_the_papers_two_layer_architecture():
    """x-200-200-z1(100)-100-100-z2(50) and the mirror image, tanh (Burda et al. 2016)."""
    vae = VAE.from_preset("burda2", 784)
    linear = [(m.in_features, m.out_features) for m in vae.encoders.modules()
              if isinstance(m, torch.nn.Linear)]
    assert linear == [(784, 200), (200, 200), (200, 100), (200, 100),
                      (100, 100), (100, 100), (100, 50), (100, 50)]
    generative = [(m.in_features, m.out_features) for net in (vae.priors, vae.decoder)
                  for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert generative == [(50, 100), (100, 100), (100, 100), (100, 100),
                          (100, 200), (200, 200), (200, 784)]
    assert all(isinstance(m, torch.nn.Linear | torch.nn.Tanh | torch.nn.Sequential)
               for m in vae.decoder.body)
    assert get_preset("burda2").describe() == "x-200-200-100-100-100-50"
    mean = torch.full((784,), 0.2)
    vae.init_output_bias(mean)
    assert_close(torch.sigmoid(vae.decoder.out.bias), mean, rtol=1e-6)


# --- the layered log-densities against the program's traces -----------------------------------

LAYERED = {
    "one layer": lambda: small_vae(),
    "two layers": lambda: make_hvae(),
    "flow": lambda: small_vae(flow="iaf"),
    "two layers, flow": lambda: make_hvae(flow="iaf"),
}


def program_log_densities(vae, x, values):
    """Per site, the log-densities of the guide's and the model's traces conditioned on the
    latent ``values``."""
    guide_trace = poutine.trace(poutine.condition(vae.guide, data=values)).get_trace(x)
    model_trace = poutine.trace(poutine.condition(vae.model, data=values)).get_trace(x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return ({n: model_trace.nodes[n]["log_prob"] for n in (*vae.z_sites, vae.x_site)},
            {n: guide_trace.nodes[n]["log_prob"] for n in vae.z_sites})


def check_pieces(vae, x, path, log_p, log_q, tol):
    """guide_path's log q − log det, log_prior and log_likelihood against the sites' own."""
    for site, value in zip(vae.z_sites, vae.log_prior(path.zs), strict=True):
        assert value.shape == (1, x.shape[0])
        assert_close(value[0], log_p[site], rtol=tol, atol=tol, msg=site)
    assert_close(vae.log_likelihood(x, path.zs[0])[0], log_p[vae.x_site], rtol=tol, atol=tol)
    assert_close((sum(path.log_q) - path.log_det)[0], sum(log_q.values()), rtol=tol, atol=tol)
    if vae.flows is None:
        for site, value in zip(vae.z_sites, path.log_q, strict=True):
            assert_close(value[0], log_q[site], rtol=tol, atol=tol, msg=site)
        assert torch.equal(path.log_det, torch.zeros_like(path.log_det))
    log_w = (sum(vae.log_prior(path.zs)) + vae.log_likelihood(x, path.zs[0])
             - sum(path.log_q) + path.log_det)[0]
    assert_close(log_w, sum(log_p.values()) - sum(log_q.values()), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", list(LAYERED))
def test_layered_pieces_are_the_programs_log_densities_at_its_sample(name):
    """At the sample the Pyro guide drew: pull_back finds the base draws, guide_path maps them
    back to the same z, and its log q − log det, log_prior and log_likelihood are the trace's
    log-densities, site by site; so log w = log p(x, z) − log q(z|x) from the traces."""
    torch.manual_seed(0)
    vae = LAYERED[name]().double()
    x = data_for("bernoulli", 5).double()
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    zs = [guide_trace.nodes[n]["value"] for n in vae.z_sites]
    guide_trace.compute_log_prob()  # at the sample just drawn (a flow's from Pyro's cache)
    log_q = {n: guide_trace.nodes[n]["log_prob"] for n in vae.z_sites}
    log_p, conditioned_q = program_log_densities(vae, x, dict(zip(vae.z_sites, zs,
                                                                  strict=True)))
    for site in vae.z_sites:  # the cache and a flow's inverse agree
        assert_close(conditioned_q[site], log_q[site], rtol=1e-9, atol=1e-9, msg=site)
    u = vae.pull_back(x, zs)
    assert u.shape == (5, sum(vae.latent_dims))
    with torch.no_grad():
        path = vae.guide_path(x, u=u[None])
        for z, expected in zip(path.zs, zs, strict=True):
            assert_close(z[0], expected, rtol=1e-9, atol=1e-9)
        check_pieces(vae, x, path, log_p, log_q, 1e-9)


@pytest.mark.parametrize("name", list(LAYERED))
def test_layered_pieces_are_the_programs_log_densities_at_guide_paths_sample(name):
    """At guide_path's own draw: the Pyro program conditioned on its z gives the same
    log-densities (a flow's log q then from Pyro's inverse of the flow); pull_back inverts it."""
    torch.manual_seed(0)
    vae = LAYERED[name]().double()
    x = data_for("bernoulli", 5).double()
    with torch.no_grad():
        path = vae.guide_path(x, num_samples=1, generator=torch.Generator().manual_seed(1))
        values = {n: z[0] for n, z in zip(vae.z_sites, path.zs, strict=True)}
        log_p, log_q = program_log_densities(vae, x, values)
        check_pieces(vae, x, path, log_p, log_q, 1e-8)
        assert_close(vae.pull_back(x, [z[0] for z in path.zs]), path.u[0], rtol=1e-9,
                     atol=1e-9)
    assert path.u.shape == (1, 5, sum(vae.latent_dims))
    assert [loc.shape for loc in path.locs] == [(5, vae.latent_dims[0]),
                                                *((1, 5, d) for d in vae.latent_dims[1:])]


def test_guide_path_draws_from_the_generator_it_is_given():
    vae = make_hvae()
    x = data_for("bernoulli", 5)
    with torch.no_grad():
        a = vae.guide_path(x, num_samples=3, generator=torch.Generator().manual_seed(7))
        b = vae.guide_path(x, num_samples=3, generator=torch.Generator().manual_seed(7))
        c = vae.guide_path(x, num_samples=3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.u, b.u) and not torch.equal(a.u, c.u)
    assert [z.shape for z in a.zs] == [(3, 5, 4), (3, 5, 3)]
    assert all(q.shape == (3, 5) for q in a.log_q) and a.log_det.shape == (3, 5)


# --- the hand-written two-layer losses, sample by sample ------------------------------------


def loss_and_grads(objective, x, seed, **kwargs):
    vae = objective.vae
    vae.zero_grad()
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(x, **kwargs)
    loss.backward()
    # at β = 0 the top layer's networks are out of Pyro's graph (masked): no gradient is zero
    return loss.detach(), {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                           for n, p in vae.named_parameters()}


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("pyro_name, torch_name", [("meanfield", "analytic"), ("trace", "mc")],
                         ids=["meanfield=analytic", "trace=mc"])
@pytest.mark.parametrize("num_data, beta, k",
                         [(None, 1.0, 1), (1000, 0.5, 1), (None, 0.0, 1), (None, 1.0, 3)],
                         ids=["elbo", "scaled-beta", "beta-0", "3-particles"])
def test_pyro_loss_and_gradient_equal_hand_written(pyro_name, torch_name, likelihood,
                                                   num_data, beta, k):
    """In float64, so that any difference beyond 1e-5 is a difference of formula."""
    vae = make_hvae(likelihood, beta=beta).double()
    x = data_for(likelihood).double()
    kwargs = {"num_data": num_data}
    a_loss, a_grads = loss_and_grads(make_objective(pyro_name, vae, num_particles=k), x, 7,
                                     **kwargs)
    b_loss, b_grads = loss_and_grads(make_objective(torch_name, vae, num_particles=k), x, 7,
                                     **kwargs)
    assert_close(a_loss, b_loss, rtol=1e-5)
    assert a_grads.keys() == b_grads.keys()
    for name in a_grads:
        assert_close(a_grads[name], b_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_same_seed_means_same_samples_in_every_layer():
    """The premise of the test above: the guide and the baseline draw the same z_1 and z_2."""
    vae = make_hvae()
    x = data_for("bernoulli")
    pyro.set_rng_seed(3)
    guide = poutine.trace(vae.guide).get_trace(x)
    pyro.set_rng_seed(3)
    normal = torch.distributions.Normal
    z1 = normal(*vae.encoders[0](x)).rsample()
    z2 = normal(*vae.encoders[1](z1)).rsample()
    assert torch.equal(guide.nodes["z1"]["value"], z1)
    assert torch.equal(guide.nodes["z2"]["value"], z2)


def test_meanfield_takes_the_closed_form_kl_of_the_top_layer_only():
    vae = make_hvae(latent_dim=(4, 3, 2), hidden_sizes=((16,), (8,), (6,)))
    model, guide = traces(vae, data_for("bernoulli"))
    assert closed_form_kl_sites(model, guide) == {"z3"}
    assert vae.capabilities.closed_form_kl_sites == ("z3",)
    one = VAE(12, latent_dim=3, hidden_sizes=(8,))
    assert closed_form_kl_sites(*traces(one, data_for("bernoulli"))) == {"z"}
    assert one.capabilities.closed_form_kl_sites == ("z",)


def test_analytic_and_mc_differ_by_the_top_layers_kl_only():
    """analytic − mc = log q(z_L|·) − log p(z_L) − KL(q(z_L|·) ‖ N(0, I)) on the same draws."""
    vae = make_hvae()
    x = data_for("bernoulli", 6)
    g = torch.Generator()
    a = analytic_elbo(vae, x, generator=g.manual_seed(0))
    m = mc_elbo(vae, x, generator=g.manual_seed(0))
    g.manual_seed(0)
    loc1, scale1 = vae.encoders[0](x)
    z1 = loc1 + scale1 * torch.randn((1, *loc1.shape), generator=g)
    loc2, scale2 = vae.encoders[1](z1)
    z2 = loc2 + scale2 * torch.randn(loc2.shape, generator=g)
    normal = torch.distributions.Normal
    expected = (normal(loc2, scale2).log_prob(z2).sum(-1) - normal(0.0, 1.0).log_prob(z2).sum(-1)
                - gaussian_kl_to_standard_normal(loc2, scale2))[0]
    assert_close(a - m, expected, rtol=1e-5, atol=1e-5)


# --- training ---------------------------------------------------------------------------------

TINY = TrainConfig(preset="burda2", train_size=256, test_size=64, batch_size=64, epochs=2,
                   seed=1)


@pytest.fixture(scope="module")
def data():
    return load_data(TINY)


def quiet(*args, **kwargs):
    pass


def test_fit_trains_burda2_and_reports_the_test_elbo_of_the_trained_model(tmp_path, data):
    """The recorded test ELBO is the hand-written analytic ELBO (closed-form KL of the top
    layer, β = 1) of the trained model, one sample per test image from the documented seed;
    training raises it."""
    result = fit(dataclasses.replace(TINY, epochs=3), tmp_path, data=data, log=quiet)
    assert isinstance(result.vae, VAE) and result.vae.num_layers == 2
    history = result.history
    assert history[-1]["test_elbo"] > history[0]["test_elbo"]
    generator = torch.Generator().manual_seed(derive_seed(0, 0))  # one batch of 64 images
    with torch.no_grad():
        elbo = analytic_elbo(result.vae.eval(), data.test, generator=generator, beta=1.0)
    assert_close(history[-1]["test_elbo"], elbo.mean(), rtol=1e-6)


def test_an_interrupted_burda2_run_resumes_to_the_uninterrupted_numbers(tmp_path, data):
    config = dataclasses.replace(TINY, flow="iaf", lr_schedule="burda")
    whole = fit(config, tmp_path / "whole", data=data, log=quiet)
    fit(dataclasses.replace(config, epochs=1), tmp_path / "cut", data=data, log=quiet)
    resumed = fit(config, tmp_path / "cut", resume=True, data=data, log=quiet)
    assert [r["test_elbo"] for r in resumed.history] == [r["test_elbo"] for r in whole.history]
    for name, value in whole.vae.state_dict().items():
        assert torch.equal(resumed.vae.state_dict()[name], value), name


CLI_TINY = ["--train-size", "128", "--test-size", "64", "--batch-size", "64", "--quiet",
            "--no-plots"]


def test_cli_trains_burda2_with_a_flow_and_refuses_bad_combinations(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "burda2", "--flow", "iaf", "--flow-layers", "1",
                 "--epochs", "1", *CLI_TINY, "--out", str(run)]) == 0
    checkpoint = load_checkpoint(run)
    assert (checkpoint.config.preset, checkpoint.config.flow) == ("burda2", "iaf")
    assert checkpoint.config.flow_layers == 1
    capsys.readouterr()
    for args, message in (
        (["--preset", "burda2", "--estimator", "jit-meanfield"], "the jit-meanfield estimator "
         "cannot train a 2-layer VAE with a diagonal Gaussian guide: "),
        (["--preset", "burda2", "--latent-dim", "20"], "latent_dim and hidden_sizes"),
        (["--flow-layers", "3"], "flow_layers sets the number of transforms"),
    ):
        assert main(["train", *args, *CLI_TINY, "--out", str(tmp_path / "no")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "no").exists()
