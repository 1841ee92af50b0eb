"""Supernet step time and peak memory.

Prints one JSON object: for every (input size, thread count, mode) the median seconds per weight
step and per weight + architecture step, the peak memory (RSS on CPU, max allocated on CUDA),
parameter count and FLOPs per weight step. Each configuration runs in a fresh process so that
its peak memory is its own.

One weight step = forward, cross-entropy, backward, SGD step on the weights (architecture
parameters frozen). One weight + arch step = a weight step on a trainA batch followed by a
first-order architecture step (Adam on the architecture parameters, weights frozen) on a trainB
batch. With ``--relaxations dints`` the architecture loss also carries the DiNTS terms at full
weight and, on images, the memory budget (target 0.5), as a DiNTS search's steps do; the
relaxation is built by :data:`autodeeplab.search_model.RELAXATIONS`, as the search engine builds
it (the analytic memory model is for images only: volumes get no budget term).

``--spatial-dims 3`` runs the supernet on volumes (``size`` voxels per side); ``--kernels
plain`` replaces every op by an unfused copy of its registry entry (one module per edge and op,
a DARTS-style mixed op), to compare with the fused kernels.

    python benchmarks/supernet.py --sizes 64 128 --threads 1
    python benchmarks/supernet.py --sizes 321 --modes checkpoint+pc --steps 2
    python benchmarks/supernet.py --spatial-dims 3 --sizes 32 --kernels fused plain --no-arch
    python benchmarks/supernet.py --sizes 64 128 --relaxations softmax dints --steps 7
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = {
    "exact": {},
    "checkpoint": {"checkpoint_cells": True},
    "pc": {"partial_channels": 4},
    "checkpoint+pc": {"checkpoint_cells": True, "partial_channels": 4},
}


def _set_requires_grad(params, flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def _plain_ops() -> tuple[str, ...]:
    """Unfused copies of the paper's ops (same factories, no fusion), registered as
    ``<name>_plain``."""
    from autodeeplab import ops, space

    names = []
    for name in space.PRIMITIVES:
        spec = ops.get_op(name)
        plain = ops.OpSpec(
            f"{name}_plain", spec.factory, spec.parameter_free, None, spec.spatial_dims
        )
        ops.register_op(plain)
        names.append(plain.name)
    return tuple(names)


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from autodeeplab import space
    from autodeeplab.config import DataConfig, RelaxationConfig, SearchConfig, SupernetConfig
    from autodeeplab.search_model import RELAXATIONS, build_memory_budget
    from autodeeplab.supernet import SearchNetwork

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    op_names = _plain_ops() if args.kernel == "plain" else space.PRIMITIVES
    in_channels = 3 if args.spatial_dims == 2 else 1
    cfg = SearchConfig(
        model=SupernetConfig(
            layers=args.layers,
            blocks=args.blocks,
            filter_multiplier=args.filter_multiplier,
            **MODES[args.mode],
        ),
        data=DataConfig(crop_size=args.size, batch_size=args.batch),
        relaxation=RelaxationConfig(
            name=args.relaxation, memory_target=0.5 if args.relaxation == "dints" else None
        ),
    )
    search_space = space.SearchSpace(
        args.layers, args.blocks, ops=tuple(op_names), spatial_dims=args.spatial_dims
    )
    model = SearchNetwork(
        args.num_classes,
        layers=args.layers,
        blocks=args.blocks,
        filter_multiplier=args.filter_multiplier,
        in_channels=in_channels,
        op_names=op_names,
        spatial_dims=args.spatial_dims,
        relaxation=RELAXATIONS[args.relaxation](cfg, search_space),
        **MODES[args.mode],
    ).to(device)
    budget = build_memory_budget(cfg, args.num_classes) if args.spatial_dims == 2 else None
    weights, arch = model.weight_parameters(), model.arch_parameters()
    w_opt = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(arch, lr=3e-3, betas=(0.5, 0.999), weight_decay=1e-3)
    size = (args.size,) * args.spatial_dims
    rss_before = _rss_now()

    def batch():
        x = torch.randn(args.batch, in_channels, *size, device=device)
        y = torch.randint(0, args.num_classes, (args.batch, *size), device=device)
        y[:, :2] = 255
        return x, y

    def w_step():
        _set_requires_grad(arch, False)
        _set_requires_grad(weights, True)
        x, y = batch()
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        w_opt.step()

    def a_step():
        _set_requires_grad(weights, False)
        _set_requires_grad(arch, True)
        x, y = batch()
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        extra = extra_terms()
        loss = loss if extra is None else loss + extra
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        a_opt.step()

    def extra_terms():
        """The relaxation's terms at full weight and the memory budget (None: no terms)."""
        state = model.arch_state()
        extra = model.relaxation.search_loss(state, 1.0)
        if budget is not None:
            term = budget.loss(budget.terms(model.relaxation.edge_probs(state)))
            extra = term if extra is None else extra + term
        return extra

    def terms_step():  # the extra terms alone: forward and backward, no supernet
        _set_requires_grad(arch, True)
        a_opt.zero_grad(set_to_none=True)
        extra_terms().backward()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    model.train()
    for _ in range(args.warmup):
        w_step()
        a_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    w_times = [timed(w_step) for _ in range(args.steps)]
    wa_times = []
    if not args.no_arch:
        wa_times = [timed(lambda: (w_step(), a_step())) for _ in range(args.steps)]
    terms_times = []
    if extra_terms() is not None:
        terms_times = [timed(terms_step) for _ in range(max(args.steps, 20))]

    flops = None
    if args.flops:
        counter = FlopCounterMode(display=False)
        with counter:
            w_step()
        flops = counter.get_total_flops()

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        peak_kind = "cuda_max_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak_kind = "rss"
    return {
        "size": args.size,
        "spatial_dims": args.spatial_dims,
        "kernels": args.kernel,
        "batch": args.batch,
        "threads": args.threads,
        "mode": args.mode,
        "relaxation": args.relaxation,
        "device": str(device),
        "weight_step_s": statistics.median(w_times),
        "weight_step_s_all": [round(t, 4) for t in w_times],
        "weight_arch_step_s": statistics.median(wa_times) if wa_times else None,
        "arch_terms_s": statistics.median(terms_times) if terms_times else None,
        "peak_memory_bytes": peak,
        "peak_memory_gib": round(peak / 2**30, 3),
        "peak_memory_kind": peak_kind,
        "rss_before_steps_bytes": rss_before if device.type == "cpu" else None,
        "weight_parameters": sum(p.numel() for p in weights),
        "arch_parameters": sum(p.numel() for p in arch),
        "flops_per_weight_step": flops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--modes", nargs="+", default=["exact"], choices=sorted(MODES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--filter-multiplier", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--steps", type=int, default=5, help="measured steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-arch", action="store_true", help="skip the weight + arch step timing")
    parser.add_argument("--no-flops", dest="flops", action="store_false")
    parser.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--kernels", nargs="+", default=["fused"], choices=("fused", "plain"))
    parser.add_argument("--kernel", help=argparse.SUPPRESS)
    parser.add_argument(
        "--relaxations", nargs="+", default=["softmax"], choices=["softmax", "dints"]
    )
    parser.add_argument("--relaxation", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        args.threads = args.threads[0]
        print(json.dumps(run_one(args)))
        return

    results = []
    for size in args.sizes:
        for threads, mode, kernel, relaxation in itertools.product(
            args.threads, args.modes, args.kernels, args.relaxations
        ):
            cmd = [sys.executable, __file__, "--child", "--size", str(size), "--mode", mode]
            cmd += ["--kernel", kernel, "--spatial-dims", str(args.spatial_dims)]
            cmd += ["--relaxation", relaxation]
            cmd += ["--threads", str(threads), "--batch", str(args.batch)]
            cmd += ["--layers", str(args.layers), "--blocks", str(args.blocks)]
            cmd += ["--filter-multiplier", str(args.filter_multiplier)]
            cmd += ["--num-classes", str(args.num_classes), "--steps", str(args.steps)]
            cmd += ["--warmup", str(args.warmup), "--device", args.device]
            cmd += ["--no-arch"] * args.no_arch + ["--no-flops"] * (not args.flops)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                results.append(
                    {
                        "size": size,
                        "threads": threads,
                        "mode": mode,
                        "kernels": kernel,
                        "relaxation": relaxation,
                        "error": out.stderr[-2000:],
                    }
                )
            else:
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"benchmark": "supernet", "results": results}, indent=2))


if __name__ == "__main__":
    main()
