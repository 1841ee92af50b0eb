"""Architecture schedule: start as an epoch or a fraction, several architecture steps per weight
step, progress; in a search run: step counts, trainB passes, exact resume with every option."""

import json

import pytest
import torch

from autodeeplab.checkpoint import load_checkpoint
from autodeeplab.config import load_config
from autodeeplab.engine.schedule import ArchSchedule
from autodeeplab.engine.search import SearchEngine, epoch_batches, run_search

from runs import SEARCH_CONFIG, SEARCH_TINY, tiny_search

SYNTHETIC = SEARCH_CONFIG
TINY = SEARCH_TINY  # 8 + 8 samples -> 4 steps per epoch


tiny = tiny_search


def test_schedule_from_epoch_or_fraction():
    cfg = load_config(None, ["epochs=40", "arch_start_epoch=20"])
    s = ArchSchedule.from_config(cfg, steps_per_epoch=743)  # the paper's Cityscapes search
    assert (s.start_step, s.per_step, s.total_steps) == (20 * 743, 1, 40 * 743)
    assert s.total_arch_steps == 14_860
    half = ArchSchedule.from_config(load_config(None, ["arch_start_fraction=0.5"]), 743)
    assert half.start_step == s.start_step  # 0.5 of 40 epochs is epoch 20
    s = ArchSchedule.from_config(
        load_config(
            None,
            ["epochs=6", "arch_start_epoch=0", "arch_start_fraction=0.3", "arch_steps_per_step=4"],
        ),
        10,
    )
    assert (s.start_step, s.total_arch_steps) == (18, (60 - 18) * 4)
    assert [s.active(g) for g in (0, 17, 18, 59)] == [False, False, True, True]
    # epoch 1 covers global steps 10..19: architecture steps from its 9th step (index 8)
    assert [s.first_arch_position(e) for e in (0, 1, 2)] == [10, 8, 0]
    assert s.first_arch_position(1, position=9) == 9
    assert s.run_progress(0) == 0.0 and s.run_progress(30) == 0.5 and s.run_progress(60) == 1.0
    assert s.arch_progress(10) == 0.0 and s.arch_progress(18) == 0.0
    assert s.arch_progress(39) == pytest.approx(0.5) and s.arch_progress(60) == 1.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "arch_start_fraction=1.0",
            r"arch_start_fraction = 1 is out of range: must be in \[0, 1\)",
        ),
        (
            "arch_start_fraction=-0.1",
            r"arch_start_fraction = -0\.1 is out of range: must be in \[0, 1\)",
        ),
        ("arch_steps_per_step=0", r"arch_steps_per_step = 0 is out of range: must be >= 1"),
    ],
)
def test_bad_schedule_names_the_key(override, message):
    with pytest.raises(ValueError, match=message):  # the config's declared ranges
        ArchSchedule.from_config(load_config(None, [override]), 10)


def test_more_passes_over_trainb_leave_the_first_unchanged(tmp_path):
    one = SearchEngine(tiny(tmp_path), log=None)
    three = SearchEngine(tiny(tmp_path, "arch_steps_per_step=3", name="k3"), log=None)
    b1, b3 = one.batches(1, 1), three.batches(1, 1)
    assert len(b1) == 4 and len(b3) == 12
    assert b3[:4] == b1 == epoch_batches(one.train_b, 0, 1, 1, 2)
    for p in range(3):  # every pass is a permutation of trainB (8 samples, 4 batches of 2)
        assert sorted(i for batch in b3[4 * p : 4 * p + 4] for _, i in batch) == one.train_b
    assert b3[4:8] != b3[:4] and b3[8:] != b3[4:8]
    assert three.batches(0, 1) == one.batches(0, 1)  # trainA is untouched
    one.close()
    three.close()


def test_fraction_start_inside_an_epoch_and_several_arch_steps(tmp_path, capsys):
    # 8 weight steps; 0.25 -> architecture steps after global steps 2..7, 2 each
    cfg = tiny(tmp_path, "arch_start_fraction=0.25", "arch_steps_per_step=2")
    result = run_search(cfg)
    out = capsys.readouterr().out
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert [("arch_loss" in r) for r in steps] == [False, False] + [True] * 6
    assert [h["arch_steps"] for h in result.history] == [4, 12]
    assert [h["arch_search"] for h in result.history] == [True, True]
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert int(state["a_opt"]["state"][0]["step"]) == 12  # Adam counted every step
    assert "(no architecture step yet" not in out  # epoch 1 already had some


def test_resume_is_bit_identical_with_every_option(tmp_path):
    options = [
        "arch_start_fraction=0.375",  # starts inside epoch 1
        "arch_steps_per_step=2",
        "arch_regularizer.name=beta_decay",
        "arch_regularizer.weight=2.0",
        "aux_skip.schedule=cosine",
    ]
    full = run_search(tiny(tmp_path, *options, name="full"), log=None)
    # stop before the architecture phase (it starts at step 3 of epoch 0), then inside it
    part = run_search(tiny(tmp_path, *options, "max_steps=2", name="part"), log=None)
    assert (part.epoch, part.global_step) == (0, 2)
    part = run_search(tiny(tmp_path, *options, "max_steps=6", name="part"), resume=True, log=None)
    assert (part.epoch, part.global_step) == (1, 6)
    resumed = run_search(tiny(tmp_path, *options, name="part"), resume=True, log=None)
    assert resumed.finished and resumed.genotype == full.genotype
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["a_opt"]["state"][0]["exp_avg"].equal(b["a_opt"]["state"][0]["exp_avg"])
    keep = ("loss", "arch_loss", "arch_steps", "aux_skip", "arch_regularizer_weight")
    assert [{k: h[k] for k in keep} for h in a["history"]] == [
        {k: h[k] for k in keep} for h in b["history"]
    ]
