"""The test ELBO that training reports, in nats per datapoint: a lower bound on log p(x), from
one sample of q(z|x) per datapoint drawn with a fixed seed, so that every run and estimator
evaluated on the same data gets the same figure; and the ELBO's two terms.

A layered model (every built-in VAE) uses its own log-densities, with the top layer's KL in
closed form where it is the ELBO's term (a Gaussian guide); a model of one's own uses
log p(x, z) − log q(z|x) at one draw of its Pyro traces.
"""

from __future__ import annotations

import torch
from pyro import poutine
from torch.distributions import Normal, kl_divergence

from pyro_vae import checks
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.program import (
    as_program,
    evaluable,
    inspect_program,
    log_density,
    particles,
    sample_sites,
    site_log_prob,
)
from pyro_vae.evaluation.runner import Execution, as_data, run_blocks, slice_data, split_data
from pyro_vae.models.interface import check_model

__all__ = ["elbo_per_datapoint", "elbo_terms", "mean_elbo"]


def elbo_per_datapoint(model, x: torch.Tensor, context=None, *, generator=None) -> torch.Tensor:
    """The ELBO of each datapoint ``(B,)`` nats at one draw of the layered ``model``'s guide
    (from ``generator``), with the top layer's KL in closed form where it is the ELBO's term;
    without the KL weight β."""
    check_model(model, "elbo_per_datapoint", layered=True).check_data(x, where="x")
    return _elbo_per_datapoint(model, x, context, generator)


def _elbo_per_datapoint(model, x, context, generator) -> torch.Tensor:
    """:func:`elbo_per_datapoint` of data already checked (a block of :func:`mean_elbo`)."""
    path = model.guide_path(x, context, num_samples=1, generator=generator)
    log_prior = model.log_prior(path.zs, context)
    elbo = model.log_likelihood(x, path.zs[0], context)
    for log_p, log_q in zip(log_prior[:-1], path.log_q[:-1], strict=True):
        elbo = elbo + (log_p - log_q)
    if model.capabilities.closed_form_kl_sites:  # the top layer's: a Gaussian guide
        q = Normal(path.locs[-1], path.scales[-1], validate_args=False)
        prior = Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale), validate_args=False)
        elbo = elbo - kl_divergence(q, prior).sum(-1)
    else:
        elbo = elbo + log_prior[-1] - path.log_q[-1] + path.log_det
    return elbo.mean(0)


@torch.no_grad()
def mean_elbo(model, data, *, execution: Execution = Execution(block_size=1000)) -> float:
    """The mean test ELBO over ``data`` (``x``, or ``(x, context)``), nats per datapoint; block
    ``i`` draws from ``derive_seed(execution.seed, i)``, whatever the number of processes."""
    data = as_data(data, model)
    execution = checks.validated("execution", execution, Execution)
    block = execution.block_size or 1000
    if evaluable(model).capabilities.layered:

        def compute(xb: tuple, generator, bar) -> dict:
            x, context = split_data(model, xb)
            return {"elbo": _elbo_per_datapoint(model, x, context, generator)}

    else:
        program = as_program(model)

        def compute(xb: tuple, generator, bar) -> dict:
            return {"elbo": _sampled_elbo(program, xb)}

    out = run_blocks(compute, data, {"elbo": 0}, execution, block=block,
                     label="test ELBO", threaded=model.capabilities.layered)
    return float(out["elbo"].sum()) / data[0].shape[0]


@torch.no_grad()
def elbo_terms(model, data, *, num_samples: int = 100,
               execution: Execution = Execution()) -> dict[str, torch.Tensor]:
    """The two terms of ELBO(x) = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), ``(N,)`` nats each:
    ``expected_loglik`` over ``num_samples`` draws of the guide, ``kl_to_prior`` (closed form
    for one layer with a Gaussian guide, else over the same draws), and ``elbo``."""
    data = as_data(data, model)
    num_samples = checks.integer("num_samples", num_samples)
    execution = checks.validated("execution", execution, Execution)
    if evaluable(model).capabilities.layered:

        def compute(xb: tuple, generator, bar) -> dict:
            x, context = split_data(model, xb)
            path = model.guide_path(x, context, num_samples=num_samples, generator=generator)
            loglik = model.log_likelihood(x, path.zs[0], context).mean(0)
            closed = model.capabilities.closed_form_kl_sites and len(path.zs) == 1
            if closed:
                q = Normal(path.locs[0], path.scales[0], validate_args=False)
                kl = kl_divergence(q, Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale),
                                             validate_args=False)).sum(-1)
            else:
                kl = (sum(path.log_q) - path.log_det - sum(model.log_prior(path.zs, context))
                      ).mean(0)
            return {"expected_loglik": loglik, "kl_to_prior": kl}

    else:
        program = as_program(model)
        info = inspect_program(program.model, program.guide, slice_data(data, 0, 1),
                               data_plate=program.data_plate)

        def compute(xb: tuple, generator, bar) -> dict:
            loglik, kl = _sampled_terms(program, xb, num_samples, info)
            return {"expected_loglik": loglik.mean(0), "kl_to_prior": kl.mean(0)}

    out = run_blocks(compute, data, {"expected_loglik": 0, "kl_to_prior": 0}, execution,
                     block=execution.block_size or 128, label="the ELBO's terms",
                     threaded=model.capabilities.layered)
    return {**out, "elbo": out["expected_loglik"] - out["kl_to_prior"]}


def _sampled_terms(program, data: tuple, num: int, info) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x|z), log q(z|x) − log p(z)) ``(num, B)`` at ``num`` vectorized draws of the
    guide; a program that enumerates a discrete latent has no such split."""
    if info.discrete_sites:
        raise ConfigError("the ELBO's two terms of a program with a discrete latent summed out "
                          f"({', '.join(info.discrete_sites)}) are not defined apart")
    guide_trace = poutine.trace(particles(program.guide, num, info)).get_trace(*data)
    model_trace = poutine.trace(poutine.replay(particles(program.model, num, info),
                                               trace=guide_trace)).get_trace(*data)
    shape = (num, data[0].shape[0])
    model_sites = sample_sites(model_trace)
    loglik = log_density([site_log_prob(s, info) for s in model_sites if s["is_observed"]],
                         shape)
    kl = log_density([site_log_prob(s, info) for s in sample_sites(guide_trace)]
                     + [-site_log_prob(s, info) for s in model_sites if not s["is_observed"]],
                     shape)
    return loglik, kl


def _sampled_elbo(program, data: tuple) -> torch.Tensor:
    """log p(x, z) − log q(z|x) ``(B,)`` at one z ~ q(z|x) (global generator), without β."""
    guide_trace = poutine.trace(program.guide).get_trace(*data)
    model_trace = poutine.trace(poutine.replay(program.model, trace=guide_trace)).get_trace(*data)
    log_w = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w + sign * site["fn"].log_prob(site["value"])
    return log_w
