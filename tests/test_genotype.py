import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autodeeplab import space
from autodeeplab.genotype import GENOTYPES, RELEASED, Genotype, get_genotype
from autodeeplab.topology import Topology


def test_released_preset_matches_spec():
    assert RELEASED.path == (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)
    assert RELEASED.blocks == 5 and RELEASED.layers == 12
    # block2 = (3 sep_conv_3x3) + (0 sep_conv_3x3), stored sorted by input
    assert RELEASED.cell[2] == ((0, "sep_conv_3x3"), (3, "sep_conv_3x3"))
    assert RELEASED.output_stride == 8


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_json_round_trip(name, tmp_path):
    g = get_genotype(name)
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_string(str(g)) == g
    f = tmp_path / "g.json"
    g.save(f)
    assert Genotype.load(f) == g
    assert hash(Genotype.load(f)) == hash(g)


def test_branch_order_does_not_matter():
    a = Genotype(cell=[[[1, "sep_conv_3x3"], [0, "skip_connect"]]], path=[0, 1])
    b = Genotype(cell=(((0, "skip_connect"), (1, "sep_conv_3x3")),), path=(0, 1))
    assert a == b
    assert isinstance(a.cell[0][0], tuple)


CELL = space.RELEASED_CELL
PATH = space.RELEASED_PATH


@pytest.mark.parametrize(
    ("cell", "path", "message"),
    [
        (((((0, "conv_7x7"), (1, "sep_conv_3x3")), *CELL[1:])), PATH, "unknown operation"),
        (((((0, "none"), (1, "sep_conv_3x3")), *CELL[1:])), PATH, "unknown operation"),
        (((((0, "sep_conv_3x3"), (2, "sep_conv_3x3")), *CELL[1:])), PATH, "does not exist yet"),
        (
            ((*CELL[:3], ((0, "sep_conv_3x3"), (5, "sep_conv_3x3")), *CELL[4:])),
            PATH,
            "does not exist yet",
        ),
        (((((1, "sep_conv_3x3"), (1, "skip_connect")), *CELL[1:])), PATH, "twice"),
        (((((0, "sep_conv_3x3"),), *CELL[1:])), PATH, "exactly 2 branches"),
        ((), PATH, "at least one block"),
        (CELL, (), "at least one layer"),
        (CELL, (0, 1, 2, 4), "out of range"),
        (CELL, (0, -1), "out of range"),
        (CELL, (0, 2), "jumps more than one level"),
        (CELL, (2,), "jumps more than one level from the stem"),
        (CELL, (0, 1, 1.5), "integer"),
        (CELL, "0123", "sequence"),
    ],
)
def test_invalid_genotypes_raise(cell, path, message):
    with pytest.raises(ValueError, match=message):
        Genotype(cell=cell, path=path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"path": [0]}', "missing"),
        ('{"path": [0], "cell": [], "extra": 1}', "unknown genotype keys"),
        (
            '{"path": [0], "cell": [[[0, "skip_connect"], [1, "skip_connect"]]], "format_version": 9}',
            "format_version",
        ),
    ],
)
def test_malformed_json(text, message):
    with pytest.raises(ValueError, match=message):
        Genotype.from_json(text)


def test_load_names_the_file(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"path": [0, 3], "cell": [list(map(list, b)) for b in CELL]}))
    with pytest.raises(ValueError, match=r"bad\.json"):
        Genotype.load(f)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        Genotype.load(tmp_path / "missing.json")


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError, match="available: autodeeplab"):
        get_genotype("nope")


# ---------------------------------------------------------------------------- properties
PROPERTY = settings(max_examples=200, deadline=None)
OPS = [op for op in space.PRIMITIVES if op != "none"]

# Any JSON value: what json.loads can return.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
# Mostly well-shaped genotype dicts with arbitrary values inside, to reach the deep checks.
genotype_like = st.fixed_dictionaries(
    {"path": st.lists(st.integers(-2, 5) | json_values, max_size=6), "cell": json_values},
    optional={"format_version": st.sampled_from([1, 1.0, True, 2, "1", None])},
) | st.dictionaries(st.sampled_from(["path", "cell", "format_version", "other"]), json_values)


@st.composite
def genotypes(draw) -> Genotype:
    """Valid genotypes: a path of moves of at most one level, blocks reading earlier inputs."""
    path, level = [], space.STEM_LEVEL
    for _ in range(draw(st.integers(1, 12))):
        level = draw(
            st.sampled_from([v for v in (level - 1, level, level + 1) if 0 <= v < space.NUM_LEVELS])
        )
        path.append(level)
    cell = []
    for b in range(draw(st.integers(1, 5))):
        inputs = draw(st.lists(st.integers(0, b + 1), min_size=2, max_size=2, unique=True))
        cell.append([(i, draw(st.sampled_from(OPS))) for i in inputs])
    return Genotype(cell=cell, path=path)


@PROPERTY
@given(genotypes())
def test_round_trips_are_lossless(g):
    assert Genotype.from_dict(g.to_dict()) == g
    assert Genotype.from_dict(json.loads(g.to_json())) == g
    assert Genotype.from_json(g.to_json(indent=2)) == g
    assert Genotype.from_string(str(g)) == g
    assert str(Genotype.from_string(str(g))) == str(g)


def _only_value_errors(parse, value):
    try:
        g = parse(value)
    except ValueError as err:
        assert str(err), "an empty message says nothing"
    else:
        assert isinstance(g, Genotype)
        assert Genotype.from_dict(g.to_dict()) == g  # whatever is accepted is a real genotype


@PROPERTY
@given(json_values | genotype_like)
def test_from_dict_of_any_json_raises_only_value_error(data):
    _only_value_errors(Genotype.from_dict, data)


@PROPERTY
@given(st.text(max_size=80) | json_values.map(json.dumps) | genotype_like.map(json.dumps))
def test_from_json_of_any_text_raises_only_value_error(text):
    _only_value_errors(Genotype.from_json, text)


@PROPERTY
@given(st.text(max_size=60) | genotypes().map(str).map(lambda s: s[: len(s) // 2]))
def test_from_string_of_any_text_raises_only_value_error(text):
    _only_value_errors(Genotype.from_string, text)


def test_format_version_must_be_the_integer_1():
    data = RELEASED.to_dict()
    for bad in (1.0, True, "1"):
        with pytest.raises(ValueError, match="format_version"):
            Genotype.from_dict({**data, "format_version": bad})


# ---------------------------------------------------------------------------- multi-path (format 2)
@st.composite
def topologies(draw, max_layers: int = 8) -> Topology:
    """Feasible topologies: every active node feeds a non-empty set of the moves it has."""
    layers, active = [], [space.STEM_LEVEL]
    for _ in range(draw(st.integers(1, max_layers))):
        trans = []
        for src in active:
            dsts = [d for d in (src - 1, src, src + 1) if 0 <= d < space.NUM_LEVELS]
            chosen = draw(st.lists(st.sampled_from(dsts), min_size=1, max_size=3, unique=True))
            trans += [(src, d) for d in chosen]
        layers.append(tuple(trans))
        active = sorted({d for _, d in trans})
    return Topology(tuple(layers))


@st.composite
def multi_path_genotypes(draw) -> Genotype:
    return Genotype(cell=draw(genotypes()).cell, topology=draw(topologies()))


TWO_PATHS = Topology((((0, 0), (0, 1)), ((0, 0), (1, 1)), ((0, 0), (1, 2))))
"""Layer 0 splits into levels 0 and 1, layer 1 merges into level 1 from both (and keeps level
0), layer 2 leaves level 0 to 0 and level 1 to 2: active last-layer levels 0 and 2."""


@PROPERTY
@given(multi_path_genotypes())
def test_multi_path_round_trips_are_lossless(g):
    assert Genotype.from_dict(g.to_dict()) == g
    assert Genotype.from_json(g.to_json(indent=2)) == g
    assert Genotype.from_string(str(g)) == g
    # the lowest format that holds it: a single path stays version 1
    assert g.to_dict()["format_version"] == (2 if g.is_multi_path else 1)
    assert ("path" in g.to_dict()) == (not g.is_multi_path)


def test_multi_path_genotype_views():
    g = Genotype(cell=RELEASED.cell, topology=TWO_PATHS)
    assert g.is_multi_path and g.path is None and g.layers == 3
    assert g.output_levels == (0, 2)
    assert g.output_stride == 4  # the finest node of the last layer
    assert g.max_stride == 16  # level 2
    assert g.to_dict() == {
        "format_version": 2,
        "transitions": [[[0, 0], [0, 1]], [[0, 0], [1, 1]], [[0, 0], [1, 2]]],
        "cell": [[[i, op] for i, op in block] for block in RELEASED.cell],
    }
    assert str(g).startswith("transitions=0>0,0>1;0>0,1>1;0>0,1>2|cell=")


def test_a_single_path_given_as_topology_is_the_path_genotype():
    by_path = Genotype(cell=RELEASED.cell, path=(0, 1, 1))
    by_topology = Genotype(cell=RELEASED.cell, topology=Topology.from_path((0, 1, 1)))
    assert by_topology == by_path and by_topology.path == (0, 1, 1)
    assert not by_path.is_multi_path
    assert by_path.topology == Topology((((0, 0),), ((0, 1),), ((1, 1),)))
    assert dataclasses.replace(by_path, cell=RELEASED.cell[:2]).path == (0, 1, 1)


def test_version_1_files_load_and_version_2_accepts_a_path(tmp_path):
    v1 = tmp_path / "v1.json"
    v1.write_text(
        json.dumps(
            {
                "format_version": 1,
                "path": [0, 1],
                "cell": [[[0, "skip_connect"], [1, "max_pool_3x3"]]],
            }
        )
    )
    assert Genotype.load(v1).path == (0, 1)
    v2 = {"format_version": 2, "path": [0, 1], "cell": [[[0, "skip_connect"], [1, "max_pool_3x3"]]]}
    assert Genotype.from_dict(v2) == Genotype.load(v1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"format_version": 1, "transitions": [[[0, 0]]]}, "unknown genotype keys"),
        ({"format_version": 2}, "exactly one of .path."),
        ({"format_version": 2, "path": [0], "transitions": [[[0, 0]]]}, "exactly one"),
        ({"format_version": 2, "transitions": [[[0, 0]], [[1, 1]]]}, "layer 1"),  # from a dead node
        ({"format_version": 2, "transitions": [[[0, 0], [0, 1]], [[0, 0]]]}, "feed no transition"),
        ({"format_version": 2, "transitions": [[[0, 2]]]}, "more than one"),
        ({"format_version": 2, "transitions": [[]]}, "no active transition"),
        ({"format_version": 2, "transitions": "0>0"}, "transitions"),
        ({"format_version": 3, "path": [0]}, "format_version 3 is not supported"),
    ],
)
def test_invalid_format_2_genotypes_raise(data, message):
    cell = [[[0, "skip_connect"], [1, "max_pool_3x3"]]]
    with pytest.raises(ValueError, match=message):
        Genotype.from_dict({"cell": cell, **data})


def test_path_and_topology_must_agree():
    with pytest.raises(ValueError, match="disagree"):
        Genotype(cell=RELEASED.cell, path=(0, 0, 0), topology=TWO_PATHS)
    with pytest.raises(ValueError, match="path or a topology"):
        Genotype(cell=RELEASED.cell)


@PROPERTY
@given(st.text(max_size=60) | multi_path_genotypes().map(str).map(lambda s: s[: len(s) // 2]))
def test_from_string_of_any_multi_path_text_raises_only_value_error(text):
    _only_value_errors(Genotype.from_string, "transitions=" + text)


@PROPERTY
@given(
    st.fixed_dictionaries(
        {
            "transitions": json_values | st.lists(st.lists(st.lists(st.integers(-1, 4)))),
            "cell": json_values,
        },
        optional={"format_version": st.sampled_from([1, 2, 2.0, "2"]), "path": json_values},
    )
)
def test_from_dict_of_any_format_2_like_json_raises_only_value_error(data):
    _only_value_errors(Genotype.from_dict, data)
