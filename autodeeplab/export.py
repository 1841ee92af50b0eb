"""ONNX export of a model folder, with dynamic batch size, height and width (and depth).

The exported graph maps a normalised ``(N, 3, H, W)`` float32 batch named ``image`` to logits
``(N, C, H, W)`` named ``logits`` (a volume model: ``(N, modalities, D, H, W)`` to ``(N, C, D,
H, W)``, trilinear resizes); normalise with the mean/std of ``config.json`` (also stored
in the ONNX metadata, with the class names). It uses the TorchScript-based exporter
(``dynamo=False``): on the pinned PyTorch it records the bilinear resizes from the input's
shape, so one file serves every size. The graph does not check its input: height and width
must exceed the deepest stride of the path, as for the PyTorch model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from autodeeplab.inference import min_input_size
from autodeeplab.network import AutoDeepLab
from autodeeplab.saved_model import SavedModelConfig

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17


def export_onnx(
    model: AutoDeepLab,
    path: str | Path,
    *,
    height: int = 512,
    width: int = 512,
    depth: int | None = None,
    opset: int = DEFAULT_OPSET,
    config: SavedModelConfig | None = None,
) -> Path:
    """Trace ``model`` on a ``(1, C, height, width)`` input (``(1, C, depth, height, width)``
    for a volume model, which needs ``depth``) and write ONNX to ``path``.

    ``config`` adds its class names, palette and normalisation as ONNX metadata.
    """
    volumes = model.config.spatial_dims == 3
    if volumes != (depth is not None):
        raise ValueError(
            "a volume model is traced on (depth, height, width): give depth"
            if volumes
            else "an image model is traced on (height, width): depth does not apply"
        )
    sides = (height, width) if depth is None else (depth, height, width)
    m = min_input_size(model)
    if min(sides) < m:
        what = "depth, height and width" if volumes else "height and width"
        raise ValueError(f"export {what} must be at least {m} for this model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    example = torch.zeros(
        1, model.config.in_channels, *sides, dtype=param.dtype, device=param.device
    )
    names = ("depth", "height", "width") if volumes else ("height", "width")
    axes = {0: "batch", **{2 + i: name for i, name in enumerate(names)}}
    try:
        with warnings.catch_warnings():
            # The input-size check and the same-size shortcuts in the network are Python
            # branches; the tracer warns about them, and they hold for every valid size.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            )
    finally:
        model.train(was_training)
    if config is not None:
        _add_metadata(path, config)
    return path


def _add_metadata(path: Path, config: SavedModelConfig) -> None:
    import onnx

    proto = onnx.load(str(path))
    meta = {
        "class_names": json.dumps(list(config.class_names)),
        "palette": json.dumps([list(c) for c in config.palette]),
        "mean": json.dumps(list(config.mean)),
        "std": json.dumps(list(config.std)),
        "network": json.dumps(config.network.to_dict()),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def onnx_max_abs_diff(
    model: AutoDeepLab, path: str | Path, shapes: Sequence[tuple[int, ...]], seed: int = 0
) -> float:
    """Run the ONNX file with ONNX Runtime and the model with PyTorch on random inputs of
    each ``(N, C, H, W)`` (``(N, C, D, H, W)``) in ``shapes``; return the largest absolute
    difference of the logits."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    param = next(model.parameters())
    worst = 0.0
    model.eval()
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = model(x.to(param.device, param.dtype)).float().cpu().numpy()
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        if out.shape != ref.shape:
            raise ValueError(f"ONNX output shape {out.shape} differs from PyTorch's {ref.shape}")
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst
