"""Retraining engine: schedules, loss, run folder, exact resume, errors, multi-process."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from autodeeplab import load_model
from autodeeplab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from autodeeplab.cli import main
from autodeeplab.config import ConfigError, TrainConfig, load_config
from autodeeplab.engine import common
from autodeeplab.engine import train as train_engine
from autodeeplab.engine.common import deferred_interrupt
from autodeeplab.engine.distributed import (
    SyncBatchNorm2d,
    SyncBatchNorm3d,
    convert_sync_batchnorm,
)
from autodeeplab.engine.search import NonFiniteLossError
from autodeeplab.engine.train import (
    TrainEngine,
    global_batch_loss,
    poly_lr,
    resolve_network,
    run_train,
)
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.network import AutoDeepLab
from autodeeplab.runfolder import RunFolderLockedError

from runs import hold_lock, read_records, strict_loads

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "configs" / "train" / "synthetic.yaml"
TINY = [
    "iterations=6",
    "data.options={length: 16, size: 32, seed: 0}",
    "data.crop_size=32",
    "data.batch_size=2",
    "data.eval_batch_size=4",
    "data.max_eval_samples=4",
    "model.filter_multiplier=2",
    "model.aspp_channels=8",
    "model.decoder_channels=8",
    "model.low_level_reduced=4",
    "model.drop_path_rate=0.3",
    "optim.lr=0.02",
    "optim.warmup_iters=2",
    "eval_interval=3",
    "checkpoint_interval=0",
    "log_interval=1",
    "progress=false",
    "tensorboard=false",
]


def genotype_file(tmp_path: Path, path=(0, 1, 1), name: str = "genotype.json") -> Path:
    file = tmp_path / name
    Genotype(cell=RELEASED.cell, path=path).save(file)
    return file


def tiny(tmp_path: Path, *extra: str, name: str = "run") -> TrainConfig:
    cfg = load_config(SYNTHETIC, [*TINY, f"output={tmp_path / name}", *extra], cls=TrainConfig)
    cfg.model.genotype = str(genotype_file(tmp_path))
    return cfg


# ---------------------------------------------------------------------------- schedules, loss
def test_poly_lr_matches_hand_computed_values():
    assert poly_lr(0, 100, 0.05) == 0.05
    assert poly_lr(50, 100, 0.05) == pytest.approx(0.05 * 0.5**0.9)
    assert poly_lr(100, 100, 0.05) == 0.0
    assert poly_lr(100, 100, 0.05, min_lr=1e-4) == pytest.approx(1e-4)
    assert poly_lr(90, 100, 0.05, power=1.0, min_lr=0.01) == pytest.approx(0.04 * 0.1 + 0.01)
    # warm-up: factor 0.1 -> 1 over 10 iterations, times the poly value
    assert poly_lr(0, 100, 0.05, warmup_iters=10) == pytest.approx(0.005)
    assert poly_lr(5, 100, 0.05, warmup_iters=10) == pytest.approx(0.05 * 0.95**0.9 * 0.55)
    assert poly_lr(10, 100, 0.05, warmup_iters=10) == pytest.approx(0.05 * 0.9**0.9)
    with pytest.raises(ValueError):
        poly_lr(101, 100, 0.05)


def test_global_batch_loss_is_the_mean_over_valid_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, requires_grad=True)
    masks = torch.randint(0, 4, (2, 5, 6))
    masks[0, :2] = 255
    loss, value = global_batch_loss(logits, masks, 255, world_size=1)
    reference = F.cross_entropy(logits, masks, ignore_index=255)
    torch.testing.assert_close(loss, reference)
    assert value == pytest.approx(reference.item())
    masks[:] = 255  # nothing valid: zero loss, not NaN
    loss, value = global_batch_loss(logits, masks, 255, world_size=1)
    assert loss.item() == 0.0 and value == 0.0


# ---------------------------------------------------------------------------- sync batch norm
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SPATIAL = {2: (5, 5), 3: (3, 4, 5)}
BATCH_NORM = {2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}


def _sync_bn_worker(rank: int, world: int, port: int, out: str, spatial_dims: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        size = SPATIAL[spatial_dims]
        x = torch.randn(4, 3, *size, dtype=torch.float64) * 3 + 1  # same on both ranks
        w = torch.randn(4, 3, *size, dtype=torch.float64)
        bn = BATCH_NORM[spatial_dims](3).double()
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
        sync = convert_sync_batchnorm(torch.nn.Sequential(bn), torch.device("cpu"))
        assert isinstance(sync[0], {2: SyncBatchNorm2d, 3: SyncBatchNorm3d}[spatial_dims])
        part = x[2 * rank : 2 * rank + 2].clone().requires_grad_(True)
        y = sync(part)
        (y * w[2 * rank : 2 * rank + 2]).sum().backward()
        grads = [part.grad] + [p.grad.clone() for p in sync.parameters()]
        for g in grads[1:]:
            dist.all_reduce(g)  # what DDP does (before averaging) for parameters
        torch.save(
            {"y": y.detach(), "grads": grads, "state": sync[0].state_dict()},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sync_batch_norm_on_cpu_equals_batch_norm_on_the_global_batch(tmp_path, spatial_dims):
    args = (2, _free_port(), str(tmp_path), spatial_dims)
    mp.spawn(_sync_bn_worker, args=args, nprocs=2, join=True)
    torch.manual_seed(0)
    size = SPATIAL[spatial_dims]
    x = (torch.randn(4, 3, *size, dtype=torch.float64) * 3 + 1).requires_grad_(True)
    w = torch.randn(4, 3, *size, dtype=torch.float64)
    bn = BATCH_NORM[spatial_dims](3).double()
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    y = bn(x)
    (y * w).sum().backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach())
    torch.testing.assert_close(torch.cat([r["grads"][0] for r in ranks]), x.grad)
    for r in ranks:
        torch.testing.assert_close(r["grads"][1], bn.weight.grad)
        torch.testing.assert_close(r["grads"][2], bn.bias.grad)
        for k, v in bn.state_dict().items():
            torch.testing.assert_close(r["state"][k], v)


# ---------------------------------------------------------------------------- runs
def test_train_writes_run_folder_and_learns(tmp_path, capsys):
    cfg = tiny(tmp_path, "iterations=12", "eval_interval=6", "model.drop_path_rate=0.0")
    result = run_train(cfg)
    out = tmp_path / "run"
    assert result.finished and result.iteration == 12
    for name in ("config.yaml", "genotype.json", "metrics.jsonl", "last.pt", "curves.png"):
        assert (out / name).is_file(), name
    assert Genotype.load(out / "genotype.json") == Genotype.load(cfg.model.genotype)
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    steps = [r for r in records if r["type"] == "step"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["iteration"] for r in steps] == list(range(1, 13))
    assert [r["iteration"] for r in evals] == [6, 12]
    for r in steps:
        assert r["lr"] == pytest.approx(poly_lr(r["iteration"] - 1, 12, 0.02, warmup_iters=2))
    assert steps[-1]["loss"] < steps[0]["loss"]
    best = max(evals, key=lambda r: r["mIoU"])
    assert result.best_miou == pytest.approx(best["mIoU"])
    # best/ and model/ are model folders holding the weights of their iteration
    loaded = load_model(out / "best")
    assert loaded.config.extra["iteration"] == best["iteration"]
    assert loaded.config.class_names[0] == "background"
    final = load_model(out / "model")
    state = load_checkpoint(out / "last.pt")["model"]
    for k, v in final.model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    # the best model's evaluation reproduces the logged mIoU
    engine = TrainEngine(tiny(tmp_path, name="check"), log=None)
    engine.model.load_state_dict(loaded.model.state_dict())
    assert engine.evaluate().mean_iou() == pytest.approx(best["mIoU"], abs=1e-6)
    assert "mIoU" in capsys.readouterr().out


def test_scheduled_drop_path_grows_with_progress(tmp_path):
    cfg = tiny(tmp_path, "iterations=4", "eval_interval=0", "model.drop_path_rate=0.4")
    run_train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    rates = [r["drop_path"] for r in records if r["type"] == "step"]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])  # last cell: 0.4 * (it - 1) / 4


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    full = run_train(tiny(tmp_path, name="full"))
    first = run_train(tiny(tmp_path, "max_steps=4", name="split"))
    assert not first.finished and first.iteration == 4
    resumed = run_train(tiny(tmp_path, name="split"), resume=True)
    assert resumed.finished and resumed.iteration == 6
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    drop = ("time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in full.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in resumed.history
    ]


def test_channels_last_trains_the_same_network_and_resumes_exactly(tmp_path):
    """``channels_last``: the parameters and the batches are in NHWC layout; one step computes
    what the plain layout computes (to float32 rounding), a whole run the same losses, it
    resumes bit for bit, and it writes a model folder that loads in the plain layout."""
    plain = TrainEngine(tiny(tmp_path, name="plain-step"), log=None)
    nhwc = TrainEngine(tiny(tmp_path, "channels_last=true", name="nhwc-step"), log=None)
    conv = next(p for p in nhwc.model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 7, (2, 32, 32))
    torch.manual_seed(0)  # the same drop-path draws
    loss = plain.train_step(images, masks)
    torch.manual_seed(0)
    assert nhwc.train_step(images, masks) == pytest.approx(loss, rel=1e-6)
    for (name, p), q in zip(plain.model.named_parameters(), nhwc.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    plain.close()
    nhwc.close()
    reference = run_train(tiny(tmp_path, name="plain"))
    full = run_train(tiny(tmp_path, "channels_last=true", name="nhwc"))
    assert [r["loss"] for r in full.history] == pytest.approx(
        [r["loss"] for r in reference.history], rel=1e-4
    )
    run_train(tiny(tmp_path, "channels_last=true", "max_steps=4", name="split"))
    run_train(tiny(tmp_path, "channels_last=true", name="split"), resume=True)
    a = load_checkpoint(tmp_path / "nhwc" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    loaded = load_model(tmp_path / "nhwc" / "model")
    assert all(p.is_contiguous() for p in loaded.model.parameters())


def test_resume_errors(tmp_path):
    run_train(tiny(tmp_path, "max_steps=2"))
    with pytest.raises(ValueError, match="--resume"):
        run_train(tiny(tmp_path))
    with pytest.raises(CheckpointError, match=r"optim\.lr"):
        run_train(tiny(tmp_path, "optim.lr=0.5"), resume=True)
    other = tiny(tmp_path)
    other.model.genotype = str(genotype_file(tmp_path, (0, 1, 2), name="other.json"))
    with pytest.raises(CheckpointError, match="network"):
        run_train(other, resume=True)
    with pytest.raises(FileNotFoundError, match="--resume"):
        run_train(tiny(tmp_path, name="empty"), resume=True)
    # a search checkpoint in the folder is refused by kind
    save_checkpoint({"kind": "search"}, tmp_path / "search" / "last.pt")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        run_train(tiny(tmp_path, name="search"), resume=True)
    # runtime keys may change
    result = run_train(tiny(tmp_path, "eval_interval=2", "log_interval=2"), resume=True)
    assert result.finished


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    original = train_engine.global_batch_loss
    calls = {"n": 0}

    def poisoned(logits, masks, ignore_index, world_size):
        calls["n"] += 1
        loss, value = original(logits, masks, ignore_index, world_size)
        return (loss * float("nan"), float("nan")) if calls["n"] == 4 else (loss, value)

    monkeypatch.setattr(train_engine, "global_batch_loss", poisoned)
    cfg = tiny(tmp_path, "checkpoint_interval=2", "eval_interval=0")
    with pytest.raises(NonFiniteLossError, match="iteration 4"):
        run_train(cfg)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 2
    calls["n"] = 0
    code = main(
        [
            "train",
            "--config",
            str(SYNTHETIC),
            "--genotype",
            cfg.model.genotype,
            *TINY,
            f"output={tmp_path / 'cli'}",
            "checkpoint_interval=2",
            "eval_interval=0",
        ]
    )
    assert code == 3
    assert "last good checkpoint" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    base = ["train", "--config", str(SYNTHETIC), *TINY]
    assert main([*base, f"output={tmp_path / 'a'}"]) == 2
    assert "--genotype FILE" in capsys.readouterr().err
    assert main([*base, "--genotype", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert main(["train", "--config", str(SYNTHETIC), "--preset", "nope"]) == 2
    assert "autodeeplab-s" in capsys.readouterr().err
    code = main(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "train" / "cityscapes.yaml"),
            "--preset",
            "autodeeplab-s",
            "--data-root",
            str(tmp_path / "nowhere"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "leftImg8bit" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"path": [0, 2], "cell": []}')
    assert main([*base, f"output={tmp_path / 'b'}", "--genotype", str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--genotype", "a.json", "--preset", "autodeeplab-s"])


def test_batch_of_one_and_crops_below_the_genotype_are_config_errors(tmp_path):
    # why: in training mode the image-pooling BatchNorm sees one value per channel
    model = AutoDeepLab(
        Genotype(cell=RELEASED.cell, path=(0, 1, 1)),
        num_classes=3,
        filter_multiplier=2,
        aspp_channels=8,
        decoder_channels=8,
        low_level_reduced=4,
    ).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ConfigError, match=r"^config key data\.batch_size = 1 .*BatchNorm"):
        TrainEngine(tiny(tmp_path, "data.batch_size=1"), log=None)
    # the tiny genotype (path 0-1-1) reaches stride 8: crops need 9 pixels
    with pytest.raises(ConfigError, match=r"^config key data\.crop_size = 8 .*stride 8.* >= 9$"):
        TrainEngine(tiny(tmp_path, "data.crop_size=8"), log=None)
    assert not (tmp_path / "run").exists()
    TrainEngine(tiny(tmp_path, "data.crop_size=9"), log=None).close()


def test_configs_built_in_code_are_range_checked(tmp_path):
    cfg = tiny(tmp_path)
    cfg.optim.grad_clip = -1.0  # would flip the gradient's sign in clip_grad_norm_
    with pytest.raises(ConfigError, match=r"optim\.grad_clip = -1 is out of range"):
        TrainEngine(cfg, log=None)
    assert not (tmp_path / "run").exists()


def test_train_configs_load():
    for name in ("cityscapes", "voc", "ade20k", "folder", "synthetic"):
        cfg = load_config(ROOT / "configs" / "train" / f"{name}.yaml", cls=TrainConfig)
        assert cfg.optim.lr == 0.05 and cfg.optim.poly_power == 0.9
    assert (
        load_config(ROOT / "configs/train/cityscapes.yaml", cls=TrainConfig).data.crop_size == 769
    )
    for name in ("voc", "ade20k", "folder"):
        cfg = load_config(ROOT / "configs" / "train" / f"{name}.yaml", cls=TrainConfig)
        assert cfg.data.crop_size == 513


def test_resolve_network_with_a_given_genotype(tmp_path):
    from autodeeplab.config import TrainModelConfig

    g = Genotype(cell=RELEASED.cell, path=(0, 1, 2))
    net = resolve_network(TrainModelConfig(aspp_channels=16), 5, genotype=g)
    assert (net.genotype, net.num_classes, net.filter_multiplier) == (g, 5, 20)
    assert net.aspp_channels == 16
    # the same as reading the genotype from a file
    model = TrainModelConfig(aspp_channels=16, genotype=str(genotype_file(tmp_path, g.path)))
    assert resolve_network(model, 5) == net
    assert (
        resolve_network(TrainModelConfig(filter_multiplier=4), 5, genotype=g).filter_multiplier == 4
    )
    with pytest.raises(ValueError, match="must be null"):
        resolve_network(TrainModelConfig(preset="autodeeplab-s"), 5, genotype=g)


# ---------------------------------------------------------------------------- torchrun
def _torchrun_train(tmp_path: Path, name: str, nproc: int, batch: int, genotype: Path) -> dict:
    out = tmp_path / name
    common = [
        "--config",
        str(SYNTHETIC),
        "--genotype",
        str(genotype),
        *TINY,
        "model.drop_path_rate=0.2",  # zero at the first step (Scheduled Drop Path)
        "optim.warmup_iters=0",
        "optim.lr=0.5",
        f"data.batch_size={batch}",
        "iterations=10",
        "max_steps=1",
        "threads=1",
        f"output={out}",
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "autodeeplab", "train", *common]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            "-m",
            "autodeeplab",
            "train",
            *common,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_checkpoint(out / "last.pt")


def test_torchrun_two_processes_match_one_process_on_the_global_batch(tmp_path):
    """2 gloo processes with 2 samples each vs 1 process with the same 4 samples: BatchNorm
    statistics over the global batch (SyncBatchNorm2d) and the global-batch loss make the
    first update the same. One process on half the batch is the control: it differs."""
    genotype = genotype_file(tmp_path)
    ddp = _torchrun_train(tmp_path, "ddp", 2, 2, genotype)
    single = _torchrun_train(tmp_path, "single", 1, 4, genotype)
    half = _torchrun_train(tmp_path, "half", 1, 2, genotype)
    assert ddp["world_size"] == 2 and ddp["iteration"] == 1
    err_ddp = max((ddp["model"][k] - v).abs().max() for k, v in single["model"].items())
    err_half = max((half["model"][k] - v).abs().max() for k, v in single["model"].items())
    assert err_half > 1e-3 and err_ddp < 1e-5
    for k, v in single["model"].items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mixed_precision_training_on_cuda(tmp_path, dtype):
    cfg = tiny(tmp_path, "device=cuda", "amp=true", f"amp_dtype={dtype}", "iterations=6")
    engine = TrainEngine(cfg, log=None)
    assert engine.amp and engine.scaler.is_enabled() == (dtype == "float16")
    result = engine.run()
    engine.close()
    assert result.finished and result.final_miou is not None
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    if dtype == "float16":
        assert state["scaler"]["scale"] > 0
    # the saved model is float32 and runs on the CPU
    loaded = load_model(tmp_path / "run" / "best")
    assert next(loaded.model.parameters()).dtype == torch.float32


def test_ctrl_c_finishes_the_step_checkpoints_and_resumes_exactly(tmp_path, monkeypatch):
    full = run_train(tiny(tmp_path, name="full"))
    original = TrainEngine.train_step

    def step_then_ctrl_c(self, images, masks):
        value = original(self, images, masks)
        if self.iteration == 2:  # the third step: Ctrl-C arrives while it runs
            os.kill(os.getpid(), signal.SIGINT)
        return value

    monkeypatch.setattr(TrainEngine, "train_step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)  # not always the default (e.g. a background job)
    stopped = run_train(tiny(tmp_path, name="split"))
    assert not stopped.finished and stopped.iteration == 3
    assert load_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    monkeypatch.setattr(TrainEngine, "train_step", original)
    resumed = run_train(tiny(tmp_path, name="split"), resume=True)
    assert resumed.finished
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert resumed.best_miou == full.best_miou


def test_second_ctrl_c_interrupts_at_once():
    before = signal.getsignal(signal.SIGINT)
    with deferred_interrupt() as interrupted:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupted()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    run_train(tiny(tmp_path, "tensorboard=true", "iterations=4", "eval_interval=2"))
    acc = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"step/loss", "step/lr", "step/drop_path", "eval/mIoU", "eval/best_mIoU"} <= tags
    assert [e.step for e in acc.Scalars("step/loss")] == [1, 2, 3, 4]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    evals = [r for r in records if r["type"] == "eval"]
    assert [e.step for e in acc.Scalars("eval/mIoU")] == [2, 4]
    for event, record in zip(acc.Scalars("eval/mIoU"), evals, strict=True):
        assert event.value == pytest.approx(record["mIoU"], rel=1e-6)


def test_autocast_path_runs_the_forward_in_low_precision_and_the_loss_in_float32(tmp_path):
    """The mixed-precision code path on the CPU with bfloat16 (float16 stays off there): the
    network output is bfloat16, the loss float32, the update finite."""
    assert not TrainEngine(tiny(tmp_path, "amp=true", name="fp16"), log=None).amp
    assert not TrainEngine(
        tiny(tmp_path, "amp=false", "amp_dtype=bfloat16", name="off"), log=None
    ).amp
    engine = TrainEngine(tiny(tmp_path, "amp=true", "amp_dtype=bfloat16"), log=None)
    assert engine.amp and not engine.scaler.is_enabled()
    seen = {}

    def record_dtype(module, inputs, output):
        seen["dtype"] = output.dtype  # returns None: the output is left as it is

    engine.model.register_forward_hook(record_dtype)
    images = torch.randn(2, 3, 32, 32)
    masks = torch.randint(0, 7, (2, 32, 32))
    before = [p.detach().clone() for p in engine.model.parameters()]
    loss = engine.train_step(images, masks)
    assert seen["dtype"] == torch.bfloat16
    assert torch.isfinite(torch.tensor(loss))
    after = list(engine.model.parameters())
    assert all(p.dtype == torch.float32 for p in after)  # master weights stay float32
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    engine.close()


def test_second_signal_of_either_kind_interrupts_at_once():
    stops = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.getsignal(s) for s in stops}
    for first, second in ((signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)):
        with deferred_interrupt() as interrupted:
            assert not interrupted()
            os.kill(os.getpid(), first)
            assert interrupted() and interrupted.signum == first
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), second)
        assert {s: signal.getsignal(s) for s in stops} == before


def test_a_stop_signal_recorded_before_a_run_stops_the_next_run(monkeypatch):
    """A study's pool worker records stop signals while no run listens: the next run starts
    with its stop request set (it finishes one step, checkpoints and stops)."""
    stops = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.getsignal(s) for s in stops}
    monkeypatch.setattr(common, "EARLY_STOP", common.StopRequest())
    try:
        with deferred_interrupt() as interrupted:
            assert not interrupted()
        common.record_early_stop_signals()
        os.kill(os.getpid(), signal.SIGTERM)  # recorded, not acted on
        os.kill(os.getpid(), signal.SIGINT)  # the first one is kept
        assert common.EARLY_STOP.signum == signal.SIGTERM
        with deferred_interrupt() as interrupted:
            assert interrupted() and interrupted.signum == signal.SIGTERM
        with deferred_interrupt(enabled=False) as interrupted:
            assert not interrupted()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_sigterm_finishes_the_step_checkpoints_and_the_cli_exits_with_143(
    tmp_path, monkeypatch, capsys
):
    original = TrainEngine.train_step

    def step_then_sigterm(self, images, masks):
        value = original(self, images, masks)
        if self.iteration == 1:  # the second step: SIGTERM arrives while it runs
            os.kill(os.getpid(), signal.SIGTERM)
        return value

    monkeypatch.setattr(TrainEngine, "train_step", step_then_sigterm)
    stopped = run_train(tiny(tmp_path, name="split"))
    assert not stopped.finished and stopped.iteration == 2
    assert stopped.stop_signal == signal.SIGTERM
    assert load_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 2
    assert "stopped by SIGTERM at iteration 2" in capsys.readouterr().out
    cfg = tiny(tmp_path, name="cli")
    cli = ["train", "--config", str(SYNTHETIC), "--genotype", cfg.model.genotype, *TINY]
    assert main([*cli, f"output={tmp_path / 'cli'}"]) == 128 + signal.SIGTERM
    assert "final model" not in capsys.readouterr().out


def test_a_training_run_on_a_folder_in_use_is_refused(tmp_path, capsys):
    cfg = tiny(tmp_path)
    child = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(RunFolderLockedError, match=f"pid {child.pid}"):
            TrainEngine(cfg, log=None)
        cli = ["train", "--config", str(SYNTHETIC), "--genotype", cfg.model.genotype, *TINY]
        assert main([*cli, f"output={tmp_path / 'run'}"]) == 2
        assert f"pid {child.pid}" in capsys.readouterr().err
    finally:
        child.kill()
        child.wait()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".autodeeplab.lock"]


def test_resume_after_a_crash_drops_log_records_and_tensorboard_events_after_the_checkpoint(
    tmp_path, monkeypatch
):
    """Checkpoints at iterations 2, 3 (evaluation) and 4; a crash during iteration 6 leaves
    the step record of iteration 5 in metrics.jsonl and TensorBoard. After --resume each
    iteration is logged exactly once and the records equal an uninterrupted run's."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    extra = ("checkpoint_interval=2", "tensorboard=true")
    run_train(tiny(tmp_path, *extra, name="full"))
    original = TrainEngine.train_step

    def crash_in_iteration_6(self, images, masks):
        if self.iteration == 5:
            raise RuntimeError("power cut")
        return original(self, images, masks)

    monkeypatch.setattr(TrainEngine, "train_step", crash_in_iteration_6)
    with pytest.raises(RuntimeError, match="power cut"):
        run_train(tiny(tmp_path, *extra, name="split"))
    split = tmp_path / "split"
    assert load_checkpoint(split / "last.pt")["iteration"] == 4
    assert read_records(split / "metrics.jsonl")[-1]["iteration"] == 5
    monkeypatch.setattr(TrainEngine, "train_step", original)
    assert run_train(tiny(tmp_path, *extra, name="split"), resume=True).finished

    def comparable(run):
        return [{k: v for k, v in r.items() if k != "time_s"} for r in read_records(run)]

    records = comparable(split / "metrics.jsonl")
    assert records == comparable(tmp_path / "full" / "metrics.jsonl")
    assert [r["iteration"] for r in records if r["type"] == "step"] == [1, 2, 3, 4, 5, 6]
    acc = event_accumulator.EventAccumulator(str(split / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("step/loss")
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    losses = [r["loss"] for r in records if r["type"] == "step"]
    assert [e.value for e in events] == pytest.approx(losses, rel=1e-6)


def test_model_folders_and_logs_hold_standard_json_when_a_value_is_nan(tmp_path):
    engine = TrainEngine(tiny(tmp_path), log=None)
    engine._save_model("best", float("nan"))  # e.g. an mIoU with no class present
    config = strict_loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert config["extra"]["mIoU"] is None
    engine.run_log.record({"type": "eval", "iteration": 1, "mIoU": float("nan")})
    engine.close()
    assert read_records(tmp_path / "run" / "metrics.jsonl") == [
        {"type": "eval", "iteration": 1, "mIoU": None}
    ]


def test_gradients_are_freed_after_the_optimizer_step(tmp_path):
    """The next forward pass runs without the previous step's gradients; the step still moved
    the weights."""
    engine = TrainEngine(tiny(tmp_path), log=None)
    try:
        images, masks = next(engine._loader(engine._batches(0)[:1], 0))
        before = [p.detach().clone() for p in engine.model.parameters()]
        engine.train_step(images, masks)
        assert all(p.grad is None for p in engine.model.parameters())
        after = list(engine.model.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    finally:
        engine.close()


def test_binary_masks_stored_as_0_and_255_are_flagged_and_mapped(tmp_path):
    """The classic trap: 255 = foreground read as ignore gives a perfect background-only mIoU.
    The run says so at its first evaluation; with mask_values the object is a class."""
    import numpy as np
    from PIL import Image

    from autodeeplab.data import write_metadata

    root = tmp_path / "binary"
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((32, 32), np.uint8)
            mask[8:20, 10:24] = 255
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    write_metadata(root / "classes.yaml", ["background", "object"])
    data = ["data.name=folder", f"data.root={root}", "data.options={}", "data.scale=[1, 1]"]
    lines: list[str] = []
    run_train(tiny(tmp_path, *data, "iterations=3", name="plain"), log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1  # once, not at every evaluation
    assert "1 of 2 classes have no ground-truth pixel in the 2 evaluated samples" in warnings[0]
    assert "('object')" in warnings[0] and "mask_values" in warnings[0]
    write_metadata(root / "classes.yaml", ["background", "object"], mask_values=[0, 255])
    lines.clear()
    run_train(tiny(tmp_path, *data, "iterations=3", name="mapped"), log=lines.append)
    assert not [line for line in lines if line.startswith("warning:")]
