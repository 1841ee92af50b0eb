"""Engine pieces shared by search and training: the metrics log's rewind on restart."""

import json

from autodeeplab.engine.common import RunLog

from runs import read_records


def _log(tmp_path, rank: int = 0) -> RunLog:
    return RunLog(tmp_path, rank=rank, step_key="global_step", tensorboard=False, log=None)


def test_rewind_keeps_the_records_up_to_the_checkpoint_and_drops_cut_lines(tmp_path):
    lines = [
        {"type": "step", "global_step": 3, "loss": 1.0},
        {"type": "epoch", "global_step": 4, "loss": 0.9},  # written just before the checkpoint
        {"type": "note", "text": "no position"},  # kept: nothing says when it was written
        {"type": "step", "global_step": 5, "loss": 0.8},  # after the checkpoint: redone
        {"type": "step", "global_step": 6, "loss": 0.7},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    (tmp_path / "metrics.jsonl").write_text(text + '{"type": "step", "global_st')  # killed
    log = _log(tmp_path)
    assert log.rewind(4) == 3
    assert read_records(tmp_path / "metrics.jsonl") == lines[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary left
    log.record({"type": "step", "global_step": 5, "loss": 0.5})
    log.close()
    assert [r.get("global_step") for r in read_records(tmp_path / "metrics.jsonl")] == [
        3,
        4,
        None,
        5,
    ]
    assert _log(tmp_path).rewind(0) == 3  # a fresh start keeps no stale record with a position


def test_only_rank_0_rewinds(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"global_step": 9}\n')
    assert _log(tmp_path, rank=1).rewind(0) == 0
    assert (tmp_path / "metrics.jsonl").read_text() == '{"global_step": 9}\n'
