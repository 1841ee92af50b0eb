"""Model complexity: parameters and Multi-Adds, by part (stem, cells, ASPP, decoder).

Multi-Adds are multiply-accumulates of convolutions and matrix products, counted with
``torch.utils.flop_counter.FlopCounterMode`` over the real forward pass of the model
(``MACs = FLOPs / 2``). Pooling, batch norm, activations, additions and bilinear resizing are
not counted. Everything is counted on a twin of the model built on the ``meta`` device from its
config, so counting even the L model on a 1024x2048 frame allocates nothing and takes about a
second on a CPU.

:func:`multiply_adds` counts any module (an operation, a head, the supernet) on images or
volumes the same way: a convolution's count is its output elements times the taps of one output
(``C_in / groups x prod(kernel)``), in 2D and 3D alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autodeeplab.network import AutoDeepLab, NetworkConfig

PARTS: tuple[str, ...] = ("stem", "cells", "aspp", "decoder")


def _part_modules(model: AutoDeepLab) -> dict[str, torch.nn.Module]:
    return {
        "stem": model.encoder.stem,
        "cells": model.encoder.cells,
        "aspp": model.aspp,
        "decoder": model.decoder,
    }


@dataclass(frozen=True)
class Complexity:
    """Parameter and Multi-Add counts of one model at one input size."""

    params: int
    params_by_part: dict[str, int]
    multiply_adds: int
    multiply_adds_by_part: dict[str, int]
    input_size: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "params_by_part": dict(self.params_by_part),
            "multiply_adds": self.multiply_adds,
            "multiply_adds_by_part": dict(self.multiply_adds_by_part),
            "input_size": list(self.input_size),
        }


def count_parameters(model: AutoDeepLab) -> dict[str, int]:
    """Parameters of each part (``stem``, ``cells``, ``aspp``, ``decoder``) and ``total``."""
    counts = {
        name: sum(p.numel() for p in m.parameters()) for name, m in _part_modules(model).items()
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    assert counts["total"] == sum(counts[p] for p in PARTS), "parameters outside the parts"
    return counts


def count_multiply_adds(model: AutoDeepLab, input_size: Sequence[int]) -> dict[str, int]:
    """Multi-Adds of one forward pass of ``model`` on one ``(C, H, W)`` image (``(C, D, H,
    W)`` volume), by part and ``total``. Runs ``model`` as it is: pass a meta-device model (see
    :func:`complexity`) to count without computing; drop path is off in eval mode.
    """
    device = next(model.parameters()).device
    x = torch.empty(1, model.config.in_channels, *input_size, device=device)
    counter = FlopCounterMode(display=False)
    by_part = dict.fromkeys(PARTS, 0)

    # Sum the counter's growth between each part's pre-forward and forward hooks: this does not
    # depend on how FlopCounterMode names modules.
    def make_hooks(part: str) -> tuple[Any, Any]:
        start: list[int] = []

        def pre(*_: Any) -> None:
            start.append(counter.get_total_flops())

        def post(*_: Any) -> None:
            by_part[part] += counter.get_total_flops() - start.pop()

        return pre, post

    modules: dict[str, list[torch.nn.Module]] = {
        "stem": [model.encoder.stem],
        "cells": list(model.encoder.cells),  # a ModuleList has no forward of its own
        "aspp": [model.aspp],
        "decoder": [model.decoder],
    }
    hooks = []
    try:
        for part, mods in modules.items():
            pre, post = make_hooks(part)
            for m in mods:
                hooks.append(m.register_forward_pre_hook(pre))
                hooks.append(m.register_forward_hook(post))
        with counter, torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    total = counter.get_total_flops()
    assert total == sum(by_part.values()), "Multi-Adds outside the parts"
    result = {part: flops // 2 for part, flops in by_part.items()}
    result["total"] = total // 2
    return result


def multiply_adds(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multi-Adds of one forward pass of ``module`` on an input of ``input_shape``,
    ``(N, C, *spatial)`` (images or volumes), on the module's device (a ``meta`` module counts
    without computing). Runs the module as it is (train or eval mode) without gradients."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) < 3 or min(shape) < 1:
        raise ValueError(
            f"input_shape must be (N, C, *spatial) with positive sizes, got {tuple(input_shape)!r}"
        )
    tensors = [*module.parameters(), *module.buffers()]
    x = torch.empty(shape, device=tensors[0].device if tensors else None)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() // 2


def meta_model(config: NetworkConfig) -> AutoDeepLab:
    """An eval-mode :class:`AutoDeepLab` on the ``meta`` device: shapes only, no storage."""
    with torch.device("meta"):
        return AutoDeepLab.from_config(config).eval()


def complexity(
    model: AutoDeepLab | NetworkConfig, input_size: Sequence[int] = (1024, 2048)
) -> Complexity:
    """Parameters and Multi-Adds of a model (or a config) for an input of ``(H, W)``, or
    ``(D, H, W)`` for a volume network."""
    config = model.config if isinstance(model, AutoDeepLab) else model
    axes = "(H, W)" if config.spatial_dims == 2 else "(D, H, W)"
    if len(input_size) != config.spatial_dims or min(input_size) < 1:
        raise ValueError(f"input_size must be {axes} with positive sides, got {input_size!r}")
    size = tuple(int(s) for s in input_size)
    twin = meta_model(config)
    twin.encoder.check_input(torch.empty(1, config.in_channels, *size, device="meta"))
    params = count_parameters(twin)
    macs = count_multiply_adds(twin, size)
    return Complexity(
        params=params.pop("total"),
        params_by_part=params,
        multiply_adds=macs.pop("total"),
        multiply_adds_by_part=macs,
        input_size=size,
    )
