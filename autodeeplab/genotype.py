"""A discrete Auto-DeepLab architecture: one cell plus its network-level topology.

The network level is a single path (one level per layer, the paper's networks) or, after a
DiNTS search, a multi-path :class:`~autodeeplab.topology.Topology` (a set of active trellis
transitions per layer). A :class:`Genotype` is a frozen, validated value: every instance that
exists is a valid architecture, it round-trips losslessly through JSON and has a short
canonical string.

JSON formats: version 1 holds ``path`` and ``cell``; version 2 holds ``cell`` and either
``path`` or ``transitions`` (per layer, the active ``[source_level, target_level]`` pairs).
A genotype is written in the lowest version that holds it (single paths stay version 1, so
files stay readable by earlier releases); both versions load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autodeeplab import space
from autodeeplab.space import path_string
from autodeeplab.topology import Topology

Branch = tuple[int, str]
"""``(input_index, op_name)``: one of the two branches of a block."""
Block = tuple[Branch, Branch]

JSON_FORMAT_VERSION = 2
"""Newest JSON format this release reads and writes (see the module docstring)."""

SINGLE_PATH_FORMAT_VERSION = 1
"""Format of single-path genotypes (the version that introduced them)."""

_KEYS = {1: {"path", "cell"}, 2: {"cell"}}
"""Required keys per format version (version 2 also needs ``path`` or ``transitions``)."""


@dataclass(frozen=True)
class Genotype:
    """Cell (``B`` blocks of two ``(input, op)`` branches) and network-level topology.

    Give the topology as ``path`` (one level per layer) or as ``topology`` (a
    :class:`~autodeeplab.topology.Topology`, possibly multi-path); both are then set:
    ``topology`` always, ``path`` for a single-path topology and ``None`` otherwise. Giving both
    is allowed when they agree (as :func:`dataclasses.replace` does).

    Within a block the two branches are kept sorted by input index (a block adds them, so the
    order carries no meaning).
    """

    cell: tuple[Block, ...]
    path: tuple[int, ...] | None = None
    topology: Topology | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cell", _normalise_cell(self.cell))
        path, topology = self.path, self.topology
        if topology is not None and not isinstance(topology, Topology):
            raise ValueError(
                f"topology must be an autodeeplab.topology.Topology, got {type(topology).__name__}"
            )
        if path is None:
            if topology is None:
                raise ValueError("a genotype needs a path or a topology")
            path = topology.path() if topology.is_single_path() else None
        else:
            path = space.validate_path(path)
            from_path = Topology.from_path(path)
            if topology is not None and topology != from_path:
                raise ValueError(
                    f"path {list(path)} and topology {topology} disagree; give one of them"
                )
            topology = from_path
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "topology", topology)

    # ------------------------------------------------------------------ properties
    @property
    def blocks(self) -> int:
        return len(self.cell)

    @property
    def layers(self) -> int:
        return self.topology.num_layers

    @property
    def is_multi_path(self) -> bool:
        """More than one active node in some layer (a DiNTS topology)."""
        return self.path is None

    @property
    def output_levels(self) -> tuple[int, ...]:
        """Levels of the last layer's active nodes (the ones that feed the head)."""
        return self.topology.active_levels(self.layers - 1)

    @property
    def output_stride(self) -> int:
        """Downsample rate of the finest node of the last layer (of the last cell for a path)."""
        return space.LEVEL_STRIDES[min(self.output_levels)]

    @property
    def max_stride(self) -> int:
        """Deepest downsample rate of any active node."""
        return space.LEVEL_STRIDES[max(d for layer in self.topology.layers for _, d in layer)]

    # ------------------------------------------------------------------ (de)serialisation
    @property
    def format_version(self) -> int:
        """The JSON format version :meth:`to_dict` writes: the lowest that holds this genotype."""
        return JSON_FORMAT_VERSION if self.is_multi_path else SINGLE_PATH_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        cell = [[[i, op] for i, op in block] for block in self.cell]
        if self.path is not None:
            return {
                "format_version": SINGLE_PATH_FORMAT_VERSION,
                "path": list(self.path),
                "cell": cell,
            }
        return {
            "format_version": JSON_FORMAT_VERSION,
            "transitions": self.topology.to_dict()["transitions"],
            "cell": cell,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        if not isinstance(data, dict):
            raise ValueError(
                f"a genotype must be a JSON object with keys 'path' and 'cell', got {type(data).__name__}"
            )
        version = data.get("format_version", SINGLE_PATH_FORMAT_VERSION)
        if type(version) is not int or version not in _KEYS:  # not 1.0, not true
            raise ValueError(
                f"genotype format_version {version!r} is not supported (supported: "
                f"{', '.join(map(str, sorted(_KEYS)))})"
            )
        allowed = {"format_version", "path", "cell"} | ({"transitions"} if version >= 2 else set())
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(
                f"unknown genotype keys {sorted(unknown)} for format_version {version}; expected "
                f"{', '.join(repr(k) for k in sorted(allowed - {'format_version'}))} and "
                "optionally 'format_version'"
            )
        missing = _KEYS[version] - set(data)
        if missing:
            raise ValueError(f"genotype is missing {sorted(missing)}")
        if version >= 2 and ("path" in data) == ("transitions" in data):
            raise ValueError(
                "a format_version 2 genotype has exactly one of 'path' (a single path) and "
                "'transitions' (per layer, the active [source_level, target_level] pairs)"
            )
        if "transitions" in data:
            topo = Topology.from_dict({"transitions": data["transitions"]})
            return cls(cell=data["cell"], topology=topo)
        return cls(cell=data["cell"], path=data["path"])

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"genotype is not valid JSON: {err}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"genotype file not found: {path}")
        try:
            return cls.from_json(path.read_text())
        except ValueError as err:
            raise ValueError(f"invalid genotype file {path}: {err}") from None

    def __str__(self) -> str:
        """Short canonical form, e.g. ``path=0-0-1|cell=0:atr_conv_5x5+1:sep_conv_3x3/...``;
        a multi-path topology is written ``transitions=0>0;0>0,0>1;...`` (layers separated by
        ``;``, a layer's active ``source>target`` transitions by ``,``)."""
        cell = "/".join("+".join(f"{i}:{op}" for i, op in block) for block in self.cell)
        if self.path is not None:
            return f"path={path_string(self.path)}|cell={cell}"
        layers = ";".join(",".join(f"{s}>{d}" for s, d in t) for t in self.topology.layers)
        return f"transitions={layers}|cell={cell}"

    @classmethod
    def from_string(cls, text: str) -> Genotype:
        """Parse the canonical form produced by ``str(genotype)``."""
        try:
            net_part, cell_part = text.strip().split("|")
            if not cell_part.startswith("cell="):
                raise ValueError
            cell = tuple(
                tuple((int(b.split(":")[0]), b.split(":")[1]) for b in block.split("+"))
                for block in cell_part[len("cell=") :].split("/")
            )
            if net_part.startswith("path="):
                path = tuple(int(s) for s in net_part[len("path=") :].split("-"))
                return cls(cell=cell, path=path)
            if not net_part.startswith("transitions="):
                raise ValueError
            layers = tuple(
                tuple(tuple(int(x) for x in pair.split(">", 1)) for pair in layer.split(","))
                for layer in net_part[len("transitions=") :].split(";")
            )
            if any(len(pair) != 2 for layer in layers for pair in layer):
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(
                f"cannot parse genotype string {text!r}; expected 'path=0-0-1|cell=0:op+1:op/...' "
                "or 'transitions=0>0;0>0,0>1;...|cell=...'"
            ) from None
        return cls(cell=cell, topology=Topology(layers))


# ---------------------------------------------------------------------- validation


def validate_cell(cell: Any) -> tuple[Block, ...]:
    """The cell as :class:`Genotype` stores it (branches sorted by input); raises
    ``ValueError`` saying what is wrong, as a genotype would."""
    return _normalise_cell(cell)


def _normalise_cell(cell: Any) -> tuple[Block, ...]:
    if isinstance(cell, (str, bytes)) or not hasattr(cell, "__iter__"):
        raise ValueError(f"cell must be a sequence of blocks, got {cell!r}")
    blocks = tuple(cell)
    if not blocks:
        raise ValueError("cell must have at least one block")
    out: list[Block] = []
    for b, block in enumerate(blocks):
        if isinstance(block, (str, bytes)) or not hasattr(block, "__iter__"):
            raise ValueError(f"block {b} must be two (input, op) pairs, got {block!r}")
        branches = tuple(block)
        if len(branches) != 2:
            raise ValueError(f"block {b} must have exactly 2 branches, got {len(branches)}")
        norm: list[Branch] = []
        for branch in branches:
            if isinstance(branch, (str, bytes)) or not hasattr(branch, "__iter__"):
                raise ValueError(f"block {b}: a branch is an (input, op) pair, got {branch!r}")
            pair = tuple(branch)
            if len(pair) != 2:
                raise ValueError(f"block {b}: a branch is an (input, op) pair, got {branch!r}")
            inp, op = pair
            if isinstance(inp, bool) or not isinstance(inp, int):
                raise ValueError(f"block {b}: input index must be an integer, got {inp!r}")
            if not 0 <= inp < b + 2:
                raise ValueError(
                    f"block {b} reads input {inp}, which does not exist yet; block {b} can read "
                    f"0 (H^(l-2)), 1 (H^(l-1)) and 2..{b + 1} (outputs of blocks 0..{b - 1})"
                    if b > 0
                    else f"block 0 reads input {inp}, which does not exist yet; block 0 can only "
                    "read 0 (H^(l-2)) and 1 (H^(l-1))"
                )
            if op == "none" or not isinstance(op, str) or op not in space.known_ops():
                valid = ", ".join(p for p in space.known_ops() if p != "none")
                raise ValueError(f"block {b}: unknown operation {op!r}; valid operations: {valid}")
            norm.append((inp, op))
        if norm[0][0] == norm[1][0]:
            raise ValueError(
                f"block {b} reads input {norm[0][0]} twice; the two branches need distinct inputs"
            )
        # A block adds its two branches, so their order carries no meaning: keep them sorted by
        # input index so that equal architectures compare (and hash) equal.
        norm.sort(key=lambda br: br[0])
        out.append((norm[0], norm[1]))
    return tuple(out)


# ---------------------------------------------------------------------- presets

RELEASED = Genotype(cell=space.RELEASED_CELL, path=space.RELEASED_PATH)

_HAND_DESIGNED = ("deeplabv3", "conv-deconv", "stacked-hourglass")

GENOTYPES: dict[str, Genotype] = {
    "autodeeplab": RELEASED,
    # Hand-designed networks expressed in the same space, with the released cell; their paths
    # come from the path families of the search space (12 layers).
    **{
        name: Genotype(cell=space.RELEASED_CELL, path=path)
        for name, path in space.hand_designed_paths(
            space.DEFAULT_LAYERS, families=_HAND_DESIGNED
        ).items()
    },
}
"""Named genotypes. Look them up with :func:`get_genotype`."""


def get_genotype(name: str) -> Genotype:
    try:
        return GENOTYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown genotype preset {name!r}; available: {', '.join(sorted(GENOTYPES))}"
        ) from None
