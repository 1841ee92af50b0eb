"""How well the memory model ranks the real peak memory of retraining steps (JSON on stdout).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_model.py --count 20 --repeats 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_model.py --count 20 --multi-path

Architectures: ``--count`` uniformly random genotypes (``autodeeplab.sample.sample_genotypes``,
``--seed``; with ``--multi-path`` uniformly random multi-path topologies), F = 8, 12 layers,
19 classes, default heads, batch 2 at 128x128 by default. Each
measurement runs in a fresh process with one thread: it builds the network and the retraining
optimizer (SGD, momentum 0.9, weight decay) and runs two training steps in the engine's order
(forward, loss, ``zero_grad(set_to_none=True)``, backward, optimizer step). The second step is
the steady state: the previous gradients and the momentum buffers are alive during its forward
pass. Before that, two warm-up steps load the kernels and fill oneDNN's caches, then the
gradients and the momentum are dropped and freed memory is handed back (``malloc_trim``), so
that the measured steps start from the weights alone. What is measured is the peak over both steps above the memory at their start (weights
already resident), two ways, each in its own process:

``profiler``
    PyTorch's profiler memory events (every tensor allocation and free, with its size),
    accumulated in time order. Repeatable to the byte (one thread, same operations) whatever
    the machine's load, and every tensor of both steps is allocated inside the window, so no
    free goes unseen. It sees PyTorch's tensors, not the allocator's overhead or oneDNN's
    scratch space.
``rss``
    The peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``) above the
    resident memory at the start, with glibc's mmap threshold fixed at 64 KiB so that freed
    tensors go back to the system. Sees everything, with its noise.

The figure compared is :func:`autodeeplab.memory.training_memory` without the weights:
activations kept for backward + gradients + momentum + logits (``step_bytes`` below; the input
batch and labels, which the activations include, exist before the measured steps); the JSON also
gives Spearman's correlation of the activation estimate alone and the median ratio of
measured to estimated bytes. Spearman uses average ranks for ties; each measurement is the
median of ``--repeats`` processes.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
from typing import Any

import numpy as np
import torch

STATUS = "/proc/self/status"


def _status_kib(key: str) -> int:
    with open(STATUS) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in {STATUS}")


def _profiler_peak(prof: Any) -> int:
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())  # stable: equal stamps keep their order
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def measure(method: str, genotype: str, f: int, size: int, batch: int, classes: int) -> int:
    """In this (fresh) process: peak bytes of two retraining steps above their start."""
    from torch.profiler import ProfilerActivity, profile

    from autodeeplab.engine.common import global_batch_loss
    from autodeeplab.genotype import Genotype
    from autodeeplab.network import AutoDeepLab

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoDeepLab(Genotype.from_string(genotype), classes, f).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, classes, (batch, size, size))

    def steps() -> None:
        for _ in range(2):
            loss, _ = global_batch_loss(model(x), y, 255, 1)  # the engine's loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    # Warm-up: load the kernels and fill oneDNN's caches once, then go back to weights only
    # (no gradients, no momentum) and hand freed memory back to the system.
    steps()
    opt.zero_grad(set_to_none=True)
    opt.state.clear()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    if method == "profiler":
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            steps()
        return _profiler_peak(prof)
    rss_start = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f_:
        f_.write("5")  # reset the high-water mark to the current resident size
    steps()
    return (_status_kib("VmHWM") - rss_start) * 1024


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(v: list[float]) -> np.ndarray:
        v_arr = np.asarray(v, dtype=float)
        order = np.argsort(v_arr, kind="stable")
        r = np.empty(len(v_arr))
        r[order] = np.arange(len(v_arr))
        for value in np.unique(v_arr):  # ties share their mean rank
            tied = v_arr == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--filter-multiplier", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="square crop side")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--multi-path", action="store_true", help="random multi-path (DiNTS) topologies"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.filter_multiplier, args.size, args.batch, args.classes)
    if args.child:
        print(json.dumps(measure(*args.child, *shape)))
        return

    from autodeeplab.memory import training_memory
    from autodeeplab.network import NetworkConfig
    from autodeeplab.sample import sample_genotypes

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    genotypes = sample_genotypes(
        args.count, args.seed, layers=args.layers, multi_path=args.multi_path
    )
    rows = []
    for g in genotypes:
        config = NetworkConfig(g, args.classes, args.filter_multiplier)
        est = training_memory(config, (args.size, args.size), args.batch)
        runs: dict[str, list[int]] = {"profiler": [], "rss": []}
        for _ in range(args.repeats):
            for method, values in runs.items():
                cmd = [sys.executable, __file__, "--child", method, str(g)]
                cmd += [
                    "--filter-multiplier",
                    str(args.filter_multiplier),
                    "--size",
                    str(args.size),
                ]
                cmd += ["--batch", str(args.batch), "--classes", str(args.classes)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                values.append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = {
            "genotype": str(g),
            "activation_bytes": est.activations.total,
            "step_bytes": est.peak_bytes - est.weight_bytes,
            "profiler_bytes": statistics.median(runs["profiler"]),
            "profiler_spread_bytes": max(runs["profiler"]) - min(runs["profiler"]),
            "rss_bytes": statistics.median(runs["rss"]),
            "rss_spread_bytes": max(runs["rss"]) - min(runs["rss"]),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    def column(key: str) -> list[float]:
        return [r[key] for r in rows]

    summary: dict[str, Any] = {
        "architectures": len(rows),
        "repeats": args.repeats,
        "filter_multiplier": args.filter_multiplier,
        "layers": args.layers,
        "input_size": [args.size, args.size],
        "batch_size": args.batch,
        "seed": args.seed,
        "multi_path": args.multi_path,
    }
    for measured in ("profiler", "rss"):
        m = column(f"{measured}_bytes")
        summary[f"spearman_step_{measured}"] = round(spearman(column("step_bytes"), m), 4)
        summary[f"spearman_activations_{measured}"] = round(
            spearman(column("activation_bytes"), m), 4
        )
        summary[f"median_ratio_{measured}"] = round(
            statistics.median(a / b for a, b in zip(m, column("step_bytes"), strict=True)), 3
        )
    summary.update(torch=torch.__version__, machine=platform.machine(), rows=rows)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
