"""Does a supernet score rank the searches of a finished study? Print JSON on stdout.

    .venv/bin/python benchmarks/selection_signal.py runs/study-gdas
    .venv/bin/python benchmarks/selection_signal.py runs/study-gdas --seeds 10 11 12 13 14

The paper keeps, among several searches, the one whose supernet scored best on held-out data
(``autodeeplab decode RUN ... --select supernet``). That rule is only worth what the score says
about the retrained network. For every search trial of a finished study this scores the final
supernet of its run folder three ways on the first ``--samples`` images of its evaluation
split, and gives each score's Spearman rank correlation with the trial's retrained mIoU (the
study's mean over training seeds):

- ``logged``: the supernet mIoU its search logged at its last evaluation (what the rule uses);
- ``recalibrated``: the supernet in evaluation mode (GDAS: its most likely cell) after its
  BatchNorm statistics were re-estimated for that network on ``--samples`` training samples
  (the search's training transform, its batch size, a cumulative average), as one-shot
  methods do before scoring a sub-network;
- ``sampled``: the supernet in training mode with the statistics of each evaluation batch
  (GDAS draws a cell from its final distribution for every batch), the mean quality of what
  the search's distribution holds rather than of its most likely member.

``--seeds`` restricts the correlation to some trials: a variant chosen on some searches should
be checked on others before it is trusted. Images only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from autodeeplab.checkpoint import load_checkpoint
from autodeeplab.config import SearchConfig, from_dict
from autodeeplab.data import dataset_class_names
from autodeeplab.engine.common import build_datasets
from autodeeplab.metrics import ConfusionMatrix
from autodeeplab.search_model import build_supernet
from autodeeplab.supernet import GroupBatchNorm, SearchNetwork


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 pairs."""
    if len(x) < 3:
        return None

    def ranks(v: list[float]) -> np.ndarray:
        a = np.asarray(v, dtype=float)
        order = np.argsort(a, kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for value in np.unique(a):  # ties share their mean rank
            r[a == value] = r[a == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _norms(net: nn.Module) -> list[nn.Module]:
    return [
        m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm | GroupBatchNorm)
    ]


def _miou(net: SearchNetwork, data, samples: int, classes: int, ignore: int) -> float:
    cm = ConfusionMatrix(classes, ignore)
    with torch.no_grad():
        for images, masks in DataLoader(Subset(data, range(min(samples, len(data)))), 16):
            cm.update(net(images), masks)
    return cm.mean_iou()


def scores(run: Path, samples: int) -> dict[str, float]:
    """The ``recalibrated`` and ``sampled`` scores of the search in ``run``."""
    state = load_checkpoint(run / "last.pt")
    cfg = from_dict(SearchConfig, state["config"])
    classes = len(dataset_class_names(cfg.data.name, cfg.data.root, cfg.data.options))
    net = build_supernet(cfg, classes)
    net.load_state_dict(state["model"])
    train, evaluation = build_datasets(cfg.data)
    ignore = cfg.optim.ignore_index
    out = {}

    # recalibrated: eval-mode architecture, BatchNorm statistics re-estimated as a mean
    net.eval()
    norms = _norms(net)
    for m in norms:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        m.train()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    batches = DataLoader(Subset(train, order[:samples].tolist()), cfg.data.batch_size)
    with torch.no_grad():
        for k, (images, _) in enumerate(batches, 1):
            for m in norms:
                m.momentum = 1.0 / k  # the k-th batch weighs 1/k: a plain mean over batches
            net(images)
    net.eval()
    out["recalibrated"] = _miou(net, evaluation, samples, classes, ignore)

    # sampled: training mode, batch statistics, statistics left alone
    net.load_state_dict(state["model"])
    net.train()
    for m in norms:
        m.momentum = 0.0
    torch.manual_seed(0)
    out["sampled"] = _miou(net, evaluation, samples, classes, ignore)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", type=Path, help="a finished study folder (holds study.json)")
    p.add_argument("--seeds", type=int, nargs="+", help="only these search seeds")
    p.add_argument("--samples", type=int, default=128, help="images per score (default 128)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if not (args.study / "study.json").is_file():
        p.error(f"{args.study} holds no study.json: give the folder of a finished study")
    doc = json.loads((args.study / "study.json").read_text())
    trials = [
        c
        for c in doc["candidates"]
        if c["kind"] == "searched"
        and (args.seeds is None or c["source"]["search_seed"] in args.seeds)
    ]
    rows = []
    for c in trials:
        row = {
            "name": c["name"],
            "retrained_mIoU": c["mean"],
            "logged": c.get("supernet_mIoU"),
            **scores(args.study / "search" / c["name"], args.samples),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    y = [r["retrained_mIoU"] for r in rows]
    variants = ("logged", "recalibrated", "sampled")
    print(
        json.dumps(
            {
                "study": str(args.study),
                "trials": len(rows),
                "samples": args.samples,
                "spearman": {v: spearman([r[v] for r in rows], y) for v in variants},
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
