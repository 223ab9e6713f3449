"""Hamiltonian Monte Carlo transitions (Neal 2011) vectorized over chains × datapoints, with one
step size per datapoint adapted by dual averaging: the Markov transitions of :mod:`.ais`.

A transition at inverse temperature β leaves f_β(u) = s_u(u) exp(β ℓ(u)) invariant
(:mod:`.targets`): fresh momenta, L leapfrog steps of Pyro's
:func:`~pyro.ops.integrator.velocity_verlet`, then a Metropolis–Hastings test per chain. The
chains are independent; they share tensor operations only, and one gradient of the summed
potential. Where the density gives ∇ log s_u in closed form (``closed_form_start``,
``start_grad``), a state also keeps
∇ℓ at its position, so that a transition at a new β starts from the last one's gradient
instead of evaluating it again: L gradient evaluations a transition instead of L + 1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from pyro.ops.dual_averaging import DualAveraging
from pyro.ops.integrator import velocity_verlet

__all__ = ["HMCState", "StepSizeAdapter", "hmc_transition", "initial_state"]


class HMCState(NamedTuple):
    """Where the chains are, and the two terms of log f_β there."""

    u: torch.Tensor  # (C, B, P) unconstrained position
    log_start: torch.Tensor  # (C, B) log s_u(u), nats
    log_ratio: torch.Tensor  # (C, B) ℓ(u) = log p(x, z) − log s(z), nats
    grad_ratio: torch.Tensor | None = None  # (C, B, P) ∇ℓ(u), where the density has start_grad


def initial_state(density, u: torch.Tensor) -> HMCState:
    """The state at ``u`` ``(C, B, P)``, with ∇ℓ(u) where the density has ``start_grad``
    (``closed_form_start``)."""
    if not density.closed_form_start:
        with torch.no_grad():
            return HMCState(u, *density.start_and_ratio(u))
    with torch.enable_grad():
        u_grad = u.detach().requires_grad_(True)
        log_start, log_ratio = density.start_and_ratio(u_grad)
        (grad_ratio,) = torch.autograd.grad(log_ratio.sum(), u_grad)
    return HMCState(u, log_start.detach(), log_ratio.detach(), grad_ratio)


class _Potential:
    """U(u) = −(log s_u(u) + β ℓ(u)) summed over chains and datapoints, for
    ``velocity_verlet``; ``last`` holds the per-chain terms of the latest evaluation."""

    def __init__(self, density, beta: float):
        self.density, self.beta = density, beta
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, z: dict) -> torch.Tensor:
        log_start, log_ratio = self.density.start_and_ratio(z["u"])
        self.last = (log_start.detach(), log_ratio.detach())
        return -(log_start + self.beta * log_ratio).sum()


def _kinetic_grad(r: dict) -> dict:
    return dict(r)  # K(r) = ½|r|², identity mass matrix


def _energy(log_start, log_ratio, r: torch.Tensor, beta: float) -> torch.Tensor:
    return -(log_start + beta * log_ratio) + 0.5 * r.pow(2).sum(-1)


def hmc_transition(density, state: HMCState, beta: float, step_size: torch.Tensor,
                   num_leapfrog: int, generator: torch.Generator | None = None
                   ) -> tuple[HMCState, torch.Tensor]:
    """One HMC transition leaving f_β invariant, with a step size per datapoint ``(B,)``: the
    new state and the acceptance probabilities ``(C, B)`` (0 where the proposal's energy is not
    finite). Draws from ``generator`` (default: torch's global one)."""
    u, log_start, log_ratio, grad_ratio = state
    r = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
    energy = _energy(log_start, log_ratio, r, beta)
    potential = _Potential(density, beta)
    # ∇U_β(u) = −(∇log s_u + β ∇ℓ) from the kept ∇ℓ: one gradient evaluation fewer
    start = None if grad_ratio is None else {"u": -(density.start_grad(u) + beta * grad_ratio)}
    with torch.enable_grad():
        z_new, r_new, grads, _ = velocity_verlet({"u": u}, {"u": r}, potential, _kinetic_grad,
                                                 step_size.to(u)[None, :, None], num_leapfrog,
                                                 z_grads=start)
    new_start, new_ratio = potential.last
    with torch.no_grad():
        delta = energy - _energy(new_start, new_ratio, r_new["u"], beta)
        accept_prob = torch.nan_to_num(delta.clamp(max=0.0).exp(), nan=0.0)
        accept = torch.rand(accept_prob.shape, generator=generator, dtype=accept_prob.dtype,
                            device=accept_prob.device) < accept_prob
        if grad_ratio is not None and beta > 0:  # ∇ℓ at the trajectory's end, from ∇U_β there
            new_grad = -(grads["u"] + density.start_grad(z_new["u"])) / beta
            grad_ratio = torch.where(accept[..., None], new_grad, grad_ratio)
        else:
            grad_ratio = None  # at β = 0 ∇U carries no ∇ℓ: the next transition evaluates it
        state = HMCState(torch.where(accept[..., None], z_new["u"], u),
                         torch.where(accept, new_start, log_start),
                         torch.where(accept, new_ratio, log_ratio), grad_ratio)
    return state, accept_prob


class StepSizeAdapter:
    """Step sizes ε ``(B,)``, one per datapoint, adapted after every transition towards
    ``target_accept`` by dual averaging on log ε (Hoffman & Gelman 2014) of the acceptance
    averaged over the datapoint's chains. The latest iterate is used, not the average: along
    an annealing path the target keeps moving."""

    def __init__(self, initial: torch.Tensor, target_accept: float):
        self.target_accept = target_accept
        self.step_size = initial
        # Pyro's NUTS centres the scheme on log(10 ε₀), which favours larger steps.
        self._scheme = DualAveraging(prox_center=torch.log(10 * initial))

    def update(self, accept_prob: torch.Tensor) -> None:
        """After a transition with these mean acceptance probabilities ``(B,)``."""
        self._scheme.step(self.target_accept - accept_prob)
        log_step, _ = self._scheme.get_state()
        self.step_size = log_step.clamp(math.log(1e-6), math.log(1e3)).exp()
