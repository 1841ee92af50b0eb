"""Named model presets: the paper's Auto-DeepLab-S/M/L and hand-designed paths.

``create_model(name, num_classes=19, **overrides)`` builds an :class:`AutoDeepLab`; keyword
overrides go to its constructor (e.g. ``filter_multiplier=8``, ``drop_path_rate=0.2``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any

from autodeeplab import space
from autodeeplab.complexity import complexity
from autodeeplab.genotype import GENOTYPES, RELEASED, Genotype
from autodeeplab.memory import training_memory
from autodeeplab.network import AutoDeepLab, NetworkConfig, head_rates


@dataclass(frozen=True)
class ModelSpec:
    """A named architecture: genotype, filter multiplier and, for the paper's variants, the
    figures of its Table 2 (Cityscapes, 19 classes)."""

    name: str
    genotype: Genotype
    filter_multiplier: int
    description: str
    paper_params: float | None = None
    paper_multiply_adds: float | None = None


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "autodeeplab-s", RELEASED, 20, "Auto-DeepLab-S (released genotype)", 10.15e6, 333.25e9
        ),
        ModelSpec(
            "autodeeplab-m", RELEASED, 32, "Auto-DeepLab-M (released genotype)", 21.62e6, 460.93e9
        ),
        ModelSpec(
            "autodeeplab-l", RELEASED, 48, "Auto-DeepLab-L (released genotype)", 44.42e6, 695.03e9
        ),
        ModelSpec(
            "deeplabv3",
            GENOTYPES["deeplabv3"],
            20,
            "DeepLabv3-like path (down to /16 and stay), released cell",
        ),
        ModelSpec(
            "conv-deconv",
            GENOTYPES["conv-deconv"],
            20,
            "Conv-Deconv path (down to /32, back up to /4), released cell",
        ),
        ModelSpec(
            "stacked-hourglass",
            GENOTYPES["stacked-hourglass"],
            20,
            "Stacked Hourglass path (down and up twice), released cell",
        ),
    )
}
"""Model presets by name; look them up with :func:`get_model_spec`."""


def list_models() -> list[str]:
    """Names of the model presets, in registry order."""
    return list(MODELS)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(MODELS)}") from None


_OVERRIDABLE = tuple(
    p
    for p in inspect.signature(AutoDeepLab.__init__).parameters
    if p not in ("self", "genotype", "num_classes")
)


def model_config(name: str, num_classes: int = 19, **overrides: Any) -> NetworkConfig:
    """The :class:`NetworkConfig` of preset ``name``; ``overrides`` are :class:`AutoDeepLab`
    keyword arguments (``filter_multiplier``, ``drop_path_rate``, ...)."""
    spec = get_model_spec(name)
    unknown = set(overrides) - set(_OVERRIDABLE)
    if unknown:
        raise ValueError(
            f"unknown model options {sorted(unknown)}; valid options: {', '.join(_OVERRIDABLE)}"
        )
    kwargs = {"filter_multiplier": spec.filter_multiplier, **overrides}
    return NetworkConfig(genotype=spec.genotype, num_classes=num_classes, **kwargs)


def create_model(name: str, num_classes: int = 19, **overrides: Any) -> AutoDeepLab:
    """Build preset ``name``; ``overrides`` are :class:`AutoDeepLab` keyword arguments."""
    return AutoDeepLab.from_config(model_config(name, num_classes, **overrides))


def model_info(
    *,
    preset: str | None = None,
    genotype_file: str | None = None,
    num_classes: int = 19,
    filter_multiplier: int | None = None,
    input_size: tuple[int, int] = (1024, 2048),
    batch_size: int = 1,
) -> dict[str, Any]:
    """Architecture summary and complexity of a preset or a genotype file, as plain data.

    Exactly one of ``preset`` and ``genotype_file``; a genotype file uses ``F = 20`` unless
    ``filter_multiplier`` is given. Nothing is allocated (see :mod:`autodeeplab.complexity`);
    the training memory is estimated for ``batch_size`` images of ``input_size``.
    """
    if (preset is None) == (genotype_file is None):
        raise ValueError("give exactly one of a preset name and a genotype file")
    overrides = {} if filter_multiplier is None else {"filter_multiplier": filter_multiplier}
    if preset is not None:
        return network_info(
            model_config(preset, num_classes, **overrides),
            input_size,
            name=preset,
            preset=preset,
            batch_size=batch_size,
        )
    assert genotype_file is not None
    config = NetworkConfig(
        genotype=Genotype.load(genotype_file),
        num_classes=num_classes,
        filter_multiplier=filter_multiplier or 20,
    )
    return network_info(config, input_size, name=str(genotype_file), batch_size=batch_size)


def network_info(
    config: NetworkConfig,
    input_size: tuple[int, ...] = (1024, 2048),
    *,
    name: str,
    preset: str | None = None,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Architecture summary and complexity of ``config`` as plain data; the paper's figures
    are added when ``config`` is the published network of ``preset``. ``training_memory`` is
    the estimate of :func:`autodeeplab.memory.training_memory` for ``batch_size`` float32
    images of ``input_size``; ``None`` for a volume network (``input_size`` ``(D, H, W)``),
    which the analytic memory model does not cover."""
    c = complexity(config, input_size)
    g = config.genotype
    rates = head_rates(g, config.aspp_rates)
    info: dict[str, Any] = {
        "model": name,
        "genotype": str(g),
        # a multi-path genotype has no path: its transitions per layer instead
        "path": None if g.path is None else list(g.path),
        **({"transitions": g.topology.to_dict()["transitions"]} if g.is_multi_path else {}),
        "filter_multiplier": config.filter_multiplier,
        "num_classes": config.num_classes,
        "output_stride": g.output_stride,
        "aspp_rates": list(rates[0]),
        "output_strides": [space.LEVEL_STRIDES[k] for k in g.output_levels],
        "aspp_rates_by_output": [list(r) for r in rates],
        **c.to_dict(),
        "spatial_dims": config.spatial_dims,
        "in_channels": config.in_channels,
        "training_memory": None
        if config.spatial_dims == 3
        else training_memory(config, input_size, batch_size, params=c.params).to_dict(),
    }
    spec = None if preset is None else get_model_spec(preset)
    # The paper's figures hold for the preset as published: 19 classes, its F, default heads
    # (drop path changes no count).
    if (
        spec is not None
        and spec.paper_params is not None
        and replace(config, drop_path_rate=0.0) == model_config(spec.name, 19)
    ):
        info["paper"] = {"params": spec.paper_params, "multiply_adds": spec.paper_multiply_adds}
    return info
