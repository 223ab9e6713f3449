"""One trainer for every objective, in one process or data-parallel under ``torchrun``: one
:class:`torch.optim.Adam` over the VAE's parameters, stepping the objective's
``differentiable_loss``; for Pyro's ELBOs, step for step what :class:`pyro.infer.SVI` with
:class:`pyro.optim.Adam` (fused) computes (``docs/estimators.md``).

Data-parallel (a :class:`~pyro_vae.distributed.World` given), each rank back-propagates
``world_size`` × the loss of its :func:`~pyro_vae.distributed.shard` of the global minibatch
through :class:`~torch.nn.parallel.DistributedDataParallel`, whose average of the gradients is
then the global minibatch's, and draws step ``k``'s samples from ``(seed, k, rank)``. The
optimizer state, ``{"adam": torch Adam state dict, "steps": k}``, resumes in any number of
processes (``docs/distributed.md``).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro_vae import checks
from pyro_vae.distributed import World, collective_error, derive_seed, shard
from pyro_vae.errors import CheckpointError
from pyro_vae.objectives.base import Objective

__all__ = ["LossModule", "Trainer"]

_FUSED_DEVICES = ("cpu", "cuda")  # where torch has a fused Adam kernel


class LossModule(nn.Module):
    """``forward(x, scale)`` = ``scale`` × the objective's loss on ``x`` (nats, summed over
    the rows): the module that :class:`DistributedDataParallel` wraps, so that its backward
    pass all-reduces the gradient of every parameter of the VAE."""

    def __init__(self, objective):
        super().__init__()
        self.vae = objective.vae
        self.objective = objective

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        if x.shape[0] == 0:
            # no rows here: a zero loss that still reaches every parameter, for DDP's all-reduce
            return sum(p.sum() for p in self.parameters()) * 0.0
        return self.objective.scaled_loss(x, scale)


class Trainer:
    """Adam steps of ``objective`` (β = (0.9, 0.999), ε = 1e-8, as ``pyro.optim.Adam``), with
    torch's fused Adam kernel on CPU and CUDA: one pass over each parameter instead of about
    ten, which takes a quarter of a small model's step on a CPU (equal to
    ``pyro.optim.Adam({"lr": lr, "fused": True})``; to rounding, to the unfused update). A
    resumed run keeps the kernel it was saved with.

    :param objective: an :class:`~pyro_vae.objectives.Objective` (any registered estimator).
    :param world: train data-parallel in this process group.
    :param seed: with ``world``, seeds each step's samples from (seed, step, rank).
    """

    def __init__(self, objective, lr: float, *, world: World | None = None, seed: int = 0):
        checks.instance("objective", objective, Objective)
        lr = checks.number("lr", lr, low=0, open_low=True)
        self.objective, self.world, self.seed = objective, world, checks.seed("seed", seed)
        self.steps = 0
        params = list(objective.vae.parameters())
        fused = all(p.device.type in _FUSED_DEVICES for p in params) or None
        self.optim = torch.optim.Adam(params, lr=lr, fused=fused)
        self.module = LossModule(objective) if world is None else _ddp(objective, world)

    def step(self, x: torch.Tensor, *, num_data: int | None = None) -> float:
        """One step on the minibatch ``x`` ``(B, D)`` (data-parallel: the global minibatch, on
        every rank). Returns the loss, −bound summed over the B rows in nats (times
        ``num_data / B`` with ``num_data``), before any update if it is not finite."""
        self.optim.zero_grad(set_to_none=True)
        if self.world is None:
            loss = self.objective.differentiable_loss(x, num_data=num_data)
            total, backward = float(loss.detach()), loss
        else:
            total, backward = self._distributed_loss(x, num_data)
        self.steps += 1
        if not math.isfinite(total):
            return total
        if self.world is None:
            backward.backward()
        else:
            try:
                backward.backward()
            except dist.DistError as e:
                raise collective_error(self.world, "all-reducing the gradients", e) from None
        self.optim.step()
        return total

    def _distributed_loss(self, x, num_data):
        """(the global minibatch's loss, the tensor to back-propagate on this rank)."""
        world = self.world
        scale = 1.0 if num_data is None else num_data / x.shape[0]
        torch.manual_seed(derive_seed(self.seed, self.steps, world.rank))
        loss = self.module(shard(x, world), scale=scale)  # this shard's loss
        total = loss.detach().to(world.device, torch.float64).reshape(1)
        try:
            dist.all_reduce(total)
        except RuntimeError as e:
            raise collective_error(world, "summing the minibatch loss", e) from None
        # DDP averages the ranks' gradients: world_size × the local loss makes it the global one
        return float(total), loss * world.world_size

    def set_lr(self, lr: float) -> None:
        lr = checks.number("lr", lr, low=0, open_low=True)
        for group in self.optim.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        """``{"adam": torch Adam's state dict, "steps": steps taken}``."""
        return {"adam": self.optim.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; :class:`CheckpointError` if it does not fit
        this VAE's parameters."""
        params = [p for group in self.optim.param_groups for p in group["params"]]
        try:
            for index, moments in state["adam"]["state"].items():
                for name in ("exp_avg", "exp_avg_sq"):
                    if moments[name].shape != params[index].shape:
                        raise ValueError(f"{name} of parameter {index} has shape "
                                         f"{tuple(moments[name].shape)}, the parameter "
                                         f"{tuple(params[index].shape)}")
            self.optim.load_state_dict(state["adam"])
            self.steps = int(state["steps"])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"the optimizer state does not fit this model ({e})") from None


def _ddp(objective, world: World) -> DistributedDataParallel:
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    try:
        # the only buffers (a fixed Gaussian scale) never change after the initial broadcast
        return DistributedDataParallel(LossModule(objective), device_ids=device_ids,
                                       forward_sync_buffers=False,
                                       find_unused_parameters=False)
    except RuntimeError as e:
        raise collective_error(world, "wrapping the model in DistributedDataParallel",
                               e) from None
