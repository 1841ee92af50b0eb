"""A trained model as a folder: weights plus everything needed to use them.

::

    <folder>/
      model.safetensors   state dict (weights and batch-norm statistics)
      config.json         format version, network config (genotype included), class names,
                          palette, normalisation mean/std, ignore index, data set name, extra

``save_model`` writes both files into a temporary folder next to the target and renames it
into place, so a reader never sees a half-written model. ``load_model`` checks the config
and the weights against each other and returns a :class:`LoadedModel` in eval mode.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from autodeeplab.network import AutoDeepLab, NetworkConfig

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
IGNORE_INDEX = 255


@dataclass(frozen=True)
class SavedModelConfig:
    """The contents of ``config.json``: the network and how to feed and read it."""

    network: NetworkConfig
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # (C, 3) RGB colours
    mean: tuple[float, ...]
    """Per input channel (RGB; for volumes, which their data set normalises, 0 for each
    modality)."""
    std: tuple[float, ...]
    ignore_index: int = IGNORE_INDEX
    dataset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = self.network.num_classes
        if len(self.class_names) != c:
            raise ValueError(f"'class_names' has {len(self.class_names)} names for {c} classes")
        if len(self.palette) != c or any(
            len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) for rgb in self.palette
        ):
            raise ValueError(f"'palette' must be {c} RGB triples of integers 0..255")
        n = self.network.in_channels
        if len(self.mean) != n or len(self.std) != n or any(s <= 0 for s in self.std):
            raise ValueError(
                f"'mean' and 'std' must be {n} values each (one per input channel) with "
                f"std > 0, got {self.mean}, {self.std}"
            )
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError("'mean' and 'std' must be finite numbers")

    @property
    def num_classes(self) -> int:
        return self.network.num_classes

    def palette_array(self) -> np.ndarray:
        return np.asarray(self.palette, dtype=np.uint8)  # (C, 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "network": self.network.to_dict(),
            "class_names": list(self.class_names),
            "palette": [list(rgb) for rgb in self.palette],
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "ignore_index": self.ignore_index,
            "dataset": self.dataset,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = CONFIG_FILE) -> SavedModelConfig:
        """Parse and validate; errors name ``source`` and the offending key."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {
            "format_version",
            "network",
            "class_names",
            "palette",
            "normalization",
            "ignore_index",
            "dataset",
            "extra",
        }
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"{source}: unknown keys {sorted(unknown)}; valid keys: {sorted(known)}"
            )
        missing = {"format_version", "network", "class_names", "palette", "normalization"} - set(
            data
        )
        if missing:
            raise ValueError(f"{source}: missing keys {sorted(missing)}")
        if data["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"{source}: key 'format_version' is {data['format_version']!r}; this version of "
                f"autodeeplab reads format {FORMAT_VERSION}"
            )

        def key(name: str, parse: Any) -> Any:
            try:
                return parse(data[name])
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError(f"{source}: invalid key {name!r}: {err}") from None

        network = key("network", _parse_network)
        norm = key("normalization", _parse_normalization)
        try:
            return cls(
                network=network,
                class_names=key("class_names", lambda v: tuple(_strings(v))),
                palette=key("palette", lambda v: tuple(tuple(int(c) for c in rgb) for rgb in v)),
                mean=norm[0],
                std=norm[1],
                ignore_index=key("ignore_index", int) if "ignore_index" in data else IGNORE_INDEX,
                dataset=key("dataset", _optional_str) if "dataset" in data else None,
                extra=key("extra", _dict) if "extra" in data else {},
            )
        except ValueError as err:
            if str(err).startswith(source):
                raise
            raise ValueError(f"{source}: {err}") from None


def _parse_network(value: Any) -> NetworkConfig:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return NetworkConfig.from_dict(value)


def _parse_normalization(value: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise ValueError('expected {"mean": [r, g, b], "std": [r, g, b]}')
    return tuple(float(v) for v in value["mean"]), tuple(float(v) for v in value["std"])


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return value


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"expected a string or null, got {type(value).__name__}")
    return value


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def identity_normalization(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` that leave ``channels`` input channels as they are: the normalisation
    of a volume model, whose data set normalises each modality itself."""
    return (0.0,) * channels, (1.0,) * channels


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference (eval mode) and the config it was saved with."""

    model: AutoDeepLab
    config: SavedModelConfig
    path: Path


def save_model(
    model: AutoDeepLab,
    path: str | Path,
    *,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] | np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = IGNORE_INDEX,
    dataset: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a model folder at ``path`` (replacing a model folder already there)."""
    if not isinstance(model, AutoDeepLab):
        raise ValueError(f"save_model takes an AutoDeepLab, got {type(model).__name__}")
    config = SavedModelConfig(
        network=model.config,
        class_names=tuple(class_names),
        palette=tuple(tuple(int(c) for c in rgb) for rgb in np.asarray(palette).tolist()),
        mean=tuple(float(m) for m in mean),  # type: ignore[arg-type]
        std=tuple(float(s) for s in std),  # type: ignore[arg-type]
        ignore_index=int(ignore_index),
        dataset=dataset,
        extra=dict(extra or {}),
    )
    text = json.dumps(config.to_dict(), indent=2)  # fails early on non-JSON extra values
    path = Path(path)
    is_model = (path / CONFIG_FILE).is_file()
    if path.exists() and not is_model and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(
            f"{path} exists and is not a model folder; give a new path or an existing "
            "model folder to replace"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``; an old ``dst`` is renamed aside first, then removed."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
    os.replace(dst, old / dst.name)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def read_config(path: str | Path) -> SavedModelConfig:
    """Read and validate ``config.json`` of the model folder ``path`` (weights untouched)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model folder {path} does not exist (expected a folder with {CONFIG_FILE} and "
            f"{WEIGHTS_FILE})"
        )
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"model folder {path} has no {CONFIG_FILE} ({file})")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    return SavedModelConfig.from_dict(data, source=str(file))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder written by :func:`save_model`; the model is in eval mode on ``device``."""
    path = Path(path)
    config = read_config(path)
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"model folder {path} has no {WEIGHTS_FILE} ({file})")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file}: cannot read the weights ({err})") from None
    model = AutoDeepLab.from_config(config.network)
    _check_state(model.state_dict(), state, file)
    model.load_state_dict(state)
    return LoadedModel(model.to(device).eval(), config, path)


def _check_state(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], file: Path
) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{k}: {tuple(got[k].shape)} in file, {tuple(v.shape)} expected"
        for k, v in expected.items()
        if k in got and got[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    lines = [f"{file} does not match the network in {CONFIG_FILE}:"]
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            shown = ", ".join(items[:8]) + (
                f", ... ({len(items)} in all)" if len(items) > 8 else ""
            )
            lines.append(f"  {label}: {shown}")
    raise ValueError("\n".join(lines))
