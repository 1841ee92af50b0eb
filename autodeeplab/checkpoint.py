"""Atomic, versioned checkpoints and the random-number state that goes with them.

A checkpoint is a dict saved with ``torch.save``. It is written to a temporary file in the
target folder, flushed to disk, then renamed over the target (``os.replace`` is atomic on
POSIX and Windows), so a crash during the write leaves the previous checkpoint intact.

Checkpoints are shared between people, so reading one must never run code. Every reader goes
through :func:`safe_torch_load`, PyTorch's ``weights_only`` unpickler: it rebuilds tensors,
numbers, strings and containers and refuses any other Python object by name, before anything
is called. A checkpoint holds only those types (the random-number states are stored as tensors
and plain numbers); version-1 checkpoints, which held the numpy generator state as an array,
load through a narrow allow-list of the three numpy names an array needs.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 2
"""Bumped whenever the layout of the saved dict changes. Version 2 stores the numpy generator
state as a tensor, so that the file loads with ``weights_only=True`` and nothing else."""

READABLE_VERSIONS = (1, 2)
"""Versions :func:`load_checkpoint` reads (version 1 differs only in the numpy state)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, unreadable, another format version or config."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (plus ``format_version``) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({**state, "format_version": FORMAT_VERSION}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (not supported on every platform)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Atomic copy of a finished checkpoint (e.g. ``last.pt`` -> ``epoch_010.pt``)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def _numpy_array_globals() -> list[Any]:
    """The names a pickled numpy array refers to, under both of numpy's module spellings
    (``numpy.core`` before 2.0, ``numpy._core`` after). ``_reconstruct`` only allocates an
    array of an allowed class; its contents are unpickled by the same restricted unpickler."""
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    return [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),  # the generator key's dtype class (numpy >= 1.25)
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
    ]


def safe_torch_load(
    path: str | Path, map_location: str | torch.device = "cpu", *, what: str = "checkpoint"
) -> Any:
    """``torch.load`` that can never execute code from the file.

    Loads with ``weights_only=True`` (tensors, numbers, strings, containers; plus numpy arrays
    for version-1 checkpoints of this project). A file that refers to any other Python object
    raises :class:`CheckpointError` naming the objects, without calling any of them; an
    unreadable file raises :class:`CheckpointError` naming the file.
    """
    import pickle

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise CheckpointError(
                f"refusing to load {what} {path}: it refers to Python objects that could run "
                f"code when loaded ({', '.join(unsafe[:6])}); autodeeplab only loads tensors, "
                "numbers, strings and containers from a file. Ask whoever made it for a "
                "checkpoint written by autodeeplab or for a model folder (safetensors + JSON)"
            ) from None
        raise CheckpointError(
            f"cannot read {what} {path}: not a checkpoint, or not one that loads safely "
            f"({_reason(err)})"
        ) from None
    except Exception as err:  # torch raises several types for corrupt or truncated files
        raise CheckpointError(f"cannot read {what} {path}: {_reason(err)}") from None


def _unsafe_globals(path: Path) -> list[str]:
    """Names of the Python objects the file's pickle refers to that are not allowed. The pickle
    opcodes are only scanned, nothing is loaded; this serves the error message, the refusal
    itself is the unpickler's."""
    allowed = {
        f"{obj.__module__}.{obj.__qualname__}" if not isinstance(obj, tuple) else obj[1]
        for obj in _numpy_array_globals()
    }
    try:
        if zipfile.is_zipfile(path):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        else:  # the legacy format: a bare pickle stream first
            with open(path, "rb") as f:
                found = _pickle_globals(f)
    except Exception:  # unreadable: the caller reports the loader's own reason
        return []
    return [name for name in found if name not in allowed]


def _pickle_globals(stream: Any) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in one pickle (strings pushed just before
    a STACK_GLOBAL name it)."""
    import pickletools

    names, strings = [], []
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "GLOBAL":
            names.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.append(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
    return list(dict.fromkeys(names))


def _reason(err: BaseException) -> str:
    """The informative line of a loader error (PyTorch wraps it in advice about
    turning the restriction off, which is exactly what must not be done with a shared file)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
    useful = [line for line in lines if not line.startswith(boiler) and "weights_only" not in line]
    return (useful or lines or [type(err).__name__])[0]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (without ever executing code from
    it, see :func:`safe_torch_load`), checking its format version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = safe_torch_load(path, map_location)
    version = state.get("format_version") if isinstance(state, dict) else None
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this version of autodeeplab "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return state


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) global generator states, as tensors
    and plain Python values only (so a checkpoint holding them loads with ``weights_only``)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),  # 624 uint32 words
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = np.asarray(numpy_state["key"].numpy(), dtype=np.uint32)
        numpy_state = (
            numpy_state["bit_generator"],
            key,
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    np.random.set_state(numpy_state)  # a dict (above) or version 1's tuple
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
