"""One registry of ELBO estimators, by name; the command line, the benchmarks and the tests
all take them from here, so a new estimator is one entry.

An :class:`Estimator` is bound to a VAE with :func:`make_objective`; the resulting
:class:`Objective` returns the **loss = −ELBO** (or −IWAE_K for ``iwae``) summed over the
minibatch in nats, on the same scale as :meth:`pyro.infer.SVI.step` (times num_data / B when
``num_data`` is given). Divide by the batch size for nats per datapoint.

=================  ==================================================================
``trace``          :class:`pyro.infer.Trace_ELBO`: E_q[log p(x,z) − log q(z|x)], MC
``meanfield``      :class:`pyro.infer.TraceMeanField_ELBO`: E_q[log p(x|z)] − KL, KL exact
                   (:class:`TraceMeanField_ELBO` here: the same numbers, less work per step)
``jit-trace``      :class:`pyro.infer.JitTrace_ELBO`
``jit-meanfield``  :class:`pyro.infer.JitTraceMeanField_ELBO`, compiled once (see below)
``iwae``           :class:`pyro.infer.RenyiELBO` (α = 0): IWAE_K bound, K vectorized particles
``analytic``       hand-written PyTorch, Kingma & Welling (2014) eq. 10, closed-form KL
``mc``             hand-written PyTorch, −[log p(x,z) − log q(z|x)] on reparameterized samples
``stl``            sticking the landing (Roeder et al. 2017): ``trace``'s loss, no score term
``dreg``           doubly reparameterized IWAE_K gradient (Tucker et al. 2019)
=================  ==================================================================
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.infer
import pyro.optim
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyro_vae import losses
from pyro_vae.errors import ConfigError

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "Objective",
    "PyroObjective",
    "TorchObjective",
    "TraceMeanField_ELBO",
    "get_estimator",
    "make_objective",
    "register",
]


class Objective(abc.ABC):
    """An estimator bound to one VAE (see the module docstring for the loss's scale)."""

    name: str
    num_particles: int
    uses_pyro: bool

    @abc.abstractmethod
    def differentiable_loss(self, x, context=None, *, num_data=None) -> torch.Tensor:
        """The loss as a differentiable scalar tensor (nats, summed over the minibatch)."""

    def loss(self, x, context=None, *, num_data=None) -> float:
        """The loss as a float, without gradients."""
        with torch.no_grad():
            return float(self.differentiable_loss(x, context, num_data=num_data))

    @abc.abstractmethod
    def make_trainer(self, lr: float):
        """An optimizer-carrying stepper: Pyro's SVI for Pyro estimators, torch Adam else."""


class IWAE_ELBO(pyro.infer.RenyiELBO):
    """:class:`pyro.infer.RenyiELBO` at α = 0 (the IWAE_K bound of Burda et al. 2016, one
    log-mean-exp per datapoint over K particles), with a ``differentiable_loss`` that Pyro's
    class lacks. Its gradient is the IWAE gradient Σ_k w̃_k ∇ log w_k for reparameterized
    guides, the same as the surrogate in ``RenyiELBO.loss_and_grads``."""

    def __init__(self, num_particles: int = 5, max_plate_nesting: int = 1):
        super().__init__(
            alpha=0.0,
            num_particles=num_particles,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=max_plate_nesting,
        )

    def log_weights(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """log p(x, z_k) − log q(z_k|x) per particle and datapoint: ``(K, B)`` nats."""
        per_particle = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = pyro.infer.util.get_dependent_plate_dims(model_trace.nodes.values())
            log_w = 0.0
            for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        log_w = log_w + sign * pyro.infer.util.torch_sum(
                            site["log_prob"], sum_dims
                        )
            per_particle.append(log_w)
        if self.vectorize_particles and self.num_particles > 1:
            return per_particle[0]
        return torch.stack(per_particle)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        log_w = self.log_weights(model, guide, *args, **kwargs)
        return -(torch.logsumexp(log_w, 0) - math.log(self.num_particles)).sum()


def _is_observed(name, site) -> bool:
    return site["is_observed"]


class TraceMeanField_ELBO(pyro.infer.TraceMeanField_ELBO):
    """:class:`pyro.infer.TraceMeanField_ELBO` without the log-densities it computes and never
    uses: the same loss and gradients, bit for bit, 0.1–0.3 ms less per step at batch 32–256
    and 0.3–0.8 ms at 512–1024 on the 784-400-50 network, one CPU thread
    (``benchmarks/README.md``).

    Pyro's class builds its traces with :func:`pyro.infer.enum.get_importance_trace`, which
    evaluates log p(z) at every latent site of the model and log q(z|x) at every site of the
    guide; where a closed-form KL(q ‖ p) exists (the VAE's Gaussian z) the estimator uses the
    KL instead and drops both. This class evaluates only the observed sites' log-densities up
    front. A latent site without a registered KL, or an auxiliary guide site, needs the
    others: then they are computed and Pyro's estimator runs again on the complete traces.

    With validation enabled (:func:`pyro.enable_validation`) it is Pyro's class unchanged,
    so that every check of :func:`get_importance_trace` runs.
    """

    def _get_trace(self, model, guide, args, kwargs):
        if pyro.infer.util.is_validation_enabled() or isinstance(
            poutine.unwrap(guide), poutine.messenger.Messenger
        ):
            return super()._get_trace(model, guide, args, kwargs)
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(model, trace=guide_trace), graph_type="flat"
        ).get_trace(*args, **kwargs)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob(_is_observed)
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        try:
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        except KeyError:  # a site that needs the log-densities skipped in _get_trace
            model_trace.compute_log_prob()
            guide_trace.compute_score_parts()
            return super()._differentiable_loss_particle(model_trace, guide_trace)


class JitTrace_ELBO(pyro.infer.JitTrace_ELBO):
    """:class:`pyro.infer.JitTrace_ELBO` with a corrected ``differentiable_loss``.

    .. warning:: In pyro-ppl 1.9.2, ``JitTrace_ELBO.differentiable_loss`` returns
       ``loss + (surrogate − surrogate.detach())`` without detaching ``loss``, so for
       reparameterized sites the gradient counts the pathwise term twice (measured here: the
       encoder's gradient is exactly 2× that of ``Trace_ELBO``). ``loss_and_grads``, which
       SVI uses, is correct; this class detaches ``loss`` so both agree with ``Trace_ELBO``.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())


class JitTraceMeanField_ELBO(pyro.infer.JitTraceMeanField_ELBO):
    """:class:`pyro.infer.JitTraceMeanField_ELBO` that compiles once per distinct keyword
    arguments, as documented, instead of at every call.

    .. warning:: In pyro-ppl 1.9.2, ``JitTraceMeanField_ELBO.differentiable_loss`` (which its
       ``loss_and_grads``, hence ``SVI.step``, calls) tests ``self._loss_and_surrogate_loss``
       for its cache but stores the compiled function in ``self._differentiable_loss``, so it
       builds a new :func:`pyro.ops.jit.trace` and re-runs :func:`torch.jit.trace` at every
       step (measured here: 2.3–4.8× the step time of the hand-written loss, against
       1.00–1.10× compiled once; ``benchmarks/README.md``). This class keeps the compiled
       function, which computes what Pyro's does; Pyro's, tracing anew, also draws every
       step's random numbers twice (once while tracing), so the two follow different
       sample paths from the same seed.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if getattr(self, "_differentiable_loss", None) is None:
            # Pyro's method builds the compiled function and stores it: call it once.
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        return self._differentiable_loss(*args, **kwargs)


class PyroObjective(Objective):
    """A Pyro ELBO with the VAE's model and guide; trained with :class:`pyro.infer.SVI`.

    For JIT-compiled ELBOs the minibatch size and β travel as a keyword argument, because
    Pyro caches one compiled trace per distinct keyword arguments: a last minibatch of
    another size, or a new β from a warm-up schedule, then compiles its own trace.
    """

    uses_pyro = True

    def __init__(self, name: str, vae, elbo, *, jit: bool = False):
        self.name, self.vae, self.elbo, self.jit = name, vae, elbo, jit
        self.num_particles = elbo.num_particles
        if jit:

            def model(*args, _static=None, **kwargs):
                return vae.model(*args, **kwargs)

            def guide(*args, _static=None, **kwargs):
                return vae.guide(*args, **kwargs)

            self.model, self.guide = model, guide
        else:
            self.model, self.guide = vae.model, vae.guide

    def arguments(self, x, context=None, num_data=None):
        """``(args, kwargs)`` for the ELBO's and SVI's calls."""
        args = (x,) if context is None else (x, context)
        kwargs = {} if num_data is None else {"num_data": int(num_data)}
        if self.jit:
            kwargs["_static"] = (x.shape[0], self.vae.beta)
        return args, kwargs

    def differentiable_loss(self, x, context=None, *, num_data=None) -> torch.Tensor:
        args, kwargs = self.arguments(x, context, num_data)
        return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)

    def loss(self, x, context=None, *, num_data=None) -> float:
        args, kwargs = self.arguments(x, context, num_data)
        with torch.no_grad():
            return float(self.elbo.loss(self.model, self.guide, *args, **kwargs))

    def make_trainer(self, lr: float):
        return SVITrainer(self, lr)


class TorchObjective(Objective):
    """A hand-written plain-PyTorch loss from :mod:`pyro_vae.losses`; trained with torch Adam."""

    uses_pyro = False

    def __init__(self, name: str, vae, loss_fn: Callable, num_particles: int = 1):
        self.name, self.vae, self.loss_fn, self.num_particles = name, vae, loss_fn, num_particles

    def differentiable_loss(self, x, context=None, *, num_data=None) -> torch.Tensor:
        return self.loss_fn(
            self.vae, x, context, num_particles=self.num_particles, num_data=num_data
        )

    def make_trainer(self, lr: float):
        return TorchTrainer(self, lr)


class JointAdam(pyro.optim.PyroOptim):
    """:class:`pyro.optim.Adam` with one :class:`torch.optim.Adam` for all parameters.

    ``pyro.optim.Adam`` builds one torch Adam per parameter and calls each one's ``step``,
    and ``SVI.step`` then replaces every gradient by a new tensor of zeros: 0.4–0.8 ms per
    step on the 784-400-50 network (``benchmarks/README.md``). This optimizer steps every
    parameter in one ``step`` call and, instead of zeroing the gradients, drops them
    (``grad = None``), so the next backward pass writes them rather than adding to zeros.

    The numbers are the same as ``pyro.optim.Adam``'s with the same arguments: Adam updates
    each parameter independently (torch picks the same single-tensor or foreach kernel for
    one parameter as for many); a parameter that Pyro would step with a zero gradient (in the
    trace, but reached by no gradient) gets a zero gradient here too, and one outside this
    step's trace is left alone. :meth:`get_state` and :meth:`set_state` read and write Pyro's
    format, ``{param name: torch Adam state_dict of that one parameter}``, so checkpoints move
    freely between the two optimizers; a state is applied when its parameter is first
    stepped, as in Pyro, with the hyperparameters saved in it.

    .. warning:: Between steps the gradients are ``None`` where ``pyro.optim.Adam`` leaves
       zeros. Only ``optim_args`` as a dict is supported (no per-parameter callable, no
       gradient clipping).
    """

    def __init__(self, optim_args: dict):
        if not isinstance(optim_args, dict):
            raise ConfigError("JointAdam takes its Adam arguments as a dict")
        super().__init__(torch.optim.Adam, optim_args)
        self.optimizer: torch.optim.Adam | None = None
        # Parameters whose gradient SVI.step would have replaced by zeros after a step: in
        # Pyro they keep a (zero) gradient, and so take part in every later step.
        self._zero_before_step: list[torch.Tensor] = []
        self._zero_set: set[torch.Tensor] = set()

    def __call__(self, params, *args, **kwargs) -> None:
        """One Adam step of ``params`` (the unconstrained tensors of one SVI trace)."""
        params = list(params)
        new = [p for p in params if p not in self.optim_objs]
        if new:
            self._add(new)
        if self.optimizer is None:
            return  # no parameter in the trace yet
        in_step = set(params)
        held_back = [p for p in self.optim_objs if p.grad is not None and p not in in_step]
        held_grads = [p.grad for p in held_back]
        for p in held_back:
            p.grad = None
        for p in self._zero_before_step:
            if p.grad is None and p in in_step:
                p.grad = torch.zeros_like(p)
        self.optimizer.step(*args, **kwargs)
        for p in params:
            if p.grad is not None:
                p.grad = None
                if p not in self._zero_set:
                    self._zero_set.add(p)
                    self._zero_before_step.append(p)
        for p, grad in zip(held_back, held_grads, strict=True):
            p.grad = grad

    def _add(self, params: list) -> None:
        """Put new parameters under the joint optimizer, each with the hyperparameters and
        moments of a state waiting in :meth:`set_state` (read through a one-parameter torch
        Adam, which casts them to the parameter's device and dtype as Pyro's would)."""
        store = pyro.get_param_store()
        groups: dict[tuple, list] = {}
        states = {}
        for p in sorted(params, key=store.param_name):
            saved = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
            one = torch.optim.Adam([p], **self.pt_optim_args)
            if saved is not None:
                one.load_state_dict(saved)
                if p in one.state:
                    states[p] = one.state[p]
            hyper = {k: v for k, v in one.param_groups[0].items() if k != "params"}
            groups.setdefault(tuple(sorted(hyper.items(), key=lambda kv: kv[0])), []).append(p)
        for hyper, members in groups.items():
            group = {"params": members, **dict(hyper)}
            if self.optimizer is None:
                self.optimizer = torch.optim.Adam([group], **self.pt_optim_args)
            else:
                self.optimizer.add_param_group(group)
        for p in params:
            self.optim_objs[p] = self.optimizer
            self.grad_clip[p] = None
        self.optimizer.state.update(states)

    def get_state(self) -> dict:
        """``{param name: one-parameter torch Adam state_dict}``, as ``pyro.optim.Adam``."""
        if self.optimizer is None:
            return {}
        store = pyro.get_param_store()
        state = {}
        for group in self.optimizer.param_groups:
            hyper = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                state[store.param_name(p)] = {
                    "state": {0: self.optimizer.state[p]} if p in self.optimizer.state else {},
                    "param_groups": [{**hyper, "params": [0]}],
                }
        return state

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter, now and for those added later."""
        self.pt_optim_args["lr"] = lr
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr


class SVITrainer:
    """:class:`pyro.infer.SVI` with Adam over the VAE's parameters.

    :param optim: the Pyro optimizer; default :class:`JointAdam` ``({"lr": lr})``, which
        computes what ``pyro.optim.Adam({"lr": lr})`` does with less overhead per step.
    """

    def __init__(self, objective: PyroObjective, lr: float, *, optim=None):
        self.objective = objective
        self.optim = JointAdam({"lr": lr}) if optim is None else optim
        self.svi = pyro.infer.SVI(objective.model, objective.guide, self.optim, objective.elbo)

    def step(self, x, context=None, *, num_data=None) -> float:
        """One SVI step; returns the loss (−ELBO, nats summed over the minibatch)."""
        args, kwargs = self.objective.arguments(x, context, num_data)
        return self.svi.step(*args, **kwargs)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate now, for parameters added later, and in saved states not yet
        applied: Pyro restores a loaded state lazily, at each parameter's first step, which
        would otherwise bring back the learning rate the state was saved with."""
        self.optim.pt_optim_args["lr"] = lr
        for opt in set(self.optim.optim_objs.values()):
            for group in opt.param_groups:
                group["lr"] = lr
        for state in self.optim._state_waiting_to_be_consumed.values():
            for group in state.get("param_groups", []):
                group["lr"] = lr

    def state_dict(self) -> dict:
        return self.optim.get_state()

    def load_state_dict(self, state: dict) -> None:
        self.optim.set_state(state)


class TorchTrainer:
    """:class:`torch.optim.Adam` over the VAE's parameters and a hand-written loss."""

    def __init__(self, objective: TorchObjective, lr: float):
        self.objective = objective
        self.optim = torch.optim.Adam(objective.vae.parameters(), lr=lr)

    def step(self, x, context=None, *, num_data=None) -> float:
        self.optim.zero_grad(set_to_none=True)
        loss = self.objective.differentiable_loss(x, context, num_data=num_data)
        loss.backward()
        self.optim.step()
        return loss.detach().item()

    def set_lr(self, lr: float) -> None:
        for group in self.optim.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state)


@dataclass(frozen=True)
class Estimator:
    """A named estimator: ``build(vae, num_particles)`` returns its :class:`Objective`."""

    name: str
    summary: str
    bound: str  # "ELBO" or "IWAE_K": what −loss estimates (a lower bound on log p(x))
    uses_pyro: bool
    build: Callable[..., Objective]
    default_num_particles: int = 1


ESTIMATORS: dict[str, Estimator] = {}


def register(estimator: Estimator) -> Estimator:
    """Add ``estimator`` to :data:`ESTIMATORS` (its name must be new)."""
    if estimator.name in ESTIMATORS:
        raise ValueError(f"estimator {estimator.name!r} is already registered")
    ESTIMATORS[estimator.name] = estimator
    return estimator


def get_estimator(name: str) -> Estimator:
    """The registered estimator ``name``; a :class:`ConfigError` lists the known ones."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown estimator {name!r}; known estimators: {', '.join(ESTIMATORS)}"
        ) from None


def make_objective(name: str, vae, *, num_particles: int | None = None) -> Objective:
    """Bind estimator ``name`` to ``vae`` with ``num_particles`` samples per datapoint
    (default: the estimator's own, 1 for the ELBOs and 5 for ``iwae``)."""
    estimator = get_estimator(name)
    k = estimator.default_num_particles if num_particles is None else num_particles
    if not isinstance(k, int) or k <= 0:
        raise ConfigError(f"num_particles must be a positive integer, got {k!r}")
    return estimator.build(vae, k)


def _pyro_elbo(name, elbo_class, *, jit=False):
    def build(vae, k):
        kwargs = dict(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)
        if jit:
            kwargs["ignore_jit_warnings"] = True
        return PyroObjective(name, vae, elbo_class(**kwargs), jit=jit)

    return build


register(Estimator(
    "trace", "Pyro Trace_ELBO: Monte Carlo E_q[log p(x,z) - log q(z|x)]", "ELBO", True,
    _pyro_elbo("trace", pyro.infer.Trace_ELBO),
))
register(Estimator(
    "meanfield", "Pyro TraceMeanField_ELBO: E_q[log p(x|z)] - KL(q||p(z)), KL in closed form",
    "ELBO", True, _pyro_elbo("meanfield", TraceMeanField_ELBO),
))
register(Estimator(
    "jit-trace", "Pyro JitTrace_ELBO (torch.jit-compiled trace)", "ELBO", True,
    _pyro_elbo("jit-trace", JitTrace_ELBO, jit=True),
))
register(Estimator(
    "jit-meanfield", "Pyro JitTraceMeanField_ELBO (torch.jit-compiled meanfield)", "ELBO", True,
    _pyro_elbo("jit-meanfield", JitTraceMeanField_ELBO, jit=True),
))
register(Estimator(
    "iwae", "Pyro RenyiELBO(alpha=0): IWAE_K bound with K vectorized particles", "IWAE_K", True,
    lambda vae, k: PyroObjective("iwae", vae, IWAE_ELBO(num_particles=k)),
    default_num_particles=5,
))
register(Estimator(
    "analytic", "hand-written PyTorch: -E_q[log p(x|z)] + closed-form Gaussian KL", "ELBO",
    False, lambda vae, k: TorchObjective("analytic", vae, losses.analytic_loss, k),
))
register(Estimator(
    "mc", "hand-written PyTorch: -[log p(x,z) - log q(z|x)] on reparameterized samples",
    "ELBO", False, lambda vae, k: TorchObjective("mc", vae, losses.mc_loss, k),
))

# Lower-variance gradients; pyro_vae/variance_reduced.py builds on IWAE_ELBO above.
from pyro_vae.variance_reduced import STL_ELBO, DReG_ELBO  # noqa: E402

register(Estimator(
    "stl", "sticking the landing (Roeder et al. 2017): Trace_ELBO without q's score term",
    "ELBO", True, _pyro_elbo("stl", STL_ELBO),
))
register(Estimator(
    "dreg", "doubly reparameterized IWAE_K gradient (Tucker et al. 2019), K vectorized particles",
    "IWAE_K", True, lambda vae, k: PyroObjective("dreg", vae, DReG_ELBO(num_particles=k)),
    default_num_particles=5,
))
