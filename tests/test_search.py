"""Search engine: outputs, arch movement, exact resume, errors, unrolled gradient, 2 processes."""

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.data import default_collate

from autodeeplab.checkpoint import CheckpointError, load_checkpoint
from autodeeplab.cli import main
from autodeeplab.config import ConfigError, SearchConfig, from_dict, load_config, to_dict
from autodeeplab.engine import search as search_engine
from autodeeplab.engine.search import (
    NonFiniteLossError,
    SearchEngine,
    epoch_batches,
    run_search,
    unrolled_arch_gradients,
)
from autodeeplab.genotype import Genotype
from autodeeplab.supernet import SearchNetwork

SYNTHETIC = Path(__file__).resolve().parents[1] / "configs" / "search" / "synthetic.yaml"
TINY = [
    "epochs=2",
    "arch_start_epoch=1",
    "data.options={length: 16, size: 32, seed: 0}",
    "data.crop_size=32",
    "data.batch_size=2",
    "data.eval_batch_size=4",
    "data.max_eval_samples=4",
    "model.layers=3",
    "model.blocks=2",
    "model.filter_multiplier=2",
    "model.stem_channels=[8, 8, 8]",
    "progress=false",
    "tensorboard=false",
    "log_interval=1",
]  # 8 + 8 samples -> 4 steps per epoch


def tiny(tmp_path: Path, *extra: str, name: str = "run") -> SearchConfig:
    return load_config(SYNTHETIC, [*TINY, f"output={tmp_path / name}", *extra])


def initial_arch(cfg: SearchConfig) -> list[torch.Tensor]:
    torch.manual_seed(cfg.seed)
    m = cfg.model
    model = SearchNetwork(7, m.layers, m.blocks, m.filter_multiplier, stem_channels=m.stem_channels)
    return [p.detach().clone() for p in model.arch_parameters()]


def test_epoch_batches_shard_a_global_batch():
    full = epoch_batches(range(10), seed=3, stream=1, epoch=2, batch_size=4)
    r0 = epoch_batches(range(10), seed=3, stream=1, epoch=2, batch_size=2, rank=0, world_size=2)
    r1 = epoch_batches(range(10), seed=3, stream=1, epoch=2, batch_size=2, rank=1, world_size=2)
    assert len(full) == len(r0) == len(r1) == 2
    for f, a, b in zip(full, r0, r1, strict=True):
        assert f == a + b and all(e == 2 for e, _ in f)
    assert full != epoch_batches(range(10), seed=3, stream=1, epoch=3, batch_size=4)


def test_search_writes_run_folder_and_moves_architecture(tmp_path, capsys):
    cfg = tiny(tmp_path, "checkpoint_interval=1")
    result = run_search(cfg)
    out = capsys.readouterr().out
    assert result.finished and result.epoch == 2 and result.global_step == 8
    run = tmp_path / "run"
    assert Genotype.load(run / "genotype.json") == result.genotype
    assert sorted(p.name for p in (run / "genotypes").iterdir()) == [
        "epoch_001.json",
        "epoch_002.json",
    ]
    assert load_config(run / "config.yaml") == cfg
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_001.pt",
        "epoch_002.pt",
    ]
    assert load_checkpoint(run / "checkpoints" / "epoch_001.pt")["epoch"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert epochs[0]["arch_loss"] is None and epochs[1]["arch_loss"] is not None
    assert all(0.0 <= r["mIoU"] <= 1.0 for r in epochs)
    assert sum(r["type"] == "step" for r in records) == 8
    assert "epoch 2/2" in out and "H(alpha)" in out and "mIoU" in out
    # the architecture moved in epoch 2 only (arch_start_epoch=1)
    state = load_checkpoint(run / "last.pt")
    init = initial_arch(cfg)
    assert state["config"] == to_dict(cfg)
    for name, p0 in zip(("alphas", "betas"), init, strict=False):
        assert (state["model"][name] - p0).abs().max() > 1e-3, name


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    full = run_search(tiny(tmp_path, name="full"), log=None)
    # stop in the middle of epoch 2 (steps 1-4 epoch 1, 5-8 epoch 2, arch steps in epoch 2)
    part = run_search(tiny(tmp_path, "max_steps=6", name="part"), log=None)
    assert not part.finished and (part.epoch, part.global_step) == (1, 6)
    assert not (tmp_path / "part" / "genotype.json").exists()
    resumed = run_search(tiny(tmp_path, name="part"), resume=True, log=None)
    assert resumed.finished and resumed.global_step == 8
    assert resumed.genotype == full.genotype
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["a_opt"]["state"][0]["exp_avg"].equal(b["a_opt"]["state"][0]["exp_avg"])
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert (tmp_path / "full" / "genotype.json").read_text() == (
        tmp_path / "part" / "genotype.json"
    ).read_text()


def test_ctrl_c_stops_the_search_with_a_checkpoint(tmp_path, monkeypatch):
    original = SearchEngine.weight_step

    def step_then_ctrl_c(self, batch):
        value = original(self, batch)
        if self.global_step == 5:  # the sixth step: Ctrl-C arrives while it runs
            os.kill(os.getpid(), signal.SIGINT)
        return value

    monkeypatch.setattr(SearchEngine, "weight_step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)  # not always the default (e.g. a background job)
    part = run_search(tiny(tmp_path, name="part"), log=None)
    assert not part.finished and (part.epoch, part.global_step) == (1, 6)
    state = load_checkpoint(tmp_path / "part" / "last.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 2, 6)
    assert signal.getsignal(signal.SIGINT) is before


def test_resume_with_another_config_names_the_keys(tmp_path):
    run_search(tiny(tmp_path, "max_steps=1"), log=None)
    with pytest.raises(CheckpointError, match=r"model\.layers: 3 -> 4"):
        run_search(tiny(tmp_path, "model.layers=4"), resume=True, log=None)
    with pytest.raises(ValueError, match="already holds a search run"):
        run_search(tiny(tmp_path), log=None)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        run_search(tiny(tmp_path, name="empty"), resume=True, log=None)


def test_cli_errors(tmp_path, capsys):
    base = ["search", "--config", str(SYNTHETIC), "--output", str(tmp_path / "r"), *TINY]
    assert main([*base, "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lr'" in err and "w_lr" in err
    assert (
        main(
            [
                *base,
                "data.name=cityscapes",
                "data.options={}",
                "--data-root",
                str(tmp_path / "missing"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "missing" in err and "leftImg8bit" in err
    assert main([*base, "data.name=voc"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_configs_built_in_code_are_range_checked(tmp_path):
    cfg = tiny(tmp_path)
    cfg.max_steps = 0  # used to run one step
    with pytest.raises(ConfigError, match=r"^config key max_steps = 0 is out of range"):
        SearchEngine(cfg, log=None)
    assert not (tmp_path / "run").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = search_engine.segmentation_loss

    def poisoned(model, batch, ignore_index=255):
        calls["n"] += 1
        loss = real(model, batch, ignore_index)
        return loss * float("nan") if calls["n"] == 6 else loss  # 6th w-step: epoch 2, step 2

    monkeypatch.setattr(search_engine, "segmentation_loss", poisoned)
    cfg = tiny(tmp_path, "arch_start_epoch=2")  # = epochs: weight steps only, one loss call each
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2 \(global step 6\)"):
        run_search(cfg, log=None)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 0, 4)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # and through the CLI: a clear message and a non-zero exit code
    calls["n"] = 0
    args = ["--output", str(tmp_path / "cli"), *TINY, "arch_start_epoch=2"]
    assert main(["search", "--config", str(SYNTHETIC), *args]) == 3
    assert "loss became nan" in capsys.readouterr().err


def test_decode_cli(tmp_path, capsys):
    result = run_search(tiny(tmp_path, "epochs=1", "arch_start_epoch=0"), log=None)
    out_file = tmp_path / "g.json"
    assert main(["decode", str(tmp_path / "run" / "last.pt"), "--out", str(out_file)]) == 0
    assert capsys.readouterr().out.strip() == str(result.genotype)
    assert Genotype.load(out_file) == result.genotype
    assert main(["decode", str(tmp_path / "nothing.pt")]) == 2


def _tiny_model_and_batches(dtype=torch.float64):
    torch.manual_seed(0)
    model = SearchNetwork(3, layers=2, blocks=2, filter_multiplier=2, stem_channels=(4, 4, 4))
    model = model.to(dtype)
    with torch.no_grad():  # larger logits so that the second-order term is not negligible
        for p in model.arch_parameters():
            p.normal_(0, 1.0)
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(2, 3, 32, 32, generator=g, dtype=dtype),
            torch.randint(0, 3, (2, 32, 32), generator=g),
        )
        for _ in range(2)
    ]
    return model, batches


def _ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def test_unrolled_gradient_matches_autograd_of_the_unrolled_objective():
    model, (train, val) = _tiny_model_and_batches()
    xi, wd = 0.5, 3e-4
    # float64 and a small finite-difference step: the central difference is then exact to
    # ~1e-10 (with DARTS' fd_scale=0.01, kinks of ReLU/max-pool and BatchNorm over tiny
    # feature maps make it only a rough estimate on this 32-pixel model)
    fd = unrolled_arch_gradients(model, _ce, train, val, xi=xi, weight_decay=wd, fd_scale=1e-5)

    # reference: differentiate L_val(w - xi * (dL_train/dw + wd * w), a) w.r.t. a exactly
    names = dict(model.named_parameters())
    arch_ids = {id(p) for p in model.arch_parameters()}
    w = {n: p.detach().clone().requires_grad_() for n, p in names.items() if id(p) not in arch_ids}
    a = {n: p.detach().clone().requires_grad_() for n, p in names.items() if id(p) in arch_ids}

    def loss(params, batch):
        return F.cross_entropy(functional_call(model, params, (batch[0],)), batch[1])

    g = torch.autograd.grad(loss({**w, **a}, train), list(w.values()), create_graph=True)
    w_prime = {n: p - xi * (gi + wd * p) for (n, p), gi in zip(w.items(), g, strict=True)}
    exact = torch.autograd.grad(loss({**w_prime, **a}, val), list(a.values()))
    w_fixed = {n: p.detach() for n, p in w_prime.items()}
    first_order = torch.autograd.grad(loss({**w_fixed, **a}, val), list(a.values()))
    for f, e in zip(fd, exact, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-6, atol=1e-8)
    # the second-order term is really there: dropping it would fail the comparison
    hvp_part = torch.cat([(e - fo).flatten() for e, fo in zip(exact, first_order, strict=True)])
    assert hvp_part.abs().max() > 1e-4
    # weights are restored exactly
    for n, p in w.items():
        assert torch.equal(names[n].detach(), p.detach())


def test_unrolled_search_runs(tmp_path):
    result = run_search(tiny(tmp_path, "epochs=1", "arch_start_epoch=0", "unrolled=true"), log=None)
    assert result.finished and (tmp_path / "run" / "genotype.json").exists()


# ---------------------------------------------------------------------------- 2 processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_arch_batch(engine: SearchEngine, rank: int, world: int):
    keys = epoch_batches(
        engine.train_b, engine.cfg.seed, 1, 0, engine.cfg.data.batch_size, rank, world
    )[0]
    return default_collate([engine.keyed[k] for k in keys])


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = from_dict(SearchConfig, cfg_dict)
        engine = SearchEngine(cfg, log=None)
        engine.arch_gradients(_first_arch_batch(engine, rank, world))
        if rank == 0:
            torch.save([p.grad.clone() for p in engine.arch], Path(out) / "ddp_grads.pt")
        engine.a_opt.zero_grad(set_to_none=True)
        result = engine.run()
        if rank == 0:
            torch.save(result.global_step, Path(out) / "ddp_steps.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_search_averages_architecture_gradients(tmp_path):
    """2 gloo processes, each with its half of a global batch of 4: the architecture gradient
    after all_reduce equals the mean of the gradients a single process computes on the two
    halves (BatchNorm uses per-half batch statistics in both cases, so this is the exact
    quantity data-parallel search computes; a single batch of 4 would differ through BN)."""
    cfg = tiny(tmp_path, "epochs=1", "arch_start_epoch=0")
    mp.spawn(_worker, args=(2, _free_port(), to_dict(cfg), str(tmp_path)), nprocs=2, join=True)
    assert torch.load(tmp_path / "ddp_steps.pt") == 2  # 16 samples: 8/8 split, global batch 4
    assert (tmp_path / "run" / "genotype.json").exists()
    ddp = torch.load(tmp_path / "ddp_grads.pt")

    single = SearchEngine(tiny(tmp_path, "epochs=1", "arch_start_epoch=0", name="single"), log=None)
    per_shard = []
    for rank in range(2):
        single.arch_gradients(_first_arch_batch(single, rank, 2))
        per_shard.append([p.grad.clone() for p in single.arch])
    for d, g0, g1 in zip(ddp, *per_shard, strict=True):
        torch.testing.assert_close(d, (g0 + g1) / 2, rtol=1e-5, atol=1e-8)
        assert d.abs().max() > 0
