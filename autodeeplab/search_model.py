"""The search model of a :class:`~autodeeplab.config.SearchConfig`: its relaxation, its supernet
and its memory budget, built in one place.

The search engine, ``autodeeplab decode`` and anything else that rebuilds a search model from
a run folder or a checkpoint go through these functions, so a run is always decoded with the
relaxation it was searched with. :data:`RELAXATIONS` maps ``relaxation.name`` to a factory;
nothing else tests the name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autodeeplab import decode, space
from autodeeplab.budget import MemoryBudget
from autodeeplab.config import (
    SEARCH_MIN_CROP,
    ConfigError,
    SearchConfig,
    crop_min_side,
    from_dict,
)
from autodeeplab.data import dataset_spatial_dims
from autodeeplab.dints import DintsRelaxation
from autodeeplab.genotype import Genotype
from autodeeplab.heads import search_head_rates
from autodeeplab.projection import CellProjection
from autodeeplab.relaxation import GumbelRelaxation, Relaxation, SoftmaxRelaxation
from autodeeplab.supernet import SearchNetwork


def _softmax(cfg: SearchConfig, search_space: space.SearchSpace) -> Relaxation:
    # PC-DARTS' edge normalisation comes with partial channels, as in SearchNetwork's default
    return SoftmaxRelaxation(
        search_space,
        edge_normalisation=cfg.model.partial_channels > 1,
        path_decoding=cfg.relaxation.path_decoding,
    )


def _gumbel(cfg: SearchConfig, search_space: space.SearchSpace) -> Relaxation:
    r = cfg.relaxation
    return GumbelRelaxation(
        search_space,
        tau_max=r.tau_max,
        tau_min=r.tau_min,
        edge_normalisation=cfg.model.partial_channels > 1,
        path_decoding=r.path_decoding,
    )


def _dints(cfg: SearchConfig, search_space: space.SearchSpace) -> Relaxation:
    r = cfg.relaxation
    return DintsRelaxation(
        search_space,
        path_entropy_weight=r.path_entropy_weight,
        op_entropy_weight=r.op_entropy_weight,
        topology_weight=r.topology_weight,
        warmup=r.warmup,
    )


RELAXATIONS: dict[str, Callable[[SearchConfig, space.SearchSpace], Relaxation]] = {
    "softmax": _softmax,
    "gumbel": _gumbel,
    "dints": _dints,
}
"""``relaxation.name`` -> factory of the :class:`~autodeeplab.relaxation.Relaxation`."""


def check_relaxation(cfg: SearchConfig) -> None:
    """Refuse the combinations of ``relaxation.*`` with other keys that cannot run, with a
    :class:`~autodeeplab.config.ConfigError` naming the keys and what is valid."""
    r = cfg.relaxation
    if r.name not in RELAXATIONS:
        raise ConfigError(
            f"relaxation.name: unknown relaxation {r.name!r}; valid: {', '.join(RELAXATIONS)}"
        )
    try:
        decode.check_path_rule(r.path_decoding)
    except ValueError as err:
        raise ConfigError(f"relaxation.path_decoding: {err}") from None
    if r.name == "gumbel":
        _check_gumbel(cfg)
    relax = RELAXATIONS[r.name](cfg, space.SearchSpace(1, 1))  # only its kind is asked
    independent = relax.independent_transitions
    if r.memory_target is not None and search_spatial_dims(cfg) == 3:
        raise ConfigError(
            f"relaxation.memory_target = {r.memory_target}: the memory model counts the feature "
            f"maps of images, not of volumes, and data.name={cfg.data.name!r} holds volumes; "
            "set relaxation.memory_target=null"
        )
    if r.memory_target is not None and not independent:
        raise ConfigError(
            f"relaxation.memory_target = {r.memory_target} needs independent transition "
            f"probabilities, which relaxation.name={r.name!r} does not have; use "
            "relaxation.name=dints or set relaxation.memory_target=null"
        )
    fixed = search_path(cfg)
    if fixed is not None and independent:
        raise ConfigError(
            f"model.path = {cfg.model.path!r} fixes a single path, and relaxation.name={r.name!r} "
            "searches a multi-path topology: set model.path=null or relaxation.name=softmax "
            "or gumbel"
        )
    if fixed is not None and r.path_decoding != "probability":
        raise ConfigError(
            f"relaxation.path_decoding = {r.path_decoding!r} reads the path off the betas, and "
            f"with model.path = {cfg.model.path!r} there are none: set "
            "relaxation.path_decoding=probability"
        )
    if independent and r.path_decoding != "probability":
        raise ConfigError(
            f"relaxation.path_decoding = {r.path_decoding!r} reads one path off the betas; "
            f"relaxation.name={r.name!r} decodes a multi-path topology of its own: set "
            "relaxation.path_decoding=probability"
        )
    if independent and cfg.model.partial_channels > 1:
        raise ConfigError(
            f"model.partial_channels = {cfg.model.partial_channels} (PC-DARTS) goes with the "
            f"softmax relaxation's edge normalisation; relaxation.name={r.name!r} does not "
            "support it: set model.partial_channels=1 or relaxation.name=softmax"
        )
    images = search_spatial_dims(cfg) == 2  # volumes have no memory estimate to bound
    if independent and images and crop_min_side(cfg.data.crop_size) <= SEARCH_MIN_CROP:
        raise ConfigError(
            f"data.crop_size = {cfg.data.crop_size} is too small for relaxation.name={r.name!r}: "
            "its memory estimate is that of the discrete network, whose deepest stride is "
            f"{SEARCH_MIN_CROP}; use data.crop_size >= {SEARCH_MIN_CROP + 1}"
        )
    if cfg.arch_regularizer.name not in ("none", *relax.regularizers):
        raise ConfigError(
            f"arch_regularizer.name = {cfg.arch_regularizer.name!r} is a term of another "
            f"relaxation; with relaxation.name={r.name!r} valid: "
            f"{', '.join(('none', *relax.regularizers))}"
        )


def _check_gumbel(cfg: SearchConfig) -> None:
    """The Gumbel relaxation's temperatures, and the options that need the same supernet in
    every evaluation of one step (each training forward pass draws a new sample)."""
    r = cfg.relaxation
    if r.tau_min > r.tau_max:
        raise ConfigError(
            f"relaxation.tau_min = {r.tau_min} is above relaxation.tau_max = {r.tau_max}: the "
            "temperature falls from tau_max to tau_min; use tau_min <= tau_max"
        )
    if cfg.unrolled:
        raise ConfigError(
            "unrolled = true with relaxation.name='gumbel': the second-order step evaluates "
            "the supernet several times and each would draw another architecture; GDAS is "
            "first-order: set unrolled=false"
        )
    if cfg.selection.name != "argmax":
        raise ConfigError(
            f"selection.name = {cfg.selection.name!r} with relaxation.name='gumbel': the "
            "perturbation-based selection scores the supernet's mixture of operations, which "
            "a Gumbel supernet never trains; use selection.name=argmax"
        )


def search_spatial_dims(cfg: SearchConfig) -> int:
    """2 when ``cfg`` searches on images, 3 on volumes: the kind of its data set."""
    return dataset_spatial_dims(cfg.data.name)


def search_path(cfg: SearchConfig) -> tuple[int, ...] | None:
    """The fixed path ``model.path`` names for ``cfg``'s layers (``None``: the whole trellis);
    a :class:`~autodeeplab.config.ConfigError` says what is wrong with it."""
    if cfg.model.path is None:
        return None
    try:
        return space.parse_path(cfg.model.path, cfg.model.layers)
    except ValueError as err:
        raise ConfigError(f"model.path: {err}") from None


def search_space(cfg: SearchConfig) -> space.SearchSpace:
    """The search space of ``cfg``: its layers and blocks, for images or volumes, on its fixed
    path if it has one."""
    m = cfg.model
    return space.SearchSpace(
        m.layers, m.blocks, spatial_dims=search_spatial_dims(cfg), path=search_path(cfg)
    )


def build_relaxation(cfg: SearchConfig) -> Relaxation:
    """The relaxation ``cfg.relaxation`` names, for ``cfg``'s search space."""
    check_relaxation(cfg)
    return RELAXATIONS[cfg.relaxation.name](cfg, search_space(cfg))


def build_supernet(cfg: SearchConfig, num_classes: int, in_channels: int = 3) -> SearchNetwork:
    """The supernet of ``cfg`` with its relaxation (on the CPU; the caller moves it), for
    images or volumes as ``cfg.data`` holds, with ``in_channels`` input channels (image
    channels, or the modalities of volumes)."""
    m = cfg.model
    return SearchNetwork(
        num_classes,
        layers=m.layers,
        blocks=m.blocks,
        filter_multiplier=m.filter_multiplier,
        in_channels=in_channels,
        stem_channels=m.stem_channels,
        partial_channels=m.partial_channels,
        checkpoint_cells=m.checkpoint_cells,
        selective_checkpoint=m.selective_checkpoint,
        aspp_rates=search_head_rates(m.aspp_rates, crop_min_side(cfg.data.crop_size)),
        relaxation=build_relaxation(cfg),
        spatial_dims=search_spatial_dims(cfg),
        path=search_path(cfg),
    )


def build_memory_budget(cfg: SearchConfig, num_classes: int) -> MemoryBudget | None:
    """The :class:`~autodeeplab.budget.MemoryBudget` of a search whose relaxation has
    independent transitions (DiNTS), at its crop and batch; ``None`` for the others and for
    volumes (the memory model counts image feature maps; a budget is refused for them)."""
    if not build_relaxation(cfg).independent_transitions or search_spatial_dims(cfg) == 3:
        return None
    m, r = cfg.model, cfg.relaxation
    return MemoryBudget(
        m.layers,
        m.blocks,
        filter_multiplier=m.filter_multiplier,
        input_size=(cfg.data.crop_size, cfg.data.crop_size),
        batch_size=cfg.data.batch_size,
        num_classes=num_classes,
        target=r.memory_target,
        weight=r.memory_weight,
    )


def checkpoint_architecture(
    state: Mapping[str, Any], path: str | Path, path_decoding: str | None = None
) -> tuple[Relaxation, dict[str, torch.Tensor | None]]:
    """The relaxation of a search checkpoint (a loaded ``last.pt``) and its architecture
    parameters by name, ready for :meth:`Relaxation.decode` and
    :meth:`Relaxation.transition_weights`; ``path`` names the file in errors,
    ``path_decoding`` replaces the rule of its config (:func:`checkpoint_relaxation`)."""
    relaxation = checkpoint_relaxation(state, path, path_decoding)
    model = state.get("model", {})
    names = relaxation.init_parameters()
    missing = [k for k, v in names.items() if v is not None and k not in model]
    if missing:
        raise ValueError(
            f"{path} holds no {type(relaxation).__name__} parameters ({', '.join(missing)}); "
            "is it a search checkpoint?"
        )
    return relaxation, {k: model.get(k) for k in names}


def checkpoint_genotype(
    state: Mapping[str, Any], path: str | Path, path_decoding: str | None = None
) -> Genotype:
    """The architecture of a search checkpoint (a loaded ``last.pt``): decoded with its
    relaxation, with the cell of its perturbation-based selection's decisions when it holds
    any (:mod:`autodeeplab.projection`); ``path`` names the file in errors,
    ``path_decoding`` replaces the rule of its config (:func:`checkpoint_relaxation`)."""
    relaxation, params = checkpoint_architecture(state, path, path_decoding)
    genotype = relaxation.decode(params)
    projection = _checkpoint_projection(state, relaxation, path)
    if projection is None:
        return genotype
    try:
        return projection.genotype(genotype, relaxation.op_weights(params))
    except ValueError as err:
        raise ValueError(f"{path}: its selection decisions are not valid: {err}") from None


def checkpoint_distribution(
    state: Mapping[str, Any], path: str | Path, path_decoding: str | None = None
) -> tuple[Relaxation, dict[str, np.ndarray]]:
    """The relaxation of a search checkpoint and the distribution its architecture parameters
    stand for (:meth:`Relaxation.distribution`). With perturbation-based selection decisions,
    the op weights are the projected ones (one-hot on the chosen operations, 0 on dropped
    edges): decoded alone, the distribution gives :func:`checkpoint_genotype`.
    ``path_decoding`` replaces the rule of its config (:func:`checkpoint_relaxation`)."""
    relaxation, params = checkpoint_architecture(state, path, path_decoding)
    try:
        dist = relaxation.distribution(params)
    except NotImplementedError as err:
        raise ValueError(f"{path}: {err}; it has no distribution to average") from None
    projection = _checkpoint_projection(state, relaxation, path)
    if projection is not None:
        try:
            dist["ops"] = projection.apply(torch.from_numpy(dist["ops"])).numpy()
        except ValueError as err:
            raise ValueError(f"{path}: its selection decisions are not valid: {err}") from None
    return relaxation, dist


def _checkpoint_projection(
    state: Mapping[str, Any], relaxation: Relaxation, path: str | Path
) -> CellProjection | None:
    """The perturbation-based selection decisions a checkpoint holds (None: it holds none)."""
    records = state.get("selection", {}).get("records", [])
    if not records:
        return None
    try:
        return CellProjection.from_records(
            relaxation.space.blocks, tuple(relaxation.space.ops), records
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: its selection decisions are not valid: {err}") from None


def checkpoint_relaxation(
    state: Mapping[str, Any], path: str | Path, path_decoding: str | None = None
) -> Relaxation:
    """The relaxation a search checkpoint (a loaded ``last.pt``) was written with, from the
    config it holds; ``path`` names the file in errors. ``path_decoding`` (not None) replaces
    its ``relaxation.path_decoding``: the same search read with another path rule."""
    if state.get("kind", "search") != "search" or not isinstance(state.get("config"), Mapping):
        raise ValueError(
            f"{path} is not a search checkpoint (it holds no search config); give a search run's "
            "last.pt or run folder"
        )
    try:
        cfg = from_dict(SearchConfig, state["config"])
    except ConfigError as err:
        raise ValueError(f"{path}: the config it holds is not valid: {err}") from None
    if path_decoding is not None:
        cfg.relaxation.path_decoding = path_decoding
    try:
        return build_relaxation(cfg)  # checks the combination (check_relaxation)
    except ConfigError as err:
        raise ValueError(f"{path}: {err}") from None
