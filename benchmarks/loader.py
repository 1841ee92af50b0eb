"""Throughput of the training input pipeline, in samples per second (JSON on stdout).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loader.py --size 64 --samples 512

Measures the synthetic set (generated on the fly) and the same samples written as a folder
data set (PNG decoding): untransformed, through the training transform (scale 0.5-2, pad, crop,
flip, normalise) read directly, and through a ``DataLoader`` with and without worker processes
(worker start-up included, once per run). Reports the median of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from autodeeplab.data import FolderDataset, SyntheticSegmentation, train_transform


def _rate_direct(ds: torch.utils.data.Dataset, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - start)


def _rate_loader(ds: torch.utils.data.Dataset, n: int, workers: int, batch: int) -> float:
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    seen = 0
    for images, _ in loader:
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def _time_raw(ds: SyntheticSegmentation | FolderDataset, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        ds.load(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="synthetic image side (default 64)")
    parser.add_argument("--crop", type=int, default=None, help="training crop (default: --size)")
    parser.add_argument("--samples", type=int, default=512, help="samples per run (default 512)")
    parser.add_argument(
        "--runs", type=int, default=5, help="runs per figure; the median is reported"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts"
    )
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    crop = args.crop or args.size
    transform = train_transform(crop)
    torch.manual_seed(0)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = SyntheticSegmentation(length=args.samples, size=args.size, transform=transform)
        SyntheticSegmentation(length=args.samples, size=args.size).write_folder(Path(tmp))
        folder = FolderDataset(tmp, "train", transform)
        for name, ds in (("synthetic", synthetic), ("folder", folder)):
            results[f"{name}/untransformed"] = statistics.median(
                _time_raw(ds, args.samples) for _ in range(args.runs)
            )
            results[f"{name}/direct"] = statistics.median(
                _rate_direct(ds, args.samples) for _ in range(args.runs)
            )
            for w in args.workers:
                results[f"{name}/loader_workers={w}"] = statistics.median(
                    _rate_loader(ds, args.samples, w, args.batch) for _ in range(args.runs)
                )
    print(
        json.dumps(
            {
                "unit": "samples/s (median of runs)",
                "size": args.size,
                "crop": crop,
                "samples": args.samples,
                "runs": args.runs,
                "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "results": {k: round(v, 1) for k, v in results.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
