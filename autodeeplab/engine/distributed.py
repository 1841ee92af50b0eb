"""Multi-process helpers: process group set-up and BatchNorm over the global batch.

PyTorch's :class:`torch.nn.SyncBatchNorm` only runs on accelerators. :class:`SyncBatchNorm2d`
computes the same statistics with differentiable ``all_reduce`` calls, so it also works on CPU
with the gloo backend (and is what :func:`convert_sync_batchnorm` uses there); on CUDA the
fused PyTorch module is used.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(on_cuda: bool) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE > 1``); True if this call
    created it (the caller then destroys it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
        return True
    return False


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def differentiable_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """``all_reduce`` (sum) that gradients flow through."""
    return _AllReduceSum.apply(tensor)


def _syncing() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GlobalBatchNorm:
    """Training statistics of the global batch of all processes, for images or volumes.

    Mean and variance are two-pass (mean first, then the mean squared deviation), each summed
    over processes with a differentiable ``all_reduce``, so gradients flow through the global
    statistics exactly as in single-process BatchNorm on the concatenated batch. Outside a
    multi-process group, and in eval mode, it is the plain BatchNorm it is mixed into.
    """

    spatial_dims: int

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _syncing()):
            return super().forward(x)  # type: ignore[misc]
        if x.ndim != 2 + self.spatial_dims:
            layout = "(N, C, H, W)" if self.spatial_dims == 2 else "(N, C, D, H, W)"
            raise ValueError(
                f"expected {2 + self.spatial_dims}D input {layout}, got {tuple(x.shape)}"
            )
        c = x.shape[1]
        dims = (0, *range(2, x.ndim))  # every axis but the channels
        shape = (1, c) + (1,) * self.spatial_dims
        count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
        sums = differentiable_all_reduce(torch.cat([x.sum(dim=dims), count]))  # (C + 1,)
        n = sums[-1].detach()
        if float(n) < 2:
            raise ValueError(
                "BatchNorm needs more than one value per channel over the global batch, got "
                f"input {tuple(x.shape)} on each of {dist.get_world_size()} processes"
            )
        mean = sums[:c] / n  # (C,)
        centred = x - mean.view(shape)
        var = differentiable_all_reduce((centred * centred).sum(dim=dims)) / n  # (C,) biased
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[operator]
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var.detach() * (n / (n - 1))
                self.running_mean.lerp_(mean.detach(), momentum)  # type: ignore[union-attr]
                self.running_var.lerp_(unbiased, momentum)  # type: ignore[union-attr]
        return y


class SyncBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    """``BatchNorm2d`` with the statistics of the global batch (see :class:`_GlobalBatchNorm`)."""

    spatial_dims = 2


class SyncBatchNorm3d(_GlobalBatchNorm, nn.BatchNorm3d):
    """``BatchNorm3d`` with the statistics of the global batch (see :class:`_GlobalBatchNorm`)."""

    spatial_dims = 3


_SYNCED: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm2d: SyncBatchNorm2d,
    nn.BatchNorm3d: SyncBatchNorm3d,
}


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``BatchNorm2d`` / ``BatchNorm3d`` of ``module`` by a synchronised one (in
    place where possible; returns the module). CUDA: :class:`torch.nn.SyncBatchNorm`; else
    :class:`SyncBatchNorm2d` / :class:`SyncBatchNorm3d`. Parameters and running statistics are
    kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    synced = next((sync for base, sync in _SYNCED.items() if isinstance(module, base)), None)
    if synced is not None and not isinstance(module, tuple(_SYNCED.values())):
        new = synced(
            module.num_features,
            module.eps,
            module.momentum,  # type: ignore[arg-type]
            module.affine,
            module.track_running_stats,
            device=module.weight.device if module.affine else None,
            dtype=module.weight.dtype if module.affine else None,
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes (in place) and return it; a no-op in one process."""
    if _syncing():
        dist.all_reduce(tensor)
    return tensor
