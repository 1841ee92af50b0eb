"""The network a train config or a run folder describes, for ``autodeeplab info``.

Sources, besides a model preset or a genotype file (:func:`autodeeplab.models.model_info`):

train config (YAML)
    Classes from the data set (its fixed class list, or the class metadata of a ``folder``
    data set), F and head sizes from ``model``, the architecture from ``model.genotype`` /
    ``model.preset`` or given separately; Multi-Adds default to a ``crop_size`` square input.
model folder (``config.json`` + ``model.safetensors``)
    The saved network config, exactly; the crop size of the train config recorded in it.
retraining run folder (``config.yaml``, ``genotype.json``, ``model/``, ``best/``, ...)
    The network of ``model/`` or ``best/`` when one was written, otherwise rebuilt from
    ``config.yaml`` and ``genotype.json`` as the training engine builds it.

Only JSON and YAML are read: no checkpoint is unpickled and no weight is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autodeeplab.config import ConfigError, SearchConfig, TrainConfig, load_config
from autodeeplab.data import dataset_class_names
from autodeeplab.models import network_info
from autodeeplab.network import NetworkConfig
from autodeeplab.saved_model import CONFIG_FILE, read_config

DEFAULT_INPUT_SIZE: tuple[int, int] = (1024, 2048)
RUN_CONFIG = "config.yaml"
RUN_GENOTYPE = "genotype.json"
RUN_MODEL_FOLDERS: tuple[str, ...] = ("model", "best")
"""Model folders of a retraining run, in order of preference (final, then best)."""


@dataclass(frozen=True)
class ModelSource:
    """A network config and where it came from."""

    network: NetworkConfig
    name: str
    kind: str
    """``train config``, ``model folder`` or ``run folder``."""
    preset: str | None = None
    crop_size: int | tuple[int, ...] | None = None
    """Training crop of the source (one side, or ``(D, H, W)`` for volumes), the default input
    size of its Multi-Adds."""
    batch_size: int | None = None
    """Training batch (per process) of the source, the default batch of its memory estimate."""


def network_from_train_config(
    config: TrainConfig, *, num_classes: int | None = None
) -> NetworkConfig:
    """The :class:`NetworkConfig` that retraining with ``config`` builds; ``num_classes``
    defaults to the data set's."""
    from autodeeplab.engine.train import resolve_network

    if num_classes is None:
        d = config.data
        try:
            num_classes = len(dataset_class_names(d.name, d.root, d.options))
        except ValueError as err:
            raise ValueError(
                f"{err}; set data.root (--data-root) or give the number of classes (--num-classes)"
            ) from None
    from autodeeplab.data import dataset_in_channels
    from autodeeplab.engine.common import data_spatial_dims

    d = config.data
    return resolve_network(
        config.model,
        num_classes,
        d.crop_size,
        in_channels=dataset_in_channels(d.name, d.root, d.options),
        spatial_dims=data_spatial_dims(d),
    )


def from_train_config(
    path: str | Path,
    *,
    genotype: str | Path | None = None,
    preset: str | None = None,
    num_classes: int | None = None,
    filter_multiplier: int | None = None,
    data_root: str | Path | None = None,
) -> ModelSource:
    """Read train config ``path``; ``genotype`` (a file) or ``preset`` replaces its
    architecture, ``num_classes`` and ``filter_multiplier`` its data set's classes and F,
    ``data_root`` its ``data.root``."""
    if genotype is not None and preset is not None:
        raise ValueError("give at most one of a genotype file and a preset")
    cfg = load_config(path, cls=TrainConfig)
    if data_root is not None:
        cfg.data.root = str(data_root)
    if genotype is not None:
        cfg.model.genotype, cfg.model.preset = str(genotype), None
    if preset is not None:
        cfg.model.genotype, cfg.model.preset = None, preset
    if filter_multiplier is not None:
        cfg.model.filter_multiplier = filter_multiplier
    if cfg.model.genotype is None and cfg.model.preset is None:
        raise ValueError(
            f"{path}: model.genotype and model.preset are both null; name the architecture "
            "with --genotype FILE or --preset NAME"
        )
    network = network_from_train_config(cfg, num_classes=num_classes)
    return ModelSource(
        network,
        str(path),
        "train config",
        cfg.model.preset,
        crop_size=cfg.data.crop_size,
        batch_size=cfg.data.batch_size,
    )


def from_run(path: str | Path) -> ModelSource:
    """Read a model folder or a retraining run folder (see the module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    if (path / CONFIG_FILE).is_file():
        saved = read_config(path)
        train_config = saved.extra.get("train_config")
        crop = _data_crop(train_config)
        batch = _data_int(train_config, "batch_size")
        preset = _preset_of(train_config)
        return ModelSource(saved.network, str(path), "model folder", preset, crop, batch)
    if not (path / RUN_CONFIG).is_file():
        raise FileNotFoundError(
            f"{path} is neither a model folder (no {CONFIG_FILE}) nor a retraining run folder "
            f"(no {RUN_CONFIG}); give the folder that `autodeeplab train` wrote or one of its "
            f"model folders ({', '.join(RUN_MODEL_FOLDERS)})"
        )
    cfg = _read_run_config(path / RUN_CONFIG)
    for sub in RUN_MODEL_FOLDERS:
        if (path / sub / CONFIG_FILE).is_file():
            network = read_config(path / sub).network
            break
    else:
        # No model folder yet (an interrupted run): rebuild the network as the engine does,
        # from the architecture the run recorded.
        if cfg.model.preset is None:
            if not (path / RUN_GENOTYPE).is_file():
                raise FileNotFoundError(
                    f"run folder {path} has neither a model folder nor {RUN_GENOTYPE}"
                )
            cfg.model.genotype = str(path / RUN_GENOTYPE)
        network = network_from_train_config(cfg)
    return ModelSource(
        network,
        str(path),
        "run folder",
        cfg.model.preset,
        cfg.data.crop_size,
        cfg.data.batch_size,
    )


def _read_run_config(file: Path) -> TrainConfig:
    try:
        return load_config(file, cls=TrainConfig)
    except ConfigError as err:
        try:
            load_config(file, cls=SearchConfig)
        except ConfigError:
            raise ValueError(f"{file}: not a training config ({err})") from None
        raise ValueError(
            f"{file.parent} is a search run folder; info reads retraining runs and model "
            f"folders: use `autodeeplab info --genotype {file.parent / RUN_GENOTYPE}`"
        ) from None


def _data_int(train_config: Any, key: str) -> int | None:
    """``data.<key>`` of a recorded train config when it is an integer, else ``None``."""
    try:
        value = train_config["data"][key]
    except (TypeError, KeyError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _data_crop(train_config: Any) -> int | tuple[int, ...] | None:
    """``data.crop_size`` of a recorded train config: one side or ``[D, H, W]``."""
    side = _data_int(train_config, "crop_size")
    if side is not None:
        return side
    try:
        value = train_config["data"]["crop_size"]
    except (TypeError, KeyError):
        return None
    ok = isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) for v in value)
    return tuple(value) if ok else None


def _preset_of(train_config: Any) -> str | None:
    try:
        preset = train_config["model"]["preset"]
    except (TypeError, KeyError):
        return None
    return preset if isinstance(preset, str) else None


def source_info(
    source: ModelSource,
    input_size: tuple[int, ...] | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """:func:`~autodeeplab.models.network_info` of ``source``; Multi-Adds and memory at
    ``input_size``, else at the source's crop, else at 1024x2048 (images; a volume network
    needs a crop or an input size); memory for ``batch_size`` images, else the source's
    batch, else 1."""
    dims = source.network.spatial_dims
    if input_size is not None:
        size, basis = input_size, "given"
    elif source.crop_size is not None:
        crop = source.crop_size
        size, basis = (crop,) * dims if isinstance(crop, int) else crop, "crop_size"
    elif dims == 2:
        size, basis = DEFAULT_INPUT_SIZE, "default"
    else:
        raise ValueError(
            f"{source.name} records no crop size; give the volume size with --input-size DxHxW"
        )
    if len(size) != dims:
        axes = "HxW" if dims == 2 else "DxHxW"
        raise ValueError(
            f"--input-size {'x'.join(map(str, size))}: {source.name} is a "
            f"{'volume' if dims == 3 else 'image'} network; give {axes}"
        )
    if batch_size is not None:
        batch, batch_basis = batch_size, "given"
    elif source.batch_size is not None:
        batch, batch_basis = source.batch_size, "batch_size"
    else:
        batch, batch_basis = 1, "default"
    info = network_info(
        source.network, size, name=source.name, preset=source.preset, batch_size=batch
    )
    info.update(
        source=source.kind,
        input_size_from=basis,
        batch_size_from=batch_basis,
        network=source.network.to_dict(),
    )
    return info


def info_lines(info: dict[str, Any]) -> list[str]:
    """The text ``autodeeplab info`` prints for ``info`` (:func:`source_info` or
    :func:`~autodeeplab.models.model_info`): the network, its size by part, the training memory
    estimate and, for a preset, the paper's figures."""
    size = "x".join(str(s) for s in info["input_size"])
    source = f" ({info['source']})" if "source" in info else ""
    lines = [
        f"model              {info['model']}{source}",
        f"genotype           {info['genotype']}",
        f"classes            {info['num_classes']}",
    ]
    if info.get("spatial_dims") == 3:
        lines.append(f"input              volumes, {info['in_channels']} modalities")
    lines.append(f"filter multiplier  {info['filter_multiplier']}")
    if len(info["output_strides"]) == 1:
        lines.append(
            f"output stride      {info['output_stride']} (ASPP rates {info['aspp_rates']})"
        )
    else:  # a multi-path network: one ASPP per active node of the last layer
        heads = ", ".join(
            f"{s}: {r}"
            for s, r in zip(info["output_strides"], info["aspp_rates_by_output"], strict=True)
        )
        lines.append(f"output stride      {info['output_stride']} (ASPP per output stride {heads})")
    lines.append(f"parameters         {info['params'] / 1e6:.2f}M")
    for part, n in info["params_by_part"].items():
        lines.append(f"  {part:16s} {n / 1e6:.3f}M")
    basis = " (crop size)" if info.get("input_size_from") == "crop_size" else ""
    lines.append(f"Multi-Adds {size}{basis}  {info['multiply_adds'] / 1e9:.2f}B")
    for part, n in info["multiply_adds_by_part"].items():
        lines.append(f"  {part:16s} {n / 1e9:.2f}B")
    mem = info["training_memory"]
    if mem is None:
        lines.append("training memory    not estimated: the memory model counts image feature maps")
        return lines
    batch_basis = " (batch_size)" if info.get("batch_size_from") == "batch_size" else ""
    lines.append(
        f"training memory    batch {mem['batch_size']}{batch_basis} x {size}{basis}, "
        f"{mem['dtype']} (estimate, see docs/memory.md)"
    )
    lines.append(f"  activations      {mem['activation_bytes'] / 2**30:.3f} GiB kept for backward")
    lines.append(
        f"  step peak        {mem['peak_bytes'] / 2**30:.3f} GiB with weights, gradients, "
        "SGD momentum and logits"
    )
    if info.get("paper"):
        paper = info["paper"]
        lines.append(
            f"paper (Table 2)    {paper['params'] / 1e6:.2f}M params, "
            f"{paper['multiply_adds'] / 1e9:.2f}B Multi-Adds"
        )
    return lines
