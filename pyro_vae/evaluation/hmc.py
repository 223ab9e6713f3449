"""Hamiltonian Monte Carlo transitions vectorized over chains × datapoints, with one step size
per datapoint adapted by dual averaging: the Markov transitions of AIS (:mod:`.ais`).

A transition at inverse temperature β leaves f_β(u) = s_u(u) exp(β ℓ(u)) invariant
(:mod:`.targets`; Neal 2011, "MCMC using Hamiltonian dynamics"): fresh momenta r ~ N(0, I),
L leapfrog steps of Pyro's :func:`~pyro.ops.integrator.velocity_verlet` on the potential
U(u) = −log f_β(u), then a Metropolis–Hastings accept/reject, chain by chain, on the energy
H = U + ½|r|². Every chain of every datapoint is an independent Markov chain; they share the
tensor operations only. A proposal whose energy is not finite is rejected.

The gradient of U is taken of the sum over chains and datapoints, which is the gradient of
each chain's own U since the chains do not interact. ``velocity_verlet`` returns the total
energy only, so the potential keeps the per-chain values of its last evaluation.
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


@torch.no_grad()
def initial_state(density, u: torch.Tensor) -> HMCState:
    """The state at ``u`` ``(C, B, P)``."""
    log_start, log_ratio = density.start_and_ratio(u)
    return HMCState(u, log_start, log_ratio)


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
                   num_leapfrog: int) -> tuple[HMCState, torch.Tensor]:
    """One HMC transition leaving f_β invariant, with the step size ``step_size`` ``(B,)`` of
    each datapoint; returns the new state and the acceptance probabilities
    min(1, exp(H_0 − H_L)) ``(C, B)`` (0 where the proposal's energy is not finite). Draws
    from torch's global generator."""
    u, log_start, log_ratio = state
    r = torch.randn_like(u)
    energy = _energy(log_start, log_ratio, r, beta)
    potential = _Potential(density, beta)
    with torch.enable_grad():
        z_new, r_new, _, _ = velocity_verlet({"u": u}, {"u": r}, potential, _kinetic_grad,
                                             step_size.to(u)[None, :, None], num_leapfrog)
    new_start, new_ratio = potential.last
    with torch.no_grad():
        delta = energy - _energy(new_start, new_ratio, r_new["u"], beta)
        accept_prob = torch.nan_to_num(delta.clamp(max=0.0).exp(), nan=0.0)
        accept = torch.rand_like(accept_prob) < accept_prob
        state = HMCState(torch.where(accept[..., None], z_new["u"], u),
                         torch.where(accept, new_start, log_start),
                         torch.where(accept, new_ratio, log_ratio))
    return state, accept_prob


class StepSizeAdapter:
    """Step sizes ε ``(B,)``, one per datapoint, adapted after every transition towards a
    target mean acceptance probability by dual averaging on log ε (Nesterov 2009; Hoffman &
    Gelman 2014, section 3.2), with Pyro's :class:`~pyro.ops.dual_averaging.DualAveraging`
    running elementwise on ``(B,)`` tensors. The statistic is target − the acceptance
    probability averaged over the datapoint's chains. The latest iterate is used, not the
    running average that NUTS keeps after warm-up: along an annealing path the target keeps
    moving, and the step size has to follow it.

    :param initial: the first step size of every datapoint ``(B,)``.
    :param target_accept: the acceptance probability aimed at (0.65 in Wu et al. 2017).
    """

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
