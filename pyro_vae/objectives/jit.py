"""Pyro's JIT-compiled ELBOs, each with the fix that makes it usable as a differentiable loss.

Both are thin subclasses of Pyro's classes; what each fixes is in its warning (found while
testing pyro-ppl 1.9.2, and measured in ``benchmarks/README.md``).
"""

from __future__ import annotations

import pyro.infer

__all__ = ["CompiledMeanField_ELBO", "CompiledTrace_ELBO"]


class CompiledTrace_ELBO(pyro.infer.JitTrace_ELBO):
    """:class:`pyro.infer.JitTrace_ELBO` with a corrected ``differentiable_loss``.

    .. warning:: In pyro-ppl 1.9.2, ``JitTrace_ELBO.differentiable_loss`` returns
       ``loss + (surrogate − surrogate.detach())`` without detaching ``loss``, so for
       reparameterized sites the gradient counts the pathwise term twice (the encoder's
       gradient is exactly 2× that of ``Trace_ELBO``). ``loss_and_grads``, which SVI uses, is
       correct; this class detaches ``loss`` so both agree with ``Trace_ELBO``.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())


class CompiledMeanField_ELBO(pyro.infer.JitTraceMeanField_ELBO):
    """:class:`pyro.infer.JitTraceMeanField_ELBO` that compiles once per distinct keyword
    arguments, as documented, instead of at every call.

    .. warning:: In pyro-ppl 1.9.2, ``JitTraceMeanField_ELBO.differentiable_loss`` (which its
       ``loss_and_grads``, hence ``SVI.step``, calls) tests ``self._loss_and_surrogate_loss``
       for its cache but stores the compiled function in ``self._differentiable_loss``, so it
       builds a new :func:`pyro.ops.jit.trace` and re-runs :func:`torch.jit.trace` at every
       step. This class keeps the compiled function, which computes what Pyro's does; Pyro's,
       tracing anew, also draws every step's random numbers twice (once while tracing), so
       the two follow different sample paths from the same seed.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if getattr(self, "_differentiable_loss", None) is None:
            # Pyro's method builds the compiled function and stores it: call it once.
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        return self._differentiable_loss(*args, **kwargs)
