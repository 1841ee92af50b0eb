"""Seconds per retraining step (forward, global-batch loss, backward, SGD) as JSON on stdout.

    .venv/bin/python benchmarks/train_step.py                       # the demo's retraining size
    .venv/bin/python benchmarks/train_step.py --preset autodeeplab-s --size 321 --batch 2 \
        --threads 2 --steps 3

Uses :meth:`autodeeplab.engine.train.TrainEngine.train_step` on random batches, so the poly
learning rate, drop path and loss are the real ones; data loading is not included. Each thread
count runs ``--runs`` times ``--steps`` steps after ``--warmup`` steps; the median seconds per
step are reported, and the ratio to the first thread count. ``--amp`` also times mixed precision
(``--amp-dtype``: ``float16`` on CUDA, ``bfloat16`` on CUDA or the CPU) and ``--channels-last``
the channels-last layout (``channels_last: true``), each combination interleaved with the plain
float32 step run by run; ``speedup_vs_plain`` is the ratio at the same thread count.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import torch

from autodeeplab.config import TrainConfig, load_config
from autodeeplab.engine.train import TrainEngine
from autodeeplab.genotype import RELEASED, Genotype


def _engine(args: argparse.Namespace, out: str, amp: bool, channels_last: bool) -> TrainEngine:
    overrides = [
        f"output={out}",
        f"device={args.device}",
        f"amp={str(amp).lower()}",
        f"amp_dtype={args.amp_dtype}",
        f"channels_last={str(channels_last).lower()}",
        f"data.options={{length: {2 * args.batch}, size: {args.size}}}",
        f"data.crop_size={args.size}",
        f"data.batch_size={args.batch}",
        "iterations=1000000",
        "progress=false",
        "tensorboard=false",
    ]
    multiplier = args.filter_multiplier or (None if args.preset else 8)
    if multiplier is not None:
        overrides.append(f"model.filter_multiplier={multiplier}")
    cfg = load_config(None, overrides, cls=TrainConfig)
    if args.preset:
        cfg.model.preset = args.preset
    else:
        path = f"{out}/genotype.json"
        Genotype(cell=RELEASED.cell, path=tuple(args.path)).save(path)
        cfg.model.genotype = path
    return TrainEngine(cfg, log=None)


def _time_steps(engine: TrainEngine, args: argparse.Namespace) -> float:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(engine.device)
    masks = torch.randint(0, 7, (args.batch, args.size, args.size), generator=g).to(engine.device)
    for _ in range(args.warmup):
        engine.train_step(images, masks)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        engine.train_step(images, masks)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / args.steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", help="model preset (default: the released cell on --path)")
    p.add_argument("--path", type=int, nargs="+", default=[0, 0, 0, 0], help="levels per layer")
    p.add_argument("--filter-multiplier", type=int, help="F (default: the preset's, 8 for --path)")
    p.add_argument("--size", type=int, default=64, help="square crop size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="also time mixed precision")
    p.add_argument("--channels-last", action="store_true", help="also time channels-last")
    p.add_argument(
        "--amp-dtype",
        choices=("float16", "bfloat16"),
        help="default: float16 on CUDA, bfloat16 on the CPU (where float16 autocast is off)",
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    if args.amp_dtype is None:
        args.amp_dtype = "float16" if args.device.startswith("cuda") else "bfloat16"

    results = []
    modes = [
        (amp, layout)
        for amp in ([False, True] if args.amp else [False])
        for layout in ([False, True] if args.channels_last else [False])
    ]
    for threads in args.threads:
        torch.set_num_threads(threads)
        times: dict[tuple[bool, bool], list[float]] = {mode: [] for mode in modes}
        for _ in range(args.runs):  # the modes alternate, run by run
            for amp, layout in modes:
                with tempfile.TemporaryDirectory() as out:
                    engine = _engine(args, out, amp, layout)
                    if engine.amp != amp:
                        raise SystemExit(f"amp_dtype {args.amp_dtype} is off on {args.device}")
                    times[amp, layout].append(_time_steps(engine, args))
                    engine.close()
        plain = statistics.median(times[False, False])
        for amp, layout in modes:
            median = statistics.median(times[amp, layout])
            results.append(
                {
                    "threads": threads,
                    "amp": amp,
                    "amp_dtype": args.amp_dtype if amp else None,
                    "channels_last": layout,
                    "s_per_step_median": median,
                    "s_per_step_runs": times[amp, layout],
                    "images_per_s": args.batch / median,
                    "speedup_vs_plain": plain / median,
                }
            )
    base = results[0]["s_per_step_median"]
    for r in results:
        r["speedup_vs_first"] = base / r["s_per_step_median"]
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "model": args.preset or {"path": args.path, "cell": "released"},
                "filter_multiplier": args.filter_multiplier,
                "size": args.size,
                "batch": args.batch,
                "device": args.device,
                "torch": torch.__version__,
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
