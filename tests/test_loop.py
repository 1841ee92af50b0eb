"""The loop base on its own: a toy engine (a linear classifier on keyed random points) that
checkpoints, is stopped or crashes, resumes and ends exactly as an uninterrupted run; what a
resume refuses; the sharded evaluation; the data order."""

import os
import random
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autodeeplab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from autodeeplab.config import to_dict
from autodeeplab.engine.loop import (
    EngineBase,
    KeyedSamples,
    NonFiniteLossError,
    RunResult,
    epoch_batches,
)
from autodeeplab.metrics import ConfusionMatrix

from runs import read_records


class Points:
    """Sample ``i``: a point drawn with the generator it is given, labelled by the sign of
    its first coordinate (what :class:`KeyedSamples` needs of a data set)."""

    class_names = ("negative", "positive")

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(rng.standard_normal(2).astype(np.float32))
        return x, torch.tensor(int(x[0] > 0))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get(index, np.random.default_rng([99, index]))


@dataclass
class ToyData:
    name: str = "synthetic"
    root: str | None = None
    batch_size: int = 2
    workers: int = 0
    max_eval_samples: int | None = None
    eval_split: str = "val"


@dataclass
class ToyConfig:
    output: str
    seed: int = 0
    epochs: int = 3
    lr: float = 0.1
    device: str = "cpu"
    threads: int | None = None
    tensorboard: bool = False
    progress: bool = False
    log_interval: int = 1
    checkpoint_steps: int = 0
    max_steps: int | None = None
    data: ToyData = field(default_factory=ToyData)


class ToyEngine(EngineBase):
    """12 points, batches of 2: 6 steps per epoch. Each step also draws from the Python,
    NumPy and torch generators, so an exact resume needs all three restored."""

    kind = "toy"
    noun = "toy"

    def __init__(self, config: ToyConfig, resume: bool = False) -> None:
        self._set_up(config, log=None)
        self.train_set = self.eval_set = Points(12)
        self.keyed = KeyedSamples(self.train_set, config.seed)
        self._set_steps_per_epoch(len(self.train_set), "the toy set has 12 samples")
        self.model = nn.Linear(2, 2)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=0.9)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.checkpoint_steps = config.checkpoint_steps
        self.seen: list[tuple[int, ...]] = []  # the keys of every batch this process trained on
        self._open(resume)

    def _state(self) -> dict:
        return {"opt": self.opt.state_dict()}

    def _load_state(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])

    def _epoch_data(self, epoch: int, first: int):
        keys = self._epoch_keys(range(len(self.train_set)), 0, epoch)[first:]
        self.seen += [tuple(i for _, i in batch) for batch in keys]
        return self._loader(keys, epoch)

    def _step(self, data) -> dict:
        x, y = next(data)
        jitter = 1e-3 * (torch.randn(()) + random.random() + float(np.random.rand()))
        loss = nn.functional.cross_entropy(self.model(x), y) + jitter
        self._check_finite(loss.item(), "toy")
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def _step_done(self) -> bool:
        if self.global_step % self.steps_per_epoch:
            return False
        cm = self._evaluate(self._confusion)
        self.history.append({"epoch": self.global_step // self.steps_per_epoch})
        self._record({"type": "eval", "global_step": self.global_step, "acc": cm.pixel_accuracy()})
        self.save()
        return True

    def _confusion(self, shard) -> ConfusionMatrix:
        cm = ConfusionMatrix(2, ignore_index=255)
        for x, y in torch.utils.data.DataLoader(shard, batch_size=5):
            cm.update(self.model(x), y)
        return cm

    def _result(self, **run) -> dict:
        result = RunResult(**run)  # the base passes exactly the common fields
        assert result.output == self.output and result.history == self.history
        return {
            "finished": result.finished,
            "global_step": self.global_step,
            "signal": result.stop_signal,
        }


def run_toy(cfg: ToyConfig, resume: bool = False) -> dict:
    engine = ToyEngine(cfg, resume)
    try:
        return engine.run()
    finally:
        engine.close()


def toy(tmp_path: Path, name: str = "run", **changes) -> ToyConfig:
    return replace(ToyConfig(output=str(tmp_path / name)), **changes)


def assert_same_run(a: Path, b: Path) -> None:
    """Same weights, optimiser state, generators and records (the timing-free parts)."""
    sa, sb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    for i, state in sa["opt"]["state"].items():
        assert torch.equal(state["momentum_buffer"], sb["opt"]["state"][i]["momentum_buffer"])
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    assert sa["rng"]["python"] == sb["rng"]["python"]
    assert torch.equal(sa["rng"]["numpy"]["key"], sb["rng"]["numpy"]["key"])
    assert read_records(a / "metrics.jsonl") == read_records(b / "metrics.jsonl")


def test_an_uninterrupted_toy_run_writes_records_checkpoint_and_config(tmp_path):
    result = run_toy(toy(tmp_path))
    assert result == {"finished": True, "global_step": 18, "signal": None}
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["global_step"] for r in records if r["type"] == "step"] == list(range(1, 19))
    assert [r["global_step"] for r in records if r["type"] == "eval"] == [6, 12, 18]
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["kind"], state["global_step"], state["world_size"]) == ("toy", 18, 1)
    assert state["config"] == to_dict(toy(tmp_path)) and len(state["history"]) == 3
    assert (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.parametrize("stop_at", [4, 6])  # inside an epoch; at its end (after its checkpoint)
def test_max_steps_stops_with_a_checkpoint_and_resume_matches_the_uninterrupted_run(
    tmp_path, stop_at
):
    run_toy(toy(tmp_path, "full"))
    part = run_toy(toy(tmp_path, "part", max_steps=stop_at))
    assert part == {"finished": False, "global_step": stop_at, "signal": None}
    assert load_checkpoint(tmp_path / "part" / "last.pt")["global_step"] == stop_at
    assert run_toy(toy(tmp_path, "part"), resume=True)["finished"]  # max_steps is runtime
    assert_same_run(tmp_path / "full", tmp_path / "part")


def test_a_stop_signal_finishes_the_step_checkpoints_and_restores_the_handlers(
    tmp_path, monkeypatch
):
    run_toy(toy(tmp_path, "full"))
    step = ToyEngine._step

    def step_then_sigterm(self, data):
        values = step(self, data)
        if self.global_step == 8:  # the ninth step: SIGTERM arrives while it runs
            os.kill(os.getpid(), signal.SIGTERM)
        return values

    monkeypatch.setattr(ToyEngine, "_step", step_then_sigterm)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    part = run_toy(toy(tmp_path, "part"))
    assert part == {"finished": False, "global_step": 9, "signal": signal.SIGTERM}
    assert {s: signal.getsignal(s) for s in before} == before
    monkeypatch.setattr(ToyEngine, "_step", step)
    assert run_toy(toy(tmp_path, "part"), resume=True)["finished"]
    assert_same_run(tmp_path / "full", tmp_path / "part")


def test_a_crash_resumes_from_the_periodic_checkpoint_and_drops_the_later_records(
    tmp_path, monkeypatch
):
    run_toy(toy(tmp_path, "full", checkpoint_steps=4))
    step = ToyEngine._step

    def crash_in_step_11(self, data):
        if self.global_step == 10:
            raise RuntimeError("power cut")
        return step(self, data)

    monkeypatch.setattr(ToyEngine, "_step", crash_in_step_11)
    with pytest.raises(RuntimeError, match="power cut"):
        run_toy(toy(tmp_path, "part", checkpoint_steps=4))
    # checkpoints at steps 4, 6 (epoch end), 8; records up to step 10
    assert load_checkpoint(tmp_path / "part" / "last.pt")["global_step"] == 8
    assert read_records(tmp_path / "part" / "metrics.jsonl")[-1]["global_step"] == 10
    monkeypatch.setattr(ToyEngine, "_step", step)
    engine = ToyEngine(toy(tmp_path, "part", checkpoint_steps=4), resume=True)
    assert engine.global_step == 8
    engine.run()
    engine.close()
    # the resumed process drew the batches of steps 9.. only, those of the uninterrupted run
    assert engine.seen == [tuple(i for _, i in b) for b in _toy_keys(1)[2:] + _toy_keys(2)]
    assert_same_run(tmp_path / "full", tmp_path / "part")


def _toy_keys(epoch: int) -> list[list[tuple[int, int]]]:
    return epoch_batches(range(12), seed=0, stream=0, epoch=epoch, batch_size=2)


def test_a_non_finite_loss_stops_with_the_step_named_and_the_checkpoint_kept(tmp_path, monkeypatch):
    step = ToyEngine._step

    def diverge_at_8(self, data):
        if self.global_step == 7:
            self._check_finite(float("inf"), "toy")
        return step(self, data)

    monkeypatch.setattr(ToyEngine, "_step", diverge_at_8)
    with pytest.raises(NonFiniteLossError, match=r"loss became inf at step 8; .*last good"):
        run_toy(toy(tmp_path))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["global_step"] == 6


def test_resume_refusals_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="run without --resume"):
        ToyEngine(toy(tmp_path), resume=True)
    run_toy(toy(tmp_path, max_steps=2))
    with pytest.raises(ValueError, match="already holds a toy run"):
        ToyEngine(toy(tmp_path))
    with pytest.raises(CheckpointError, match=r"lr: 0\.1 -> 0\.2"):
        ToyEngine(toy(tmp_path, lr=0.2), resume=True)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    save_checkpoint({**state, "world_size": 2}, tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match="written by 2 processes"):
        ToyEngine(toy(tmp_path), resume=True)
    save_checkpoint({**state, "kind": "search"}, tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match="not a toy checkpoint"):
        ToyEngine(toy(tmp_path), resume=True)
    # each refusal released the run folder: a valid resume can go on
    save_checkpoint(state, tmp_path / "run" / "last.pt")
    assert run_toy(toy(tmp_path), resume=True)["finished"]


def test_fewer_samples_than_a_global_batch_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"toy set has 12 samples, fewer than one global batch"):
        ToyEngine(toy(tmp_path, data=ToyData(batch_size=13)))


def test_the_evaluation_counts_every_sample_and_leaves_the_generators_alone(tmp_path):
    engine = ToyEngine(toy(tmp_path, data=ToyData(max_eval_samples=7)))
    state = torch.get_rng_state()
    cm = engine._evaluate(engine._confusion)
    assert torch.equal(torch.get_rng_state(), state) and engine.model.training
    with torch.no_grad():
        xs, ys = zip(*(engine.eval_set[i] for i in range(7)), strict=True)
        pred = engine.model(torch.stack(xs)).argmax(1)
    expected = torch.zeros(2, 2, dtype=cm.matrix.dtype)
    for t, p in zip(ys, pred, strict=True):
        expected[int(t), int(p)] += 1
    assert torch.equal(cm.matrix, expected)
    engine.close()


def test_the_loader_gives_the_keyed_samples_of_the_epoch_order(tmp_path):
    engine = ToyEngine(toy(tmp_path))
    keys = _toy_keys(2)
    batches = list(engine._loader(keys[3:], epoch=2))
    assert len(batches) == 3
    for batch, key in zip(batches, keys[3:], strict=True):
        expected = torch.stack([engine.keyed[k][0] for k in key])
        assert torch.equal(batch[0], expected)
    engine.close()
