"""Search engine: outputs, arch movement, exact resume, errors, unrolled gradient, 2 processes,
the run folder's lock, stop signals, periodic checkpoints, the loss over valid pixels."""

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
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
from autodeeplab.config import (
    ConfigError,
    SearchConfig,
    from_dict,
    identity,
    load_config,
    to_dict,
)
from autodeeplab.engine import search as search_engine
from autodeeplab.engine.search import (
    NonFiniteLossError,
    SearchEngine,
    epoch_batches,
    run_search,
    unrolled_arch_gradients,
)
from autodeeplab.genotype import Genotype
from autodeeplab.runfolder import RunFolderLock, RunFolderLockedError
from autodeeplab.supernet import SearchNetwork

from runs import (
    SEARCH_CONFIG,
    SEARCH_TINY,
    assert_same_search_state,
    comparable_records,
    hold_lock,
    read_records,
    tiny_search,
)

SYNTHETIC = SEARCH_CONFIG
TINY = SEARCH_TINY  # 8 + 8 samples -> 4 steps per epoch


tiny = tiny_search


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


def test_selective_checkpoint_searches_the_same_mathematics(tmp_path):
    """model.selective_checkpoint reaches the supernet and only changes what is stored for
    backward: the run's parameters, statistics and log match the exact mode's."""
    exact = run_search(tiny(tmp_path, "max_steps=6", name="exact"), log=None)
    cfg = tiny(tmp_path, "max_steps=6", "model.selective_checkpoint=true", name="selective")
    assert search_engine.build_supernet(cfg, 7).selective_checkpoint
    selective = run_search(cfg, log=None)
    assert selective.genotype == exact.genotype
    a = load_checkpoint(tmp_path / "exact" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "selective" / "last.pt")["model"]
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-4, atol=1e-5), k
    with pytest.raises(ValueError, match="exclude each other"):
        run_search(
            tiny(tmp_path, "model.selective_checkpoint=true", "model.checkpoint_cells=true"),
            log=None,
        )


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
    assert_same_search_state(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")
    assert comparable_records(tmp_path / "part") == comparable_records(tmp_path / "full")


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
    assert part.stop_signal == signal.SIGINT
    state = load_checkpoint(tmp_path / "part" / "last.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 2, 6)
    assert signal.getsignal(signal.SIGINT) is before
    monkeypatch.setattr(SearchEngine, "weight_step", original)
    full = run_search(tiny(tmp_path, name="full"), log=None)
    resumed = run_search(tiny(tmp_path, name="part"), resume=True, log=None)
    assert resumed.finished and resumed.genotype == full.genotype
    assert_same_search_state(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")


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
    assert main([*base, "checkpoint_steps=-1"]) == 2
    assert "config key checkpoint_steps = -1 is out of range" in capsys.readouterr().err


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
        images, masks = _first_arch_batch(engine, rank, world)
        loss = engine.arch_gradients((images, _uneven_ignore(masks, rank)))
        if rank == 0:
            grads = [p.grad.clone() for p in engine.arch]
            torch.save({"loss": loss, "grads": grads}, Path(out) / "ddp_uneven.pt")
        engine.a_opt.zero_grad(set_to_none=True)
        result = engine.run()
        if rank == 0:
            torch.save(result.global_step, Path(out) / "ddp_steps.pt")
    finally:
        dist.destroy_process_group()


def _uneven_ignore(masks: torch.Tensor, rank: int) -> torch.Tensor:
    """Rank 0 ignores 3/4 of its pixels, rank 1 none: the ranks' valid pixels differ."""
    masks = masks.clone()
    if rank == 0:
        masks[:, : 3 * masks.shape[1] // 4] = 255
    return masks


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

    # uneven ignored pixels: the loss and its gradient are those of the mean over the valid
    # pixels of the global batch (each half normalised by its own BatchNorm statistics)
    uneven = torch.load(tmp_path / "ddp_uneven.pt")
    logits, masks = [], []
    for rank in range(2):
        images, m = _first_arch_batch(single, rank, 2)
        logits.append(single.model(images))
        masks.append(_uneven_ignore(m, rank))
    for p in single.arch:
        p.requires_grad_(True)
    reference = F.cross_entropy(torch.cat(logits), torch.cat(masks), ignore_index=255)
    mean_of_means = (
        sum(F.cross_entropy(x, m, ignore_index=255) for x, m in zip(logits, masks, strict=True)) / 2
    )
    assert abs(mean_of_means.item() - reference.item()) > 1e-3  # the two normalisations differ
    assert uneven["loss"] == pytest.approx(reference.item(), rel=1e-5)
    expected = torch.autograd.grad(reference, single.arch)
    for d, e in zip(uneven["grads"], expected, strict=True):
        torch.testing.assert_close(d, e, rtol=1e-5, atol=1e-8)
    single.close()


def _refused_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        SearchEngine(from_dict(SearchConfig, cfg_dict), log=None)
    except RunFolderLockedError as err:
        (Path(out) / f"refused{rank}.txt").write_text(str(err))
    finally:
        # neither rank tears the group down while the other may still be inside a collective
        # (a peer's closed socket makes gloo abort the process)
        dist.barrier()
        dist.destroy_process_group()


def test_two_process_search_on_a_folder_in_use_is_refused_on_every_rank(tmp_path):
    """Rank 0 takes the lock for the run (the passing test above shows that the other ranks
    are not refused by it); when it cannot, every rank raises instead of waiting for it."""
    cfg = tiny(tmp_path, "epochs=1")
    with RunFolderLock(cfg.output):  # this process is not one of the two ranks
        args = (2, _free_port(), to_dict(cfg), str(tmp_path))
        mp.spawn(_refused_worker, args=args, nprocs=2, join=True)
    assert f"pid {os.getpid()}" in (tmp_path / "refused0.txt").read_text()
    assert "rank 0 could not lock the run folder" in (tmp_path / "refused1.txt").read_text()
    assert not (tmp_path / "run" / "config.yaml").exists()


# ---------------------------------------------------------------------------- run folder


def test_a_search_on_a_folder_in_use_is_refused_and_its_outputs_are_kept(tmp_path, capsys):
    run = tmp_path / "run"
    run_search(tiny(tmp_path, "max_steps=2"), log=None)
    leftover = run / ".last.pt.k2j_x9ab.tmp"  # as if a checkpoint write had been killed
    leftover.write_bytes(b"half a checkpoint")
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    before.pop(".autodeeplab.lock")
    child = hold_lock(run)
    try:
        with pytest.raises(RunFolderLockedError, match=f"pid {child.pid}"):
            SearchEngine(tiny(tmp_path), resume=True, log=None)
        cli = ["search", "--config", str(SYNTHETIC), *TINY, f"output={run}", "--resume"]
        assert main(cli) == 2
        err = capsys.readouterr().err
        assert f"in use by another process (pid {child.pid}" in err and "another output" in err
    finally:
        child.kill()
        child.wait()
    after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    after.pop(".autodeeplab.lock")
    assert after == before  # nothing written, nothing removed while the folder was in use
    # the killed holder's lock does not block; the leftover goes when the run starts
    result = run_search(tiny(tmp_path), resume=True, log=None)
    assert result.finished and not leftover.exists()


_KILLED_SEARCH = textwrap.dedent(
    """
    import os, signal, sys
    from autodeeplab.config import load_config
    from autodeeplab.engine.search import SearchEngine, run_search

    kill_at = int(sys.argv[2])
    original = SearchEngine.weight_step

    def step(self, batch):
        if self.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, batch)

    SearchEngine.weight_step = step
    run_search(load_config(sys.argv[1], sys.argv[3:]), log=None)
    """
)


def test_kill_9_after_a_periodic_checkpoint_resumes_bit_identically(tmp_path):
    """checkpoint_steps=3 writes last.pt at global steps 3, 6 (mid-epoch) and at the epoch
    ends; the process is killed during step 8, one logged step after the checkpoint at 6.
    The resumed run drops that record, redoes the steps and ends exactly as an uninterrupted
    run: same weights, alphas, betas, optimiser states and metrics records."""
    full = run_search(tiny(tmp_path, name="full"), log=None)
    part = tmp_path / "part"
    args = [*TINY, f"output={part}", "checkpoint_steps=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _KILLED_SEARCH, str(SYNTHETIC), "7", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    state = load_checkpoint(part / "last.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 2, 6)
    assert [r["global_step"] for r in read_records(part / "metrics.jsonl")][-2:] == [6, 7]

    resumed = run_search(load_config(SYNTHETIC, args), resume=True, log=None)
    assert resumed.finished and resumed.genotype == full.genotype
    assert_same_search_state(tmp_path / "full" / "last.pt", part / "last.pt")
    records = comparable_records(part)
    assert records == comparable_records(tmp_path / "full")
    assert [r["global_step"] for r in records if r["type"] == "step"] == list(range(1, 9))


def test_sigterm_at_the_end_of_an_epoch_ends_the_epoch_then_stops(tmp_path, monkeypatch, capsys):
    original = SearchEngine.weight_step

    def step_then_sigterm(self, batch):
        value = original(self, batch)
        if self.global_step == 3:  # the fourth step, the last of epoch 1
            os.kill(os.getpid(), signal.SIGTERM)
        return value

    monkeypatch.setattr(SearchEngine, "weight_step", step_then_sigterm)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    part = run_search(tiny(tmp_path, name="part"), log=None)
    assert not part.finished and part.stop_signal == signal.SIGTERM
    assert (part.epoch, part.global_step) == (1, 4)
    state = load_checkpoint(tmp_path / "part" / "last.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 0, 4)
    assert [r["epoch"] for r in read_records(tmp_path / "part" / "metrics.jsonl")][-1:] == [1]
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    # the CLI exits with 128 + SIGTERM, the status of a process ended by that signal
    cli = ["search", "--config", str(SYNTHETIC), *TINY, f"output={tmp_path / 'cli'}"]
    assert main(cli) == 128 + signal.SIGTERM
    assert "genotype" not in capsys.readouterr().out

    monkeypatch.setattr(SearchEngine, "weight_step", original)
    full = run_search(tiny(tmp_path, name="full"), log=None)
    resumed = run_search(tiny(tmp_path, name="part"), resume=True, log=None)
    assert resumed.finished and resumed.genotype == full.genotype
    assert_same_search_state(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")
    assert comparable_records(tmp_path / "part") == comparable_records(tmp_path / "full")


def test_sigterm_to_the_search_command_checkpoints_and_resume_finishes_identically(tmp_path):
    """A real ``autodeeplab search`` process gets SIGTERM from outside once its first step
    is logged: it finishes the step, writes last.pt and exits with 143."""
    out = tmp_path / "part"
    cmd = [sys.executable, "-m", "autodeeplab", "search", "--config", str(SYNTHETIC)]
    cmd += [*TINY, f"output={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        metrics, give_up = out / "metrics.jsonl", time.monotonic() + 300
        while not (metrics.is_file() and metrics.read_text()):
            assert proc.poll() is None and time.monotonic() < give_up, proc.communicate()[1]
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stdout and "--resume" in stdout
    state = load_checkpoint(out / "last.pt")
    assert 1 <= state["global_step"] < 8 and not (out / "genotype.json").exists()

    resumed = run_search(tiny(tmp_path, name="part"), resume=True, log=None)
    full = run_search(tiny(tmp_path, name="full"), log=None)
    assert resumed.finished and resumed.genotype == full.genotype
    assert_same_search_state(tmp_path / "full" / "last.pt", out / "last.pt")
    assert comparable_records(out) == comparable_records(tmp_path / "full")


# ---------------------------------------------------------------------------- loss
def _batch_with_ignored_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=g)
    masks = torch.randint(0, 7, (2, 32, 32), generator=g)
    masks[0, :20] = 255  # the two images have different numbers of valid pixels
    masks[1, :, :5] = 255
    return images, masks


def test_search_losses_are_the_mean_over_the_valid_pixels(tmp_path):
    engine = SearchEngine(tiny(tmp_path), log=None)
    images, masks = _batch_with_ignored_pixels()
    with torch.no_grad():  # training mode: the same batch statistics as the step
        reference = F.cross_entropy(engine.model(images), masks, ignore_index=255).item()
    assert engine.weight_step((images, masks)) == pytest.approx(reference, rel=1e-6)
    with torch.no_grad():
        reference = F.cross_entropy(engine.model(images), masks, ignore_index=255).item()
    assert engine.arch_step((images, masks)) == pytest.approx(reference, rel=1e-6)
    engine.close()


def _autocast_loss(model, images, masks):
    """The loss of a forward pass under bfloat16 autocast, computed by hand."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
    assert logits.dtype == torch.bfloat16
    return F.cross_entropy(logits.float(), masks, ignore_index=255).item()


def test_amp_runs_the_supernet_under_bfloat16_autocast_and_keeps_float32_state(tmp_path):
    """``amp: true``: the weight and architecture steps' losses are those of a bfloat16
    autocast forward pass (computed here by hand), within 3 % of float32's but not equal; the
    parameters, gradients and optimizer states stay float32; without ``amp`` nothing changes."""
    images, masks = _batch_with_ignored_pixels()
    exact = SearchEngine(tiny(tmp_path, name="exact"), log=None)
    engine = SearchEngine(tiny(tmp_path, "amp=true", name="amp"), log=None)
    assert not exact.cfg.amp and engine.cfg.amp
    # a neutral default: runs written before the key existed keep their config hash
    assert "amp" not in identity(exact.cfg) and identity(engine.cfg)["amp"] is True
    with torch.no_grad():
        fp32 = F.cross_entropy(exact.model(images), masks, ignore_index=255).item()
    assert exact.weight_step((images, masks)) == pytest.approx(fp32, rel=1e-6)
    reference = _autocast_loss(engine.model, images, masks)
    assert reference == pytest.approx(fp32, rel=0.03) and reference != pytest.approx(fp32, rel=1e-6)
    assert engine.weight_step((images, masks)) == pytest.approx(reference, rel=1e-6)
    reference = _autocast_loss(engine.model, images, masks)
    assert engine.arch_step((images, masks)) == pytest.approx(reference, rel=1e-6)
    for p in engine.model.parameters():
        assert p.dtype == torch.float32
    assert engine.model.alphas.grad.dtype == torch.float32
    for opt in (engine.w_opt, engine.a_opt):
        for state in opt.state.values():
            assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert 0 <= engine.evaluate() <= 1  # evaluation runs under autocast too
    exact.close()
    engine.close()


@pytest.mark.parametrize(
    "extra",
    [
        ["unrolled=true"],
        [
            "relaxation.name=dints",
            "relaxation.memory_target=0.5",
            "data.crop_size=40",
            "data.options={length: 16, size: 40}",
        ],
        ["selection.name=perturbation", "selection.eval_samples=4", "selection.tune_epochs=0"],
    ],
    ids=["unrolled", "dints", "perturbation"],
)
def test_amp_combines_with_the_unrolled_step_dints_and_perturbation(tmp_path, extra):
    """bfloat16 autocast through the passes these add (the unrolled step's virtual step and
    finite differences, the DiNTS terms and memory budget, the scoring of perturbations):
    the search finishes, decodes, and keeps its state float32."""
    result = run_search(tiny(tmp_path, "amp=true", *extra), log=None)
    assert result.finished and result.genotype is not None
    state = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_an_amp_search_resumes_bit_identically(tmp_path):
    full = run_search(tiny(tmp_path, "amp=true", name="full"), log=None)
    run_search(tiny(tmp_path, "amp=true", "max_steps=6", name="part"), log=None)
    resumed = run_search(tiny(tmp_path, "amp=true", name="part"), resume=True, log=None)
    assert resumed.genotype == full.genotype
    assert_same_search_state(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")
    assert comparable_records(tmp_path / "part") == comparable_records(tmp_path / "full")


def test_a_batch_without_valid_pixels_is_skipped_without_a_step(tmp_path):
    engine = SearchEngine(tiny(tmp_path), log=None)
    images, masks = _batch_with_ignored_pixels()
    engine.weight_step((images, masks))  # momentum and Adam moments exist from here on
    engine.arch_step((images, masks))
    before = copy.deepcopy(
        (engine.model.state_dict(), engine.w_opt.state_dict(), engine.a_opt.state_dict())
    )
    empty = (images, torch.full_like(masks, 255))
    assert engine.weight_step(empty) is None
    assert engine.arch_step(empty) is None
    after = (engine.model.state_dict(), engine.w_opt.state_dict(), engine.a_opt.state_dict())
    for k, v in before[0].items():
        assert torch.equal(v, after[0][k]), k  # weight decay and momentum did not move them
    for b, a in zip(before[1:], after[1:], strict=True):
        for i, state in b["state"].items():
            for k, v in state.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(a["state"][i][k]))
    engine.close()


def test_batches_without_valid_pixels_do_not_stop_the_search_and_are_counted(tmp_path, monkeypatch):
    weight_step, arch_step = SearchEngine.weight_step, SearchEngine.arch_step

    def blank(batch):
        return batch[0], torch.full_like(batch[1], 255)

    def weight_step_blank_at_2(self, batch):
        return weight_step(self, blank(batch) if self.global_step == 1 else batch)

    def arch_step_blank_at_5(self, val_batch, train_batch=None):
        return arch_step(
            self, blank(val_batch) if self.global_step == 4 else val_batch, train_batch
        )

    monkeypatch.setattr(SearchEngine, "weight_step", weight_step_blank_at_2)
    monkeypatch.setattr(SearchEngine, "arch_step", arch_step_blank_at_5)
    result = run_search(tiny(tmp_path), log=None)
    assert result.finished and result.global_step == 8
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    steps = {r["global_step"]: r for r in records if r["type"] == "step"}
    assert steps[2]["loss"] is None and steps[5]["arch_loss"] is None
    assert all(steps[g]["loss"] is not None for g in steps if g != 2)
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [(e["skipped_batches"], e["skipped_arch_batches"]) for e in epochs] == [(1, 0), (0, 1)]
    # the epoch losses are the means over the steps taken
    assert epochs[0]["loss"] == pytest.approx(sum(steps[g]["loss"] for g in (1, 3, 4)) / 3)
    assert epochs[1]["arch_loss"] == pytest.approx(
        sum(steps[g]["arch_loss"] for g in (6, 7, 8)) / 3
    )


def test_weight_gradients_are_freed_after_the_weight_step(tmp_path):
    """The weight gradients are not kept through the architecture step and the next forward
    pass (one copy of the weights less at their peak); the step still moved the weights."""
    engine = SearchEngine(tiny(tmp_path))
    try:
        batch = next(engine._loader(engine.batches(0, 0)[:1], 0))
        before = [w.detach().clone() for w in engine.weights]
        assert engine.weight_step(batch) is not None
        assert all(w.grad is None for w in engine.weights)
        assert any(not torch.equal(a, w) for a, w in zip(before, engine.weights, strict=True))
    finally:
        engine.close()
