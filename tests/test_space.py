import itertools

import pytest

from autodeeplab import space


def test_op_order_is_canonical():
    assert space.PRIMITIVES == (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "atr_conv_3x3",
        "atr_conv_5x5",
    )
    assert space.op_index("atr_conv_5x5") == 7
    with pytest.raises(ValueError, match="valid operations are"):
        space.op_index("conv_7x7")


@pytest.mark.parametrize("blocks", [1, 2, 3, 5, 7])
def test_edge_numbering_block_by_block(blocks):
    # Independent enumeration: block b reads inputs 0..b+1, numbered consecutively.
    expected = [(b, j) for b in range(blocks) for j in range(b + 2)]
    assert list(space.cell_edges(blocks)) == expected
    assert space.num_edges(blocks) == len(expected)
    for k, (b, j) in enumerate(expected):
        assert space.edge_index(b, j) == k
    for j in range(blocks + 2):
        assert space.edges_from_input(j, blocks) == tuple(
            k for k, (b, jj) in enumerate(expected) if jj == j
        )


def test_five_blocks_have_twenty_edges():
    assert space.num_edges(5) == 20
    with pytest.raises(ValueError):
        space.edge_index(0, 2)


def test_valid_moves():
    assert space.valid_moves(0) == (1, 2)
    assert space.valid_moves(1) == (0, 1, 2)
    assert space.valid_moves(2) == (0, 1, 2)
    assert space.valid_moves(3) == (0, 1)
    with pytest.raises(ValueError):
        space.valid_moves(4)
    assert space.move_between(2, 1) == space.MOVE_FINER
    assert space.move_between(2, 3) == space.MOVE_COARSER
    with pytest.raises(ValueError, match="at most one"):
        space.move_between(0, 2)


def _brute_force_paths(layers):
    for path in itertools.product(range(4), repeat=layers):
        prev, ok = 0, True
        for s in path:
            ok &= abs(s - prev) <= 1
            prev = s
        if ok:
            yield path


@pytest.mark.parametrize("layers", [1, 2, 5, 8])
def test_count_paths_matches_enumeration(layers):
    paths = list(_brute_force_paths(layers))
    assert space.count_paths(layers) == len(paths)
    assert space.count_paths(layers, reaching_level=3) == sum(3 in p for p in paths)


def test_path_count_for_twelve_layers_as_stated_in_spec():
    assert space.count_paths(12) == 75025
    assert space.count_paths(12, reaching_level=3) == 41564


def test_levels_at_layer():
    assert space.levels_at_layer(0) == (0, 1)
    assert space.levels_at_layer(1) == (0, 1, 2)
    assert space.levels_at_layer(5) == (0, 1, 2, 3)
