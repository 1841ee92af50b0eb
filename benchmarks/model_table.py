"""Parameters and Multi-Adds of every model preset, next to the paper's Table 2.

    python benchmarks/model_table.py               # JSON
    python benchmarks/model_table.py --markdown    # the table of the README

Multi-Adds: multiply-accumulates of convolutions (FLOPs / 2), one image, counted with
``FlopCounterMode`` on a meta-device model (no memory, about a second per model).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from autodeeplab.complexity import complexity
from autodeeplab.models import MODELS, model_config


def model_table(num_classes: int, input_size: tuple[int, int]) -> list[dict[str, Any]]:
    rows = []
    for name, spec in MODELS.items():
        c = complexity(model_config(name, num_classes), input_size)
        row: dict[str, Any] = {
            "model": name,
            "path": list(spec.genotype.path),
            "output_stride": spec.genotype.output_stride,
            "filter_multiplier": spec.filter_multiplier,
            **c.to_dict(),
            "paper_params": spec.paper_params,
            "paper_multiply_adds": spec.paper_multiply_adds,
        }
        rows.append(row)
    return rows


def _diff(value: float, paper: float | None) -> str:
    return "" if paper is None else f" ({(value - paper) / paper * 100:+.2f}%)"


def markdown(rows: list[dict[str, Any]]) -> str:
    h, w = rows[0]["input_size"]
    lines = [
        f"| model | path (level per layer) | OS | F | params | paper params "
        f"| Multi-Adds {h}x{w} | paper Multi-Adds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pp, pm = r["paper_params"], r["paper_multiply_adds"]
        lines.append(
            f"| `{r['model']}` | `{'-'.join(map(str, r['path']))}` | {r['output_stride']} "
            f"| {r['filter_multiplier']} "
            f"| {r['params'] / 1e6:.2f}M{_diff(r['params'], pp)} "
            f"| {'' if pp is None else f'{pp / 1e6:.2f}M'} "
            f"| {r['multiply_adds'] / 1e9:.2f}B{_diff(r['multiply_adds'], pm)} "
            f"| {'' if pm is None else f'{pm / 1e9:.2f}B'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=19, help="classes (default: 19)")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=(1024, 2048),
        help="input height and width (default: 1024 2048)",
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    rows = model_table(args.num_classes, tuple(args.input_size))
    print(markdown(rows) if args.markdown else json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
