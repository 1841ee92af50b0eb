import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from autodeeplab.export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_max_abs_diff
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.network import AutoDeepLab
from autodeeplab.saved_model import SavedModelConfig

from tiny import make_tiny_model


def run_both(model, path, shape):
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    return out, ref


def test_onnx_matches_pytorch_at_other_sizes_and_batches(tmp_path):
    # a path that goes down and back up, so odd sizes exercise every resize
    torch.manual_seed(0)
    model = AutoDeepLab(
        Genotype(cell=RELEASED.cell, path=(0, 1, 2, 1)),
        num_classes=3,
        filter_multiplier=2,
        aspp_channels=8,
        decoder_channels=8,
        low_level_reduced=4,
    ).eval()
    config = SavedModelConfig(
        model.config, ("a", "b", "c"), ((0, 0, 0),) * 3, (0.5,) * 3, (0.25,) * 3
    )
    path = export_onnx(model, tmp_path / "m.onnx", height=64, width=64, config=config)
    for shape in [(1, 3, 64, 64), (2, 3, 47, 81), (3, 3, 33, 40)]:
        out, ref = run_both(model, path, shape)
        assert out.shape == ref.shape == (shape[0], 3, shape[2], shape[3])
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == ["a", "b", "c"]
    assert json.loads(meta["mean"]) == [0.5] * 3


def test_dynamic_axes_and_helper(tmp_path):
    model = make_tiny_model(num_classes=2)
    path = export_onnx(model, tmp_path / "m.onnx", height=40, width=40, opset=17)
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert onnx_max_abs_diff(model, path, [(2, 3, 35, 57)]) < 1e-4


def test_export_size_too_small(tmp_path):
    with pytest.raises(ValueError, match="at least 9"):
        export_onnx(make_tiny_model(), tmp_path / "m.onnx", height=8, width=64)
