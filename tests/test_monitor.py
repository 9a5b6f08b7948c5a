"""The overfitting monitor: its decision rules on scripted histories, and its actions on a real run."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from robustrain.config import load_config
from robustrain.errors import ConfigError
from robustrain.experiment import build_trainer
from robustrain.threat import make_threat
from robustrain.training import Callback
from robustrain.training.monitor import OverfitMonitor
from robustrain.training.overfitting import (Check, COThresholds, ROThresholds, detect_catastrophic,
                                             detect_robust_overfitting)

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"


def checks(series):
    """(clean, fgsm, pgd) triples -> Check history."""
    return [Check(step=i, epoch=0, clean=c, fgsm=f, pgd=p) for i, (c, f, p) in enumerate(series)]


# -- catastrophic overfitting ---------------------------------------------------------------------------
def test_a_collapse_is_declared_at_the_first_check_after_it():
    hist = [(0.6, 0.5, 0.35), (0.7, 0.55, 0.42), (0.75, 0.6, 0.45), (0.8, 0.85, 0.05), (0.82, 0.9, 0.0)]
    decisions = [detect_catastrophic(checks(hist[: i + 1])) for i in range(len(hist))]
    assert decisions[:3] == [None, None, None]
    ev = decisions[3]
    assert ev is not None
    assert ev["best_pgd_acc"] == 0.45 and ev["pgd_acc"] == 0.05
    assert ev["fgsm_pgd_gap"] == pytest.approx(0.8)


def test_a_wide_fgsm_pgd_gap_is_catastrophic_even_if_pgd_never_rose():
    ev = detect_catastrophic(checks([(0.9, 0.75, 0.0)]))
    assert ev is not None and ev["rule"] == "fgsm_pgd_gap" and ev["fgsm_pgd_gap"] == pytest.approx(0.75)
    assert detect_catastrophic(checks([(0.9, 0.75, 0.0)]), COThresholds(gap=None)) is None
    assert detect_catastrophic(checks([(0.9, 0.55, 0.3)])) is None  # a healthy single-step run


def test_divergence_is_not_catastrophic_overfitting():
    # everything falls together: a diverged run, not the FGSM-vs-PGD signature
    hist = [(0.9, 0.7, 0.5), (0.1, 0.1, 0.1)]
    assert detect_catastrophic(checks(hist)) is None


def test_a_drop_just_under_the_threshold_does_not_trigger():
    assert detect_catastrophic(checks([(0.8, 0.6, 0.5), (0.8, 0.6, 0.31)])) is None
    assert detect_catastrophic(checks([(0.8, 0.6, 0.5), (0.8, 0.6, 0.29)])) is not None
    assert detect_catastrophic(checks([(0.8, 0.6, 0.5), (0.8, 0.6, 0.39)]), COThresholds(drop=0.1)) is not None


@given(seed=st.integers(0, 10_000), n=st.integers(2, 40))
def test_noise_around_a_plateau_never_triggers(seed, n):
    rng = random.Random(seed)
    hist = [(0.8 + rng.uniform(-0.05, 0.05), 0.6 + rng.uniform(-0.05, 0.05), 0.45 + rng.uniform(-0.08, 0.08))
            for _ in range(n)]
    assert all(detect_catastrophic(checks(hist[: i + 1])) is None for i in range(n))


# -- robust overfitting ---------------------------------------------------------------------------------
def test_slow_decline_is_robust_overfitting_after_patience():
    series = [0.30, 0.40, 0.45, 0.50, 0.49, 0.47, 0.46, 0.45, 0.44, 0.43]
    th = ROThresholds(margin=0.03, patience=3)
    first = next(i for i in range(len(series)) if detect_robust_overfitting(series[: i + 1], th))
    # epochs below 0.47 (best 0.50 - margin): 0.46, 0.45, 0.44 -> declared at the third of them
    assert series[first] == 0.44
    ev = detect_robust_overfitting(series[: first + 1], th)
    assert ev["best_epoch"] == 4 and ev["best_val_robust_acc"] == 0.50


def test_patience_resets_when_accuracy_recovers():
    th = ROThresholds(margin=0.03, patience=3)
    assert detect_robust_overfitting([0.5, 0.4, 0.4, 0.49, 0.4], th) is None
    assert detect_robust_overfitting([0.5, 0.4, 0.4, 0.4], th) is not None


def test_still_improving_is_not_robust_overfitting():
    assert detect_robust_overfitting([0.1 * i for i in range(10)], ROThresholds(patience=2)) is None


# -- the callback ---------------------------------------------------------------------------------------
def tiny_trainer(tmp_path, *overrides):
    cfg = load_config(QUICK, ["train.progress=false", "validation.attack={name: pgd, steps: 2, restarts: 1}",
                              f"out_dir={tmp_path}", "monitor.enabled=true", "monitor.n_check=64",
                              "monitor.pgd_steps=3", *overrides])
    trainer, _ = build_trainer(cfg, tmp_path / "run")
    return trainer, next(cb for cb in trainer.callbacks if isinstance(cb, OverfitMonitor))


class ScriptedMonitor(OverfitMonitor):
    """Replays scripted accuracies instead of attacking (for testing the actions)."""

    def __init__(self, *args, script, **kwargs):
        super().__init__(*args, **kwargs)
        self.script = list(script)

    def _measure(self, trainer, x, y, factor=1.0):
        clean, fgsm, pgd = self.script.pop(0)
        return {"clean": clean, "fgsm": fgsm, "pgd": pgd, "grad_alignment": 0.5}


def replace_monitor(trainer, script, **kwargs):
    old = next(cb for cb in trainer.callbacks if isinstance(cb, OverfitMonitor))
    new = ScriptedMonitor(old.x, old.y, old.threat, every=2, script=script, **kwargs)
    trainer.callbacks[trainer.callbacks.index(old)] = new
    return new


def test_check_runs_in_eval_mode_and_leaves_the_model_alone(tmp_path):
    trainer, monitor = tiny_trainer(tmp_path)
    model = trainer.model
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chk = monitor.check(trainer)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert 0 <= chk.pgd <= chk.clean <= 1 and -1 <= chk.signals["grad_alignment"] <= 1


def test_rollback_restores_the_healthy_weights_and_applies_the_remedy(tmp_path):
    trainer, _ = tiny_trainer(tmp_path, "monitor.action=rollback", "monitor.remedy={kind: lr, factor: 0.5}",
                              "train.epochs=1")
    mon = replace_monitor(trainer, [(0.8, 0.5, 0.4), (0.85, 0.55, 0.45), (0.9, 0.9, 0.0)] + [(0.9, 0.6, 0.4)] * 50,
                          action="rollback", remedy={"kind": "lr", "factor": 0.5})
    saved = {}

    class Spy(Callback):
        def on_batch_end(self, tr, logs):
            if tr.step == 4:  # the last healthy check happened at step 4
                saved.update({k: v.clone() for k, v in tr.model.state_dict().items()})

    trainer.callbacks.insert(0, Spy())
    events = []

    class Events(Callback):
        def on_event(self, tr, event):
            events.append(event)

    trainer.callbacks.append(Events())
    weights_after_rollback = {}
    mon_step = {}
    old_rollback = mon._rollback

    def rollback_and_capture(tr):
        old_rollback(tr)
        mon_step["at"] = tr.step
        weights_after_rollback.update({k: v.clone() for k, v in tr.model.state_dict().items()})

    mon._rollback = rollback_and_capture
    trainer.fit()
    kinds = [e["kind"] for e in events if e["kind"] != "monitor_check"]
    assert kinds == ["catastrophic_overfitting", "rollback"]
    assert mon_step["at"] == 6 and mon.rollbacks == 1 and trainer.lr_scale == 0.5
    for k, v in saved.items():
        assert torch.equal(weights_after_rollback[k], v), k
    assert [c.pgd for c in mon.checks][:3] == [0.4, 0.45, 0.4]  # the collapsed check was dropped


def test_rollback_does_not_tie_the_optimizer_to_the_snapshot(tmp_path):
    """Optimizer.load_state_dict keeps the tensors it is given: training after a rollback must not write into
    the snapshot's momentum buffers, or a second rollback to the same snapshot restores a mutated state."""
    trainer, mon = tiny_trainer(tmp_path, "train.epochs=1", "monitor.action=rollback",
                                "monitor.remedy={kind: lr, factor: 0.5}")
    data = list(trainer.train_loader.iterate(0))
    for x, y in data[:2]:
        trainer.train_step(x, y)
        trainer.step += 1
    mon._take_snapshot(trainer)
    frozen = copy.deepcopy(mon.snapshot["optimizer"]["state"])
    assert frozen and all("momentum_buffer" in s for s in frozen.values())
    mon._rollback(trainer)
    for x, y in data[2:4]:
        trainer.train_step(x, y)
        trainer.step += 1
    for k, s in mon.snapshot["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], frozen[k]["momentum_buffer"]), k
    mon._rollback(trainer)  # the second rollback restores the snapshot's momentum, not the trained one
    for k, s in trainer.optimizer.state_dict()["state"].items():
        assert torch.equal(s["momentum_buffer"], frozen[k]["momentum_buffer"]), k


def test_rollback_limit_then_gives_up_and_stops(tmp_path):
    trainer, _ = tiny_trainer(tmp_path, "train.epochs=3")
    collapse = [(0.8, 0.5, 0.4), (0.9, 0.9, 0.0)]
    mon = replace_monitor(trainer, collapse * 3 + [(0.9, 0.6, 0.4)] * 80, action="rollback",
                          remedy={"kind": "lr", "factor": 0.5}, max_rollbacks=2)
    trainer.fit()
    kinds = [e["kind"] for e in mon.events]
    assert kinds == ["catastrophic_overfitting", "rollback"] * 2 + ["catastrophic_overfitting", "give_up"]
    assert trainer.should_stop and trainer.step == 12 and trainer.lr_scale == 0.25


def test_stop_action_ends_training(tmp_path):
    trainer, _ = tiny_trainer(tmp_path, "train.epochs=2")
    replace_monitor(trainer, [(0.8, 0.5, 0.4), (0.9, 0.9, 0.0)] + [(0.9, 0.6, 0.4)] * 40, action="stop")
    trainer.fit()
    assert trainer.step == 4 and trainer.should_stop


def test_events_reach_the_metrics_log_once_per_episode(tmp_path):
    trainer, _ = tiny_trainer(tmp_path, "train.epochs=1")
    script = [(0.8, 0.5, 0.4), (0.9, 0.9, 0.0), (0.9, 0.9, 0.0), (0.9, 0.9, 0.0)] + [(0.9, 0.6, 0.4)] * 40
    replace_monitor(trainer, script, action="warn")
    trainer.fit()
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    co = [r for r in records if r["kind"] == "event" and r["event"] == "catastrophic_overfitting"]
    assert len(co) == 1 and co[0]["step"] == 4 and co[0]["pgd_drop"] == pytest.approx(0.4)
    assert "catastrophic overfitting" in co[0]["message"]


def test_monitor_state_round_trips(tmp_path):
    trainer, monitor = tiny_trainer(tmp_path, "monitor.action=rollback", "monitor.remedy={kind: attack, name: nfgsm}")
    monitor.check(trainer)
    monitor.applied.append({"kind": "attack", "name": "nfgsm"})
    trainer.save_checkpoint(tmp_path / "run" / "last.pt")
    again, mon2 = tiny_trainer(tmp_path, "monitor.action=rollback", "monitor.remedy={kind: attack, name: nfgsm}")
    again.load_checkpoint(tmp_path / "run" / "last.pt")
    assert mon2.checks == monitor.checks and mon2.snapshot is not None
    assert again.attack.name == "nfgsm"  # the remedy is re-applied on resume


def test_bad_monitor_configs():
    with pytest.raises(ConfigError, match="needs monitor.remedy"):
        load_config(QUICK, ["monitor.enabled=true", "monitor.action=rollback"])
    with pytest.raises(ConfigError, match="Did you mean 'rollback'"):
        load_config(QUICK, ["monitor.action=rolback"])
    with pytest.raises(ConfigError, match="held-out"):
        load_config(QUICK, ["monitor.enabled=true", "data.val_size=0"])
    with pytest.raises(ConfigError, match="every"):
        OverfitMonitor(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), make_threat("linf", 0.1), every=0)

# -- integration on real data ---------------------------------------------------------------------------


def _mnist_dir() -> Path:
    from conftest import SHARED_DATA

    return SHARED_DATA / "mnist"


def mnist_run(tmp_path, name, *overrides):
    """One epoch of the MNIST monitor recipe with ε ramped to 0.2 (0.3 over 1.5 epochs): FGSM collapses
    around ε ≈ 0.15, well inside the epoch."""
    mnist = _mnist_dir()
    if not (mnist / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST files not found in {mnist}")
    cfg = load_config(ROOT / "configs" / "mnist_fgsm_monitor.yaml",
                      [f"data.root={mnist}", "train.progress=false", "train.epochs=1", "train.eps_warmup_epochs=1.5",
                       "validation.attack={name: pgd, steps: 5, step: 0.025, restarts: 1}", f"out_dir={tmp_path}",
                       *overrides])
    trainer, _ = build_trainer(cfg, tmp_path / name)
    trainer.fit()
    return next(cb for cb in trainer.callbacks if isinstance(cb, OverfitMonitor))


@pytest.mark.slow
def test_mnist_fgsm_collapse_is_caught_and_rollback_repairs_it(tmp_path):
    warn = mnist_run(tmp_path, "warn", "monitor.action=warn")
    co = [e for e in warn.events if e["kind"] == "catastrophic_overfitting"]
    assert len(co) == 1, warn.events
    at = next(i for i, c in enumerate(warn.checks) if c.step == co[0]["step"])
    before, declared = warn.checks[:at], warn.checks[at]
    # the run was robust first (small radius), then PGD accuracy fell behind FGSM accuracy: the first check
    # where it did is the one the monitor declared
    assert before and before[0].pgd > 0.7
    assert all(c.fgsm - c.pgd <= 0.3 for c in before)
    assert declared.fgsm - declared.pgd > 0.3
    assert warn.checks[-1].pgd < 0.3  # left alone, the collapse goes on

    repaired = mnist_run(tmp_path, "rollback")
    kinds = [e["kind"] for e in repaired.events]
    assert kinds[:2] == ["catastrophic_overfitting", "rollback"]
    assert repaired.checks[-1].eps == warn.checks[-1].eps
    assert repaired.checks[-1].pgd > warn.checks[-1].pgd + 0.3  # robust instead of collapsed


@pytest.mark.slow
def test_mnist_healthy_nfgsm_run_declares_nothing(tmp_path):
    healthy = mnist_run(tmp_path, "nfgsm", "monitor.action=warn", "attack={name: nfgsm, bn_mode: train}")
    assert healthy.events == []
    assert healthy.checks[-1].pgd > 0.5
