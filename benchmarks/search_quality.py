"""What the search buys: run a study and print its summary as JSON on stdout.

    .venv/bin/python benchmarks/search_quality.py                     # configs/study/synthetic.yaml
    .venv/bin/python benchmarks/search_quality.py --output runs/sq-small \
        --trials 2 --random 4 --iterations 100 --seeds 0        # a smaller study, same protocol
    .venv/bin/python benchmarks/search_quality.py --config my_study.yaml random.num=20

Runs (or continues: the study folder is resumable) ``autodeeplab study`` and prints the
``summary`` of its ``study.json`` (random mean and std, each searched architecture's rank and
z-score against the random architectures, the training-seed noise, the best hand-designed
path), the protocol, every candidate's mean mIoU and the wall time of this invocation. The
trial logs go to stderr. Without ``--output`` the study folder is
``runs/search-quality/<config>-<hash of the resolved study>``, so every size gets its own folder
and running the same command again continues it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from autodeeplab.config import flatten
from autodeeplab.study import STUDY_RUNTIME_KEYS, Study, load_study_config, run_study

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--config", default=str(ROOT / "configs" / "study" / "synthetic.yaml"), help="study YAML"
    )
    p.add_argument("--output", help="study folder (default: one per resolved study)")
    p.add_argument("--trials", type=int, help="search trials (seeds 0..K-1)")
    p.add_argument("--random", type=int, help="random architectures")
    p.add_argument("--iterations", type=int, help="retraining iterations per candidate and seed")
    p.add_argument("--epochs", type=int, help="search epochs per trial")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds")
    p.add_argument("--device", help="device of every trial")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="study config overrides")
    args = p.parse_args()

    overrides = list(args.overrides)
    for flag, key in (
        ("output", "output"),
        ("trials", "search.trials"),
        ("random", "random.num"),
        ("iterations", "train.overrides.iterations"),
        ("epochs", "search.overrides.epochs"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.seeds is not None:
        overrides.append(f"train_seeds={json.dumps(args.seeds)}")
    if args.trials == 1:
        overrides.append("search.consensus=false")  # the consensus of one trial is that trial
    config = load_study_config(args.config, overrides)
    if args.output is None:
        record = flatten(Study(config).record())
        what = {k: v for k, v in record.items() if k not in STUDY_RUNTIME_KEYS}
        digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]
        config.output = str(Path("runs") / "search-quality" / f"{Path(args.config).stem}-{digest}")

    start = time.perf_counter()
    result = run_study(config, device=args.device, log=lambda text: print(text, file=sys.stderr))
    seconds = time.perf_counter() - start
    document = json.loads((result.output / "study.json").read_text())
    print(
        json.dumps(
            {
                "study": str(result.output),
                "protocol": document["protocol"],
                "summary": {k: v for k, v in document["summary"].items() if k != "ranks"},
                "candidates": {
                    c["name"]: {"kind": c["kind"], "rank": c["rank"], "mean": c["mean"]}
                    for c in document["candidates"]
                },
                "trials_run": result.ran,
                "wall_s": round(seconds, 1),
                "machine": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads(),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
