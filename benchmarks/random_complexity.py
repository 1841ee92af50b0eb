"""Parameters and Multi-Adds of uniformly random architectures: the spread to pick ranges from.

    python benchmarks/random_complexity.py                     # 200 draws, F=20, 19 classes
    python benchmarks/random_complexity.py --num 50 --multiply-adds --input-size 1024 2048

Prints JSON: quantiles of the parameter count (and of the Multi-Adds with --multiply-adds),
the share of output strides, and the same for the largest-of-N control.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any

import numpy as np

from autodeeplab import sample

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def _quantiles(values: list[int]) -> dict[str, float]:
    q = np.quantile(np.asarray(values, dtype=np.float64), QUANTILES)
    return {f"q{int(p * 100):02d}": float(v) for p, v in zip(QUANTILES, q, strict=True)}


def spread(args: argparse.Namespace, largest_of: int) -> dict[str, Any]:
    start = time.perf_counter()
    genotypes = sample.sample_genotypes(
        args.num,
        args.seed,
        layers=args.layers,
        blocks=args.blocks,
        num_classes=args.num_classes,
        filter_multiplier=args.filter_multiplier,
        largest_of=largest_of,
    )
    size = tuple(args.input_size)
    counts = [
        sample.complexity_of(
            g,
            input_size=size,
            num_classes=args.num_classes,
            filter_multiplier=args.filter_multiplier,
            multiply_adds=args.multiply_adds,
        )
        for g in genotypes
    ]
    out: dict[str, Any] = {
        "largest_of": largest_of,
        "params": _quantiles([p for p, _ in counts]),
        "output_stride": dict(sorted(Counter(g.output_stride for g in genotypes).items())),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if args.multiply_adds:
        out["multiply_adds"] = _quantiles([m for _, m in counts if m is not None])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--filter-multiplier", type=int, default=20)
    p.add_argument("--largest-of", type=int, default=4, help="also report this control")
    p.add_argument("--multiply-adds", action="store_true", help="also count Multi-Adds (slow)")
    p.add_argument("--input-size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    args = p.parse_args()
    rows = [spread(args, 1)]
    if args.largest_of > 1:
        rows.append(spread(args, args.largest_of))
    print(json.dumps({"settings": vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
