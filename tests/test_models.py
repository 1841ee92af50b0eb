import json

import pytest
import torch

from autodeeplab.cli import main
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.models import MODELS, create_model, list_models, model_config
from autodeeplab.network import AutoDeepLab

PAPER_TABLE2 = {"autodeeplab-s": 10.15e6, "autodeeplab-m": 21.62e6, "autodeeplab-l": 44.42e6}


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_contents():
    names = list_models()
    for required in [*PAPER_TABLE2, "deeplabv3", "conv-deconv", "stacked-hourglass"]:
        assert required in names
    assert [MODELS[n].filter_multiplier for n in PAPER_TABLE2] == [20, 32, 48]
    assert all(MODELS[n].genotype == RELEASED for n in PAPER_TABLE2)


@pytest.mark.parametrize("name", list_models())
def test_every_preset_builds_and_runs_small(name):
    m = create_model(name, num_classes=4, filter_multiplier=4).eval()
    assert m.genotype == MODELS[name].genotype
    with torch.no_grad():
        for h, w in [(65, 65), (64, 96)]:
            assert m(torch.randn(1, 3, h, w)).shape == (1, 4, h, w)


def test_unknown_name_and_option():
    with pytest.raises(ValueError, match="available models: autodeeplab-s, autodeeplab-m"):
        create_model("autodeeplab-xl")
    with pytest.raises(ValueError, match="valid options: filter_multiplier"):
        create_model("autodeeplab-s", width=3)


def test_overrides_reach_the_network():
    m = create_model("autodeeplab-s", num_classes=5, filter_multiplier=4, drop_path_rate=0.2)
    assert m.config.filter_multiplier == 4 and m.config.drop_path_rate == 0.2
    assert m.decoder.classifier.out_channels == 5


def test_paper_parameter_count_small_preset():
    n = count(create_model("autodeeplab-s"))
    assert n == 10_147_427
    assert abs(n - 10.15e6) / 10.15e6 < 0.005


@pytest.mark.parametrize("name", sorted(PAPER_TABLE2))
def test_info_json_matches_paper_table2(name, capsys):
    assert main(["info", "--preset", name, "--json", "--input-size", "65", "65"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert abs(info["params"] - PAPER_TABLE2[name]) / PAPER_TABLE2[name] < 0.005
    assert info["paper"]["params"] == PAPER_TABLE2[name]
    assert info["params"] == sum(info["params_by_part"].values())
    assert info["path"] == list(RELEASED.path)
    assert info["aspp_rates"] == [12, 24, 36]  # the released path ends at /8


def test_genotype_file_gives_same_model_as_preset(tmp_path, capsys):
    f = tmp_path / "g.json"
    RELEASED.save(f)
    g = Genotype.load(f)
    assert count(AutoDeepLab(g, 19, 20)) == count(create_model("autodeeplab-s"))
    assert main(["info", "--genotype", str(f), "--json", "--input-size", "65", "65"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main(["info", "--preset", "autodeeplab-s", "--json", "--input-size", "65", "65"]) == 0
    from_preset = json.loads(capsys.readouterr().out)
    assert from_file["params"] == from_preset["params"]
    assert from_file["multiply_adds"] == from_preset["multiply_adds"]
    assert "paper" not in from_file


def test_info_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"path": [0, 2], "cell": [[[0, "sep_conv_3x3"], [1, "skip_connect"]]]})
    )
    assert main(["info", "--genotype", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "invalid genotype file" in err and "at most one level" in err
    assert main(["info", "--preset", "nope"]) == 2
    assert "available models" in capsys.readouterr().err
    assert main(["info", "--preset", "autodeeplab-s", "--input-size", "32", "64"]) == 2
    assert "at least 33 pixels" in capsys.readouterr().err


def test_info_text_and_list(capsys):
    assert main(["info", "--preset", "deeplabv3", "--input-size", "65", "65"]) == 0
    out = capsys.readouterr().out
    assert "output stride      16 (ASPP rates [6, 12, 18])" in out
    assert main(["info", "--list"]) == 0
    assert "autodeeplab-l" in capsys.readouterr().out


def test_model_config_is_the_preset():
    cfg = model_config("autodeeplab-m", 21)
    assert cfg.filter_multiplier == 32 and cfg.num_classes == 21 and cfg.genotype == RELEASED
