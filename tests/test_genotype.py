import json

import pytest

from autodeeplab import space
from autodeeplab.genotype import GENOTYPES, RELEASED, Genotype, get_genotype


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
