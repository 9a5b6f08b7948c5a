"""Distributed training (DDP through torchrun, gloo on CPU): the same weights as one process on the same global
batch, rank-0 checkpoints that resume exactly, and an evaluation whose gathered per-example results are those of
one process. Two launches of two processes each (process start and imports cost several seconds here)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from robustrain.config import load_config
from robustrain.data import BatchLoader, load_dataset
from robustrain.errors import ConfigError
from robustrain.evaluation.robust_accuracy import _in_batch_order
from robustrain.build import build_data, build_trainer
from robustrain.run import run_training
from robustrain.training import load_checkpoint
from robustrain.training.compiled import CompiledModule
from robustrain.training.parallel import rank_seed

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
# A model without BatchNorm (quickstart's small CNN): without SyncBatchNorm, which PyTorch runs on GPUs only, each
# rank would normalise with its shard's statistics and the weights could not equal one process's. FGSM (no random
# start) makes the attack deterministic, so every example is attacked alike by one process and by two.
EQUAL = ["train.progress=false", "wandb.mode=disabled", "data.train_subset=320", "data.batch_size=64",
         "attack={name: fgsm, bn_mode: train}", "validation.attack={name: fgsm}", "validation.fgsm=false",
         "eval.attack={name: fgsm}", "train.epochs=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# -- no processes needed ----------------------------------------------------------------------------------------
def test_shards_of_every_batch_concatenate_to_the_single_process_batch():
    """The distributed sampler: same order on every rank, each rank a contiguous slice of each global batch,
    augmentation drawn for the whole batch; uneven last batch included."""
    ds = load_dataset("digits", None, "train")
    opts = dict(shuffle=True, augment="crop_flip", seed=5, crop_padding=1)
    one = BatchLoader(ds, 100, **opts)
    parts = [BatchLoader(ds, 100, rank=r, world_size=3, **opts) for r in range(3)]
    assert all(len(p) == len(one) for p in parts)  # the global batch size and steps per epoch are kept
    for epoch in (0, 1):
        for i, (x, y) in enumerate(one.iterate(epoch)):
            shards = [next(iter(p.iterate(epoch, start_batch=i))) for p in parts]
            assert max(s[1].numel() for s in shards) - min(s[1].numel() for s in shards) <= 1
            assert torch.equal(torch.cat([s[0] for s in shards]), x)
            assert torch.equal(torch.cat([s[1] for s in shards]), y)
    first = [next(iter(one.iterate(e)))[1] for e in (0, 1)]
    assert not torch.equal(first[0], first[1])  # reshuffled every epoch


def test_a_batch_too_small_to_split_is_refused():
    ds = load_dataset("digits", None, "train").subset(torch.arange(65))
    with pytest.raises(ConfigError, match="cannot be split over 2 processes"):
        BatchLoader(ds, 64, shuffle=True, rank=0, world_size=2)  # the last batch holds 1 example
    BatchLoader(ds, 64, shuffle=True, drop_last=True, rank=1, world_size=2)
    with pytest.raises(ConfigError, match="rank"):
        BatchLoader(ds, 64, shuffle=True, rank=2, world_size=2)


def test_gathered_results_are_put_back_in_example_order():
    sizes = [[2, 3], [1, 1], [2, 2]]  # per batch: rank 0's and rank 1's shard sizes
    truth = torch.arange(11)
    rank0 = torch.cat([truth[0:2], truth[5:6], truth[7:9]])
    rank1 = torch.cat([truth[2:5], truth[6:7], truth[9:11]])
    assert torch.equal(_in_batch_order(torch.cat([rank0, rank1]), sizes), truth)


def test_rank_zero_keeps_the_single_process_seed():
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(4)}) == 4


def test_compile_falls_back_to_eager_with_one_warning():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    wrapped = CompiledModule(model, backend=broken_backend)
    x = torch.randn(5, 4)
    with pytest.warns(RuntimeWarning, match="train.compile.*eagerly"):
        out = wrapped(x)
    assert torch.equal(out, model(x)) and wrapped.failed
    assert [p is q for p, q in zip(wrapped.parameters(), model.parameters())] == [True] * 4
    with pytest.raises(RuntimeError, match="mat1 and mat2"):  # the model's own error still surfaces
        wrapped(torch.randn(5, 7))


# -- torchrun: the real launch ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_training_matches_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m robustrain.cli train` (gloo): the same weights (float tolerance) and the same
    validation and test report as one process with the same global batch and seed."""
    out = tmp_path / "out"
    sets = sum((["--set", o] for o in [*EQUAL, "train.checkpoint_every=3"]), [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--master_port={free_port()}", "-m", "robustrain.cli", "train", "-c", str(QUICK),
           "--run-dir", str(tmp_path / "ddp"), *sets]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test accuracy") == 1  # only rank 0 reports

    single = run_training(load_config(QUICK, [*EQUAL, "train.checkpoint_every=3", f"out_dir={out}"]), tmp_path / "one")
    a, b = load_checkpoint(tmp_path / "ddp" / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    assert a["trainer"]["step"] == b["trainer"]["step"] == 10
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=0)
    assert len(a["rng_ranks"]) == 2 and "rng_ranks" not in b
    assert not torch.equal(a["rng_ranks"][0]["generator"], a["rng_ranks"][1]["generator"])
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ddp["world_size"] == 2
    for key in ("val_clean_acc", "val_robust_acc"):  # gathered over both ranks: every example counted once
        for h1, h2 in zip(ddp["history"], single["history"]):
            assert abs(h1[key] - h2[key]) <= 1 / 200 + 1e-9, (key, h1, h2)
    for r1, r2 in zip(ddp["test"], single["test"]):
        assert r1["n_ex"] == r2["n_ex"] == 359
        assert abs(r1["clean_acc"] - r2["clean_acc"]) <= 1 / 359 + 1e-9 and abs(r1["fgsm_acc"] - r2["fgsm_acc"]) <= 1 / 359 + 1e-9
    lines = [json.loads(l) for l in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["kind"] == "epoch"] == [5, 10]  # one writer: each record once


# -- spawned ranks: resume and evaluation -------------------------------------------------------------------------
def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    import torch.distributed as dist

    from conftest import KillAt
    from robustrain.evaluation import evaluate
    from robustrain.attacks import build_attack
    from robustrain.threat import make_threat

    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        tmp_path = Path(tmp)
        # FGSM-RS: every rank draws its own noise, so an exact resume needs each rank's generator back
        cfg = load_config(QUICK, [*EQUAL, "attack={name: fgsm_rs, bn_mode: train}", "train.checkpoint_every=3",
                                  "validation.attack={name: pgd, steps: 2, restarts: 1}", f"out_dir={tmp}"])
        full, data = build_trainer(cfg, tmp_path / "full")
        full.fit()
        killed, _ = build_trainer(cfg, tmp_path / "killed", data)
        kill = KillAt(6)
        kill.every_rank = True  # every rank stops at the same step, as a killed job does
        killed.callbacks.append(kill)
        try:
            killed.fit()
        except KeyboardInterrupt:
            pass
        resumed, _ = build_trainer(cfg, tmp_path / "killed", data)
        resumed.fit(resume=tmp_path / "killed" / "last.pt")
        result = {"resume_equal": all(torch.equal(v, resumed.model.state_dict()[k])
                                      for k, v in full.model.state_dict().items()),
                  "history_equal": resumed.history == full.history, "steps": resumed.step}
        # distributed evaluation of the trained model: gathered per-example flags, on every rank
        threat = make_threat("linf", cfg.threat.eps)
        attacks = {"fgsm": build_attack("fgsm", threat), "pgd": build_attack("pgd", threat, steps=3)}
        test = build_data(cfg).test
        res = evaluate(full.model, test.iterate(0), attacks, generator=torch.Generator().manual_seed(0),
                       distributed=True)
        result["correct"] = {k: v.tolist() for k, v in res.correct.items()}
        # the overfitting monitor: rank 0 measures and decides (rollback, then give up), every rank acts alike
        mon = load_config(QUICK, [*EQUAL, "monitor.enabled=true", "monitor.every=3", "monitor.action=rollback",
                                  "monitor.remedy={kind: lr, factor: 0.5}", "monitor.co_drop=-1",
                                  "monitor.co_stable=10", "monitor.co_gap=null", "monitor.max_rollbacks=1",
                                  "monitor.n_check=64", "monitor.pgd_steps=2", f"out_dir={tmp}"])
        watched, _ = build_trainer(mon, tmp_path / "monitor", data)
        watched.fit()
        result["monitor"] = {"step": watched.step, "lr_scale": watched.lr_scale,
                             "events": [e["kind"] for e in watched.callbacks[1].events],
                             "weights": [float(v.double().sum()) for v in watched.model.state_dict().values()]}
        try:
            from robustrain.build import build_model

            build_model(load_config(QUICK, ["train.sync_batchnorm=true"]), data.info, torch.device("cpu"))
            result["sync_bn_error"] = None
        except ConfigError as e:
            result["sync_bn_error"] = str(e)
        (tmp_path / f"rank{rank}.json").write_text(json.dumps(result))
        if rank == 0:
            torch.save(full.model.state_dict(), tmp_path / "model.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_resume_and_evaluation(tmp_path):
    """Two spawned ranks: a run killed mid-epoch and resumed from the rank-0 checkpoint ends with the weights of the
    uninterrupted run on every rank; a distributed evaluation gathers the per-example results of one process."""
    from robustrain.attacks import build_attack
    from robustrain.evaluation import evaluate
    from robustrain.threat import make_threat

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for res in results:
        assert res["steps"] == 10 and res["resume_equal"] and res["history_equal"]
        assert "GPUs only" in res["sync_bn_error"]
    assert results[0]["correct"] == results[1]["correct"]  # every rank holds all results
    monitor = [r["monitor"] for r in results]
    assert monitor[0]["events"] == ["catastrophic_overfitting", "rollback", "catastrophic_overfitting", "give_up"]
    assert monitor[0] == monitor[1] and monitor[0]["step"] == 9 and monitor[0]["lr_scale"] == 0.5

    cfg = load_config(QUICK, [*EQUAL, f"out_dir={tmp_path}"])
    trainer, data = build_trainer(cfg, tmp_path / "single")
    trainer.model.load_state_dict(torch.load(tmp_path / "model.pt"))
    threat = make_threat("linf", cfg.threat.eps)
    single = evaluate(trainer.model, data.test.iterate(0), {"fgsm": build_attack("fgsm", threat),
                      "pgd": build_attack("pgd", threat, steps=3)}, generator=torch.Generator().manual_seed(0))
    gathered = results[0]["correct"]
    assert len(gathered["clean"]) == single.n == 359
    assert gathered["clean"] == single.correct["clean"].tolist()
    assert gathered["fgsm"] == single.correct["fgsm"].tolist()  # deterministic attack: example for example
    # PGD's random starts are drawn per rank: the same accuracy up to the noise of the starts
    assert abs(sum(gathered["pgd"]) - int(single.correct["pgd"].sum())) <= 0.05 * 359
