"""Memory of whole-image and tiled inference on the CPU, in GiB (JSON lines on stdout).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inference_memory.py --preset autodeeplab-s \\
        --sizes 512x512 1024x1024 1024x2048 --tile-above 1

Each measurement runs in a fresh process: the growth of its peak resident memory over one
no-grad forward pass of ``predict_logits`` (random weights, 19 classes, batch 1), after a small
warm-up pass. ``--tile-above`` (megapixels) adds a run of every size through automatic tiling.
These figures are the basis of ``autodeeplab.inference.DEFAULT_TILE_ABOVE``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys

import torch


def measure(preset: str, height: int, width: int, tile_above: int | None) -> dict:
    """Run in this process: peak memory growth of one forward pass."""
    from autodeeplab.inference import predict_logits
    from autodeeplab.models import create_model

    torch.set_num_threads(1)
    model = create_model(preset, 19).eval()
    predict_logits(model, torch.zeros(1, 3, 64, 64))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    x = torch.zeros(1, 3, height, width)
    logits = predict_logits(model, x, tile_above=tile_above)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "preset": preset,
        "size": [height, width],
        "megapixels": round(height * width / 1e6, 3),
        "tile_above": tile_above,
        "peak_growth_gib": round((peak - base) / 2**20, 3),
        "logits_gib": round(logits.numel() * logits.element_size() / 2**30, 3),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="autodeeplab-s")
    parser.add_argument("--sizes", nargs="+", default=["512x512", "1024x1024", "1024x2048"])
    parser.add_argument("--tile-above", type=float, help="also measure tiling (megapixels)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement in this fresh process
        h, w, tile = (int(v) for v in args.child)
        print(json.dumps(measure(args.preset, h, w, tile or None)))
        return
    tiles = [0] + ([round(args.tile_above * 1e6)] if args.tile_above else [])
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        for tile in tiles:
            cmd = [sys.executable, __file__, "--preset", args.preset, "--child", str(h), str(w)]
            out = subprocess.run([*cmd, str(tile)], capture_output=True, text=True, check=True)
            print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
