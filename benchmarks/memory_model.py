"""How well the activation-memory model ranks the real peak memory of retraining steps (JSON).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_model.py --count 20 --repeats 3

Architectures: ``--count`` uniformly random genotypes (``autodeeplab.sample.sample_genotypes``,
``--seed``), F = 8, 12 layers, 19 classes, default heads, batch 2 at 128x128 by default. For
each one, ``--repeats`` fresh processes (one thread each) build the network and an SGD
optimizer (momentum 0.9, as the retraining engine), run one warm-up step (so that the momentum
buffers and the gradients exist, as in any later step), then measure a second step in the
engine's order (forward, loss, ``zero_grad(set_to_none=True)``, backward, optimizer step):

``profiler``
    PyTorch's profiler memory events (every allocation and free of a tensor, with its size),
    accumulated in time order: the peak of the live bytes above the start of the step. Exact
    and repeatable (one thread, same operations), unaffected by the machine's load; it sees
    the tensors PyTorch allocates, not the allocator's own overhead.
``rss``
    The peak resident memory of the process during the step (``VmHWM`` after resetting it
    through ``/proc/self/clear_refs``) above the resident memory at its start, with glibc's
    mmap threshold fixed at 64 KiB so that freed tensors go back to the system. Includes what
    the profiler does not see (oneDNN scratch space, the allocator), and its noise.

The estimates are :func:`autodeeplab.memory.training_memory` (activations kept for backward;
weights, gradients and momentum). The step's peak above its start holds the activations plus
transient buffers (the weights, the previous gradients and the momentum are already there),
so the figure compared with both measurements is the activation estimate; the JSON also gives
the median ratio of measured to estimated bytes. Spearman's rank correlation is computed with
average ranks for ties; each measurement is the median of the repeats.
"""

from __future__ import annotations

import argparse
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


def measure(genotype: str, f: int, size: int, batch: int, classes: int) -> dict[str, int]:
    """In this (fresh) process: peak memory of one retraining step above its start."""
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from autodeeplab.genotype import Genotype
    from autodeeplab.network import AutoDeepLab

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoDeepLab(Genotype.from_string(genotype), classes, f).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, classes, (batch, size, size))

    def step() -> None:
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: momentum buffers, gradients, lazy initialisation
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    profiler_peak = _profiler_peak(prof)
    del prof
    rss_start = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f_:
        f_.write("5")  # reset the high-water mark to the current resident size
    step()
    rss_peak = _status_kib("VmHWM")
    return {"profiler": profiler_peak, "rss": (rss_peak - rss_start) * 1024}


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
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.filter_multiplier, args.size, args.batch, args.classes)
    if args.child:
        print(json.dumps(measure(args.child, *shape)))
        return

    from autodeeplab.memory import training_memory
    from autodeeplab.network import NetworkConfig
    from autodeeplab.sample import sample_genotypes

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    genotypes = sample_genotypes(args.count, args.seed, layers=args.layers)
    rows = []
    for g in genotypes:
        config = NetworkConfig(g, args.classes, args.filter_multiplier)
        est = training_memory(config, (args.size, args.size), args.batch)
        runs = []
        for _ in range(args.repeats):
            cmd = [sys.executable, __file__, "--child", str(g)]
            cmd += ["--filter-multiplier", str(args.filter_multiplier), "--size", str(args.size)]
            cmd += ["--batch", str(args.batch), "--classes", str(args.classes)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = {
            "genotype": str(g),
            "estimate_activation_bytes": est.activations.total,
            "estimate_peak_bytes": est.peak_bytes,
            "profiler_step_peak_bytes": statistics.median(r["profiler"] for r in runs),
            "rss_step_peak_bytes": statistics.median(r["rss"] for r in runs),
            "rss_spread_bytes": max(r["rss"] for r in runs) - min(r["rss"] for r in runs),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    est = [r["estimate_activation_bytes"] for r in rows]
    summary = {
        "architectures": len(rows),
        "repeats": args.repeats,
        "filter_multiplier": args.filter_multiplier,
        "layers": args.layers,
        "input_size": [args.size, args.size],
        "batch_size": args.batch,
        "seed": args.seed,
        "spearman_profiler": round(spearman(est, [r["profiler_step_peak_bytes"] for r in rows]), 4),
        "spearman_rss": round(spearman(est, [r["rss_step_peak_bytes"] for r in rows]), 4),
        "median_ratio_profiler": round(
            statistics.median(
                r["profiler_step_peak_bytes"] / r["estimate_activation_bytes"] for r in rows
            ),
            3,
        ),
        "median_ratio_rss": round(
            statistics.median(
                r["rss_step_peak_bytes"] / r["estimate_activation_bytes"] for r in rows
            ),
            3,
        ),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "rows": rows,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
