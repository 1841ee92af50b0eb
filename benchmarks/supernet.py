"""Supernet step time and peak memory.

Prints one JSON object: for every (input size, thread count, mode) the median seconds per weight
step and per weight + architecture step, the peak memory (RSS on CPU, max allocated on CUDA),
parameter count and FLOPs per weight step. Each configuration runs in a fresh process so that
its peak memory is its own.

One weight step = forward, cross-entropy, backward, SGD step on the weights (architecture
parameters frozen), gradients freed. One weight + arch step = a weight step on a trainA batch followed by a
first-order architecture step (Adam on the architecture parameters, weights frozen) on a trainB
batch. With ``--relaxations dints`` the architecture loss also carries the DiNTS terms at full
weight and, on images, the memory budget (target 0.5), as a DiNTS search's steps do; the
relaxation is built by :data:`autodeeplab.search_model.RELAXATIONS`, as the search engine builds
it (the analytic memory model is for images only: volumes get no budget term).

``--compare-port PATH`` also times the supernet of the widely used public PyTorch port
(NoamRosenberg/autodeeplab, a checkout at PATH, imported from there at run time) with the same
F, L, B, batch, input size and threads, its weight step and weight + arch step as its own search
loop does them (no parameters frozen: its weight step also computes the architecture gradients
and its architecture step the weight gradients). The processes of the two implementations
alternate (``--repeats`` rounds); the JSON gives the medians over the rounds and the ratios,
of wall-clock time and of the process's CPU time (one thread: the CPU time leaves out the time
other jobs on a shared machine take the core away). ``--pin-cpus`` pins every measured process
to the given cores.

``--modes compiled`` is the exact supernet compiled whole with ``torch.compile`` (one graph,
static shapes, backward through AOTAutograd; ``--compile-mode`` picks torch.compile's mode, e.g.
``reduce-overhead`` for CUDA graphs on a GPU); ``first_weight_step_s`` and ``first_arch_step_s``
hold the first steps, which include the compilation, and ``steady_peak_rss_bytes`` the peak RSS
of the measured steps alone. ``--modes channels-last`` is the exact supernet with its parameters
and input in channels-last layout; ``--modes bf16`` runs its forward passes under bfloat16
autocast (the search's ``amp: true``), also combined as ``bf16+channels-last`` and
``bf16+compiled``; ``--malloc-mmap-threshold BYTES`` runs every measured process with glibc's
``MALLOC_MMAP_THRESHOLD_`` (docs/supernet.md: where the peak memory goes).

``--spatial-dims 3`` runs the supernet on volumes (``size`` voxels per side); ``--kernels
plain`` replaces every op by an unfused copy of its registry entry (one module per edge and op,
a DARTS-style mixed op), to compare with the fused kernels. ``--paths trellis 0-0-0-0`` times
the paper's supernet and the supernet of a cell-only search on a fixed path (``model.path``) side
by side.

    python benchmarks/supernet.py --sizes 64 128 --threads 1
    python benchmarks/supernet.py --sizes 321 --modes checkpoint+pc --steps 2
    python benchmarks/supernet.py --spatial-dims 3 --sizes 32 --kernels fused plain --no-arch
    python benchmarks/supernet.py --sizes 64 128 --relaxations softmax dints --steps 7
    python benchmarks/supernet.py --sizes 64 --paths trellis constant-4 deeplabv3 --repeats 3
    python benchmarks/supernet.py --sizes 64 128 --compare-port /path/to/autodeeplab-port --repeats 3
    python benchmarks/supernet.py --sizes 64 --modes exact compiled --repeats 3 --no-flops --pin-cpus 1
    python benchmarks/supernet.py --device cuda --sizes 321 --modes exact compiled --compile-mode reduce-overhead
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
    "selective": {"selective_checkpoint": True},
    # the exact supernet with the model and the input in channels-last layout (a lever measured
    # on the CPU, not a constructor option: see docs/supernet.md)
    "channels-last": {"memory_format": "channels_last"},
    # the exact supernet's whole forward pass compiled with torch.compile (one graph, static
    # shapes, backward through AOTAutograd; a lever measured on the CPU: docs/supernet.md)
    "compiled": {"compile": True},
    # the exact supernet's forward passes under bfloat16 autocast (the search's ``amp: true``;
    # parameters, gradients and optimizer states stay float32), alone and with the levers above
    "bf16": {"autocast": True},
    "bf16+channels-last": {"autocast": True, "memory_format": "channels_last"},
    "bf16+compiled": {"autocast": True, "compile": True},
}
PORT = "port"  # the kernel name of the public port's supernet in the results
TRELLIS = "trellis"  # the path value of the paper's supernet (model.path: null)
PORT_CONFIG = ("exact", PORT, "softmax", TRELLIS)  # (mode, kernels, relaxation, path)


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


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
    """Restart the kernel's count of this process's peak RSS (Linux ``clear_refs``); False
    where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _port_model(path: str, num_classes: int, layers: int, filter_multiplier: int, blocks: int):
    """The public port's ``AutoDeeplab`` supernet, imported from the checkout at ``path``.

    Its operations module imports a CUDA-only in-place ABN extension that the search supernet
    never instantiates: a stand-in module takes its place. Its forward pass allocates a tensor
    with ``.cuda()``; on a CPU run ``Tensor.cuda`` returns the tensor itself (in this benchmark
    process only).
    """
    import types

    import torch

    if not os.path.isfile(os.path.join(path, "auto_deeplab.py")):
        raise SystemExit(
            f"--compare-port {path}: no auto_deeplab.py there (a checkout of the port)"
        )
    sys.path.insert(0, os.path.abspath(path))
    stand_in = types.ModuleType("modeling.modules")

    class InPlaceABNSync:  # never built by the search supernet
        def __init__(self, *args, **kwargs):
            raise RuntimeError("in-place ABN is not available in this benchmark")

    stand_in.InPlaceABNSync = InPlaceABNSync
    sys.modules["modeling.modules"] = stand_in
    import auto_deeplab

    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    return auto_deeplab.AutoDeeplab(num_classes, layers, None, filter_multiplier, 5, blocks)


def run_one(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from autodeeplab import ops, space
    from autodeeplab.config import DataConfig, RelaxationConfig, SearchConfig, SupernetConfig
    from autodeeplab.engine.common import fused_optimizer
    from autodeeplab.search_model import RELAXATIONS, build_memory_budget
    from autodeeplab.supernet import SearchNetwork

    torch.set_num_threads(args.threads)
    if args.pin_cpus:
        os.sched_setaffinity(0, args.pin_cpus)
    torch.manual_seed(0)
    device = torch.device(args.device)
    in_channels = 3 if args.spatial_dims == 2 else 1
    port = args.kernel == PORT
    budget = None
    memory_format = None
    compiled = False
    amp = False
    if port:
        model = _port_model(
            args.port, args.num_classes, args.layers, args.filter_multiplier, args.blocks
        ).to(device)
    else:
        op_names = _plain_ops() if args.kernel == "plain" else space.PRIMITIVES
        path = None if args.path == TRELLIS else space.parse_path(args.path, args.layers)
        cfg = SearchConfig(
            model=SupernetConfig(  # PC-DARTS' partial channels decide the edge normalisation
                layers=args.layers,
                blocks=args.blocks,
                filter_multiplier=args.filter_multiplier,
                partial_channels=MODES[args.mode].get("partial_channels", 1),
                path=path,
            ),
            data=DataConfig(crop_size=args.size, batch_size=args.batch),
            relaxation=RelaxationConfig(
                name=args.relaxation, memory_target=0.5 if args.relaxation == "dints" else None
            ),
        )
        search_space = space.SearchSpace(
            args.layers, args.blocks, ops=tuple(op_names), spatial_dims=args.spatial_dims, path=path
        )
        options = dict(MODES[args.mode])
        layout = options.pop("memory_format", None)
        compiled = options.pop("compile", False)
        amp = options.pop("autocast", False)
        model = SearchNetwork(
            args.num_classes,
            layers=args.layers,
            blocks=args.blocks,
            filter_multiplier=args.filter_multiplier,
            in_channels=in_channels,
            op_names=op_names,
            spatial_dims=args.spatial_dims,
            relaxation=RELAXATIONS[args.relaxation](cfg, search_space),
            path=path,
            **options,
        ).to(device)
        if layout is not None:
            memory_format = ops.layers(args.spatial_dims).channels_last
            model = model.to(memory_format=memory_format)
        if args.spatial_dims == 2:
            budget = build_memory_budget(cfg, args.num_classes)
    weights, arch = model.weight_parameters(), model.arch_parameters()
    if not port and compiled:
        # the parameters stay those of ``model``; the weight step and the architecture step
        # freeze different parameters, so each gets its own graph (compiled in its first step)
        # one graph (a graph break is an error), static shapes, backward through AOTAutograd
        model = torch.compile(
            model,
            fullgraph=True,
            dynamic=False,
            mode=None if args.compile_mode == "default" else args.compile_mode,
        )
    # the optimizers as the search engine builds them; the port's as its search loop does (its
    # Adam with the default betas, neither fused)
    fused = False if port else fused_optimizer(device)
    w_opt = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4, fused=fused)
    a_betas = (0.9, 0.999) if port else (0.5, 0.999)
    a_opt = torch.optim.Adam(arch, lr=3e-3, betas=a_betas, weight_decay=1e-3, fused=fused)
    size = (args.size,) * args.spatial_dims
    rss_before = _rss_now()

    def batch():
        x = torch.randn(args.batch, in_channels, *size, device=device)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        y = torch.randint(0, args.num_classes, (args.batch, *size), device=device)
        y[:, :2] = 255
        return x, y

    def forward(x):
        """The logits in float32: under bfloat16 autocast in the ``bf16`` modes, as the search
        engine's ``amp`` runs them."""
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return model(x).float()

    def w_step():
        if not port:  # the port's loop freezes nothing
            _set_requires_grad(arch, False)
            _set_requires_grad(weights, True)
        x, y = batch()
        loss = F.cross_entropy(forward(x), y, ignore_index=255)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        w_opt.step()
        # the gradients are not needed after the step: freed here, they do not occupy memory
        # during the architecture step and the next forward pass
        w_opt.zero_grad(set_to_none=True)

    def a_step():
        if not port:
            _set_requires_grad(weights, False)
            _set_requires_grad(arch, True)
        x, y = batch()
        loss = F.cross_entropy(forward(x), y, ignore_index=255)
        extra = None if port else extra_terms()
        loss = loss if extra is None else loss + extra
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        a_opt.step()
        a_opt.zero_grad(set_to_none=True)

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

    cpu_times: list[float] = []

    def timed(fn) -> float:
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        cpu_times.append(time.process_time() - c0)
        return time.perf_counter() - t0

    model.train()
    # the first steps separately: with --modes compiled they include the compilation
    first_w = timed(w_step) if args.warmup else None
    first_a = timed(a_step) if args.warmup else None
    first_cpu = cpu_times[:]
    cpu_times.clear()
    for _ in range(args.warmup - 1):
        w_step()
        a_step()
    rss_after_warmup = _rss_now()
    # the peak of the steps after the warm-up alone (without the compilation of --modes compiled)
    peak_warmup = _peak_rss() if device.type == "cpu" else None
    steady_peak = device.type == "cpu" and _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    w_times = [timed(w_step) for _ in range(args.steps)]
    w_cpu = cpu_times[:]
    wa_times = []
    if not args.no_arch:
        wa_times = [timed(lambda: (w_step(), a_step())) for _ in range(args.steps)]
    wa_cpu = cpu_times[len(w_cpu) :]
    terms_times = []
    if not port and extra_terms() is not None:
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
        peak = max(peak_warmup, _peak_rss())
        peak_kind = "rss"
    return {
        "size": args.size,
        "spatial_dims": args.spatial_dims,
        "kernels": args.kernel,
        "batch": args.batch,
        "threads": args.threads,
        "mode": PORT if port else args.mode,
        "relaxation": None if port else args.relaxation,
        "path": TRELLIS if port else args.path,
        "device": str(device),
        "compile_mode": args.compile_mode if args.mode == "compiled" else None,
        # wall / CPU seconds of the first weight step and the first architecture step (with
        # --modes compiled: the compilation of its graph included)
        "first_weight_step_s": first_w,
        "first_arch_step_s": first_a,
        "first_steps_cpu_s": first_cpu,
        "weight_step_s": statistics.median(w_times),
        "weight_step_s_all": [round(t, 4) for t in w_times],
        "weight_arch_step_s": statistics.median(wa_times) if wa_times else None,
        # CPU seconds of this process: less sensitive than wall time to other jobs on the machine
        "weight_step_cpu_s": statistics.median(w_cpu),
        "weight_arch_step_cpu_s": statistics.median(wa_cpu) if wa_cpu else None,
        "arch_terms_s": statistics.median(terms_times) if terms_times else None,
        "peak_memory_bytes": peak,
        "peak_memory_gib": round(peak / 2**30, 3),
        "peak_memory_kind": peak_kind,
        # peak RSS of the measured steps alone (after the warm-up; None: not measurable)
        "steady_peak_rss_bytes": _peak_rss() if steady_peak else None,
        "rss_before_steps_bytes": rss_before if device.type == "cpu" else None,
        "rss_after_warmup_bytes": rss_after_warmup if device.type == "cpu" else None,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "weight_parameters": sum(p.numel() for p in weights),
        "arch_parameters": sum(p.numel() for p in arch),
        "flops_per_weight_step": flops,
    }


def _child_command(
    args: argparse.Namespace,
    size: int,
    threads: int,
    mode: str,
    kernel: str,
    relaxation: str,
    path: str,
):
    cmd = [sys.executable, __file__, "--child", "--size", str(size), "--mode", mode]
    cmd += ["--kernel", kernel, "--spatial-dims", str(args.spatial_dims)]
    cmd += ["--relaxation", relaxation, "--path", path]
    cmd += ["--threads", str(threads), "--batch", str(args.batch)]
    cmd += ["--layers", str(args.layers), "--blocks", str(args.blocks)]
    cmd += ["--filter-multiplier", str(args.filter_multiplier)]
    cmd += ["--num-classes", str(args.num_classes), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--device", args.device]
    cmd += ["--compile-mode", args.compile_mode]
    cmd += ["--no-arch"] * args.no_arch + ["--no-flops"] * (not args.flops)
    if args.pin_cpus:
        cmd += ["--pin-cpus", *map(str, args.pin_cpus)]
    if kernel == PORT:
        cmd += ["--port", args.compare_port]
    return cmd


def _median_over_rounds(runs: list[dict]) -> dict:
    """One configuration's result: the median over its processes (rounds) of each process's
    median step time, and the largest peak memory."""
    out = dict(runs[0])
    for key in (
        "weight_step_s",
        "weight_arch_step_s",
        "weight_step_cpu_s",
        "weight_arch_step_cpu_s",
    ):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
        out[f"{key}_rounds"] = [round(v, 4) for v in values]
    out["peak_memory_bytes"] = max(r["peak_memory_bytes"] for r in runs)
    out["peak_memory_gib"] = round(out["peak_memory_bytes"] / 2**30, 3)
    steady = [r["steady_peak_rss_bytes"] for r in runs if r.get("steady_peak_rss_bytes")]
    out["steady_peak_rss_bytes"] = max(steady) if steady else None
    for key in ("first_weight_step_s", "first_arch_step_s"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
        out[f"{key}_rounds"] = [round(v, 2) for v in values]
    out["rounds"] = len(runs)
    return out


def _ratios(port: dict, ours: dict) -> dict:
    """How many times faster than the port, and the peak memory as a fraction of the port's."""

    def faster(key: str) -> float | None:
        if port.get(key) is None or ours.get(key) is None:
            return None
        return round(port[key] / ours[key], 3)

    return {
        "size": ours["size"],
        "weight_step_cpu_speedup": faster("weight_step_cpu_s"),
        "weight_arch_step_cpu_speedup": faster("weight_arch_step_cpu_s"),
        "threads": ours["threads"],
        "mode": ours["mode"],
        "kernels": ours["kernels"],
        "relaxation": ours["relaxation"],
        "path": ours["path"],
        "weight_step_speedup": faster("weight_step_s"),
        "weight_arch_step_speedup": faster("weight_arch_step_s"),
        "peak_memory_fraction_of_port": round(
            ours["peak_memory_bytes"] / port["peak_memory_bytes"], 3
        ),
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
    parser.add_argument(
        "--warmup", type=int, default=1, help="steps before the measured ones (at least 1)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-arch", action="store_true", help="skip the weight + arch step timing")
    parser.add_argument("--no-flops", dest="flops", action="store_false")
    parser.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--kernels", nargs="+", default=["fused"], choices=("fused", "plain"))
    parser.add_argument(
        "--relaxations", nargs="+", default=["softmax"], choices=["softmax", "dints"]
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        default=[TRELLIS],
        metavar="PATH",
        help=f"{TRELLIS!r} (the whole trellis, the paper's supernet) and/or fixed paths to search "
        "the cell alone on (model.path: levels such as 0-0-1-2, or a hand-designed family)",
    )
    parser.add_argument(
        "--compare-port",
        metavar="PATH",
        help="a checkout of the public port (NoamRosenberg/autodeeplab): time its supernet too",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of fresh processes per configuration, alternating between configurations",
    )
    parser.add_argument(
        "--pin-cpus",
        type=int,
        nargs="+",
        metavar="CPU",
        help="run every measured process on these CPU cores only (os.sched_setaffinity)",
    )
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        metavar="BYTES",
        help="run every measured process with MALLOC_MMAP_THRESHOLD_=BYTES (glibc: blocks of "
        "at least BYTES are mapped and unmapped on their own, so freed tensors go back to the "
        "system instead of staying in the heap)",
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        help="torch.compile mode of --modes compiled (reduce-overhead: CUDA graphs, CUDA only)",
    )
    parser.add_argument("--kernel", help=argparse.SUPPRESS)
    parser.add_argument("--relaxation", help=argparse.SUPPRESS)
    parser.add_argument("--path", default=TRELLIS, help=argparse.SUPPRESS)
    parser.add_argument("--port", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error(f"--warmup must be at least 1, got {args.warmup}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.malloc_mmap_threshold is not None and args.malloc_mmap_threshold < 0:
        parser.error(
            f"--malloc-mmap-threshold must be a number of bytes >= 0, got "
            f"{args.malloc_mmap_threshold}"
        )
    if args.compare_port is not None:
        if args.spatial_dims != 2:
            parser.error("--compare-port: the port's supernet is 2D only (--spatial-dims 2)")
        if not os.path.isfile(os.path.join(args.compare_port, "auto_deeplab.py")):
            parser.error(
                f"--compare-port {args.compare_port}: no auto_deeplab.py there; give a checkout "
                "of NoamRosenberg/autodeeplab"
            )

    if args.child:
        args.threads = args.threads[0]
        print(json.dumps(run_one(args)))
        return

    results, comparisons = [], []
    for size, threads in itertools.product(args.sizes, args.threads):
        configs = list(itertools.product(args.modes, args.kernels, args.relaxations, args.paths))
        if args.compare_port is not None:
            # the mode, relaxation and path are ignored for the port
            configs.insert(0, PORT_CONFIG)
        runs: dict[tuple[str, str, str, str], list[dict]] = {c: [] for c in configs}
        errors = []
        for _ in range(args.repeats):
            for config in configs:  # alternate: one process of each per round
                mode, kernel, relaxation, path = config
                cmd = _child_command(args, size, threads, mode, kernel, relaxation, path)
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                if args.malloc_mmap_threshold is not None:
                    env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    error = {"size": size, "threads": threads, "mode": mode, "kernels": kernel}
                    error.update(relaxation=relaxation, path=path)
                    errors.append({**error, "error": out.stderr[-2000:]})
                    print(json.dumps(errors[-1]), file=sys.stderr)
                    continue
                runs[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[config][-1]), file=sys.stderr)
        merged = {c: _median_over_rounds(r) for c, r in runs.items() if r}
        results += list(merged.values()) + errors
        port = merged.get(PORT_CONFIG)
        if port is not None:
            comparisons += [_ratios(port, r) for c, r in merged.items() if c[1] != PORT]
    report = {"benchmark": "supernet", "results": results}
    if args.compare_port is not None:
        report["compared_with_port"] = comparisons
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
