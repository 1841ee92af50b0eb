"""Command-line interface. Thin: parse arguments, build a config, call one library function.

Each sub-command has an ``_add_<name>`` function that registers its parser and sets ``func``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from autodeeplab import __version__


def _add_genotypes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("genotypes", help="list the named genotype presets")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_run_genotypes)


def _run_genotypes(args: argparse.Namespace) -> int:
    import json

    from autodeeplab.genotype import GENOTYPES

    if args.json:
        print(json.dumps({k: g.to_dict() for k, g in GENOTYPES.items()}, indent=2))
    else:
        for name, g in GENOTYPES.items():
            print(f"{name:20s} {g}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="parameters and Multi-Adds of a model preset or a genotype file",
        description="Parameters (by part) and Multi-Adds (multiply-accumulates of convolutions, "
        "FLOPs / 2) of one forward pass, counted without allocating the model.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", metavar="NAME", help="model preset (see --list)")
    src.add_argument("--genotype", metavar="FILE", help="genotype JSON file")
    src.add_argument("--list", action="store_true", help="list the model presets and exit")
    p.add_argument("--num-classes", type=int, default=19, help="classes (default: 19)")
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=(1024, 2048),
        help="input height and width for Multi-Adds (default: 1024 2048)",
    )
    p.add_argument(
        "--filter-multiplier",
        type=int,
        metavar="F",
        help="filter multiplier F (default: the preset's, 20 for a genotype file)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from autodeeplab.models import model_info

    if args.list:
        from autodeeplab.models import MODELS

        for name, spec in MODELS.items():
            print(f"{name:20s} F={spec.filter_multiplier:<3d} {spec.description}")
        return 0
    info = model_info(
        preset=args.preset,
        genotype_file=args.genotype,
        num_classes=args.num_classes,
        filter_multiplier=args.filter_multiplier,
        input_size=tuple(args.input_size),
    )
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    h, w = info["input_size"]
    print(f"model              {info['model']}")
    print(f"genotype           {info['genotype']}")
    print(f"filter multiplier  {info['filter_multiplier']}")
    print(f"output stride      {info['output_stride']} (ASPP rates {info['aspp_rates']})")
    print(f"parameters         {info['params'] / 1e6:.2f}M")
    for part, n in info["params_by_part"].items():
        print(f"  {part:16s} {n / 1e6:.3f}M")
    print(f"Multi-Adds {h}x{w}  {info['multiply_adds'] / 1e9:.2f}B")
    for part, n in info["multiply_adds_by_part"].items():
        print(f"  {part:16s} {n / 1e9:.2f}B")
    if info.get("paper"):
        paper = info["paper"]
        print(
            f"paper (Table 2)    {paper['params'] / 1e6:.2f}M params, "
            f"{paper['multiply_adds'] / 1e9:.2f}B Multi-Adds"
        )
    return 0


def _add_draw(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "draw",
        help="draw an architecture (network path, cell and beta heat maps) to PNG or SVG",
        description="Draw the network path and the cell of a genotype JSON file, or of the "
        "architecture decoded from a search checkpoint (then with the beta transition maps).",
    )
    p.add_argument(
        "source",
        metavar="GENOTYPE.json|CHECKPOINT",
        help="a genotype JSON file, or a checkpoint holding {'model': state_dict} or a "
        "state_dict with 'alphas' and 'betas'",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="output figure, .png or .svg")
    p.set_defaults(func=_run_draw)


def _run_draw(args: argparse.Namespace) -> int:
    from autodeeplab.draw import (
        check_figure_path,
        draw_architecture,
        load_architecture,
        save_figure,
    )

    check_figure_path(args.out)  # fail before loading a large checkpoint
    genotype, betas = load_architecture(args.source)
    path = save_figure(draw_architecture(genotype, betas), args.out)
    print(f"wrote {path} ({genotype})")
def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="run an architecture search",
        description="Search cell and network-level architecture on a data set. Extra "
        "key=value arguments override config entries (dotted keys, e.g. optim.w_lr=0.01).",
    )
    p.add_argument("--config", required=True, help="YAML search config (see configs/search/)")
    p.add_argument("--data-root", help="data set folder (overrides data.root)")
    p.add_argument("--output", help="run folder (overrides output)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in the output folder (last.pt)"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from autodeeplab.config import load_config
    from autodeeplab.engine.search import NonFiniteLossError, run_search

    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={args.data_root}")
    if args.output is not None:
        overrides.append(f"output={args.output}")
    config = load_config(args.config, overrides)
    try:
        result = run_search(config, resume=args.resume)
    except NonFiniteLossError as err:
        print(f"autodeeplab search: error: {err}", file=sys.stderr)
        return 3
    if result.finished and result.rank == 0:
        print(f"genotype {result.genotype}")
        print(f"wrote {result.output / 'genotype.json'}")
    return 0


def _add_decode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decode", help="decode the architecture of a search checkpoint into a genotype"
    )
    p.add_argument("checkpoint", help="search checkpoint (e.g. runs/search/last.pt) or run folder")
    p.add_argument(
        "--out", help="genotype JSON to write (default: <checkpoint>.genotype.json beside it)"
    )
    p.set_defaults(func=_run_decode)


def _run_decode(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autodeeplab.checkpoint import load_checkpoint
    from autodeeplab.decode import decode_genotype

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "last.pt"
    state = load_checkpoint(path)
    model = state.get("model", {})
    if "alphas" not in model or "betas" not in model:
        raise ValueError(
            f"{path} holds no architecture parameters (alphas, betas); is it a search checkpoint?"
        )
    genotype = decode_genotype(model["alphas"].double().numpy(), model["betas"].double().numpy())
    out = Path(args.out) if args.out else path.with_suffix(".genotype.json")
    genotype.save(out)
    print(genotype)
    print(f"wrote {out}", file=sys.stderr)
    return 0


_PARSERS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_genotypes,
    _add_info,
    _add_draw,
    _add_search,
    _add_decode,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autodeeplab",
        description="Hierarchical neural architecture search for semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"autodeeplab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"autodeeplab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
