"""The 2D install works without the 3d extra; 3D entry points say how to get it."""

import subprocess
import sys
import textwrap

BLOCKED = textwrap.dedent(
    """
    import sys
    for name in ("monai", "nibabel"):
        sys.modules[name] = None  # any import of them now raises ImportError

    import autodeeplab
    import autodeeplab.cli
    import autodeeplab.data
    import autodeeplab.demo
    import autodeeplab.engine.search
    import autodeeplab.engine.train
    import autodeeplab.inference
    import autodeeplab.metrics
    import autodeeplab.predict
    import autodeeplab.volume_inference
    from autodeeplab.data import build_dataset, eval_transform

    ds = build_dataset("synthetic", None, "val", eval_transform(), length=2, size=16)
    image, mask = ds[0]
    assert tuple(image.shape) == (3, 16, 16)
    vol = build_dataset("synthetic3d", None, "val", length=1, size=8)  # numpy only
    assert vol.load(0).image.shape == (1, 8, 8, 8)

    import numpy as np
    import torch
    from autodeeplab.data.volume_transforms import volume_train_transform
    from autodeeplab.volume_inference import predict_volume_logits
    from autodeeplab.data.volume import write_label_nifti

    attempts = {
        "decathlon": lambda: build_dataset("decathlon", "/nowhere"),
        "transform": lambda: volume_train_transform(8),
        "inference": lambda: predict_volume_logits(torch.nn.Identity(), torch.zeros(1, 8, 8, 8), 8),
        "nifti": lambda: write_label_nifti("/tmp/x.nii.gz", np.zeros((2, 2, 2)), np.eye(4)),
    }
    for what, attempt in attempts.items():
        try:
            attempt()
        except ImportError as err:
            assert "pip install 'autodeeplab[3d]'" in str(err), (what, err)
        else:
            raise AssertionError(f"{what} ran without MONAI/nibabel")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("monai", "nibabel") and sys.modules[m])
    assert not loaded, loaded
    print("ok")
    """
)


def test_2d_paths_work_without_monai_and_nibabel():
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_importing_the_package_loads_neither():
    code = (
        "import sys, autodeeplab, autodeeplab.data, autodeeplab.cli, autodeeplab.volume_inference;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('monai', 'nibabel')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
