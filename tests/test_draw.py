import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from matplotlib.image import AxesImage
from matplotlib.patches import FancyArrowPatch
from PIL import Image

from autodeeplab import decode, space
from autodeeplab.cli import main
from autodeeplab.draw import (
    draw_architecture,
    draw_beta_heatmap,
    draw_cell,
    draw_path,
    load_architecture,
    save_figure,
    used_transitions,
)
from autodeeplab.genotype import GENOTYPES, RELEASED, Genotype
from autodeeplab.supernet import SearchNetwork
from autodeeplab.topology import Topology

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _random_genotype(seed: int, blocks: int, layers: int) -> Genotype:
    rng = np.random.default_rng(seed)
    alphas = rng.normal(size=(space.num_edges(blocks), space.NUM_OPS))
    return Genotype(
        cell=decode.decode_cell(alphas),
        path=decode.decode_path(rng.normal(size=(layers, space.NUM_LEVELS, space.NUM_MOVES))),
    )


def _by_gid(artists, gid):
    return [a for a in artists if a.get_gid() == gid]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = SearchNetwork(3, layers=4, blocks=5, filter_multiplier=2, stem_channels=(4, 4, 8))
    with torch.no_grad():  # spread the logits so that decoding is not decided by noise
        model.alphas.normal_()
        model.betas.normal_()
    path = tmp_path_factory.mktemp("ckpt") / "search.pt"
    torch.save({"model": model.state_dict()}, path)
    return path, model


# ----------------------------------------------------------------------------- path


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_path_line_follows_genotype(name):
    genotype = GENOTYPES[name]
    fig = draw_path(genotype)
    (ax,) = fig.axes
    (line,) = _by_gid(ax.lines, "path")
    assert list(line.get_xdata()) == list(range(-1, genotype.layers))  # stem, then layers
    assert list(line.get_ydata()) == [space.STEM_LEVEL, *genotype.path]
    (nodes,) = _by_gid(ax.collections, "trellis-nodes")
    reachable = 1 + sum(len(space.levels_at_layer(layer)) for layer in range(genotype.layers))
    assert len(nodes.get_offsets()) == reachable
    assert [t.get_text() for t in ax.get_yticklabels()] == ["/4", "/8", "/16", "/32"]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # finer levels on top


# ----------------------------------------------------------------------------- cell


@pytest.mark.parametrize(
    "genotype", [RELEASED, _random_genotype(1, 5, 6), _random_genotype(2, 3, 6)]
)
def test_cell_graph_has_one_arrow_per_branch_and_per_block(genotype):
    fig = draw_cell(genotype)
    (ax,) = fig.axes
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(_by_gid(arrows, "branch")) == 2 * genotype.blocks
    assert len(_by_gid(arrows, "concat")) == genotype.blocks
    assert len(arrows) == 3 * genotype.blocks
    labels = Counter(t.get_text() for t in _by_gid(ax.texts, "op-label"))
    assert labels == Counter(op for block in genotype.cell for _, op in block)
    node_labels = {t.get_text() for t in ax.texts if t.get_gid() != "op-label"}
    assert node_labels == {"H(l-2)", "H(l-1)", "concat"} | {str(b) for b in range(genotype.blocks)}


def _rotated_box(text, renderer) -> np.ndarray:
    """Corners of a text's rotated bounding box, in display pixels."""
    w, h, _ = renderer.get_text_width_height_descent(
        text.get_text(), text.get_fontproperties(), ismath=False
    )
    cx, cy = text.get_transform().transform(text.get_position())
    a = np.deg2rad(text.get_rotation())
    u, v = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    return np.array(
        [[cx, cy] + sx * w / 2 * u + sy * h / 2 * v for sx in (-1, 1) for sy in (-1, 1)]
    )


def _overlap(p: np.ndarray, q: np.ndarray) -> bool:
    """Separating-axis test for two rectangles given by their corners."""
    for box in (p, q):
        for axis in (box[1] - box[0], box[2] - box[0]):
            pp, qq = p @ axis, q @ axis
            if pp.max() <= qq.min() or qq.max() <= pp.min():
                return False
    return True


@pytest.mark.parametrize("genotype", [RELEASED, _random_genotype(2, 5, 6)])
def test_cell_labels_do_not_overlap(genotype):
    fig = draw_cell(genotype)
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    boxes = [_rotated_box(t, renderer) for t in _by_gid(ax.texts, "op-label")]
    for p, q in itertools.combinations(boxes, 2):
        assert not _overlap(p, q)


# ----------------------------------------------------------------------------- betas


def test_used_transitions_match_the_supernet():
    model = SearchNetwork(3, layers=5, blocks=2, filter_multiplier=2, stem_channels=(4, 4, 8))
    assert np.array_equal(used_transitions(5), model.used_beta_mask().numpy())


def test_heat_map_masks_exactly_the_unused_entries():
    rng = np.random.default_rng(0)
    beta = rng.normal(size=(6, space.NUM_LEVELS, space.NUM_MOVES))
    probs = decode.transition_probs(beta)
    used = used_transitions(6)
    fig = draw_beta_heatmap(beta)
    panels = [ax for ax in fig.axes if any(isinstance(i, AxesImage) for i in ax.images)]
    assert len(panels) == space.NUM_MOVES
    assert len(fig.axes) == space.NUM_MOVES + 1  # one shared colour bar
    for m, ax in enumerate(panels):
        (image,) = ax.images
        assert image.get_gid() == f"beta-{space.MOVE_NAMES[m]}"
        data = image.get_array()
        assert data.shape == (space.NUM_LEVELS, 6)  # levels on y, layers on x
        assert np.array_equal(np.ma.getmaskarray(data), ~used[:, :, m].T)
        assert np.allclose(data.compressed(), probs[:, :, m].T[used[:, :, m].T])
    # One circle per layer: every layer takes exactly one move of the decoded path.
    circles = sum(
        len(c.get_offsets()) for ax in panels for c in _by_gid(ax.collections, "path-overlay")
    )
    assert circles == 6


def test_heat_map_without_path_and_with_bad_shape():
    fig = draw_beta_heatmap(np.zeros((3, 4, 3)), show_path=False)
    assert not [c for ax in fig.axes for c in _by_gid(ax.collections, "path-overlay")]
    with pytest.raises(ValueError, match=r"shape \(L, 4, 3\)"):
        draw_beta_heatmap(np.zeros((3, 4, 2)))


# ----------------------------------------------------------------------------- combined + save


def test_architecture_figure_axes():
    assert len(draw_architecture(RELEASED).axes) == 2
    beta = np.zeros((RELEASED.layers, space.NUM_LEVELS, space.NUM_MOVES))
    assert len(draw_architecture(RELEASED, beta).axes) == 2 + space.NUM_MOVES + 1


def test_no_pyplot_figures_are_left_open():
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    draw_architecture(RELEASED)
    assert plt.get_fignums() == before


def test_save_figure_png_svg_and_bad_suffix(tmp_path):
    fig = draw_path(RELEASED)
    png = save_figure(fig, tmp_path / "sub" / "path.png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    svg = save_figure(fig, tmp_path / "path.svg")
    assert "<svg" in svg.read_text()[:2000]
    with pytest.raises(ValueError, match=r"\.png, \.svg"):
        save_figure(fig, tmp_path / "path.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["path.svg", "sub"]  # no temp files


# ----------------------------------------------------------------------------- loading + CLI


def test_load_architecture_from_checkpoint(checkpoint, tmp_path):
    path, model = checkpoint
    genotype, probs = load_architecture(path)
    assert genotype == model.genotype()
    assert np.allclose(probs, decode.transition_probs(model.betas.detach().double().numpy()))
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    assert load_architecture(bare)[0] == genotype


def test_load_architecture_errors(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.bin.*'alphas' and 'betas'"):
        load_architecture(garbage)
    other = tmp_path / "other.pt"
    torch.save({"epoch": 3}, other)
    with pytest.raises(ValueError, match=r"other\.pt has no architecture parameters.*epoch"):
        load_architecture(other)
    with pytest.raises(FileNotFoundError):
        load_architecture(tmp_path / "missing.pt")


TWO_PATHS = Genotype(
    cell=RELEASED.cell,
    topology=Topology((((0, 0), (0, 1)), ((0, 0), (0, 1), (1, 1)), ((0, 1), (1, 1), (1, 2)))),
)


def test_multi_path_draws_every_active_transition():
    fig = draw_path(TWO_PATHS)
    (ax,) = fig.axes
    assert not _by_gid(ax.lines, "path")
    drawn = {
        (int(line.get_xdata()[1]), int(line.get_ydata()[0]), int(line.get_ydata()[1]))
        for line in _by_gid(ax.lines, "transition")
    }
    assert len(_by_gid(ax.lines, "transition")) == 8
    # hand-listed (layer, source level, target level) of the topology
    assert drawn == {
        (0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1), (1, 1, 1), (2, 0, 1), (2, 1, 1), (2, 1, 2)
    }  # fmt: skip
    (active,) = _by_gid(ax.collections, "active-nodes")
    assert sorted(map(tuple, active.get_offsets().tolist())) == [
        (-1, 0), (0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (2, 2)
    ]  # fmt: skip
    # the light trellis underneath is the search space's, every one of its transitions
    light = [ln for ln in ax.lines if ln.get_gid() is None]
    assert len(light) == len(space.SearchSpace(layers=3).transitions())
    assert "output strides 8, 16" in ax.get_title()


def test_cli_draws_a_multi_path_genotype(tmp_path, capsys):
    source = tmp_path / "two.json"
    TWO_PATHS.save(source)
    out = tmp_path / "two.png"
    assert main(["draw", str(source), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG"


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_cli_draws_genotype_json(tmp_path, suffix, capsys):
    source = tmp_path / "released.json"
    GENOTYPES["autodeeplab"].save(source)
    out = tmp_path / f"arch{suffix}"
    assert main(["draw", str(source), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert out.stat().st_size > 1000
    if suffix == ".png":
        with Image.open(out) as im:
            assert im.format == "PNG" and min(im.size) > 500
    else:
        assert "<svg" in out.read_text()[:2000]


def test_cli_draws_checkpoint(checkpoint, tmp_path):
    out = tmp_path / "search.png"
    assert main(["draw", str(checkpoint[0]), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 1000 and im.size[1] > 1000


def test_cli_errors(tmp_path, capsys):
    source = tmp_path / "g.json"
    RELEASED.save(source)
    assert main(["draw", str(source), "--out", str(tmp_path / "x.jpg")]) == 2
    assert ".png, .svg" in capsys.readouterr().err
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main(["draw", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "genotype .json file" in err
    assert not (tmp_path / "x.png").exists()


def test_a_dints_search_checkpoint_draws_its_multi_path_topology(tmp_path):
    """A search checkpoint is decoded with the relaxation of its config: DiNTS gives the
    multi-path topology, and the heat maps show the marginals with its transitions circled."""
    from autodeeplab.config import (
        DataConfig,
        RelaxationConfig,
        SearchConfig,
        SupernetConfig,
        to_dict,
    )
    from autodeeplab.search_model import build_supernet

    cfg = SearchConfig(
        model=SupernetConfig(layers=4, blocks=2, filter_multiplier=2, stem_channels=[4, 4, 8]),
        data=DataConfig(crop_size=48, batch_size=2),
        relaxation=RelaxationConfig(name="dints"),
    )
    torch.manual_seed(0)
    model = build_supernet(cfg, 3)
    with torch.no_grad():  # decided logits: transitions into level 0 and 1 on, the rest off
        model.path_logits.fill_(-4.0)
        model.path_logits[:, 0, 1] = 4.0  # 0 -> 0
        model.path_logits[:, 0, 2] = 4.0  # 0 -> 1
        model.path_logits[:, 1, 0] = 4.0  # 1 -> 0
        model.path_logits[:, 1, 1] = 4.0  # 1 -> 1
        model.alphas.normal_()
    path = tmp_path / "last.pt"
    torch.save({"kind": "search", "config": to_dict(cfg), "model": model.state_dict()}, path)
    genotype, probs = load_architecture(path)
    assert genotype.is_multi_path
    assert genotype.topology.layers[0] == ((0, 0), (0, 1))
    assert all(t == ((0, 0), (0, 1), (1, 0), (1, 1)) for t in genotype.topology.layers[1:])
    state = model.arch_state()
    assert genotype == model.relaxation.decode(state)
    assert np.allclose(probs, model.relaxation.transition_weights(state).detach().numpy())
    fig = draw_architecture(genotype, probs)
    circles = sum(
        len(c.get_offsets()) for ax in fig.axes for c in _by_gid(ax.collections, "path-overlay")
    )
    assert circles == sum(len(t) for t in genotype.topology.layers) == 14
