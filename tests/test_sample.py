"""Random and hand-designed architectures (autodeeplab.sample) and `autodeeplab sample`."""

import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest

from autodeeplab import sample, space
from autodeeplab.complexity import complexity
from autodeeplab.genotype import GENOTYPES, Genotype
from autodeeplab.network import AutoDeepLab, NetworkConfig

# A correct sampler fails a goodness-of-fit test below with probability ALPHA for a random seed;
# the seeds are fixed, so each test is deterministic (and was checked to pass).
ALPHA = 1e-4
Z_ALPHA = 3.719  # standard normal upper quantile at 1e-4


def chi2_upper_quantile(df: int, z: float = Z_ALPHA) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile with upper tail ``alpha``."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2_statistic(observed: Counter, support: list, n: int) -> float:
    """Pearson statistic against the uniform distribution on ``support``."""
    assert set(observed) <= set(support), "a draw fell outside the support"
    expected = n / len(support)
    return sum((observed.get(k, 0) - expected) ** 2 / expected for k in support)


def brute_force_paths(layers: int) -> list[tuple[int, ...]]:
    """Every level sequence from the stem (level 0) moving at most one level, in 0..3."""
    out = []
    for path in itertools.product(range(4), repeat=layers):
        levels = (0, *path)
        if all(abs(b - a) <= 1 for a, b in itertools.pairwise(levels)):
            out.append(path)
    return out


def brute_force_cells(blocks: int) -> list[tuple]:
    """Every distinct cell: all ordered branch choices, deduplicated by Genotype's normal form."""
    ops = [op for op in space.PRIMITIVES if op != "none"]
    per_block = []
    for b in range(blocks):
        choices = set()
        for (i, x), (j, y) in itertools.product(itertools.product(range(b + 2), ops), repeat=2):
            if i != j:
                choices.add(
                    Genotype(
                        cell=[[(0, ops[0]), (1, ops[0])]] * b + [[(i, x), (j, y)]], path=(0,)
                    ).cell[b]
                )
        per_block.append(sorted(choices))
    return [tuple(c) for c in itertools.product(*per_block)]


def random_walk_path(layers: int, rng: np.random.Generator) -> tuple[int, ...]:
    """The naive sampler: a uniform move at every layer (not uniform over paths)."""
    level, out = 0, []
    for _ in range(layers):
        level += int(rng.choice([d for d in (-1, 0, 1) if 0 <= level + d <= 3]))
        out.append(level)
    return tuple(out)


# ----------------------------------------------------------------------------- paths


def test_chi2_quantile_approximation():
    # Exact quantiles with upper tail 1e-4 (roots of the regularized upper incomplete gamma
    # function Q(df/2, x/2) = 1e-4). The approximation errs high by at most ~5% for these
    # degrees of freedom, so the tests' real false-failure probability is at most ALPHA.
    exact = {2: 18.4207, 10: 35.5640, 48: 93.2209, 100: 161.3187, 7202: 7656.9211}
    for df, q in exact.items():
        assert q <= chi2_upper_quantile(df) <= 1.05 * q


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 6, 7])
def test_path_index_is_a_bijection_onto_all_paths(layers):
    paths = brute_force_paths(layers)
    assert space.count_paths(layers) == len(paths)
    decoded = [sample.path_from_index(layers, i) for i in range(len(paths))]
    assert sorted(decoded) == sorted(paths)
    assert decoded == sorted(decoded)  # lexicographic order
    assert [sample.path_index(p) for p in decoded] == list(range(len(paths)))
    with pytest.raises(ValueError, match="path index must be in"):
        sample.path_from_index(layers, len(paths))


def test_twelve_layers_have_75025_paths():
    assert sample.path_from_index(12, 75024) == (1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3)
    assert (
        sample.path_index((1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3))
        == 75024
        == space.count_paths(12) - 1
    )


@pytest.mark.parametrize("layers", [3, 4, 5])
def test_random_path_is_uniform(layers):
    support = brute_force_paths(layers)
    n = 200 * len(support)
    rng = np.random.default_rng(1234 + layers)
    observed = Counter(sample.random_path(layers, rng) for _ in range(n))
    stat = chi2_statistic(observed, support, n)
    assert stat < chi2_upper_quantile(len(support) - 1)


@pytest.mark.parametrize("layers", [3, 4, 5])
def test_the_chi_square_test_rejects_a_random_walk(layers):
    # the same test on the naive sampler fails: the test has the power to see non-uniformity
    support = brute_force_paths(layers)
    n = 200 * len(support)
    rng = np.random.default_rng(1234 + layers)
    observed = Counter(random_walk_path(layers, rng) for _ in range(n))
    assert chi2_statistic(observed, support, n) > 5 * chi2_upper_quantile(len(support) - 1)


def brute_force_topologies(layers: int) -> list:
    """Every feasible multi-path topology, enumerated from the rules: from the stem, each
    layer's transitions leave exactly the previous layer's active levels (moves of at most
    one level), and its targets are the next active levels."""
    out = []

    def extend(prefix: tuple, active: frozenset) -> None:
        if len(prefix) == layers:
            out.append(prefix)
            return
        moves = [(s, d) for s in sorted(active) for d in (s - 1, s, s + 1) if 0 <= d <= 3]
        for r in range(1, len(moves) + 1):
            for subset in itertools.combinations(moves, r):
                if {s for s, _ in subset} == active:
                    extend((*prefix, subset), frozenset(d for _, d in subset))

    extend((), frozenset({0}))
    return out


def per_node_subsets(layers: int, rng: np.random.Generator) -> tuple:
    """The naive sampler: every active node picks a uniform non-empty subset of its moves
    (feasible, but not uniform over topologies)."""
    active, out = [0], []
    for _ in range(layers):
        layer = []
        for s in active:
            moves = [(s, d) for d in (s - 1, s, s + 1) if 0 <= d <= 3]
            code = int(rng.integers(1, 2 ** len(moves)))
            layer += [m for i, m in enumerate(moves) if code >> i & 1]
        out.append(tuple(sorted(layer)))
        active = sorted({d for _, d in layer})
    return tuple(out)


@pytest.mark.parametrize(("layers", "per"), [(1, 500), (2, 200), (3, 20)])
def test_random_topology_is_uniform(layers, per):
    from autodeeplab.topology import count_topologies

    support = brute_force_topologies(layers)
    assert len(support) == count_topologies(layers)  # 3, 31, 1759
    n = per * len(support)
    rng = np.random.default_rng(99 + layers)
    observed = Counter(sample.random_topology(layers, rng).layers for _ in range(n))
    assert chi2_statistic(observed, support, n) < chi2_upper_quantile(len(support) - 1)
    # the same test has the power to reject the per-node sampler
    naive = Counter(per_node_subsets(layers, rng) for _ in range(n))
    if layers > 1:
        assert chi2_statistic(naive, support, n) > 5 * chi2_upper_quantile(len(support) - 1)


def test_multi_path_genotypes_are_seeded_and_feasible():
    a = sample.sample_genotypes(4, 7, layers=12, blocks=2, multi_path=True)
    assert a == sample.sample_genotypes(4, 7, layers=12, blocks=2, multi_path=True)
    assert all(g.is_multi_path and g.layers == 12 for g in a)  # single paths: about 1e-20
    with pytest.raises(ValueError, match="layers must be a positive integer"):
        sample.random_topology(0, np.random.default_rng(0))


def test_random_path_rejects_bad_arguments():
    with pytest.raises(ValueError, match="layers must be a positive integer"):
        sample.random_path(0, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"numpy\.random\.Generator"):
        sample.random_path(3, 0)


def test_randbelow_is_exact_beyond_64_bits():
    n = 3 * 2**70
    rng = np.random.default_rng(5)
    draws = [sample._randbelow(n, rng) for _ in range(3000)]
    assert all(0 <= x < n for x in draws)
    observed = Counter(x // 2**70 for x in draws)
    assert chi2_statistic(observed, [0, 1, 2], len(draws)) < chi2_upper_quantile(2)
    rng2 = np.random.default_rng(5)
    assert draws[:10] == [sample._randbelow(n, rng2) for _ in range(10)]


# ----------------------------------------------------------------------------- cells


@pytest.mark.parametrize("blocks", [1, 2])
def test_cell_index_is_a_bijection_onto_all_cells(blocks):
    cells = brute_force_cells(blocks)
    assert sample.cell_count(blocks) == len(cells)
    decoded = [sample.cell_from_index(blocks, i) for i in range(len(cells))]
    assert sorted(decoded) == sorted(cells)


def test_cell_counts_per_block():
    # C(i+2, 2) input pairs times 7 ops on each branch
    assert [sample.cell_count(b) for b in (1, 2, 3)] == [49, 49 * 147, 49 * 147 * 294]
    assert sample.cell_count(5) == 2700 * 7**10


@pytest.mark.parametrize(("blocks", "per_cell"), [(1, 400), (2, 10)])
def test_random_cell_is_uniform(blocks, per_cell):
    support = brute_force_cells(blocks)
    n = per_cell * len(support)
    rng = np.random.default_rng(99 + blocks)
    observed = Counter(sample.random_cell(blocks, rng) for _ in range(n))
    stat = chi2_statistic(observed, support, n)
    assert stat < chi2_upper_quantile(len(support) - 1)


def test_random_cell_is_in_normal_form():
    rng = np.random.default_rng(0)
    for _ in range(200):
        cell = sample.random_cell(5, rng)
        assert Genotype(cell=cell, path=(0,)).cell == cell


# ----------------------------------------------------------------------------- genotypes


def test_random_genotypes_are_valid_and_reproducible():
    a = [sample.random_genotype(np.random.default_rng(7), layers=12, blocks=5) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(3)
    for _ in range(300):
        g = sample.random_genotype(rng, layers=12, blocks=5)
        assert Genotype.from_json(g.to_json()) == g  # validated again on the way back in
        assert (g.layers, g.blocks) == (12, 5)


def test_sample_genotypes_is_seeded():
    a = sample.sample_genotypes(5, 11, layers=6, blocks=3)
    assert a == sample.sample_genotypes(5, 11, layers=6, blocks=3)
    assert a != sample.sample_genotypes(5, 12, layers=6, blocks=3)
    rng = np.random.default_rng(11)
    assert a == [sample.random_genotype(rng, layers=6, blocks=3) for _ in range(5)]
    assert sample.sample_genotypes(0, 11) == []


TINY = {"num_classes": 3, "filter_multiplier": 4}


def real_params(g: Genotype) -> int:
    # counted on a real model, independently of the meta-device counter used by the sampler
    return sum(p.numel() for p in AutoDeepLab(g, **TINY).parameters())


def test_params_range_is_respected():
    unconstrained = sample.sample_genotypes(20, 0, layers=4, blocks=2, **TINY)
    counts = sorted(real_params(g) for g in unconstrained)
    lo, hi = counts[5], counts[14]  # a range that rejects about half the draws
    got = sample.sample_genotypes(8, 1, layers=4, blocks=2, params=(lo, hi), **TINY)
    assert len(got) == 8
    assert all(lo <= real_params(g) <= hi for g in got)
    open_ended = sample.sample_genotypes(5, 2, layers=4, blocks=2, params=(hi, None), **TINY)
    assert all(real_params(g) >= hi for g in open_ended)


def test_multiply_adds_range_is_respected():
    size = (64, 64)
    unconstrained = sample.sample_genotypes(8, 0, layers=4, blocks=2, **TINY)
    macs = sorted(
        complexity(NetworkConfig(genotype=g, **TINY), size).multiply_adds for g in unconstrained
    )
    hi = macs[4]
    got = sample.sample_genotypes(
        3, 3, layers=4, blocks=2, multiply_adds=(None, hi), input_size=size, **TINY
    )
    assert all(complexity(NetworkConfig(genotype=g, **TINY), size).multiply_adds <= hi for g in got)


@pytest.mark.parametrize("largest_by", ["params", "multiply_adds"])
def test_largest_of_is_the_largest_of_its_draws(largest_by):
    size = (64, 64)
    got = sample.sample_genotypes(
        3, 21, layers=4, blocks=2, largest_of=3, largest_by=largest_by, input_size=size, **TINY
    )
    rng = np.random.default_rng(21)

    def key(g: Genotype) -> int:
        if largest_by == "params":
            return real_params(g)
        return complexity(NetworkConfig(genotype=g, **TINY), size).multiply_adds

    expected = []
    for _ in range(3):
        draws = [sample.random_genotype(rng, layers=4, blocks=2) for _ in range(3)]
        expected.append(max(draws, key=key))  # max() keeps the first of equals, as documented
    assert got == expected


def test_impossible_range_raises_after_max_tries():
    with pytest.raises(sample.SampleError, match=r"after 15 draws; params wanted in \[1, 2\]"):
        sample.sample_genotypes(1, 0, layers=3, blocks=1, params=(1, 2), max_tries=15, **TINY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"params": (5, 1)}, "params range is empty"),
        ({"params": (-1, None)}, "non-negative"),
        ({"params": (1,)}, r"\(min, max\) pair"),
        ({"multiply_adds": (float("nan"), None)}, "non-negative"),
        ({"largest_of": 0}, "largest_of must be a positive integer"),
        ({"largest_by": "latency"}, "largest_by must be one of params, multiply_adds"),
        ({"max_tries": 0}, "max_tries must be"),
        ({"layers": 0}, "layers must be"),
        ({"network_options": {"depth": 3}}, "unknown network options"),
        ({"multiply_adds": (0, None), "input_size": (32, 64)}, "both sides must exceed 32"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample.sample_genotypes(1, 0, **kwargs)


def test_complexity_of_matches_the_complexity_module():
    g = GENOTYPES["autodeeplab"]
    ref = complexity(NetworkConfig(genotype=g, **TINY), (65, 97))
    assert sample.complexity_of(g, input_size=(65, 97), **TINY) == (ref.params, ref.multiply_adds)
    assert sample.complexity_of(g, multiply_adds=False, **TINY) == (ref.params, None)


# ----------------------------------------------------------------------------- hand-designed


def test_hand_designed_paths_reproduce_the_presets():
    paths = sample.hand_designed_paths(12)
    assert set(paths) == set(space.PATH_FAMILIES)
    assert paths["deeplabv3"] == (0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2)
    assert paths["conv-deconv"] == (0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 1, 0)
    assert paths["stacked-hourglass"] == (0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1)
    for name in ("deeplabv3", "conv-deconv", "stacked-hourglass"):
        assert GENOTYPES[name].path == paths[name]


def runs(path: tuple[int, ...]) -> list[int]:
    """Levels of the path with repeats collapsed: the shape of the path."""
    return [k for k, _ in itertools.groupby(path)]


@pytest.mark.parametrize("layers", range(1, 31))
def test_hand_designed_paths_are_valid_for_any_length(layers):
    paths = sample.hand_designed_paths(layers)
    expected_names = {n for n, f in space.PATH_FAMILIES.items() if f.min_layers <= layers}
    assert set(paths) == expected_names
    if layers >= sample.HAND_DESIGNED_MIN_LAYERS:
        assert set(paths) == set(space.PATH_FAMILIES)
    for name, path in paths.items():
        assert len(path) == layers
        Genotype(cell=space.RELEASED_CELL, path=path)  # raises if the path is not valid
        shape = runs(path)
        if name.startswith("constant-"):
            stride = int(name.split("-")[1])
            assert path[-1] == space.LEVEL_STRIDES.index(stride)
            assert shape == list(range(1, path[-1] + 1)) or shape == [path[-1]]
        elif name == "deeplabv3":
            assert shape == [0, 1, 2] and path[:3] == (0, 0, 1)
        elif name == "conv-deconv":
            assert shape == [0, 1, 2, 3, 2, 1, 0]
        elif name == "stacked-hourglass":
            assert shape == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
        # segments differ in length by at most one
        if name in ("conv-deconv", "stacked-hourglass"):
            lengths = [len(list(g)) for _, g in itertools.groupby(path)]
            assert max(lengths) - min(lengths) <= 1


def test_hand_designed_family_errors():
    with pytest.raises(ValueError, match="'stacked-hourglass' needs at least 12 layers"):
        sample.hand_designed_paths(11, families=["stacked-hourglass"])
    with pytest.raises(ValueError, match="unknown path families"):
        sample.hand_designed_paths(12, families=["unet"])
    assert sample.hand_designed_paths(4, families=["deeplabv3"]) == {"deeplabv3": (0, 0, 1, 2)}


def test_hand_designed_genotypes_carry_the_cell():
    cell = sample.random_cell(3, np.random.default_rng(0))
    gs = sample.hand_designed_genotypes(8, cell)
    assert all(g.cell == cell and g.layers == 8 for g in gs.values())
    assert sample.hand_designed_genotypes(12)["conv-deconv"] == GENOTYPES["conv-deconv"]


# ----------------------------------------------------------------------------- CLI


def test_cli_count_and_range_parsing():
    from autodeeplab.cli import _count, _count_range, _input_size

    assert _count("9.5M") == 9.5e6 and _count("300B") == 300e9 and _count("1.2e7") == 1.2e7
    assert _count_range("8M:12M") == (8e6, 12e6)
    assert _count_range(":400G") == (None, 400e9)
    assert _count_range("5k:") == (5e3, None)
    assert _input_size(["1024x2048"]) == (1024, 2048) == _input_size(["1024", "2048"])


CLI_TINY = ["--layers", "4", "--blocks", "2", "--num-classes", "3", "--filter-multiplier", "4"]


def test_cli_sample_round_trip(tmp_path, capsys):
    from autodeeplab.cli import main

    out = tmp_path / "random"
    argv = ["sample", "--num", "3", "--seed", "5", *CLI_TINY, "--input-size", "64x64"]
    assert main([*argv, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    expected = sample.sample_genotypes(3, 5, layers=4, blocks=2)
    records = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["random-000", "random-001", "random-002"]
    for r, g in zip(records, expected, strict=True):
        assert Genotype.load(out / r["file"]) == g
        ref = complexity(NetworkConfig(genotype=g, **TINY), (64, 64))
        assert (r["params"], r["multiply_adds"]) == (ref.params, ref.multiply_adds)
        assert r["name"] in table and f"{ref.params / 1e6:.2f}M" in table
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seed"] == 5 and settings["kind"] == "random"
    # nothing is overwritten without being asked
    assert main([*argv, "--out", str(out)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert main([*argv, "--out", str(out), "--overwrite", "--seed", "6"]) == 0
    assert (
        Genotype.load(out / "random-000.json")
        == sample.sample_genotypes(1, 6, layers=4, blocks=2)[0]
    )


def test_cli_sample_multi_path(tmp_path, capsys):
    from autodeeplab.cli import main

    out = tmp_path / "multi"
    argv = ["sample", "--num", "2", "--seed", "3", *CLI_TINY, "--input-size", "64x64"]
    assert main([*argv, "--multi-path", "--out", str(out)]) == 0
    expected = sample.sample_genotypes(2, 3, layers=4, blocks=2, multi_path=True)
    records = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    for r, g in zip(records, expected, strict=True):
        assert json.loads((out / r["file"]).read_text())["format_version"] == 2
        assert Genotype.load(out / r["file"]) == g
        ref = complexity(NetworkConfig(genotype=g, **TINY), (64, 64))
        assert (r["params"], r["multiply_adds"]) == (ref.params, ref.multiply_adds)
    assert json.loads((out / "settings.json").read_text())["multi_path"] is True
    assert "transitions=" in capsys.readouterr().out


def test_random_cells_on_a_fixed_path_are_the_cells_of_the_generator_in_order():
    got = sample.sample_genotypes(4, 11, layers=4, blocks=3, path=(0, 1, 1, 2))
    rng = np.random.default_rng(11)
    assert [g.cell for g in got] == [sample.random_cell(3, rng) for _ in range(4)]
    assert all(g.path == (0, 1, 1, 2) for g in got)
    with pytest.raises(ValueError, match="the path 0-0-0 has 3 layers, not 4"):
        sample.sample_genotypes(1, 0, layers=4, blocks=2, path=(0, 0, 0))
    with pytest.raises(ValueError, match="excludes multi_path"):
        sample.sample_genotypes(1, 0, layers=2, blocks=2, path=(0, 0), multi_path=True)
    with pytest.raises(ValueError, match="jumps more than one level"):
        sample.sample_genotypes(1, 0, layers=2, blocks=2, path=(0, 2))


def test_cli_sample_on_a_fixed_path(tmp_path):
    from autodeeplab.cli import main

    argv = ["sample", "--num", "3", "--seed", "2", *CLI_TINY, "--path", "deeplabv3"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    path = space.hand_designed_paths(4)["deeplabv3"]
    want = sample.sample_genotypes(3, 2, layers=4, blocks=2, path=path)
    assert [Genotype.load(tmp_path / f"random-00{i}.json") for i in range(3)] == want
    assert json.loads((tmp_path / "settings.json").read_text())["path"] == list(path)


def test_cli_sample_with_ranges_and_largest_of(tmp_path, capsys):
    from autodeeplab.cli import main

    lo, hi = 1.9e6, 2.2e6  # the middle of what these tiny networks have (1.8M to 2.4M)
    argv = ["sample", "--num", "2", "--seed", "1", *CLI_TINY, "--params", "1.9M:2.2M"]
    assert main([*argv, "--largest-of", "2", "--json", "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2 and all(lo <= r["params"] <= hi for r in records)
    got = [Genotype.load(tmp_path / f"random-00{i}.json") for i in range(2)]
    assert got == sample.sample_genotypes(
        2, 1, layers=4, blocks=2, params=(lo, hi), largest_of=2, **TINY
    )
    assert all(lo <= real_params(g) <= hi for g in got)


def test_cli_hand_designed(tmp_path, capsys):
    from autodeeplab.cli import main

    small = ["--input-size", "64x64", "--filter-multiplier", "4"]
    presets = ["deeplabv3", "conv-deconv", "stacked-hourglass"]
    argv = ["sample", "--hand-designed", *small, "--families", *presets]
    assert main([*argv, "--out", str(tmp_path / "hd")]) == 0
    table = capsys.readouterr().out
    for name in presets:
        assert Genotype.load(tmp_path / "hd" / f"{name}.json") == GENOTYPES[name]
        assert name in table
    donor = sample.random_genotype(np.random.default_rng(0), layers=3, blocks=2)
    donor.save(tmp_path / "donor.json")
    argv = [
        "sample",
        "--hand-designed",
        *small,
        "--layers",
        "6",
        "--cell",
        str(tmp_path / "donor.json"),
    ]
    assert main([*argv, "--families", "deeplabv3", "--out", str(tmp_path / "c")]) == 0
    g = Genotype.load(tmp_path / "c" / "deeplabv3.json")
    assert g.cell == donor.cell and g.path == (0, 0, 1, 2, 2, 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num", "2", "--params", "5M:1M"], "params range is empty"),
        (["--num", "2", "--params", "5M"], "is not a range"),
        (["--num", "2", "--multiply-adds", "1X:"], "is not a count"),
        (["--hand-designed", "--num", "3"], "only for random architectures"),
        (["--hand-designed", "--multi-path"], "--multi-path: only for random architectures"),
        (["--hand-designed", "--path", "0-0"], "--path: only for random architectures"),
        (["--num", "1", "--layers", "3", "--path", "0-0"], "has 2 layers, not 3"),
        (["--hand-designed", "--families", "unet"], "valid families"),
        (["--cell", "g.json", "--num", "1"], "apply to --hand-designed only"),
        (["--seed", "1"], "give --num N"),
        (["--num", "1", "--input-size", "10x"], "HxW"),
        (["--num", "1", "--params", "1:2", "--max-tries", "5"], "after 5 draws"),
    ],
)
def test_cli_sample_errors(argv, message, capsys):
    from autodeeplab.cli import main

    try:  # argparse reports malformed values by raising SystemExit(2)
        code = main(["sample", *argv])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
