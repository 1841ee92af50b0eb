"""Helpers for the tests of run folders: a child process holding a folder's lock, strict JSON."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

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
