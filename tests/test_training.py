"""The one training loop: it learns robustly on real data, resumes exactly, and fails loudly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustrain.config import load_config
from robustrain.errors import CheckpointError, NonFiniteLossError
from robustrain.build import build_trainer
from robustrain.run import run_training
from conftest import KillAt
from robustrain.training import FGSMTrainer, LRSchedule, PGDTrainer, load_checkpoint, save_atomic

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
FAST = ["train.progress=false", "eval.attack={name: pgd, steps: 5, restarts: 1}",
        "validation.attack={name: pgd, steps: 3, restarts: 1}"]


def quick_cfg(tmp_path: Path, *extra: str):
    return load_config(QUICK, [*FAST, f"out_dir={tmp_path}", *extra])


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# -- schedules ------------------------------------------------------------------------------------------
def test_cyclic_schedule_goes_zero_peak_zero():
    s = LRSchedule("cyclic", 0.2, total_steps=100, steps_per_epoch=10, peak=0.5)
    assert s(0) == 0.0 and s(50) == pytest.approx(0.2) and s(100) == 0.0
    assert s(25) == pytest.approx(0.1) and s(75) == pytest.approx(0.1)


def test_multistep_and_cosine_schedules():
    m = LRSchedule("multistep", 0.1, total_steps=200, steps_per_epoch=1, milestones=(100, 150), gamma=0.1)
    assert m(99) == pytest.approx(0.1) and m(100) == pytest.approx(0.01) and m(150) == pytest.approx(0.001)
    c = LRSchedule("cosine", 1.0, total_steps=10, steps_per_epoch=1)
    assert c(0) == 1.0 and c(5) == pytest.approx(0.5) and c(10) == pytest.approx(0.0)


# -- the phenomenon on real data ------------------------------------------------------------------------
@pytest.mark.slow
def test_fgsm_rs_training_on_digits_is_robust(tmp_path):
    summary = run_training(quick_cfg(tmp_path, "train.epochs=12"), tmp_path / "run")
    best = next(r for r in summary["test"] if r["checkpoint"] == "best")
    # chance is 10 %: robust accuracy under PGD must be far above it, and clean accuracy high
    assert best["clean_acc"] > 0.90  # fractions in summary.json (README "Units")
    assert best["pgd-5-1_acc"] > 0.60
    hist = summary["history"]
    assert hist[-1]["val_robust_acc"] > hist[0]["val_robust_acc"] + 0.3
    run = tmp_path / "run"
    for f in ("config.yaml", "environment.json", "metrics.jsonl", "best.pt", "last.pt", "summary.json"):
        assert (run / f).is_file(), f
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(l["kind"] == "epoch" for l in lines) == 12
    assert all("loss" in l and "lr" in l for l in lines if l["kind"] == "step")


@pytest.mark.slow
def test_standard_training_baseline_is_not_robust_but_adversarial_is(digits):
    """Without adversarial training the same model is far less robust (the comparison that makes the
    robust-accuracy test meaningful)."""
    from robustrain.attacks import PGD
    from robustrain.data import BatchLoader
    from robustrain.threat import make_threat
    from conftest import make_digits_model

    train, test = digits
    x, y = test.images.float() / 255, test.labels
    threat = make_threat("linf", 0.1)
    accs = {}
    for name, eps in (("standard", 0.0), ("adversarial", 0.1)):
        model = make_digits_model()
        loader = BatchLoader(train, 64, shuffle=True, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        FGSMTrainer(model, make_threat("linf", eps), opt, LRSchedule("cyclic", 0.1, 8 * len(loader), len(loader)),
                    loader, epochs=8).fit()
        model.eval()
        r = PGD(threat, steps=10)(model, x, y, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            accs[name] = (model(r.x_adv).argmax(1) == y).float().mean().item()
    assert accs["adversarial"] > accs["standard"] + 0.2, accs


@pytest.mark.slow
def test_pgd_trainer_preset_trains(digits):
    from robustrain.data import BatchLoader
    from robustrain.threat import make_threat
    from conftest import make_digits_model

    model = make_digits_model()
    loader = BatchLoader(digits[0], 128, shuffle=True, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    t = PGDTrainer(model, make_threat("linf", 0.1), opt, LRSchedule("constant", 0.05, 3 * len(loader), len(loader)),
                   loader, epochs=3, steps=3)
    assert t.attack.steps == 3 and t.attack.bn_mode == "train" and not t.attack.keep_best
    before = weights(model)
    t.fit()
    assert t.step == 3 * len(loader)
    assert any(not torch.equal(before[k], v) for k, v in weights(model).items())


# -- exact resume ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_mid_epoch_and_resume_gives_identical_weights(tmp_path):
    overrides = ["train.epochs=3", "train.checkpoint_every=7", "data.batch_size=100"]
    cfg = quick_cfg(tmp_path, *overrides)
    full, _ = build_trainer(cfg, tmp_path / "full")
    full.fit()
    steps_per_epoch = full.steps_per_epoch
    assert 21 % steps_per_epoch != 0  # the kill lands mid-epoch

    killed, _ = build_trainer(cfg, tmp_path / "killed")
    killed.callbacks.append(KillAt(21))
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    ckpt = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert ckpt["trainer"]["step"] == 21 and 0 < ckpt["trainer"]["batch_in_epoch"] < steps_per_epoch
    torch.manual_seed(1234)  # the global RNG state of the new process differs: resume must not care
    resumed, _ = build_trainer(cfg, tmp_path / "killed")
    resumed.fit(resume=tmp_path / "killed" / "last.pt")
    assert resumed.step == full.step
    assert_same_weights(weights(full.model), weights(resumed.model))
    assert resumed.history == full.history
    assert resumed.callbacks[1].best == full.callbacks[1].best

    def records(run):  # the metrics log holds each step once, with the uninterrupted run's values
        lines = [json.loads(l) for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(r["kind"], r["step"], r.get("loss"), r.get("val_robust_acc")) for r in lines]

    assert records("killed") == records("full")


@pytest.mark.slow
def test_sigkill_of_the_cli_and_resume_gives_identical_weights(tmp_path):
    """A real `kill -9` of `robustrain train`, then `--resume`: same final weights as an uninterrupted run."""
    args = ["-c", str(QUICK), "--set", "train.epochs=4", "--set", "train.checkpoint_every=3", "--set",
            "data.batch_size=50", *sum((["--set", o] for o in FAST), [])]
    exe = [sys.executable, "-m", "robustrain.cli", "train", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*exe, "--run-dir", str(tmp_path / "full")], check=True, capture_output=True, env=env)

    run = tmp_path / "killed"
    proc = subprocess.Popen([*exe, "--run-dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "last.pt").exists():
            try:
                step = load_checkpoint(run / "last.pt")["trainer"]["step"]
            except CheckpointError:
                step = 0
            if step >= 12:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(run / "last.pt")["trainer"]
    assert killed_at["step"] < 4 * 25  # really interrupted
    subprocess.run([*exe, "--run-dir", str(run), "--resume"], check=True, capture_output=True, env=env)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(run / "last.pt")
    assert_same_weights(a["model"], b["model"])
    assert a["trainer"]["history"] == b["trainer"]["history"]
    assert not list(run.glob(".*.tmp"))  # no half-written files left behind


# -- failures that must be loud and lose nothing --------------------------------------------------------
def test_non_finite_loss_stops_with_a_clear_error_and_keeps_checkpoints(tmp_path):
    cfg = quick_cfg(tmp_path, "train.epochs=2", "optim.lr=1e30", "schedule.name=constant")
    trainer, _ = build_trainer(cfg, tmp_path / "run")
    trainer.save_checkpoint(tmp_path / "run" / "last.pt")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(NonFiniteLossError, match="learning rate"):
        trainer.fit()
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_atomic_save_never_leaves_a_half_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"model": {"w": torch.ones(3)}}, path)
    with pytest.raises(Exception):
        save_atomic({"model": {"w": lambda: None}}, path)  # unpicklable: fails mid-write
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_corrupted_checkpoint_is_reported(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_of_another_model_is_refused(tmp_path):
    cfg = quick_cfg(tmp_path, "train.epochs=1")
    trainer, _ = build_trainer(cfg, tmp_path / "a")
    trainer.save_checkpoint(tmp_path / "a" / "last.pt")
    other, _ = build_trainer(quick_cfg(tmp_path, "model.kwargs={input_size: 8, width: 4}"), tmp_path / "b")
    with pytest.raises(CheckpointError, match="does not fit this model"):
        other.load_checkpoint(tmp_path / "a" / "last.pt")


def test_existing_run_folder_is_not_overwritten(tmp_path):
    cfg = quick_cfg(tmp_path, "train.epochs=1")
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"precious")
    from robustrain.errors import ConfigError

    with pytest.raises(ConfigError, match="--resume"):
        run_training(cfg, run)
    assert (run / "last.pt").read_bytes() == b"precious"


@pytest.mark.slow
def test_resume_with_a_config_that_changes_training_is_refused_and_writes_nothing(tmp_path, capsys):
    """Resuming a finished run with another radius fails before anything is written, with the diff and the way
    out; a change that does not touch the trained model (train.progress) resumes."""
    from robustrain.cli.main import main

    run = tmp_path / "run"
    tiny = ["-c", str(QUICK), "--run-dir", str(run)] + sum((["--set", o] for o in [
        *FAST, "train.epochs=1", "data.train_subset=64", "data.val_size=50", "eval.n_ex=50"]), [])
    assert main(["train", *tiny]) == 0
    kept = {name: (run / name).read_bytes() for name in ("config.yaml", "summary.json")}
    files = sorted(p.name for p in run.iterdir())
    capsys.readouterr()
    assert main(["train", *tiny, "--resume", "--set", "threat.eps=0.3", "--set", "attack.name=pgd"]) == 2
    err = capsys.readouterr().err
    assert "threat.eps: 0.1 -> 0.3" in err and "attack.name: 'fgsm_rs' -> 'pgd'" in err
    assert "start a new run folder" in err and f"-c {run / 'config.yaml'}" in err and "Nothing was written" in err
    assert {name: (run / name).read_bytes() for name in kept} == kept
    assert sorted(p.name for p in run.iterdir()) == files
    assert main(["train", *tiny, "--resume", "--set", "train.progress=true"]) == 0
    (env,) = run.glob("environment.resume-*.json")
    assert json.loads(env.read_text())["config_changes"] == {"train.progress": [False, True]}


def test_bf16_autocast_keeps_the_perturbation_fp32(tmp_path):
    cfg = quick_cfg(tmp_path, "train.epochs=1", "train.amp=bf16")
    trainer, data = build_trainer(cfg, tmp_path / "run")
    x, y = next(iter(data.train))
    res = trainer.attack(trainer.model, x, y, generator=trainer.generator)
    assert res.delta.dtype == torch.float32 and res.x_adv.dtype == torch.float32
    assert res.logits_init.dtype == torch.bfloat16
    logs = trainer.train_step(x, y)
    assert all(v == v for v in logs.values())  # finite, no NaN


def test_resume_removes_what_a_killed_save_left_half_written(tmp_path):
    """A kill inside save_atomic leaves a temporary beside the intact checkpoints; resuming deletes it and
    nothing else."""
    from robustrain.training.checkpoint import remove_stale_temporaries, save_atomic

    save_atomic({"model": {"w": torch.ones(2)}}, tmp_path / "last.pt")
    stale = tmp_path / ".last.pt.x1y2z3.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "notes.tmp"
    other.write_text("not ours")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and other.exists() and (tmp_path / "last.pt").exists()
    assert remove_stale_temporaries(tmp_path) == []
