"""benchmarks/selection_signal.py: its rank correlation against hand computation, and both
supernet scores on a tiny finished search."""

import importlib.util
import math
from pathlib import Path

import pytest

from autodeeplab.engine import run_search

from runs import tiny_search

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "selection_signal", ROOT / "benchmarks" / "selection_signal.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spearman_against_hand_computation():
    bench = load_benchmark()
    assert bench.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert bench.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: x ranks 0, 1.5, 1.5, 3 against 0, 1, 2, 3;
    # centred: (-1.5, 0, 0, 1.5) . (-1.5, -0.5, 0.5, 1.5) = 4.5, norms sqrt(4.5) and sqrt(5)
    assert bench.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert bench.spearman([1, 2], [1, 2]) is None  # too few pairs
    assert bench.spearman([1, 1, 1], [1, 2, 3]) is None  # no spread


@pytest.mark.parametrize("relaxation", ["softmax", "gumbel"])
def test_scores_of_a_finished_search(tmp_path, relaxation):
    cfg = tiny_search(tmp_path, f"relaxation.name={relaxation}")
    run_search(cfg)
    out = load_benchmark().scores(Path(cfg.output), samples=4)
    assert set(out) == {"recalibrated", "sampled"}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    # deterministic: the same scores again
    assert load_benchmark().scores(Path(cfg.output), samples=4) == out
