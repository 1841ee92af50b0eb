"""Helpers for the tests of runs: the tiny search config, a child process holding a folder's
lock, strict JSON, comparisons of two search runs."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from autodeeplab.checkpoint import load_checkpoint

SEARCH_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "search" / "synthetic.yaml"
SEARCH_TINY = [
    "epochs=2",
    "arch_start_epoch=1",
    "data.options={length: 16, size: 32, seed: 0}",
    "data.crop_size=32",
    "data.batch_size=2",
    "data.eval_batch_size=4",
    "data.max_eval_samples=4",
    "model.layers=3",
    "model.blocks=2",
    "model.filter_multiplier=2",
    "model.stem_channels=[8, 8, 8]",
    "progress=false",
    "tensorboard=false",
    "log_interval=1",
]
"""Overrides of the synthetic search config for a tiny search: 8 + 8 samples, 4 steps per
epoch."""


def tiny_search(tmp_path: Path, *extra: str, name: str = "run"):
    """The tiny search config writing to ``tmp_path / name``, with ``extra`` overrides."""
    from autodeeplab.config import load_config

    return load_config(SEARCH_CONFIG, [*SEARCH_TINY, f"output={tmp_path / name}", *extra])


_HOLDER = textwrap.dedent(
    """
    import sys
    from autodeeplab.runfolder import RunFolderLock

    lock = RunFolderLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.readline()  # hold the lock until the parent writes a line (or kills us)
    lock.release()
    print("released", flush=True)
    """
)


def hold_lock(folder: Path) -> subprocess.Popen:
    """A child process holding the lock of ``folder`` (flock locks belong to an open file
    description, so only another process shows what a second run sees). Write a line to its
    stdin to make it release the lock and exit."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "locked"
    return child


def strict_loads(text: str):
    """``json.loads`` that refuses NaN and Infinity (which standard JSON does not have)."""

    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def read_records(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``, parsed strictly."""
    return [strict_loads(line) for line in path.read_text().splitlines()]


def comparable_records(run: Path) -> list[dict]:
    """The records of a run's metrics.jsonl without the wall-clock times."""
    return [
        {k: v for k, v in r.items() if k != "time_s"} for r in read_records(run / "metrics.jsonl")
    ]


def assert_same_search_state(a_path: Path, b_path: Path) -> None:
    """Bit-identical weights, alphas, betas, BatchNorm statistics and optimiser states."""
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert (a["epoch"], a["step"], a["global_step"]) == (b["epoch"], b["step"], b["global_step"])
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for name in ("w_opt", "a_opt"):
        sa, sb = a[name]["state"], b[name]["state"]
        assert sa.keys() == sb.keys() and sa, name
        for i in sa:
            for k, v in sa[i].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[i][k])), (name, i, k)
    assert a["w_sched"] == b["w_sched"]
