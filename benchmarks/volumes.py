"""Cost of the volume pipeline on a generated Decathlon task (JSON on stdout).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volumes.py --size 96 --cases 4 --roi 48

Writes ``--cases`` synthetic CT volumes of ``--size``^3 voxels in the Decathlon layout, then
times (median of ``--runs``): building the data set (which estimates the CT window from every
training volume), reading and normalising one volume, one training crop, and the Gaussian
sliding-window prediction of one whole volume with a small 3D network (two 3x3x3 convs of 8
channels), at overlap 0.25 and 0.5, with the number of windows. Needs the ``3d`` extra.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autodeeplab.data import Decathlon, volume_train_transform, write_synthetic_decathlon
from autodeeplab.volume_inference import predict_volume_logits


def _median_seconds(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96, help="volume side in voxels (default 96)")
    parser.add_argument("--cases", type=int, default=4, help="training volumes (default 4)")
    parser.add_argument("--roi", type=int, default=48, help="crop and window side (default 48)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    args = parser.parse_args()
    for name in ("size", "cases", "roi", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 4, 3, padding=1)
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_decathlon(Path(tmp), args.cases, 0, size=args.size)
        build = _median_seconds(lambda: Decathlon(root, "train", val_fraction=0.0), args.runs)
        ds = Decathlon(root, "train", val_fraction=0.0)
        load = _median_seconds(lambda: ds.load(0), args.runs)
        volume = ds.load(0)
        crop = volume_train_transform(args.roi)
        rng = np.random.default_rng(0)
        crop_s = _median_seconds(
            lambda: crop(volume.image, volume.label, rng),  # type: ignore[arg-type]
            args.runs,
        )
        image = torch.from_numpy(volume.image)
        windows = {}
        for overlap in (0.25, 0.5):
            calls = []
            hook = model.register_forward_hook(lambda m, i, o, calls=calls: calls.append(1))
            predict_volume_logits(model, image, args.roi, overlap=overlap)
            hook.remove()
            windows[str(overlap)] = len(calls)  # sw_batch_size 1: one call per window
        predict = {
            str(overlap): _median_seconds(
                lambda o=overlap: predict_volume_logits(model, image, args.roi, overlap=o),
                args.runs,
            )
            for overlap in (0.25, 0.5)
        }
    print(
        json.dumps(
            {
                "volume": [args.size] * 3,
                "cases": args.cases,
                "roi": args.roi,
                "build_dataset_s": round(build, 3),
                "load_volume_s": round(load, 4),
                "train_crop_s": round(crop_s, 4),
                "predict_volume_s_by_overlap": {k: round(v, 3) for k, v in predict.items()},
                "windows_by_overlap": windows,
                "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
