import pytest

from autodeeplab.complexity import PARTS, complexity, count_multiply_adds, count_parameters
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.models import model_config
from autodeeplab.network import AutoDeepLab

# One cell at /4 whose ops have no multiply-adds: every MAC below is countable by hand.
TINY = Genotype(cell=[[(0, "skip_connect"), (1, "max_pool_3x3")]], path=(0,))


def tiny_reference_macs(classes: int) -> dict[str, int]:
    """Hand count for a 32x32 input, F = 4: /2 = 16x16 (256 px), /4 = 8x8 (64 px)."""
    stem = 3 * 64 * 9 * 256 + 64 * 64 * 9 * 256 + 64 * 128 * 9 * 64
    cells = 64 * 4 * 64 + 128 * 4 * 64  # prev-prev and prev 1x1 convs at /4
    aspp = 4 * 256 * 64 + 3 * 9 * 4 * 256 * 64 + 4 * 256 * 1 + 5 * 256 * 256 * 64
    decoder = 4 * 48 * 64 + 304 * 9 * 256 * 64 + 256 * 9 * 256 * 64 + 256 * classes * 64
    return {"stem": stem, "cells": cells, "aspp": aspp, "decoder": decoder}


def test_tiny_model_multiply_adds_by_hand():
    model = AutoDeepLab(TINY, num_classes=2, filter_multiplier=4)
    c = complexity(model, (32, 32))
    ref = tiny_reference_macs(2)
    assert c.multiply_adds_by_part == ref
    assert c.multiply_adds == sum(ref.values())
    assert c.input_size == (32, 32)


def test_meta_count_equals_count_on_real_model():
    model = AutoDeepLab(RELEASED, num_classes=3, filter_multiplier=4).eval()
    real = count_multiply_adds(model, (65, 97))
    assert complexity(model, (65, 97)).multiply_adds == real["total"]


def test_multiply_adds_scale_with_pixels_for_a_fixed_path():
    # every feature map size doubles exactly when the input doubles on one side (sides
    # divisible by 32), and no part has a size-independent cost except image pooling
    cfg = model_config("autodeeplab-s", filter_multiplier=4)
    a = complexity(cfg, (64, 128)).multiply_adds_by_part
    b = complexity(cfg, (64, 256)).multiply_adds_by_part
    for part in ("stem", "cells", "decoder"):
        assert b[part] == 2 * a[part]


def test_parameters_by_part_add_up():
    model = AutoDeepLab(RELEASED, 19, 4)
    counts = count_parameters(model)
    assert set(counts) == {*PARTS, "total"}
    assert counts["total"] == sum(counts[p] for p in PARTS)
    assert counts["stem"] == 3 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 2 * (64 + 64 + 128)


def test_counting_allocates_no_real_model():
    c = complexity(model_config("autodeeplab-l"), (1024, 2048))
    assert abs(c.params - 44.42e6) / 44.42e6 < 0.005
    # within 10% of the paper's 695.03B (see README, section Models, for the difference)
    assert abs(c.multiply_adds - 695.03e9) / 695.03e9 < 0.1


def test_bad_sizes():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        complexity(model_config("autodeeplab-s"), (0, 10))
    with pytest.raises(ValueError, match="at least 33 pixels"):
        complexity(model_config("autodeeplab-s"), (32, 512))
