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


# --------------------------------------------------------------------------- SearchSpace


@pytest.mark.parametrize("layers", [1, 2, 3, 6])
def test_trellis_matches_the_nodes_and_moves_of_every_path(layers):
    """Nodes, sources and used transitions of the space against brute-force enumeration of all
    network paths from the stem: a node exists iff some path visits it, a transition is used
    iff some path takes it."""
    paths = list(_brute_force_paths(layers))
    visited = {(layer, s) for p in paths for layer, s in enumerate(p)}
    taken = {(layer, (0, *p)[layer], p[layer]) for p in paths for layer in range(layers)}
    sp = space.SearchSpace(layers=layers, blocks=2)
    assert {(n.layer, n.level) for n in sp.all_nodes()} == visited
    assert set(sp.transitions()) == taken
    assert len(sp.transitions()) == len(taken)  # no duplicates
    for n in sp.all_nodes():
        assert set(n.sources) == {s for (k, s, d) in taken if k == n.layer and d == n.level}
        assert list(n.sources) == sorted(n.sources)
    mask = sp.used_transition_mask()
    for layer, s, m in itertools.product(range(layers), range(4), range(3)):
        assert mask[layer][s][m] == ((layer, s, s + m - 1) in taken)


def test_prev_prev_levels_by_hand():
    """``sH^{l-2}``: layer 0 reads the stem's 1/2 output (-1), layer 1 its 1/4 output (0);
    later the same level if it exists two layers back, else the coarsest existing one."""
    sp = space.SearchSpace(layers=4, blocks=1)
    pp = {(n.layer, n.level): n.prev_prev for n in sp.all_nodes()}
    assert pp == {
        (0, 0): -1, (0, 1): -1,
        (1, 0): 0, (1, 1): 0, (1, 2): 0,
        (2, 0): 0, (2, 1): 1, (2, 2): 1, (2, 3): 1,
        (3, 0): 0, (3, 1): 1, (3, 2): 2, (3, 3): 2,
    }  # fmt: skip


def test_search_space_value_and_errors():
    sp = space.SearchSpace(3, 2)
    assert sp == space.SearchSpace(layers=3, blocks=2, ops=list(space.PRIMITIVES))
    assert hash(sp) == hash(space.SearchSpace(3, 2))
    assert sp.num_edges == 5 and sp.num_ops == 8 and sp.num_levels == 4
    assert sp.op_index("skip_connect") == 3
    assert sp.levels_at(0) == (0, 1) and sp.node(2, 3).sources == (2,)
    with pytest.raises(ValueError, match="valid operations are: none, max_pool_3x3"):
        sp.op_index("conv_7x7")
    with pytest.raises(ValueError, match="layer 0 has no node at level 2"):
        sp.node(0, 2)
    with pytest.raises(ValueError, match=r"layer must be in 0..2"):
        sp.nodes(3)
    for bad in ({"layers": 0}, {"blocks": 0}, {"layers": True}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            space.SearchSpace(**bad)
    with pytest.raises(ValueError, match="distinct operation names"):
        space.SearchSpace(ops=("none", "none"))


def test_spatial_dims_of_the_search_space():
    """Images by default; volumes search the paper's eight ops by default, the pseudo-3D ops are
    opt-in and volume-only; the trellis does not depend on the dimensionality."""
    images, volumes = space.SearchSpace(3, 2), space.SearchSpace(3, 2, spatial_dims=3)
    assert images.spatial_dims == 2 and volumes.ops == images.ops == space.PRIMITIVES
    assert images != volumes and images.transitions() == volumes.transitions()
    dints = space.SearchSpace(3, 2, ops=(*space.PRIMITIVES, *space.PSEUDO_3D_OPS), spatial_dims=3)
    assert dints.num_ops == 11 and dints.op_index("p3d_conv_1x3x3") == 10
    assert space.BUILTIN_OPS[: space.NUM_OPS] == space.PRIMITIVES
    for name in space.PSEUDO_3D_OPS:
        assert space.op_spatial_dims(name) == (3,)
    for name in (*space.PRIMITIVES, "conv_3x3"):
        assert space.op_spatial_dims(name) == (2, 3)
    for bad in (1, 4, True, 2.0, "3"):
        with pytest.raises(ValueError, match=r"spatial_dims must be 2 \(images\) or 3 \(volumes\)"):
            space.SearchSpace(spatial_dims=bad)
    with pytest.raises(
        ValueError,
        match=r"\['p3d_conv_3x3x1'\] do not exist for spatial_dims=2; operations for it: none, ",
    ):
        space.SearchSpace(ops=("none", "p3d_conv_3x3x1"))
    with pytest.raises(ValueError, match="unknown operation 'conv_9x9'"):
        space.op_spatial_dims("conv_9x9")
