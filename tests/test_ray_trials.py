"""Study trials on Ray: same results as a sequential run, devices and threads of the workers,
and the errors of a wrong set-up."""

import sys

import pytest

from autodeeplab.cli import main
from autodeeplab.extras import MissingExtraError, require
from autodeeplab.ray_trials import RayOptions, trial_on
from autodeeplab.study import Study, run_study
from tests.test_study import assert_same_results, load, study_data, write_study


def test_options_are_checked():
    assert RayOptions().device == "cpu" and RayOptions(gpus=0.5).device == "cuda"
    for bad in ({"cpus": 0}, {"gpus": -1}, {"address": ""}):
        with pytest.raises(ValueError):
            RayOptions(**bad)


def test_a_trial_on_ray_takes_the_workers_device_and_threads(tmp_path):
    study = Study(load(tmp_path, study_data(tmp_path)))
    trial = study.train_trials(study.candidates)[0]
    trial.config.threads = None
    moved = trial_on(trial, RayOptions(cpus=2, gpus=1))
    assert moved.config.device == "cuda" and moved.config.threads == 2
    assert (moved.name, moved.key, moved.seed) == (trial.name, trial.key, trial.seed)
    assert trial.config.device != "cuda" and trial.config.threads is None  # a copy
    trial.config.threads = 1
    assert trial_on(trial, RayOptions(cpus=2)).config.threads == 1  # the config's own choice


def test_missing_extra_is_a_user_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(MissingExtraError, match=r"pip install 'autodeeplab\[ray\]'"):
        require("autodeeplab_no_such_module", "ray", "running a study on Ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    path = write_study(tmp_path, study_data(tmp_path))
    assert main(["study", "--config", str(path), "--ray", "local"]) == 2
    assert "autodeeplab[ray]" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_ray_refuses_local_scheduling_options(tmp_path, capsys):
    path = write_study(tmp_path, study_data(tmp_path))
    assert main(["study", "--config", str(path), "--ray", "local", "--jobs", "2"]) == 2
    assert "leave out" in capsys.readouterr().err
    assert main(["study", "--config", str(path), "--gpus-per-trial", "1"]) == 2
    assert "go with --ray" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_gives_the_sequential_results(tmp_path):
    pytest.importorskip("ray")
    data = study_data(tmp_path, name="sequential", train_seeds=[0])
    run_study(load(tmp_path, data))
    on_ray = run_study(
        load(tmp_path, {**data, "output": str(tmp_path / "ray")}),
        ray=RayOptions("local", cpus=1),
    )
    assert on_ray.ran == 2
    assert_same_results(tmp_path / "sequential", tmp_path / "ray")
    again = run_study(
        load(tmp_path, {**data, "output": str(tmp_path / "ray")}), ray=RayOptions("local")
    )
    assert again.ran == 0  # finished trials are recognised, nothing is rerun
