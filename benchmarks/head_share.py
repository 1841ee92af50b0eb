"""How much of a retrained network the heads hold: parameters and Multi-Adds by part, for a
training config's head settings next to the paper's (256, 256, 48; DeepLab's rates).

    python benchmarks/head_share.py                                   # synthetic config, JSON
    python benchmarks/head_share.py --config configs/train/synthetic.yaml --markdown
    python benchmarks/head_share.py --genotype runs/demo/genotype.json --num-classes 7

Without ``--genotype`` it uses a fixed set of 4-layer, 3-block architectures (the released
cell's first three blocks on four paths, and the genotype the demo's search found with seed
0). Multi-Adds are counted at the config's crop size on a meta-device model (no memory).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from autodeeplab.complexity import complexity
from autodeeplab.config import TrainConfig, TrainModelConfig, load_config
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.heads import resolve_atrous_rates
from autodeeplab.network import NetworkConfig

ROOT = Path(__file__).resolve().parents[1]
DEMO_SEED0 = (
    "path=0-0-0-0|cell=0:max_pool_3x3+1:atr_conv_3x3/1:atr_conv_3x3+2:atr_conv_5x5/"
    "2:sep_conv_5x5+3:atr_conv_5x5"
)
PATHS = ((0, 0, 0, 0), (0, 0, 1, 2), (0, 1, 1, 0), (0, 1, 2, 3))
PAPER_HEADS = TrainModelConfig()  # 256, 256, 48 and DeepLab's rates


def default_genotypes() -> list[Genotype]:
    cell = RELEASED.cell[:3]
    return [Genotype.from_string(DEMO_SEED0)] + [Genotype(cell=cell, path=p) for p in PATHS]


def network(
    heads: TrainModelConfig, genotype: Genotype, multiplier: int, classes: int, crop: int
) -> NetworkConfig:
    """The network ``genotype`` gets with the head settings of ``heads``."""
    rates = resolve_atrous_rates(heads.aspp_rates, genotype.output_stride, crop)
    return NetworkConfig(
        genotype=genotype,
        num_classes=classes,
        filter_multiplier=multiplier,
        aspp_channels=heads.aspp_channels,
        aspp_rates=None if heads.aspp_rates == "paper" else rates,
        decoder_channels=heads.decoder_channels,
        low_level_reduced=heads.low_level_reduced,
    )


def head_share(cfg: TrainConfig, genotype: Genotype, classes: int) -> list[dict[str, Any]]:
    """Rows for the paper's heads and for the config's heads on ``genotype``."""
    crop, multiplier = cfg.data.crop_size, cfg.model.filter_multiplier or 20
    rows = []
    for name, heads in (("paper", PAPER_HEADS), ("config", cfg.model)):
        net = network(heads, genotype, multiplier, classes, crop)
        c = complexity(net, (crop, crop))
        p, m = c.params_by_part, c.multiply_adds_by_part
        rows.append(
            {
                "genotype": str(genotype),
                "heads": name,
                "widths": [net.aspp_channels, net.decoder_channels, net.low_level_reduced],
                "aspp_rates": list(
                    resolve_atrous_rates(heads.aspp_rates, genotype.output_stride, crop)
                ),
                "params": c.params,
                "params_by_part": p,
                "cells_share": p["cells"] / c.params,
                "heads_share": (p["aspp"] + p["decoder"]) / c.params,
                "multiply_adds": c.multiply_adds,
                "multiply_adds_cells_share": m["cells"] / c.multiply_adds,
                "input_size": [crop, crop],
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| path | heads (ASPP, decoder, low-level; rates) | params | cells | stem "
        "| ASPP + decoder | Multi-Adds | cells' Multi-Adds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["params_by_part"]
        path = r["genotype"].split("|")[0].removeprefix("path=")
        widths = ", ".join(map(str, r["widths"]))
        rates = ", ".join(map(str, r["aspp_rates"]))
        lines.append(
            f"| `{path}` | {r['heads']}: {widths}; ({rates}) | {r['params']:,} "
            f"| {p['cells']:,} ({100 * r['cells_share']:.1f}%) | {p['stem']:,} "
            f"| {p['aspp'] + p['decoder']:,} ({100 * r['heads_share']:.1f}%) "
            f"| {r['multiply_adds'] / 1e6:.1f}M | {100 * r['multiply_adds_cells_share']:.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "train" / "synthetic.yaml"))
    parser.add_argument("--genotype", action="append", default=[], metavar="FILE")
    parser.add_argument("--num-classes", type=int, default=7, help="7 = the synthetic set")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    cfg = load_config(args.config, cls=TrainConfig)
    genotypes = [Genotype.load(f) for f in args.genotype] or default_genotypes()
    rows = [row for g in genotypes for row in head_share(cfg, g, args.num_classes)]
    print(markdown(rows) if args.markdown else json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
