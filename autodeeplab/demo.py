"""The whole pipeline in one command, on the built-in synthetic data set.

``run_demo("runs/demo")`` searches (supernet on trainA/trainB), decodes the architecture,
retrains it from scratch, evaluates it on the validation split against a majority-class
baseline, segments a few validation images and writes a report::

    runs/demo/
      search/            search run (metrics.jsonl, genotype.json, last.pt, ...)
      genotype.json      the decoded architecture
      architecture.png   path, cell and beta heat maps
      train/             training run (metrics.jsonl, best/, model/, curves.png, ...)
      baselines/         <name>.json genotype and <name>/ training run of each baseline
      eval.json          per-class metrics of the retrained model and of the majority-class
                         baseline; mIoU, params and Multi-Adds of the three architectures
      predictions/       input images and their label / colour / overlay PNGs
      report.html        self-contained report (images embedded)
      report.md          the same report in Markdown (images in report_files/)
      demo.json          timings and headline figures

The stage configs are the package's ``resources/demo_search.yaml`` and
``resources/demo_train.yaml`` (copies of ``configs/search/synthetic.yaml`` and
``configs/train/synthetic.yaml``); overrides change them like on the command line.

``run_demo("runs/demo3d", volumes=True)`` (``autodeeplab demo --3d``) runs the same pipeline
on the procedural volumes of ``synthetic3d`` (configs ``resources/demo3d_*.yaml``, copies of
``configs/*/synthetic3d.yaml``): search, decode, retrain, evaluate whole volumes by sliding
window (Dice and IoU, against the majority-class baseline), segment a few validation volumes
into ``predictions/<case>.nii.gz`` and report their slices. It retrains no baselines.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from autodeeplab.config import SearchConfig, TrainConfig, load_config
from autodeeplab.data import AnyDataset, SegmentationDataset, Volume, build_dataset, eval_transform
from autodeeplab.engine.loop import print_flush
from autodeeplab.genotype import Genotype
from autodeeplab.metrics import ConfusionMatrix
from autodeeplab.runfolder import LOCK_FILE, RunFolderLock, dumps_json

STAGES: tuple[str, ...] = (
    "search",
    "decode",
    "train",
    "baselines",
    "evaluate",
    "predict",
    "report",
)

VOLUME_STAGES: tuple[str, ...] = ("search", "decode", "train", "evaluate", "predict", "report")
"""The stages of the volume demo (no baselines are retrained)."""

HAND_DESIGNED_FAMILIES: tuple[str, ...] = ("deeplabv3", "constant-8")
"""The demo's hand-designed baseline: the first of these path families that fits the search's
layers (the DeepLabv3-like path, the paper's hand-designed reference, needs 4)."""


class DemoStopped(Exception):
    """A stop signal (Ctrl-C, SIGTERM) ended a stage early; the demo stopped after it."""

    def __init__(self, stage: str, signum: int) -> None:
        self.stage, self.signum = stage, signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} during the {stage} stage; run the demo "
            "again with --overwrite"
        )


@dataclass(frozen=True)
class DemoResult:
    """Headline figures and files of a demo run."""

    output: Path
    genotype: Genotype
    miou: float
    """mIoU of the retrained model on the validation split (0..1)."""
    baseline_miou: float
    """mIoU of predicting the most frequent training class everywhere."""
    timings: dict[str, float]
    """Seconds per stage (``STAGES``) and ``total``."""
    report_html: Path
    report_md: Path
    dice: float | None = None
    """Volume demo: mean Dice of the retrained model over the validation volumes (pooled)."""
    baseline_dice: float | None = None
    """Volume demo: mean Dice of the majority-class baseline."""


def resource_config(name: str) -> Path:
    """Path of a config shipped with the package (``demo_search.yaml``, ``demo_train.yaml``)."""
    return Path(str(resources.files("autodeeplab") / "resources" / name))


def demo_configs(
    output: str | Path,
    search_overrides: Sequence[str] = (),
    train_overrides: Sequence[str] = (),
    volumes: bool = False,
) -> tuple[SearchConfig, TrainConfig]:
    """The search and training configs of a demo writing into ``output`` (of the volume demo
    with ``volumes``)."""
    out = Path(output)
    prefix = "demo3d" if volumes else "demo"
    search = load_config(
        resource_config(f"{prefix}_search.yaml"),
        [*search_overrides, f"output={out / 'search'}"],
        cls=SearchConfig,
    )
    train = load_config(
        resource_config(f"{prefix}_train.yaml"),
        [*train_overrides, f"output={out / 'train'}"],
        cls=TrainConfig,
    )
    train.model.genotype, train.model.preset = str(out / "genotype.json"), None
    return search, train


def demo_baselines(searched: Genotype, seed: int) -> dict[str, tuple[str, Genotype]]:
    """``{name: (kind, genotype)}`` of the architectures retrained next to ``searched``: one
    drawn uniformly at random from the same space (cell and path, with ``seed``) and a
    hand-designed path (:data:`HAND_DESIGNED_FAMILIES`) with the searched cell, so that it
    differs from the searched architecture in the path only."""
    from autodeeplab import space
    from autodeeplab.sample import sample_genotypes

    layers, blocks = searched.layers, searched.blocks
    (drawn,) = sample_genotypes(1, seed, layers=layers, blocks=blocks)
    families = space.hand_designed_paths(layers)
    family = next(f for f in HAND_DESIGNED_FAMILIES if f in families)
    return {
        "random": ("random", drawn),
        f"hand-{family}": ("hand-designed", Genotype(cell=searched.cell, path=families[family])),
    }


def _prepare_output(output: Path, overwrite: bool) -> RunFolderLock:
    """Lock ``output`` (created if missing) and check that it is empty, or empty it with
    ``overwrite``. Returns the held lock."""
    if output.exists() and not output.is_dir():
        if not overwrite:
            raise ValueError(
                f"{output} exists and is not a folder; pass --overwrite to replace it or choose "
                "another --output folder"
            )
        output.unlink()
    lock = RunFolderLock(output).acquire()
    try:
        contents = sorted(p for p in output.iterdir() if p.name != LOCK_FILE)
        if contents and not overwrite:
            raise ValueError(
                f"{output} exists and is not empty; pass --overwrite to replace it or choose "
                "another --output folder"
            )
        with contextlib.ExitStack() as stages:
            for path in contents:  # refused, before anything is removed, while a run writes there
                if path.is_dir() and (path / LOCK_FILE).is_file():
                    stages.enter_context(RunFolderLock(path))
            for path in contents:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


def _label(dataset: AnyDataset, index: int) -> np.ndarray:
    """The raw label of sample ``index``: an image's mask ``(H, W)`` or a volume's ``(D, H, W)``."""
    sample = dataset.load(index)
    label = sample.label if isinstance(sample, Volume) else sample[1]
    assert label is not None, "a labelled split"
    return label


def majority_baseline(
    train_set: AnyDataset, eval_set: AnyDataset, ignore_index: int = 255
) -> tuple[int, ConfusionMatrix]:
    """``(class, confusion matrix)`` of predicting the most frequent training class (counted
    over the raw training masks or label volumes) for every pixel (voxel) of ``eval_set``."""
    counts = np.zeros(train_set.num_classes, dtype=np.int64)
    for i in range(len(train_set)):
        mask = _label(train_set, i)  # train ids, ignore_index for ignored pixels
        valid = mask[mask != ignore_index].astype(np.int64)
        counts += np.bincount(valid, minlength=train_set.num_classes)[: train_set.num_classes]
    majority = int(counts.argmax())
    cm = ConfusionMatrix(train_set.num_classes, ignore_index)
    for i in range(len(eval_set)):
        mask = torch.from_numpy(_label(eval_set, i).astype(np.int64))  # (H, W) or (D, H, W)
        cm.update(torch.full_like(mask, majority)[None], mask[None])
    return majority, cm


def _evaluate(loaded: Any, val: SegmentationDataset, batch_size: int) -> ConfusionMatrix:
    from autodeeplab.inference import evaluate

    return evaluate(
        loaded.model,
        val,
        loaded.config.num_classes,
        batch_size=batch_size,
        ignore_index=loaded.config.ignore_index,
    )


class _Clock:
    """Times the stages and says when each starts and ends."""

    def __init__(self, log: Callable[[str], None] | None, stages: Sequence[str] = STAGES) -> None:
        self.log, self.timings, self._start = log, {}, 0.0
        self.stages = tuple(stages)
        self._begin = time.perf_counter()

    def start(self, stage: str, what: str) -> None:
        self._say(f"[{self.stages.index(stage) + 1}/{len(self.stages)}] {stage}: {what}")
        self._start = time.perf_counter()

    def stop(self, stage: str) -> None:
        self.timings[stage] = time.perf_counter() - self._start
        self._say(f"    {stage} done in {self.timings[stage]:.1f}s")

    def total(self) -> float:
        return time.perf_counter() - self._begin

    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)


def run_demo(
    output: str | Path = "runs/demo",
    *,
    overwrite: bool = False,
    search_overrides: Sequence[str] = (),
    train_overrides: Sequence[str] = (),
    samples: int = 6,
    threads: int | None = None,
    volumes: bool = False,
    log: Callable[[str], None] | None = print_flush,
) -> DemoResult:
    """Run search -> decode -> retrain -> evaluate -> predict -> report into ``output``; on
    the procedural volumes of ``synthetic3d`` with ``volumes`` (``samples`` validation volumes
    segmented then).

    ``output`` is locked for the run (:class:`~autodeeplab.runfolder.RunFolderLock`); a stop
    signal during the search or training stage raises :class:`DemoStopped`."""
    output = Path(output)
    search_cfg, train_cfg = demo_configs(output, search_overrides, train_overrides, volumes)
    if threads is not None:
        search_cfg.threads = train_cfg.threads = threads
    run = _run_volume_stages if volumes else _run_stages
    with _prepare_output(output, overwrite):
        return run(output, search_cfg, train_cfg, samples, log)


def _search_decode_train(
    output: Path,
    search_cfg: SearchConfig,
    train_cfg: TrainConfig,
    clock: _Clock,
    log: Callable[[str], None] | None,
) -> tuple[Any, Genotype, Any]:
    """The search, decode and train stages: ``(search result, genotype, training result)``."""
    from autodeeplab.draw import draw_architecture, load_architecture, save_figure
    from autodeeplab.engine.search import run_search
    from autodeeplab.engine.train import run_train

    data = search_cfg.data.name
    clock.start("search", f"supernet search over cells and network paths on {data} data")
    search = run_search(search_cfg, log=log)
    if search.stop_signal is not None:
        raise DemoStopped("search", search.stop_signal)
    clock.stop("search")

    clock.start("decode", "decode the architecture and draw it")
    genotype, probs = load_architecture(search.output / "last.pt")
    genotype.save(output / "genotype.json")
    save_figure(draw_architecture(genotype, probs), output / "architecture.png")
    clock.stop("decode")

    clock.start("train", f"retrain {genotype} from scratch")
    trained = run_train(train_cfg, log=log)
    if trained.stop_signal is not None:
        raise DemoStopped("train", trained.stop_signal)
    clock.stop("train")
    return search, genotype, trained


def _run_stages(
    output: Path,
    search_cfg: SearchConfig,
    train_cfg: TrainConfig,
    samples: int,
    log: Callable[[str], None] | None,
) -> DemoResult:
    from autodeeplab.complexity import complexity
    from autodeeplab.engine.train import run_train
    from autodeeplab.predict import predict_images
    from autodeeplab.saved_model import load_model

    clock = _Clock(log)
    search, genotype, trained = _search_decode_train(output, search_cfg, train_cfg, clock, log)

    clock.start("baselines", "retrain a random and a hand-designed architecture, same budget")
    runs = {"searched": ("searched", genotype, trained.output)}
    for name, (kind, other) in demo_baselines(genotype, train_cfg.seed).items():
        if other == genotype:  # the search found this very architecture: trained already
            runs[name] = (kind, other, trained.output)
            continue
        cfg = copy.deepcopy(train_cfg)
        cfg.output = str(output / "baselines" / name)
        path = output / "baselines" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        other.save(path)
        cfg.model.genotype = str(path)
        if log is not None:
            log(f"{name} ({kind}): {other}")
        run = run_train(cfg, log=log)
        if run.stop_signal is not None:
            raise DemoStopped("baselines", run.stop_signal)
        runs[name] = (kind, other, run.output)
    clock.stop("baselines")

    clock.start("evaluate", "evaluate the three models and a majority-class baseline")
    loaded = load_model(trained.output / "best")
    d = train_cfg.data
    val = build_dataset(
        d.name,
        d.root,
        d.eval_split,
        eval_transform(mean=loaded.config.mean, std=loaded.config.std),
        **d.options,
    )
    train_set = build_dataset(d.name, d.root, d.train_split, None, **d.options)
    cm = _evaluate(loaded, val, d.eval_batch_size)
    majority, baseline = majority_baseline(train_set, val, loaded.config.ignore_index)
    names = loaded.config.class_names
    architectures = []
    evaluated = {trained.output: (loaded, cm)}  # a baseline the search found is its run
    for name, (kind, arch, run_dir) in runs.items():
        if run_dir not in evaluated:
            other = load_model(run_dir / "best")
            evaluated[run_dir] = (other, _evaluate(other, val, d.eval_batch_size))
        model, arch_cm = evaluated[run_dir]
        size = complexity(model.model, (d.crop_size, d.crop_size))
        architectures.append(
            {
                "name": name,
                "kind": kind,
                "genotype": str(arch),
                "params": size.params,
                "multiply_adds": size.multiply_adds,
                "mIoU": arch_cm.mean_iou(),
                "run": str(run_dir),
            }
        )
    evaluation = {
        "split": d.eval_split,
        "samples": len(val),
        "model": cm.to_dict(names),
        "baseline": {"class": names[majority], **baseline.to_dict(names)},
        "architectures": architectures,
    }
    (output / "eval.json").write_text(dumps_json(evaluation, indent=2) + "\n")
    if log is not None:
        log(cm.format_table(names))
        log(
            f"mIoU {100 * cm.mean_iou():.2f} vs majority-class baseline "
            f"{100 * baseline.mean_iou():.2f} ('{names[majority]}' everywhere) on "
            f"{len(val)} validation images"
        )
        for a in architectures:
            log(f"  {a['name']:<16} mIoU {_pct(a['mIoU']):>6}  {a['genotype']}")
    clock.stop("evaluate")

    clock.start("predict", f"segment {samples} validation images")
    inputs = output / "predictions" / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    shown = []
    for i in range(min(samples, len(val))):
        image, mask = val.load(i)
        Image.fromarray(image).save(inputs / f"val_{i:03d}.png")
        shown.append((image, mask))
    files = predict_images(loaded, [inputs], output / "predictions")
    clock.stop("predict")

    clock.start("report", "write report.html and report.md")
    report_html, report_md = _write_report(
        output,
        genotype=genotype,
        search_records=search.output / "metrics.jsonl",
        train_records=trained.output / "metrics.jsonl",
        evaluation=evaluation,
        cm=cm,
        baseline=baseline,
        class_names=names,
        palette=loaded.config.palette_array(),
        samples=shown,
        predictions=[np.asarray(Image.open(f.labels)) for f in files],
        timings=clock.timings,
        total=clock.total(),
        best_iteration=trained.best_iteration,
        architectures=architectures,
    )
    clock.stop("report")
    result = DemoResult(
        output,
        genotype,
        cm.mean_iou(),
        baseline.mean_iou(),
        {**clock.timings, "total": clock.total()},
        report_html,
        report_md,
    )
    return _finish(result, names[majority], log)


def _finish(
    result: DemoResult, majority_class: str, log: Callable[[str], None] | None
) -> DemoResult:
    """Write ``demo.json`` (Dice figures only for a demo that has them) and log the timings."""
    summary: dict[str, Any] = {"genotype": str(result.genotype), "mIoU": result.miou}
    if result.dice is not None:
        summary["mDice"] = result.dice
    summary["baseline_mIoU"] = result.baseline_miou
    if result.baseline_dice is not None:
        summary["baseline_mDice"] = result.baseline_dice
    summary |= {
        "baseline_class": majority_class,
        "timings_s": result.timings,
        "report": str(result.report_html),
    }
    (result.output / "demo.json").write_text(dumps_json(summary, indent=2) + "\n")
    if log is not None:
        log("stage timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
        log(f"report: {result.report_html} (and {result.report_md.name})")
    return result


def _prediction_figure(
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    predictions: Sequence[np.ndarray],
    palette: np.ndarray,
    class_names: Sequence[str],
    ignore_index: int = 255,
) -> Any:
    """Rows of image | ground truth | prediction | overlay, with a colour legend below.
    Ignored ground-truth pixels are white."""
    from matplotlib.patches import Patch

    from autodeeplab.draw import _new_figure
    from autodeeplab.predict import blend, colorize

    rows = len(samples)
    fig = _new_figure((9.0, 2.3 * rows + 0.6))
    axes = fig.subplots(rows, 4, squeeze=False)
    titles = ("image", "ground truth", "prediction", "overlay")
    for r, ((image, mask), pred) in enumerate(zip(samples, predictions, strict=True)):
        truth = colorize(np.where(mask == ignore_index, 0, mask), palette)
        truth[mask == ignore_index] = 255
        color = colorize(pred, palette)
        for c, panel in enumerate((image, truth, color, blend(image, color))):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c])
    handles = [
        Patch(facecolor=np.asarray(rgb) / 255.0, edgecolor="0.5", label=name)
        for name, rgb in zip(class_names, palette, strict=True)
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 7), frameon=False
    )
    return fig


def _comparison_figure(architectures: Sequence[dict[str, Any]], majority_miou: float) -> Any:
    """Validation mIoU of each retrained architecture as a bar, the majority-class baseline as
    a dashed line."""
    from autodeeplab.draw import _new_figure

    fig = _new_figure((6.0, 0.6 + 0.55 * len(architectures)))
    ax = fig.subplots()
    names = [a["name"] for a in architectures][::-1]
    values = [100 * np.nan_to_num(a["mIoU"]) for a in architectures][::-1]
    colours = ["tab:red" if a["kind"] == "searched" else "tab:grey" for a in architectures][::-1]
    bars = ax.barh(names, values, color=colours)
    ax.bar_label(bars, fmt="%.2f", padding=3)
    ax.axvline(100 * majority_miou, color="k", linestyle="--", linewidth=1)
    ax.text(100 * majority_miou, len(names) - 0.45, " majority class", fontsize=8, va="bottom")
    ax.set_xlabel("validation mIoU (%)")
    ax.set_xlim(0, max([*values, 100 * majority_miou]) * 1.25 + 1)
    return fig


def _compare_section(
    report: Any, architectures: Sequence[dict[str, Any]], majority_miou: float
) -> None:
    ranked = sorted(architectures, key=lambda a: -np.nan_to_num(a["mIoU"], nan=-1.0))
    rank = 1 + next(i for i, a in enumerate(ranked) if a["kind"] == "searched")
    report.heading("Searched vs baselines")
    report.paragraph(
        f"The searched architecture is retrained next to {len(architectures) - 1} baselines with "
        "the same data, schedule, width and seed: one drawn uniformly at random from the same "
        "space (cell and path) and a hand-designed path with the searched cell. It ranks "
        f"{rank} of {len(architectures)} here. One training run each does not separate "
        "architectures whose mIoU differs by less than the training-seed noise; "
        "`autodeeplab study` retrains many candidates with several seeds and reports ranks, "
        "z-scores and that noise."
    )
    report.table(
        ["architecture", "kind", "mIoU %", "params", "Multi-Adds (M)", "genotype"],
        [
            [
                a["name"],
                a["kind"],
                _pct(a["mIoU"]),
                f"{a['params']:,}",
                f"{a['multiply_adds'] / 1e6:.1f}",
                f"`{a['genotype']}`",
            ]
            for a in ranked
        ],
    )
    report.figure(
        _comparison_figure(architectures, majority_miou),
        "comparison",
        "Validation mIoU of the searched architecture (red) and the baselines, same budget",
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.2f}"


def _pipeline_sections(
    report: Any,
    output: Path,
    *,
    stages: Sequence[str],
    timings: dict[str, float],
    total: float,
    genotype: Genotype,
    search_records: Path,
    train_records: Path,
    best_iteration: int | None,
    search_summary: bool,
) -> None:
    """The report sections every demo has: stage times, the decoded architecture, the search
    curves (with the end-of-search figures when ``search_summary``) and warning, the
    retraining curves."""
    from autodeeplab.diagnostics import convergence
    from autodeeplab.report import (
        draw_search_curves,
        draw_training_curves,
        load_jsonl,
        search_warning,
    )

    report.heading("Stages")
    report.table(
        ["stage", "seconds"],
        [[stage, f"{timings.get(stage, 0.0):.1f}"] for stage in stages[:-1]]
        + [["total (to the report)", f"{total:.1f}"]],
    )
    report.heading("Architecture")
    report.paragraph(f"Decoded genotype: `{genotype}`")
    report.image(
        output / "architecture.png",
        "Network-level path (top), cell (middle) and the searched transition probabilities "
        "(bottom)",
    )
    report.heading("Search")
    records = load_jsonl(search_records)
    report.figure(
        draw_search_curves(records),
        "search_curves",
        "Supernet losses, mIoU, architecture entropies and how far the search moved them",
    )
    epochs = [r for r in records if r.get("type") == "epoch"]
    last = epochs[-1:]
    if search_summary and last and "alpha_entropy_fraction" in last[0]:
        d = last[0]
        rows = [
            ["architecture steps", d.get("arch_steps")],
            ["alpha entropy, % of max", f"{100 * d['alpha_entropy_fraction']:.2f}"],
            ["beta entropy, % of max", f"{100 * d['beta_entropy_fraction']:.2f}"],
            ["log P(decoded path)", f"{d['path_log_prob']:.3f}"],
            ["parameter-free ops in the cell, %", f"{100 * d['parameter_free_share']:.0f}"],
        ]
        settled = convergence(epochs)
        if settled is not None and settled["arch_epochs"]:
            n = settled["arch_epochs"]
            rows += [
                ["epochs the final cell had held", f"{settled['stable_cell_epochs']} of {n}"],
                ["epochs the final path had held", f"{settled['stable_path_epochs']} of {n}"],
            ]
        report.table(["at the end of the search", "value"], rows)
    if (warning := search_warning(records)) is not None:
        report.paragraph(f"Warning: {warning}.")
    report.heading("Training")
    report.figure(
        draw_training_curves(load_jsonl(train_records)),
        "training_curves",
        f"Retraining loss, learning rate and validation mIoU (best at iteration {best_iteration})",
    )


def _write_report(
    output: Path,
    *,
    genotype: Genotype,
    search_records: Path,
    train_records: Path,
    evaluation: dict[str, Any],
    cm: ConfusionMatrix,
    baseline: ConfusionMatrix,
    class_names: Sequence[str],
    palette: np.ndarray,
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    predictions: Sequence[np.ndarray],
    timings: dict[str, float],
    total: float,
    best_iteration: int | None,
    architectures: Sequence[dict[str, Any]],
) -> tuple[Path, Path]:
    from autodeeplab.report import Report

    report = Report("Auto-DeepLab demo: synthetic data set")
    report.paragraph(
        f"The retrained model reaches {_pct(cm.mean_iou())} % mIoU on the "
        f"{evaluation['samples']} validation images, against {_pct(baseline.mean_iou())} % for "
        f"a majority-class baseline (predicting '{evaluation['baseline']['class']}' "
        f"everywhere). The whole pipeline took {total:.0f} s."
    )
    _pipeline_sections(
        report,
        output,
        stages=STAGES,
        timings=timings,
        total=total,
        genotype=genotype,
        search_records=search_records,
        train_records=train_records,
        best_iteration=best_iteration,
        search_summary=True,
    )
    _compare_section(report, architectures, baseline.mean_iou())
    report.heading("Evaluation")
    iou, acc, base_iou = cm.per_class_iou(), cm.per_class_accuracy(), baseline.per_class_iou()
    rows = [
        [name, _pct(iou[i]), _pct(acc[i]), _pct(base_iou[i])] for i, name in enumerate(class_names)
    ]
    rows.append(["mean", _pct(cm.mean_iou()), _pct(cm.mean_accuracy()), _pct(baseline.mean_iou())])
    report.table(["class", "IoU %", "accuracy %", "baseline IoU %"], rows)
    report.paragraph(f"Pixel accuracy {_pct(cm.pixel_accuracy())} %.")
    report.heading("Predictions")
    report.figure(
        _prediction_figure(samples, predictions, palette, class_names),
        "predictions",
        "Validation images, their ground truth and the retrained model's prediction",
    )
    report.heading("Reproduce")
    report.code(
        "make demo                      # or: autodeeplab demo --output runs/demo\n"
        "autodeeplab search --config configs/search/synthetic.yaml --output runs/s\n"
        "autodeeplab train --config configs/train/synthetic.yaml "
        "--genotype runs/s/genotype.json --output runs/t\n"
        "autodeeplab eval --model runs/t/best --dataset synthetic\n"
        "autodeeplab predict --model runs/t/best IMAGE... --out predictions/"
    )
    return report.write(output)


# ---------------------------------------------------------------------------- volumes
def _run_volume_stages(
    output: Path,
    search_cfg: SearchConfig,
    train_cfg: TrainConfig,
    samples: int,
    log: Callable[[str], None] | None,
) -> DemoResult:
    from autodeeplab.data.volume import write_label_nifti
    from autodeeplab.saved_model import load_model
    from autodeeplab.volume_inference import evaluate_volumes, predict_volume_logits

    clock = _Clock(log, VOLUME_STAGES)
    search, genotype, trained = _search_decode_train(output, search_cfg, train_cfg, clock, log)

    clock.start("evaluate", "evaluate whole validation volumes and a majority-class baseline")
    loaded = load_model(trained.output / "best")
    d = train_cfg.data
    val = build_dataset(d.name, d.root, d.eval_split, None, **d.options)
    train_set = build_dataset(d.name, d.root, d.train_split, None, **d.options)
    result = evaluate_volumes(loaded.model, val, d.crop_size)
    cm = result.matrix
    majority, baseline = majority_baseline(train_set, val, loaded.config.ignore_index)
    names = loaded.config.class_names
    evaluation = {
        "split": d.eval_split,
        "volumes": len(val),
        "roi": d.crop_size,
        "model": result.to_dict(names),
        "baseline": {"class": names[majority], **baseline.to_dict(names)},
    }
    (output / "eval.json").write_text(dumps_json(evaluation, indent=2) + "\n")
    if log is not None:
        log(cm.format_table(names))
        log(
            f"mDice {_pct(cm.mean_dice())}, mIoU {_pct(cm.mean_iou())} vs majority-class baseline "
            f"mDice {_pct(baseline.mean_dice())}, mIoU {_pct(baseline.mean_iou())} "
            f"('{names[majority]}' everywhere) on {len(val)} validation volumes"
        )
    clock.stop("evaluate")

    clock.start("predict", f"segment {samples} validation volumes into NIfTI files")
    shown = []
    for i in range(min(samples, len(val))):
        volume = val.load(i)
        logits = predict_volume_logits(loaded.model, torch.from_numpy(volume.image), d.crop_size)
        labels = logits.argmax(dim=0).numpy()  # (D, H, W)
        path = output / "predictions" / f"{volume.name}.nii.gz"
        write_label_nifti(path, labels, volume.affine, volume.header)
        shown.append((volume, labels))
    clock.stop("predict")

    clock.start("report", "write report.html and report.md")
    report_html, report_md = _write_volume_report(
        output,
        genotype=genotype,
        search_records=search.output / "metrics.jsonl",
        train_records=trained.output / "metrics.jsonl",
        evaluation=evaluation,
        cm=cm,
        baseline=baseline,
        class_names=names,
        palette=loaded.config.palette_array(),
        shown=shown,
        timings=clock.timings,
        total=clock.total(),
        best_iteration=trained.best_iteration,
    )
    clock.stop("report")
    demo = DemoResult(
        output,
        genotype,
        cm.mean_iou(),
        baseline.mean_iou(),
        {**clock.timings, "total": clock.total()},
        report_html,
        report_md,
        dice=cm.mean_dice(),
        baseline_dice=baseline.mean_dice(),
    )
    return _finish(demo, names[majority], log)


def _volume_slices(volume: Volume) -> list[tuple[str, int, Any]]:
    """The slices a figure row shows: through the ground truth's largest foreground section
    along ``D`` (an axial ``(H, W)`` slice) and along ``H`` (a ``(D, W)`` slice)."""
    truth = volume.label
    assert truth is not None
    fg = truth > 0
    d = int(fg.sum(axis=(1, 2)).argmax())
    h = int(fg.sum(axis=(0, 2)).argmax())
    return [
        ("D", d, lambda a, d=d: a[..., d, :, :]),
        ("H", h, lambda a, h=h: a[..., :, h, :]),
    ]


def _volume_prediction_figure(
    shown: Sequence[tuple[Volume, np.ndarray]],
    palette: np.ndarray,
    class_names: Sequence[str],
    ignore_index: int = 255,
) -> Any:
    """Per volume: image, ground truth and prediction of an axial slice (along D) and of a
    slice along H through the largest foreground section, with a colour legend."""
    from matplotlib.patches import Patch

    from autodeeplab.draw import _new_figure
    from autodeeplab.predict import colorize

    rows = len(shown)
    fig = _new_figure((10.5, 1.9 * rows + 0.8))
    axes = fig.subplots(rows, 6, squeeze=False)
    for r, (volume, pred) in enumerate(shown):
        assert volume.label is not None
        for s, (axis, index, cut) in enumerate(_volume_slices(volume)):
            image = cut(volume.image[0])
            truth = cut(volume.label)
            shown_truth = colorize(np.where(truth == ignore_index, 0, truth), palette)
            shown_truth[truth == ignore_index] = 255
            panels = (image, shown_truth, colorize(cut(pred), palette))
            for c, panel in enumerate(panels):
                ax = axes[r, 3 * s + c]
                ax.imshow(panel, cmap="gray" if c == 0 else None, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    what = ("image", "ground truth", "prediction")[c]
                    ax.set_title(f"{what}, {axis}-slice", fontsize=8)
            axes[r, 3 * s].set_ylabel(f"{volume.name} {axis}={index}", fontsize=7)
    handles = [
        Patch(facecolor=np.asarray(rgb) / 255.0, edgecolor="0.5", label=name)
        for name, rgb in zip(class_names, palette, strict=True)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    return fig


def _write_volume_report(
    output: Path,
    *,
    genotype: Genotype,
    search_records: Path,
    train_records: Path,
    evaluation: dict[str, Any],
    cm: ConfusionMatrix,
    baseline: ConfusionMatrix,
    class_names: Sequence[str],
    palette: np.ndarray,
    shown: Sequence[tuple[Volume, np.ndarray]],
    timings: dict[str, float],
    total: float,
    best_iteration: int | None,
) -> tuple[Path, Path]:
    from autodeeplab.report import Report

    report = Report("Auto-DeepLab demo: synthetic volumes")
    report.paragraph(
        f"The retrained 3D model reaches {_pct(cm.mean_dice())} % mean Dice "
        f"({_pct(cm.mean_iou())} % mIoU) on the {evaluation['volumes']} whole validation volumes "
        f"(sliding windows of {evaluation['roi']} voxels), against {_pct(baseline.mean_dice())} % "
        f"({_pct(baseline.mean_iou())} %) for a majority-class baseline (predicting "
        f"'{evaluation['baseline']['class']}' everywhere). The whole pipeline took {total:.0f} s."
    )
    _pipeline_sections(
        report,
        output,
        stages=VOLUME_STAGES,
        timings=timings,
        total=total,
        genotype=genotype,
        search_records=search_records,
        train_records=train_records,
        best_iteration=best_iteration,
        search_summary=False,
    )
    report.heading("Evaluation")
    dice, iou = cm.per_class_dice(), cm.per_class_iou()
    base_dice, base_iou = baseline.per_class_dice(), baseline.per_class_iou()
    rows = [
        [name, _pct(dice[i]), _pct(iou[i]), _pct(base_dice[i]), _pct(base_iou[i])]
        for i, name in enumerate(class_names)
    ]
    rows.append(
        [
            "mean",
            _pct(cm.mean_dice()),
            _pct(cm.mean_iou()),
            _pct(baseline.mean_dice()),
            _pct(baseline.mean_iou()),
        ]
    )
    report.table(["class", "Dice %", "IoU %", "baseline Dice %", "baseline IoU %"], rows)
    report.paragraph(
        "Dice and IoU pool every voxel of the validation volumes; eval.json also holds the "
        "Dice of each volume and its mean over volumes."
    )
    report.heading("Predictions")
    report.figure(
        _volume_prediction_figure(shown, palette, class_names),
        "predictions",
        "Slices of validation volumes through their largest foreground section: image, "
        "ground truth and the retrained model's prediction (written as predictions/*.nii.gz)",
    )
    report.heading("Reproduce")
    report.code(
        "make demo-3d                   # or: autodeeplab demo --3d --output runs/demo3d\n"
        "autodeeplab search --config configs/search/synthetic3d.yaml --output runs/s3\n"
        "autodeeplab train --config configs/train/synthetic3d.yaml "
        "--genotype runs/s3/genotype.json --output runs/t3\n"
        "autodeeplab eval --model runs/t3/best --dataset synthetic3d"
    )
    return report.write(output)
