"""Pyro's JIT-compiled ELBOs, each a thin subclass with the fix (in its warning) that makes it
usable as a differentiable loss."""

from __future__ import annotations

import pyro.infer

__all__ = ["CompiledMeanField_ELBO", "CompiledTrace_ELBO"]


class CompiledTrace_ELBO(pyro.infer.JitTrace_ELBO):
    """:class:`pyro.infer.JitTrace_ELBO` with a corrected ``differentiable_loss``.

    .. warning:: In pyro-ppl 1.9.2, ``JitTrace_ELBO.differentiable_loss`` does not detach
       ``loss`` from ``loss + (surrogate − surrogate.detach())``, so it counts the pathwise
       gradient twice (``loss_and_grads`` is right); this class detaches it.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())


class CompiledMeanField_ELBO(pyro.infer.JitTraceMeanField_ELBO):
    """:class:`pyro.infer.JitTraceMeanField_ELBO` that compiles once per distinct keyword
    arguments, as documented, instead of at every call.

    .. warning:: In pyro-ppl 1.9.2, ``JitTraceMeanField_ELBO.differentiable_loss`` looks for
       its cached function under one attribute and stores it under another, so it re-runs
       :func:`torch.jit.trace` at every step; this class keeps the compiled function.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if getattr(self, "_differentiable_loss", None) is None:
            # Pyro's method builds the compiled function and stores it: call it once.
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        return self._differentiable_loss(*args, **kwargs)
