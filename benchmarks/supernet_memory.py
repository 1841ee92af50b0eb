"""Where the supernet's peak memory on the CPU comes from, phase by phase.

Runs the search loop of ``benchmarks/supernet.py`` (weight step: forward, backward, SGD step,
gradients freed; architecture step: the same with Adam on the architecture parameters) in this
process and prints one JSON object with:

* ``phases``: after each phase (import, model built, each forward, backward and optimizer step
  of two rounds) the resident set size, the peak RSS so far and glibc's count of the bytes
  handed out by ``malloc`` (in the heap and in separate mappings): the live memory;
* ``live_peak``: the largest live count seen by a sampling thread (every 2 ms) and the phase it
  happened in (the phase named is the last one *finished*, the peak is in the next one);
* ``bytes``: the parameter state (weights, gradients, SGD momentum) and, in the exact mode, the
  activations that autograd saves in one weight-step forward pass (distinct storages,
  parameters excluded; under selective checkpointing the checkpoint's own hooks decide what is
  kept, so the count is left out).

RSS minus live memory is what the allocator keeps after ``free`` (glibc keeps freed blocks in its
heap until it can give back the top) plus the libraries' own pages. Linux with glibc only.

    python benchmarks/supernet_memory.py --size 64
    python benchmarks/supernet_memory.py --size 64 --mode selective
    MALLOC_MMAP_THRESHOLD_=32768 python benchmarks/supernet_memory.py --size 64
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import threading
import time

GIB = 2**30


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            [
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            ]
        )
    ]


def _libc():
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        raise SystemExit("this benchmark needs glibc 2.33 or newer (mallinfo2)")
    libc.mallinfo2.restype = _MallInfo2
    return libc


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--mode", choices=("exact", "selective"), default="exact")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--filter-multiplier", type=int, default=8)
    args = parser.parse_args()
    libc = _libc()

    def live() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd  # in use in the heap + separately mapped blocks

    phases: list[dict] = []
    sampled = {"bytes": 0, "after": None}

    def mark(name: str) -> None:
        phases.append(
            {
                "phase": name,
                "rss_gib": round(_rss() / GIB, 3),
                "peak_rss_gib": round(_peak_rss() / GIB, 3),
                "live_gib": round(live() / GIB, 3),
            }
        )

    def sampler() -> None:
        while True:
            now = live()
            if now > sampled["bytes"]:
                sampled["bytes"], sampled["after"] = now, phases[-1]["phase"]
            time.sleep(0.002)

    mark("start")
    threading.Thread(target=sampler, daemon=True).start()
    import torch
    import torch.nn.functional as F

    from autodeeplab.supernet import SearchNetwork

    torch.set_num_threads(1)
    mark("import torch, autodeeplab")
    torch.manual_seed(0)
    model = SearchNetwork(
        19,
        layers=args.layers,
        filter_multiplier=args.filter_multiplier,
        selective_checkpoint=args.mode == "selective",
    ).train()
    weights, arch = model.weight_parameters(), model.arch_parameters()
    w_opt = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(arch, lr=3e-3, betas=(0.5, 0.999), weight_decay=1e-3)
    mark("model built")

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(args.batch, 3, args.size, args.size)
        y = torch.randint(0, 19, (args.batch, args.size, args.size))
        return x, y

    def step(train, frozen, opt, name: str) -> None:
        for p in frozen:
            p.requires_grad_(False)
        for p in train:
            p.requires_grad_(True)
        x, y = batch()
        loss = F.cross_entropy(model(x), y)
        mark(f"{name} forward")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        del loss
        mark(f"{name} backward")
        opt.step()
        opt.zero_grad(set_to_none=True)
        mark(f"{name} optimizer step")

    for round_ in range(2):
        step(weights, arch, w_opt, f"{round_}: weight step")
        step(arch, weights, a_opt, f"{round_}: arch step")

    # activations saved by autograd in one weight-step forward pass
    params = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    for p in weights:
        p.requires_grad_(True)
    for p in arch:
        p.requires_grad_(False)
    if args.mode == "exact":
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            x, y = batch()
            F.cross_entropy(model(x), y)
    weight_bytes = sum(p.numel() * p.element_size() for p in weights)
    print(
        json.dumps(
            {
                "size": args.size,
                "mode": args.mode,
                "batch": args.batch,
                "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                "live_peak": {
                    "gib": round(sampled["bytes"] / GIB, 3),
                    "after_phase": sampled["after"],
                },
                "bytes": {
                    "weight_parameters": sum(p.numel() for p in weights),
                    "weights_gib": round(weight_bytes / GIB, 3),
                    "weight_gradients_gib": round(weight_bytes / GIB, 3),
                    "sgd_momentum_gib": round(weight_bytes / GIB, 3),
                    "saved_activations_weight_step_gib": (
                        round(sum(saved.values()) / GIB, 3) if args.mode == "exact" else None
                    ),
                },
                "phases": phases,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
