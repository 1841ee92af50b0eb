"""Command-line interface. Thin: parse arguments, build a config, call one library function.

Each sub-command has an ``_add_<name>`` function that registers its parser and sets ``func``
(and optionally ``oom_hint``, what to try when it runs out of memory). :func:`main` turns
errors the user can fix into one line and exit status 2 (see :func:`error_report`).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from autodeeplab import __version__
from autodeeplab.extras import MissingExtraError

if TYPE_CHECKING:
    from autodeeplab.inference import SlidingWindow


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= low``, with a message saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _number(*, positive: bool) -> Callable[[str], float]:
    """An argparse ``type``: a finite number ``> 0`` (``positive``) or ``>= 0``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {'> 0' if positive else '>= 0'}, got {text}")
        return value

    return parse


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


_SUFFIXES = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12}


def _count(text: str) -> float:
    """``"12.5M"`` -> 12.5e6; suffixes k/K, M, G or B (1e9), T; plain numbers too."""
    scale = _SUFFIXES.get(text[-1:], 1.0)
    number = text[:-1] if text[-1:] in _SUFFIXES else text
    try:
        return float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a count; write e.g. 9.5M, 300B, 1.2e7 (suffixes k, M, G/B, T)"
        ) from None


def _count_range(text: str) -> tuple[float | None, float | None]:
    """``"MIN:MAX"`` with either side empty for an open end, e.g. ``8M:12M``, ``:400B``."""
    if text.count(":") != 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a range; write MIN:MAX, e.g. 8M:12M, 8M: or :400B"
        )
    lo, hi = (part.strip() for part in text.split(":"))
    return (_count(lo) if lo else None, _count(hi) if hi else None)


def _add_input_size(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--input-size",
        nargs="+",
        metavar="HxW",
        help=f"input size for Multi-Adds, as HxW or H W; DxHxW for a volume network "
        f"(default: {default})",
    )


def _input_size(values: Sequence[str] | None) -> tuple[int, ...] | None:
    """``["1024x2048"]`` or ``["1024", "2048"]`` -> ``(1024, 2048)`` (``DxHxW`` -> three
    sides, for volumes); ``None`` stays ``None``."""
    if values is None:
        return None
    parts = values[0].lower().split("x") if len(values) == 1 else list(values)
    try:
        sides = tuple(int(v) for v in parts)
    except ValueError:
        sides = ()
    if len(sides) not in (2, 3):
        raise ValueError(
            f"--input-size {' '.join(values)!r}: give height and width as HxW or H W, "
            "e.g. 1024x2048 (DxHxW for a volume network, e.g. 96x96x96)"
        )
    if min(sides) < 1:
        raise ValueError(f"--input-size {' '.join(values)!r}: sides must be positive")
    return sides


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="parameters, Multi-Adds and training memory of a preset, genotype, train config "
        "or run folder",
        description="Parameters (by part) and Multi-Adds (multiply-accumulates of convolutions, "
        "FLOPs / 2) of one forward pass, counted without allocating the model, and the "
        "estimated memory of a float32 training step (activations kept for backward; with "
        "weights, gradients, SGD momentum and logits). The network comes from a model preset, a "
        "genotype file (19 classes, F=20 unless given), a train config (classes of its data "
        "set, its F and heads; Multi-Adds and memory at its crop size and batch) or a "
        "retraining run / model folder (its saved config).",
    )
    p.add_argument(
        "run_dir", nargs="?", metavar="RUNDIR", help="retraining run folder or model folder"
    )
    p.add_argument("--run", metavar="DIR", help="retraining run folder or model folder")
    p.add_argument("--config", metavar="TRAIN_YAML", help="train config (see configs/train/)")
    p.add_argument(
        "--data-root", help="data set folder of the train config (overrides its data.root)"
    )
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--preset", metavar="NAME", help="model preset (see --list)")
    arch.add_argument("--genotype", metavar="FILE", help="genotype JSON file")
    arch.add_argument("--list", action="store_true", help="list the model presets and exit")
    p.add_argument(
        "--num-classes",
        type=_at_least(1),
        help="classes (default: the data set's with --config, else 19)",
    )
    _add_input_size(p, "the crop size of a train config or run, else 1024x2048")
    p.add_argument(
        "--batch-size",
        type=_at_least(1),
        metavar="N",
        help="images per training step for the memory estimate (default: the batch of a train "
        "config or run, else 1)",
    )
    p.add_argument(
        "--filter-multiplier",
        type=_at_least(1),
        metavar="F",
        help="filter multiplier F (default: the config's or preset's, 20 for a genotype file)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from autodeeplab import info as info_lib
    from autodeeplab.models import model_info

    if args.list:
        from autodeeplab.models import MODELS

        for name, spec in MODELS.items():
            print(f"{name:20s} F={spec.filter_multiplier:<3d} {spec.description}")
        return 0
    if args.run_dir is not None and args.run is not None:
        raise ValueError("give the run folder once: RUNDIR or --run DIR")
    run = args.run_dir or args.run
    size = _input_size(args.input_size)
    if run is not None:
        given = [
            flag
            for flag, value in (
                ("--config", args.config),
                ("--data-root", args.data_root),
                ("--preset", args.preset),
                ("--genotype", args.genotype),
                ("--num-classes", args.num_classes),
                ("--filter-multiplier", args.filter_multiplier),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)}: a run folder defines its network; only --input-size, "
                "--batch-size and --json go with it"
            )
        info = info_lib.source_info(info_lib.from_run(run), size, args.batch_size)
    elif args.config is not None:
        source = info_lib.from_train_config(
            args.config,
            genotype=args.genotype,
            preset=args.preset,
            num_classes=args.num_classes,
            filter_multiplier=args.filter_multiplier,
            data_root=args.data_root,
        )
        info = info_lib.source_info(source, size, args.batch_size)
    elif args.data_root is not None:
        raise ValueError("--data-root goes with --config (the train config whose data it sets)")
    elif args.preset is None and args.genotype is None:
        raise ValueError("name a network: --preset, --genotype, --config, RUNDIR or --list")
    else:
        info = model_info(
            preset=args.preset,
            genotype_file=args.genotype,
            num_classes=19 if args.num_classes is None else args.num_classes,
            filter_multiplier=args.filter_multiplier,
            input_size=size or info_lib.DEFAULT_INPUT_SIZE,
            batch_size=1 if args.batch_size is None else args.batch_size,
        )
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for line in info_lib.info_lines(info):
        print(line)
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="draw random architectures (or write the hand-designed ones) as genotype files",
        description="Architectures drawn uniformly from the search space (cell and path), "
        "seeded, optionally within parameter / Multi-Adds ranges; or the hand-designed path "
        "families with one cell. Prints a table with parameters and Multi-Adds; with --out, "
        "writes one genotype JSON per architecture, summary.jsonl and settings.json.",
    )
    p.add_argument("--num", type=int, metavar="N", help="number of random architectures")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--layers", type=int, default=12, help="cell layers L (default: 12)")
    p.add_argument("--blocks", type=int, default=5, help="blocks per cell B (default: 5)")
    p.add_argument(
        "--params", type=_count_range, metavar="MIN:MAX", help="parameter range, e.g. 8M:12M"
    )
    p.add_argument(
        "--multiply-adds",
        type=_count_range,
        metavar="MIN:MAX",
        help="Multi-Adds range at --input-size, e.g. :400B",
    )
    _add_input_size(p, "1024x2048")
    p.add_argument("--num-classes", type=int, default=19, help="classes (default: 19)")
    p.add_argument("--filter-multiplier", type=int, default=20, metavar="F", help="F (default: 20)")
    p.add_argument(
        "--largest-of",
        type=int,
        default=1,
        metavar="N",
        help="keep the largest of N draws for each architecture (default: 1)",
    )
    p.add_argument(
        "--largest-by",
        choices=("params", "multiply_adds"),
        default="params",
        help="what --largest-of compares (default: params)",
    )
    p.add_argument(
        "--multi-path",
        action="store_true",
        help="draw multi-path (DiNTS) topologies, uniform over the feasible ones, instead of "
        "single paths (genotype format 2)",
    )
    p.add_argument(
        "--path",
        metavar="PATH",
        help="draw random cells on this one path (levels such as 0-0-1-2, or a hand-designed "
        "family): the control of a search of the cell alone (model.path)",
    )
    p.add_argument(
        "--max-tries",
        type=int,
        default=1000,
        metavar="N",
        help="draws per architecture before giving up on the ranges (default: 1000)",
    )
    p.add_argument(
        "--hand-designed",
        action="store_true",
        help="write the hand-designed path families instead of random architectures",
    )
    p.add_argument(
        "--families",
        nargs="+",
        metavar="NAME",
        help="hand-designed families to write (default: all that fit in --layers)",
    )
    p.add_argument(
        "--cell",
        metavar="GENOTYPE.json",
        help="take the cell of the hand-designed networks from this genotype (default: the "
        "released cell)",
    )
    p.add_argument("--out", metavar="DIR", help="write the genotypes and the summary here")
    p.add_argument(
        "--overwrite", action="store_true", help="replace files of the same names in --out"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON lines")
    p.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    import json

    from autodeeplab import sample

    size = _input_size(args.input_size) or sample.DEFAULT_INPUT_SIZE
    settings: dict = {
        "layers": args.layers,
        "blocks": args.blocks,
        "input_size": list(size),
        "num_classes": args.num_classes,
        "filter_multiplier": args.filter_multiplier,
    }
    if args.hand_designed:
        random_only = {
            "--num": args.num is not None,
            "--params": args.params is not None,
            "--multiply-adds": args.multiply_adds is not None,
            "--largest-of": args.largest_of != 1,
            "--multi-path": args.multi_path,
            "--path": args.path is not None,
        }
        given = [flag for flag, on in random_only.items() if on]
        if given:
            raise ValueError(
                f"{', '.join(given)}: only for random architectures, not with --hand-designed"
            )
        cell = None
        if args.cell is not None:
            from autodeeplab.genotype import Genotype

            cell = Genotype.load(args.cell).cell
        named = sample.hand_designed_genotypes(args.layers, cell, families=args.families)
        settings.update(kind="hand-designed", cell=args.cell or "released", families=list(named))
    else:
        if args.num is None:
            raise ValueError("give --num N (random architectures) or --hand-designed")
        if args.cell is not None or args.families is not None:
            raise ValueError("--cell and --families apply to --hand-designed only")
        path = None
        if args.path is not None:
            from autodeeplab.space import parse_path

            path = parse_path(args.path, args.layers)
        genotypes = sample.sample_genotypes(
            args.num,
            args.seed,
            layers=args.layers,
            blocks=args.blocks,
            params=args.params,
            multiply_adds=args.multiply_adds,
            input_size=size,
            num_classes=args.num_classes,
            filter_multiplier=args.filter_multiplier,
            largest_of=args.largest_of,
            largest_by=args.largest_by,
            max_tries=args.max_tries,
            multi_path=args.multi_path,
            path=path,
        )
        named = dict(zip(sample.random_names(len(genotypes)), genotypes, strict=True))
        settings.update(
            kind="random",
            num=args.num,
            seed=args.seed,
            params=args.params,
            multiply_adds=args.multiply_adds,
            largest_of=args.largest_of,
            largest_by=args.largest_by,
            multi_path=args.multi_path,
            path=None if path is None else list(path),
        )
    records = sample.describe(
        named,
        input_size=size,
        num_classes=args.num_classes,
        filter_multiplier=args.filter_multiplier,
    )
    if args.json:
        for r in records:
            print(json.dumps(r))
    else:
        print(sample.format_table(records))
    if args.out is not None:
        sample.write_genotypes(args.out, named, records, settings, overwrite=args.overwrite)
        print(
            f"wrote {len(named)} genotypes, {sample.SUMMARY_FILE} and {sample.SETTINGS_FILE} to {args.out}",
            file=sys.stderr,
        )
    return 0


def _add_draw(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "draw",
        help="draw an architecture (network path, cell and transition heat maps) to PNG or SVG",
        description="Draw the network topology and the cell of a genotype JSON file, or of the "
        "architecture decoded from a search checkpoint with the relaxation it was searched "
        "with (then with the transition probability maps).",
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
    genotype, probs = load_architecture(args.source)
    path = save_figure(draw_architecture(genotype, probs), args.out)
    print(f"wrote {path} ({genotype})")


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides of a search or train command, ``--data-root`` and
    ``--output`` included."""
    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={args.data_root}")
    if args.output is not None:
        overrides.append(f"output={args.output}")
    return overrides


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
    p.set_defaults(
        func=_run_search,
        oom_hint="lower data.batch_size or data.crop_size, or set model.selective_checkpoint=true, "
        "model.checkpoint_cells=true or model.partial_channels=4",
    )


def _run_search(args: argparse.Namespace) -> int:
    from autodeeplab.config import load_config
    from autodeeplab.engine.search import NonFiniteLossError, run_search

    config = load_config(args.config, _run_overrides(args))
    try:
        result = run_search(config, resume=args.resume)
    except NonFiniteLossError as err:
        print(f"autodeeplab search: error: {err}", file=sys.stderr)
        return 3
    if result.stop_signal is not None:
        return _signal_exit_code(result.stop_signal)
    if result.finished and result.rank == 0:
        print(f"genotype {result.genotype}")
        print(f"wrote {result.output / 'genotype.json'}")
    return 0


def _signal_exit_code(signum: int) -> int:
    """128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), as shells report a process
    ended by that signal: the run stopped with a checkpoint and ``--resume`` continues it."""
    return 128 + signum


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="retrain a searched or preset architecture from scratch",
        description="Train a discrete architecture with SGD + poly learning rate and Scheduled "
        "Drop Path; evaluates periodically and keeps the best model folder. Extra key=value "
        "arguments override config entries (e.g. iterations=1000 optim.lr=0.01). Run under "
        "torchrun for several processes.",
    )
    p.add_argument("--config", required=True, help="YAML train config (see configs/train/)")
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--genotype", metavar="FILE", help="genotype JSON (e.g. from a search run)")
    arch.add_argument("--preset", metavar="NAME", help="model preset (autodeeplab info --list)")
    p.add_argument("--data-root", help="data set folder (overrides data.root)")
    p.add_argument("--output", help="run folder (overrides output)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in the output folder (last.pt)"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(
        func=_run_train,
        oom_hint="lower data.batch_size or data.crop_size (on CUDA, keep amp=true)",
    )


def _run_train(args: argparse.Namespace) -> int:
    from autodeeplab.config import TrainConfig, load_config
    from autodeeplab.engine.search import NonFiniteLossError
    from autodeeplab.engine.train import run_train

    config = load_config(args.config, _run_overrides(args), cls=TrainConfig)
    if args.genotype is not None:
        config.model.genotype, config.model.preset = args.genotype, None
    if args.preset is not None:
        config.model.genotype, config.model.preset = None, args.preset
    try:
        result = run_train(config, resume=args.resume)
    except NonFiniteLossError as err:
        print(f"autodeeplab train: error: {err}", file=sys.stderr)
        return 3
    if result.stop_signal is not None:
        return _signal_exit_code(result.stop_signal)
    if result.finished and result.rank == 0:
        if result.best_miou is not None:
            print(
                f"best mIoU {100 * result.best_miou:.2f} at iteration {result.best_iteration}: "
                f"{result.output / 'best'}"
            )
        print(f"final model: {result.output / 'model'}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on the synthetic data set, with a report",
        description="Synthetic data -> search -> decode -> retrain, next to a random and a "
        "hand-designed architecture with the same budget -> evaluate -> predict -> "
        "report.html / report.md. A few minutes on 2 CPU cores. With --3d: the same on "
        "procedural volumes (synthetic3d), evaluated whole by sliding window (Dice, IoU), "
        "predictions written as NIfTI, without the baselines.",
    )
    p.add_argument("--output", help="demo folder (default: runs/demo, runs/demo3d with --3d)")
    p.add_argument(
        "--3d",
        dest="volumes",
        action="store_true",
        help="run the volumetric demo on synthetic3d (needs the 3d extra: MONAI, nibabel)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the output folder if it is not empty"
    )
    p.add_argument(
        "--threads", type=_at_least(1), help="torch threads (default: the configs' choice)"
    )
    p.add_argument(
        "--samples",
        type=_at_least(0),
        help="validation images to segment (default: 6; volumes with --3d: 3)",
    )
    p.add_argument(
        "--search",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the search config (e.g. epochs=2)",
    )
    p.add_argument(
        "--train",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the training config, for the searched and the baseline "
        "architectures alike (e.g. iterations=100)",
    )
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from autodeeplab.demo import DemoStopped, run_demo

    try:
        run_demo(
            args.output or ("runs/demo3d" if args.volumes else "runs/demo"),
            overwrite=args.overwrite,
            search_overrides=args.search,
            train_overrides=args.train,
            samples=(3 if args.volumes else 6) if args.samples is None else args.samples,
            threads=args.threads,
            volumes=args.volumes,
        )
    except DemoStopped as stopped:
        print(f"autodeeplab demo: {stopped}", file=sys.stderr)
        return _signal_exit_code(stopped.signum)
    return 0


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="searched vs random vs hand-designed architectures under one retraining budget",
        description="Run search trials, then retrain every candidate (searched, random, "
        "hand-designed, genotype files) with the same training config once per training seed; "
        "writes study.json, study.md, study.html and study.png. Rerunning the same command "
        "continues an interrupted study. Extra key=value arguments override study config "
        "entries (e.g. random.num=10 train.overrides.iterations=100).",
    )
    p.add_argument("--config", required=True, help="YAML study config (see configs/study/)")
    p.add_argument("--output", help="study folder (overrides output)")
    p.add_argument("--device", help="device of every trial (overrides the train/search configs)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="trials run at once, each in its own process (default: 1)",
    )
    p.add_argument(
        "--devices",
        nargs="+",
        metavar="DEVICE",
        help="with --jobs: one device per worker process, e.g. cuda:0 cuda:1",
    )
    ray = p.add_argument_group(
        "Ray cluster (pip install 'autodeeplab[ray]'; the study folder must be on storage every "
        "node mounts at the same path)"
    )
    ray.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the trials as Ray tasks: 'auto' (the cluster started with `ray start`), "
        "'ray://host:10001', or 'local' (a private cluster on this machine)",
    )
    ray.add_argument(
        "--cpus-per-trial", type=float, default=1.0, help="with --ray: CPUs a trial reserves"
    )
    ray.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0.0,
        help="with --ray: GPUs a trial reserves (> 0: trials run on CUDA; 0.5 lets two share one)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config and list the candidates and trials without running them",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=_run_study)


def _run_study(args: argparse.Namespace) -> int:
    from autodeeplab.engine.search import NonFiniteLossError
    from autodeeplab.study import Study, StudyInterrupted, describe, load_study_config, run_study

    overrides = list(args.overrides)
    if args.output is not None:
        overrides.append(f"output={args.output}")
    config = load_study_config(args.config, overrides)
    if args.dry_run:
        print("\n".join(describe(Study(config, device=args.device))))
        return 0
    ray = None
    if args.ray is not None:
        from autodeeplab.ray_trials import RayOptions, import_ray

        ray = RayOptions(args.ray, args.cpus_per_trial, args.gpus_per_trial)
        import_ray()  # the install hint before any trial starts
    elif args.cpus_per_trial != 1.0 or args.gpus_per_trial != 0.0:
        raise ValueError("--cpus-per-trial and --gpus-per-trial go with --ray")
    try:
        result = run_study(
            config, device=args.device, jobs=args.jobs, devices=args.devices, ray=ray
        )
    except NonFiniteLossError as err:
        print(f"autodeeplab study: error: {err}", file=sys.stderr)
        return 3
    except (StudyInterrupted, KeyboardInterrupt) as err:
        why = f" ({err})" if str(err) else ""
        print(
            f"autodeeplab study: interrupted{why}; finished trials are kept, run the same "
            "command again to continue",
            file=sys.stderr,
        )
        return 130
    best = result.summary["best"]
    if best is not None:
        print(f"best: {best['name']} ({best['kind']}), mIoU {100 * best['mean']:.2f}")
    return 0


def _add_decode(sub: argparse._SubParsersAction) -> None:
    from autodeeplab.decode import PATH_RULES

    p = sub.add_parser(
        "decode",
        help="decode the architecture of a search checkpoint (or the consensus of several)",
        description="Decode the architecture of a search checkpoint with the relaxation it was "
        "searched with (its config): a single path for the paper's relaxation, a multi-path "
        "topology (genotype format 2) for relaxation.name=dints. Given several checkpoints of "
        "one search space (e.g. the same search with different seeds), decode their consensus: "
        "the architecture of the mean of their distributions, or with --select supernet keep "
        "the search whose supernet scored best, the paper's rule (docs/search.md).",
    )
    p.add_argument(
        "checkpoint",
        nargs="+",
        help="search checkpoint (e.g. runs/search/last.pt) or run folder; several: their consensus",
    )
    p.add_argument(
        "--out",
        help="genotype JSON to write (default for one checkpoint: <checkpoint>.genotype.json "
        "beside it; required for several)",
    )
    p.add_argument(
        "--select",
        choices=("consensus", "supernet"),
        default="consensus",
        help="several checkpoints: decode their consensus (default), or keep the architecture "
        "of the search with the best supernet mIoU at its last evaluation",
    )
    p.add_argument(
        "--path-decoding",
        choices=PATH_RULES,
        help="read the network path with this rule instead of the search config's "
        "relaxation.path_decoding: probability (the paper: the most probable path) or ratio "
        "(the path whose probability rose most over uniform moves); single-path searches only",
    )
    p.set_defaults(func=_run_decode)


def _run_decode(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autodeeplab.checkpoint import load_checkpoint
    from autodeeplab.search_model import checkpoint_genotype

    paths = [Path(c) / "last.pt" if Path(c).is_dir() else Path(c) for c in args.checkpoint]
    if len(paths) == 1:
        genotype = checkpoint_genotype(load_checkpoint(paths[0]), paths[0], args.path_decoding)
        out = Path(args.out) if args.out else paths[0].with_suffix(".genotype.json")
    else:
        from autodeeplab.consensus import consensus, select_by_supernet

        if not args.out:
            raise ValueError(f"--out: give the genotype file to write the {args.select} to")
        select = select_by_supernet if args.select == "supernet" else consensus
        result = select(paths, args.path_decoding)
        late = set(result.unfinished())
        for i, (path, own) in enumerate(zip(paths, result.genotypes, strict=True)):
            done, total = result.epochs[i]
            note = f" (stopped after epoch {done} of {total})" if i in late else ""
            if args.select == "supernet":
                score = result.supernet_miou[i]
                chosen = " <- selected" if i == result.index else ""
                note += f" supernet mIoU {'-' if score is None else f'{100 * score:.2f} %'}{chosen}"
            print(f"{path}: {own}{note}", file=sys.stderr)
        if late:
            what = (
                "the selection compares the supernet of each at its last evaluation"
                if args.select == "supernet"
                else "the consensus takes the distribution each had when its checkpoint was written"
            )
            print(
                f"warning: {len(late)} of the {result.trials} searches had not finished; {what}",
                file=sys.stderr,
            )
        if args.select == "consensus":
            cell, layers = result.agreement()
            print(
                f"consensus of {result.trials} searches; each search's own architecture has on "
                f"average {100 * cell:.0f} % of its cell's branches and {100 * layers:.0f} % of "
                "its path's layers",
                file=sys.stderr,
            )
        genotype, out = result.genotype, Path(args.out)
    genotype.save(out)
    print(genotype)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scales",
        type=_number(positive=True),
        nargs="+",
        default=[1.0],
        metavar="S",
        help="input scales whose logits are averaged, e.g. 0.5 0.75 1.0 1.25 1.5 1.75 "
        "(default: 1.0)",
    )
    p.add_argument("--flip", action="store_true", help="also average horizontally flipped views")
    p.add_argument(
        "--sliding-window",
        action="store_true",
        help="run each view in overlapping windows of --crop, --stride apart",
    )
    p.add_argument("--crop", type=_at_least(1), nargs=2, metavar=("H", "W"), help="window size")
    p.add_argument(
        "--stride",
        type=_at_least(1),
        nargs=2,
        metavar=("H", "W"),
        help="window step (default: two thirds of the crop, rounded up)",
    )
    p.add_argument(
        "--tile-above",
        type=_number(positive=False),
        metavar="MEGAPIXELS",
        help="run views larger than this in overlapping square tiles of at most this size "
        "instead of whole, to bound memory (default: 4; 0 = never; not used with "
        "--sliding-window)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(oom_hint=_INFERENCE_OOM_HINT)


_INFERENCE_OOM_HINT = (
    "lower --tile-above (e.g. --tile-above 1) to run large images in smaller tiles, or use "
    "fewer --scales"
)


def _sliding_window(args: argparse.Namespace) -> SlidingWindow | None:
    from autodeeplab.inference import SlidingWindow, default_stride

    if not args.sliding_window:
        if args.crop or args.stride:
            raise ValueError("--crop and --stride need --sliding-window")
        return None
    if args.crop is None:
        raise ValueError("--sliding-window needs --crop H W")
    stride = args.stride or default_stride(args.crop)
    return SlidingWindow(tuple(args.crop), tuple(stride))


def _tile_above(args: argparse.Namespace) -> int | None:
    """``--tile-above`` in pixels: the library default when not given, ``None`` for 0."""
    from autodeeplab.inference import DEFAULT_TILE_ABOVE

    if args.tile_above is None:
        return DEFAULT_TILE_ABOVE
    return None if args.tile_above == 0 else max(1, round(args.tile_above * 1e6))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a saved model on a data set split (mIoU, per-class IoU)",
        description="Per-class IoU and accuracy, mIoU, pixel accuracy of a saved model.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="saved model folder")
    p.add_argument(
        "--data-root", metavar="DIR", help="data set root folder (not needed for synthetic)"
    )
    p.add_argument(
        "--dataset", metavar="NAME", help="data set name (default: the one in config.json)"
    )
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    _add_inference_options(p)
    p.add_argument(
        "--batch-size", type=_at_least(1), default=1, help="images per batch (default: 1)"
    )
    p.add_argument(
        "--workers", type=_at_least(0), default=0, help="data loader workers (default: 0)"
    )
    p.add_argument(
        "--max-samples", type=_at_least(1), metavar="N", help="evaluate only the first N samples"
    )
    p.add_argument("--json", metavar="FILE", help="also write the metrics as JSON to FILE")
    _add_volume_options(p)
    p.set_defaults(func=_run_eval, oom_hint=f"{_INFERENCE_OOM_HINT} or --batch-size 1")


def _add_volume_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "volume models",
        "whole volumes by Gaussian-blended sliding windows (decathlon, synthetic3d)",
    )
    group.add_argument(
        "--roi",
        type=_at_least(1),
        nargs="+",
        metavar="SIDE",
        help="window size, one side or D H W (default: the model's training crop)",
    )
    group.add_argument(
        "--overlap",
        type=_number(positive=False),
        default=0.5,
        help="share of a window overlapping its neighbour along each axis, in [0, 1) "
        "(default: 0.5)",
    )


def _is_volume_model(path: str) -> bool:
    from autodeeplab.saved_model import read_config

    return read_config(path).network.spatial_dims == 3


def _volume_args(args: argparse.Namespace, image_only: dict[str, bool]) -> tuple[object, float]:
    """``(roi or None, overlap)`` of a command on a volume model; refuses the image options."""
    given = [flag for flag, on in image_only.items() if on]
    if given:
        raise ValueError(
            f"{', '.join(given)}: image options; {args.model} is a volume model, which runs "
            "on whole volumes by sliding window (--roi, --overlap)"
        )
    if not 0.0 <= args.overlap < 1.0:
        raise ValueError(f"--overlap must be in [0, 1), got {args.overlap}")
    roi = None if args.roi is None else (args.roi[0] if len(args.roi) == 1 else tuple(args.roi))
    if roi is not None and not isinstance(roi, int) and len(roi) != 3:
        raise ValueError(f"--roi takes one side or D H W, got {' '.join(map(str, args.roi))}")
    return roi, args.overlap


def _image_only(args: argparse.Namespace) -> dict[str, bool]:
    return {
        "--scales": list(args.scales) != [1.0],
        "--flip": args.flip,
        "--sliding-window": args.sliding_window,
        "--crop": args.crop is not None,
        "--stride": args.stride is not None,
        "--tile-above": args.tile_above is not None,
    }


def _run_eval_volumes(args: argparse.Namespace) -> int:
    from autodeeplab.volume_inference import evaluate_volume_model_folder

    roi, overlap = _volume_args(args, {**_image_only(args), "--batch-size": args.batch_size != 1})
    result = evaluate_volume_model_folder(
        args.model,
        data_root=args.data_root,
        dataset=args.dataset,
        split=args.split,
        roi=roi,
        overlap=overlap,
        max_samples=args.max_samples,
        device=args.device,
    )
    r = result.report
    print(
        f"{r['dataset']} {r['split']}: {r['volumes']} volumes, windows of "
        f"{'x'.join(map(str, r['roi']))}, overlap {r['overlap']}"
    )
    print(result.format_table())
    print(f"mDice {100 * r['mDice']:.2f} (pooled over all voxels)")
    _write_report_json(args.json, r)
    return 0


def _write_report_json(path: str | None, report: dict) -> None:
    """Write an evaluation report to ``--json PATH`` (if given): standard JSON (an undefined
    metric is ``null``, never ``NaN``), written atomically."""
    from pathlib import Path

    from autodeeplab.runfolder import atomic_write_text, dumps_json

    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, dumps_json(report, indent=2) + "\n")
        print(f"wrote {out}")


def _run_eval(args: argparse.Namespace) -> int:
    from autodeeplab.inference import evaluate_model_folder

    if _is_volume_model(args.model):
        return _run_eval_volumes(args)
    _volume_args(args, {"--roi": args.roi is not None, "--overlap": args.overlap != 0.5})

    result = evaluate_model_folder(
        args.model,
        data_root=args.data_root,
        dataset=args.dataset,
        split=args.split,
        scales=args.scales,
        flip=args.flip,
        sliding_window=_sliding_window(args),
        tile_above=_tile_above(args),
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        num_workers=args.workers,
        device=args.device,
    )
    r = result.report
    print(
        f"{r['dataset']} {r['split']}: {r['samples']} images, scales {r['scales']}"
        f"{', flip' if r['flip'] else ''}"
        f"{', sliding window' if r['sliding_window'] else ''}"
    )
    print(result.format_table())
    note = result.matrix.absent_note(
        result.class_names, f"the {r['samples']} samples of the {r['split']!r} split"
    )
    if note is not None:
        print(f"warning: {note}", file=sys.stderr)
    _write_report_json(args.json, r)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images (label, colour and overlay PNGs) or volumes (NIfTI)",
        description="Images: writes <stem>_labels.png (8-bit train ids), <stem>_color.png "
        "(palette colours) and <stem>_overlay.png (image blended with the colours) per input "
        "image. Folders are searched at any depth and their sub-folders repeated under --out. "
        "Volume models: each INPUT is a Decathlon task folder (with dataset.json); the volumes "
        "of its --split are segmented into <case>.nii.gz (uint8 class ids, the input's affine "
        "and header).",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files or folders (searched recursively); Decathlon task folders for a "
        "volume model",
    )
    p.add_argument(
        "--split",
        default="test",
        help="volume models: the split of each task folder to segment (default: test)",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="saved model folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--cityscapes-ids",
        action="store_true",
        help="write Cityscapes label ids instead of train ids (benchmark server format)",
    )
    _add_inference_options(p)
    _add_volume_options(p)
    p.set_defaults(func=_run_predict)


def _run_predict_volumes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autodeeplab.saved_model import load_model
    from autodeeplab.volume_inference import model_volume_dataset, predict_volumes, resolve_roi

    image_only = {**_image_only(args), "--cityscapes-ids": args.cityscapes_ids}
    roi, overlap = _volume_args(args, image_only)
    loaded = load_model(args.model, args.device)
    window = resolve_roi(loaded.config, roi, args.model)
    written = 0
    for task in args.inputs:
        if not Path(task).is_dir():
            raise FileNotFoundError(
                f"{task} is not a folder; a volume model segments Decathlon task folders "
                "(the folder holding dataset.json)"
            )
        ds = model_volume_dataset(loaded.config, "decathlon", task, args.split, args.model)
        files = predict_volumes(
            loaded.model, ds, args.out, window, overlap=overlap, device=args.device
        )
        written += len(files)
    print(f"wrote {written} NIfTI label volumes to {args.out}")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from autodeeplab.predict import predict_images
    from autodeeplab.saved_model import load_model

    if _is_volume_model(args.model):
        return _run_predict_volumes(args)
    _volume_args(args, {"--roi": args.roi is not None, "--overlap": args.overlap != 0.5})

    files = predict_images(
        load_model(args.model, args.device),
        args.inputs,
        args.out,
        cityscapes_ids=args.cityscapes_ids,
        scales=args.scales,
        flip=args.flip,
        sliding_window=_sliding_window(args),
        tile_above=_tile_above(args),
        device=args.device,
    )
    print(f"wrote {3 * len(files)} files for {len(files)} images to {args.out}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a saved model to ONNX (dynamic batch and sizes)",
        description="Input 'image': normalised (N, 3, H, W) float32 (volume models: (N, "
        "modalities, D, H, W)); output 'logits' (N, C, H, W) (N, C, D, H, W). Class names and "
        "mean/std are stored in the ONNX metadata.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="saved model folder")
    p.add_argument("--onnx", required=True, metavar="FILE", help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument(
        "--height",
        type=_at_least(1),
        help="tracing height (default: 512; volume models: the training crop)",
    )
    p.add_argument(
        "--width",
        type=_at_least(1),
        help="tracing width (default: 512; volume models: the training crop)",
    )
    p.add_argument(
        "--depth",
        type=_at_least(1),
        help="tracing depth of a volume model (default: the training crop)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare ONNX Runtime with PyTorch at the export size and an odd other size",
    )
    p.set_defaults(func=_run_export, oom_hint="lower --height and --width")


def _run_export(args: argparse.Namespace) -> int:
    from autodeeplab.export import export_onnx, onnx_max_abs_diff
    from autodeeplab.saved_model import load_model

    loaded = load_model(args.model)
    c = loaded.config.network.in_channels
    if loaded.config.network.spatial_dims == 3:
        from autodeeplab.volume_inference import resolve_roi

        given = (args.depth, args.height, args.width)
        roi = given if all(given) else resolve_roi(loaded.config, None, args.model)
        d, h, w = (g or r for g, r in zip(given, roi, strict=True))
        size: tuple[int, ...] = (d, h, w)
        # the other shape grows every side: a training crop is the smallest size that must work
        other: tuple[int, ...] = (d + d // 4 + 1, h + 1, w + w // 8 + 1)
    else:
        if args.depth is not None:
            raise ValueError(f"--depth: {args.model} is an image model; give --height and --width")
        d, h, w = None, args.height or 512, args.width or 512
        size, other = (h, w), (h + h // 4 + 1, w - w // 4 + 1)
    path = export_onnx(
        loaded.model,
        args.onnx,
        height=h,
        width=w,
        depth=d,
        opset=args.opset,
        config=loaded.config,
    )
    print(f"wrote {path}")
    if args.verify:
        shapes = [(1, c, *size), (2, c, *other)]
        diff = onnx_max_abs_diff(loaded.model, path, shapes)
        print(f"ONNX Runtime vs PyTorch, shapes {shapes}: max abs difference {diff:.2e}")
    return 0


_PARSERS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_genotypes,
    _add_info,
    _add_sample,
    _add_draw,
    _add_search,
    _add_decode,
    _add_train,
    _add_eval,
    _add_predict,
    _add_export,
    _add_demo,
    _add_study,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autodeeplab",
        description="Hierarchical neural architecture search for semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"autodeeplab {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"print the traceback of any error (or set {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _PARSERS:
        add(sub)
    return parser


# ---------------------------------------------------------------------------- errors
DEBUG_ENV = "AUTODEEPLAB_DEBUG"
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130

_OS_ADVICE: dict[int, str] = {
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
    errno.EROFS: "the file system is read-only; choose an output folder on a writable one",
    errno.ENOSPC: "free some space or write to another disk; files completed so far are kept",
    errno.EDQUOT: "the disk quota is used up; free some space or write to another disk",
    errno.EEXIST: "give a path that does not exist yet",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "give a file, not a folder",
    errno.ENAMETOOLONG: "use a shorter path",
}
"""Errors of the operating system that the user can fix, with what to do about them."""


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    torch = sys.modules.get("torch")  # loaded by then if torch raised it
    if torch is not None and isinstance(err, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "not enough memory" in text
    )


def _first_sentences(text: str, limit: int = 160) -> str:
    """The start of a long library message (CUDA's runs for several lines of statistics)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > 0 else text[:limit] + "..."


def error_report(err: BaseException, oom_hint: str = "") -> tuple[int, str]:
    """``(exit status, message)`` for an exception that ended a command.

    Errors the user can fix get status 2 and a message saying what was wrong: invalid values
    and files (``ValueError``, which includes config, data set, checkpoint and genotype errors;
    ``FileNotFoundError``), an optional dependency that is not installed, out of memory (with ``oom_hint``) and operating-system errors such
    as a read-only or full disk. Ctrl-C gives 130. Anything else is an internal error (1).
    """
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if _is_out_of_memory(err):
        detail = _first_sentences(str(err)) or type(err).__name__
        hint = f"; {oom_hint}" if oom_hint else ""
        return EXIT_USER_ERROR, f"out of memory ({detail}){hint}"
    if isinstance(err, OSError) and err.errno in _OS_ADVICE:
        where = f": {err.filename}" if err.filename is not None else ""
        what = err.strerror or os.strerror(err.errno)
        return EXIT_USER_ERROR, f"{what}{where}; {_OS_ADVICE[err.errno]}"
    if isinstance(err, ValueError | FileNotFoundError | MissingExtraError):
        return EXIT_USER_ERROR, str(err)
    return EXIT_INTERNAL_ERROR, (
        f"internal error: {type(err).__name__}: {_first_sentences(str(err))} "
        f"(run with --debug or {DEBUG_ENV}=1 for the traceback)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as err:
        status, message = error_report(err, getattr(args, "oom_hint", ""))
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
        print(f"autodeeplab {args.command}: error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    raise SystemExit(main())
