"""Does the search beat random architectures? Every candidate retrained under one budget.

A study retrains every candidate architecture with the identical training configuration (data,
iterations, schedule, F, crop, batch, evaluation; only the architecture and the training seed
differ) and reports every candidate's validation mIoU, favourable or not:

* ``searched``: search trials with different seeds (the search engine), each decoded genotype;
* ``random``: architectures drawn uniformly from the same space (:mod:`autodeeplab.sample`);
* ``hand-designed``: the hand-designed path families of the space with one cell;
* ``file``: genotype files named in the study config.

Study folder::

    config.yaml             the study config as given (``--config`` for a rerun)
    study.yaml              the resolved study, checked on every rerun
    candidates/<name>.json  the genotype of every candidate
    search/<name>/          one search run per trial (+ trial.json once finished)
    train/<name>/seed<k>/   one training run per candidate and training seed (+ trial.json)
    trials.jsonl            one record per trial finished, in the order they finished
    study.json              every candidate with its figures, and the summary statistics
    study.md, study.html    the same as a report: the table of every candidate, sorted
    study.png               mIoU against parameters and against Multi-Adds

Running the same study again resumes it: a finished trial (its ``trial.json`` exists and was
written for the same configuration) is never redone, an interrupted one continues from its
``last.pt`` through the engines' own resume, and a study folder written with a different
configuration is refused with the keys that differ.

The package, in the order a study runs:

* :mod:`~autodeeplab.study.config`: the study config (YAML) and its checks;
* :mod:`~autodeeplab.study.plan`: the candidates, the trials and the study folder;
* :mod:`~autodeeplab.study.trials`: running trials, one at a time, in worker processes or on Ray;
* :mod:`~autodeeplab.study.stats`: the statistics (:func:`competition_ranks`, :func:`z_score`,
  :func:`pooled_std`, :func:`architecture_signal`, :func:`summarize`), pure functions of the
  per-seed results;
* :mod:`~autodeeplab.study.outputs`: ``study.json``, the report and the figure;
* :mod:`~autodeeplab.study.run`: :func:`run_study`, the whole study.
"""

from autodeeplab.study.config import (
    CONSENSUS,
    KINDS,
    STUDY_NEUTRAL_DEFAULTS,
    STUDY_RUNTIME_KEYS,
    TRIAL_RUNTIME_KEYS,
    StudyConfig,
    StudyError,
    StudyHandDesignedConfig,
    StudyInterrupted,
    StudyRandomConfig,
    StudySearchConfig,
    StudyTrainConfig,
    load_study_config,
)
from autodeeplab.study.outputs import draw_study, write_outputs
from autodeeplab.study.plan import Candidate, Study, Trial, describe, trial_key
from autodeeplab.study.run import StudyResult, collect, run_study
from autodeeplab.study.stats import (
    CandidateResult,
    architecture_signal,
    competition_ranks,
    hand_designed_paths,
    mean_std,
    pooled_std,
    seed_means,
    summarize,
    z_score,
)
from autodeeplab.study.trials import run_trial

__all__ = [
    "CONSENSUS",
    "KINDS",
    "STUDY_NEUTRAL_DEFAULTS",
    "STUDY_RUNTIME_KEYS",
    "TRIAL_RUNTIME_KEYS",
    "Candidate",
    "CandidateResult",
    "Study",
    "StudyConfig",
    "StudyError",
    "StudyHandDesignedConfig",
    "StudyInterrupted",
    "StudyRandomConfig",
    "StudyResult",
    "StudySearchConfig",
    "StudyTrainConfig",
    "Trial",
    "architecture_signal",
    "collect",
    "competition_ranks",
    "describe",
    "draw_study",
    "hand_designed_paths",
    "load_study_config",
    "mean_std",
    "pooled_std",
    "run_study",
    "run_trial",
    "seed_means",
    "summarize",
    "trial_key",
    "write_outputs",
    "z_score",
]
