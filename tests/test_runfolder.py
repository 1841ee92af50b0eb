"""Run folders: the lock (a real second process), leftovers of interrupted writes, strict JSON."""

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from autodeeplab.runfolder import (
    LOCK_FILE,
    RunFolderLock,
    RunFolderLockedError,
    atomic_write_text,
    dumps_json,
    json_ready,
    read_lock_holder,
    remove_interrupted_writes,
)

from runs import hold_lock, strict_loads


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    child = hold_lock(run)
    try:
        (run / "metrics.jsonl").write_text('{"step": 1}\n')  # the holder's output
        with pytest.raises(RunFolderLockedError, match=rf"in use by .*pid {child.pid} on host"):
            RunFolderLock(run).acquire()
        assert read_lock_holder(run)["pid"] == child.pid
        assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'  # untouched
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "released"
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()
    assert read_lock_holder(run) is None  # an orderly release empties the record
    with RunFolderLock(run) as lock:
        assert lock.held and read_lock_holder(run)["pid"] == os.getpid()
    assert not lock.held


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    run = tmp_path / "run"
    child = hold_lock(run)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert read_lock_holder(run)["pid"] == child.pid  # the stale record is still there...
    with RunFolderLock(run):  # ...but the kernel released the lock
        assert read_lock_holder(run)["pid"] == os.getpid()


def test_a_second_lock_in_the_same_process_is_refused_too(tmp_path):
    with RunFolderLock(tmp_path), pytest.raises(RunFolderLockedError, match=f"pid {os.getpid()}"):
        RunFolderLock(tmp_path).acquire()


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_leftovers_of_interrupted_writes_are_removed(tmp_path):
    run = tmp_path / "run"
    keep = [
        _touch(run / "last.pt"),
        _touch(run / "metrics.jsonl"),
        _touch(run / "notes.tmp"),  # not a leftover name: no leading dot, no random part
        _touch(run / ".hidden"),
        _touch(run / "best" / "model.safetensors"),
        _touch(run / "best" / "config.json"),
        _touch(run / "nested" / LOCK_FILE),  # another run folder: left alone
        _touch(run / "nested" / ".last.pt.abc123de.tmp"),
    ]
    gone = [
        _touch(run / ".last.pt.k2j_x9ab.tmp"),  # checkpoint.save_checkpoint (mkstemp)
        _touch(run / ".curves.png.0123456789ab.tmp"),  # draw.save_figure
        _touch(run / "checkpoints" / ".epoch_003.pt.zzzzzzzz.tmp"),
        _touch(run / ".best.q1w2e3r4.tmp" / "model.safetensors"),  # saved_model (mkdtemp)
        _touch(run / ".best.a1b2c3d4.old" / "best" / "config.json", "previous"),
    ]
    removed = remove_interrupted_writes(run)
    expected = {gone[0], gone[1], gone[2], gone[3].parent, gone[4].parent.parent}
    assert set(removed) == expected
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in expected)
    assert (run / "best" / "config.json").read_text() == "x"  # the current model folder stays


def test_a_model_folder_moved_aside_is_put_back_when_its_replacement_never_arrived(tmp_path):
    # killed between the two renames of saved_model._replace_dir: best/ is gone, the previous
    # version waits in .best.<random>.old/best and the new one in .best.<random>.tmp
    run = tmp_path / "run"
    _touch(run / ".best.a1b2c3d4.old" / "best" / "config.json", "previous")
    _touch(run / ".best.q1w2e3r4.tmp" / "config.json", "unfinished")
    remove_interrupted_writes(run)
    assert (run / "best" / "config.json").read_text() == "previous"
    assert sorted(p.name for p in run.iterdir()) == ["best"]


def test_json_ready_and_dumps_json_write_standard_json():
    record = {"loss": math.nan, "lr": math.inf, "x": [1.5, -math.inf, (2, math.nan)], "ok": 1}
    text = dumps_json(record)
    assert strict_loads(text) == {"loss": None, "lr": None, "x": [1.5, None, [2, None]], "ok": 1}
    assert json_ready(True) is True and json_ready("nan") == "nan"
    numpy = {"a": (np.float32(1.5), np.float32("nan"), np.int64(2), np.bool_(True))}
    assert json_ready(numpy) == {"a": [1.5, None, 2, True]}
    assert type(json_ready(np.int64(2))) is int and type(json_ready(np.float32(1))) is float
    with pytest.raises(ValueError):
        strict_loads(json.dumps(record))  # what the standard library writes by default
    with pytest.raises(TypeError):
        dumps_json({"tensor": object()})  # anything JSON cannot hold still raises


def test_atomic_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = _touch(tmp_path / "a.txt", "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
