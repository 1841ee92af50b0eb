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


_PARSERS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_genotypes,)


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
