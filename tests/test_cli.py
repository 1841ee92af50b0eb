import json
import subprocess
import sys

from autodeeplab.cli import main


def test_genotypes_json(capsys):
    assert main(["genotypes", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["autodeeplab"]["path"] == [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1]


def test_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "autodeeplab", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("autodeeplab ")
