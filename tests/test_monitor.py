"""The overfitting monitor: its decision rules on scripted histories, and its actions on a real run."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from robustrain.config import load_config
from robustrain.errors import ConfigError, RobustrainError
from robustrain.build import build_trainer
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

    def __init__(self, *args, script, n="batch", **kwargs):
        super().__init__(*args, **kwargs)
        self.script = list(script)
        self.n = n  # "batch": the check batch's size; None: unknown (the rules' floors alone); or a number

    def _new_check(self, trainer):
        chk = super()._new_check(trainer)
        return chk if self.n == "batch" else dataclasses.replace(chk, n=self.n)

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


@pytest.mark.slow
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


def test_rollback_restores_the_attack_state(tmp_path):
    """fgsm_mep keeps a per-example prior and momentum that a checkpoint holds: a rollback restores them too (to the
    snapshot's values, not tied to it), and a snapshot taken before an attack remedy leaves the new attack alone."""
    trainer, mon = tiny_trainer(tmp_path, "train.epochs=1", "attack={name: fgsm_mep, bn_mode: train, reset_every: 0}",
                                "monitor.action=rollback", "monitor.remedy={kind: lr, factor: 0.5}")
    data = list(trainer.train_loader.iterate(0, with_indices=True))

    def train(batches):
        for x, y, i in batches:
            trainer.train_step(x, y, indices=i)
            trainer.step += 1

    def buffers():
        return {k: v.clone() for k, v in trainer.attack.state_dict().items() if torch.is_tensor(v)}

    train(data[:2])
    mon._take_snapshot(trainer)
    frozen, weights = buffers(), {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert set(frozen) == {"prior", "momentum"}
    train(data[:2])  # the same examples again: their prior and momentum move
    moved = buffers()
    assert not torch.equal(moved["prior"], frozen["prior"]) and not torch.equal(moved["momentum"], frozen["momentum"])
    mon._rollback(trainer)
    for k, v in buffers().items():
        assert torch.equal(v, frozen[k]), k
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    train(data[:2])
    mon._rollback(trainer)  # training after the first rollback did not write into the snapshot
    for k, v in buffers().items():
        assert torch.equal(v, frozen[k]), k
    # an attack remedy replaced fgsm_mep: rolling back to the same snapshot restores the rest, the new attack stays
    from robustrain.training.remedies import build_remedy
    trainer.apply(build_remedy({"kind": "attack", "name": "nfgsm"}, threat=mon.threat))
    mon.rollbacks = 0
    mon._rollback(trainer)
    assert trainer.attack.name == "nfgsm" and mon.rollbacks == 1


@pytest.mark.slow
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


@pytest.mark.slow
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

# -- signals declared by loss terms ----------------------------------------------------------------------
@pytest.mark.slow
def test_each_declared_signal_reaches_a_check(tmp_path):
    """Every registered loss term that declares signals: a short run with it on, the monitor checking every 2 steps;
    each declared signal must arrive in the checks (finite), none may be reported missing."""
    from robustrain.regularisers import REGULARISERS

    declaring = sorted(name for name, cls in REGULARISERS.items() if getattr(cls, "signals", None))
    assert {"elle", "elle_a", "aaer", "gradalign"} <= set(declaring)
    for name in declaring:
        trainer, mon = tiny_trainer(tmp_path, "train.epochs=1", "monitor.every=2", f"regularisers=[{{name: {name}}}]",
                                    "data.batch_size=128", "threat.eps=8/255")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a missing declared signal warns
            for x, y in list(trainer.train_loader.iterate(0))[:4]:
                logs = trainer.train_step(x, y)
                trainer.step += 1
                mon.on_batch_end(trainer, logs)
        cls = REGULARISERS[name]
        assert mon.checks and not mon.missing_signals, (name, mon.missing_signals)
        for signal in cls.signals:
            values = [c.signals.get(f"{name}/{signal}") for c in mon.checks]
            assert all(v is not None and math.isfinite(v) for v in values), (name, signal, values)


def test_a_declared_signal_that_never_arrives_is_reported(tmp_path):
    from robustrain.training.hooks import LossTerm

    class Mislabelled(LossTerm):
        name = "mislabelled"
        signals = {"rate": "ratee"}  # the key it logs is "rate"

        def __call__(self, ctx):
            return {"loss": ctx.x.new_zeros(()), "rate": 0.5}

    trainer, mon = tiny_trainer(tmp_path, "train.epochs=1", "monitor.every=2")
    trainer.loss_terms.append(Mislabelled())
    with pytest.warns(UserWarning, match="mislabelled/rate"):
        for x, y in list(trainer.train_loader.iterate(0))[:2]:
            logs = trainer.train_step(x, y)
            trainer.step += 1
            mon.on_batch_end(trainer, logs)
    assert mon.missing_signals == {"mislabelled/rate"}


# -- rules with statistics ------------------------------------------------------------------------------
from robustrain.training.monitor_rules import RULES, History, build_rule  # noqa: E402
from robustrain.training.monitor_replay import first_declaration  # noqa: E402
from robustrain.training.monitor_rules._stats import calibrated_z, first_decay  # noqa: E402


def binomial_curves(p, n, runs, seed):
    """``runs`` noisy copies of the accuracy curve ``p`` measured on ``n`` images each epoch."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.tensor(p, dtype=torch.float64).expand(runs, len(p))
    return (torch.binomial(torch.full_like(probs, n), probs, generator=gen) / n).tolist()


def ro_fires(rule, values, n, lrs=None, arm_epoch=None):
    """The first epoch the rule declares on ``values`` (the statistic is causal, so one pass over the whole series
    equals calling the rule after every epoch), or None."""
    hist = History(val_robust=values, lr=lrs or [0.1] * len(values), n_val=n, arm_epoch=arm_epoch, epochs=len(values))
    return first_declaration(rule, hist)


def test_rules_are_registered_by_name():
    assert {"pgd_drop", "fgsm_pgd_gap", "robust_overfitting", "robust_overfitting_margin"} <= set(RULES)
    rule = build_rule({"name": "robust_overfitting", "window": 4}, false_alarm=0.05)
    assert rule.window == 4 and rule.false_alarm == 0.05
    with pytest.raises(ConfigError, match="unknown key 'monitor.rules.windw'.*did you mean 'monitor.rules.window'"):
        build_rule({"name": "robust_overfitting", "windw": 4})
    with pytest.raises(RobustrainError, match="Did you mean .pgd_drop."):
        build_rule("pgd_dorp")


@pytest.mark.parametrize("n,false_alarm", [(256, 0.05), (1000, 0.01)])
def test_ro_false_alarm_rate_on_a_flat_curve_is_the_stated_one(n, false_alarm):
    """A flat curve (no overfitting) measured on n images for 100 epochs, watched throughout: the share of runs with a
    declaration is the stated false_alarm (Monte-Carlo error of 1000 runs: ±0.014 at 5 %, ±0.006 at 1 %, 2 sigma)."""
    rule = build_rule({"name": "robust_overfitting", "window": 10, "after_decay": False}, false_alarm=false_alarm)
    runs = binomial_curves([0.5] * 100, n, 1000, seed=n)
    rate = sum(ro_fires(rule, v, n) is not None for v in runs) / len(runs)
    assert rate <= false_alarm + 2 * math.sqrt(false_alarm * (1 - false_alarm) / len(runs)) + 0.005, rate
    assert rate >= false_alarm / 4, rate  # calibrated, not merely conservative


def test_ro_detects_a_real_decline_after_the_decay_and_nothing_before_it():
    """Scripted: lr 0.1 for 50 epochs (plateau at 0.45 with a deep 5-epoch dip), decay, a jump to 0.55, then a
    decline of 0.4 points per epoch (Rice et al.'s CIFAR-10 curve falls about 0.15 to 0.3 per epoch)."""
    curve = [0.45] * 50 + [0.55] * 5 + [0.55 - 0.004 * t for t in range(1, 46)]
    curve[30:35] = [0.33] * 5  # a 12-point dip on the high-lr plateau
    lrs = [0.1] * 49 + [0.01] * 51  # the lr at the end of epoch 50 is already the decayed one
    assert first_decay(lrs) == 50
    rule = build_rule({"name": "robust_overfitting", "window": 5}, false_alarm=0.01)
    unwatched = build_rule({"name": "robust_overfitting", "window": 5, "after_decay": False}, false_alarm=0.01)
    n = 1000
    noisy = binomial_curves(curve, n, 200, seed=3)
    first = [ro_fires(rule, v, n, lrs) for v in noisy]
    assert all(f is not None and f > 50 for f in first)  # always declared, never before the decay
    assert sorted(first)[len(first) // 2] <= 80  # median: within 25 epochs of the decline's start
    assert ro_fires(unwatched, curve, n, lrs) is not None and ro_fires(unwatched, curve, n, lrs) <= 40  # the dip
    assert ro_fires(rule, curve, n, lrs) > 50
    # the rule's own call agrees with the statistic, epoch by epoch
    hist = lambda k: History(val_robust=curve[:k], lr=lrs[:k], n_val=n, epochs=100)  # noqa: E731
    calls = [k for k in range(1, 101) if rule(hist(k)) is not None]
    assert calls and calls[0] == ro_fires(rule, curve, n, lrs)
    assert rule(hist(calls[0]))["watched_after_epoch"] == 50


def test_ro_needs_no_set_size_and_then_uses_its_floor():
    rule = build_rule({"name": "robust_overfitting", "window": 2, "margin": 0.05, "after_decay": False})
    assert rule(History(val_robust=[0.5, 0.5, 0.47, 0.47])) is None
    ev = rule(History(val_robust=[0.5, 0.5, 0.42, 0.42]))
    assert ev is not None and ev["threshold"] == 0.05 and ev["smoothed_drop"] == pytest.approx(0.08)


def test_calibrated_z_is_deterministic_and_grows_with_the_horizon():
    assert calibrated_z(10, 1, 0.01, 100) == calibrated_z(10, 1, 0.01, 100)
    assert calibrated_z(10, 1, 0.01, 50) < calibrated_z(10, 1, 0.01, 100) < calibrated_z(10, 1, 0.01, 200)
    assert calibrated_z(10, 1, 0.05, 100) < calibrated_z(10, 1, 0.01, 100)


@pytest.mark.parametrize("schedule,arm", [("{name: multistep, milestones: [3], gamma: 0.1}", 3),
                                          ("{name: cyclic, peak: 0.4}", 7), ("{name: constant}", 0)])
def test_the_monitor_reads_the_first_decay_from_the_schedule(tmp_path, schedule, arm):
    """multistep: the milestone; cyclic (up 40 % of the run, then down): where the lr is back to half its peak
    (epoch 0.4·10 + 0.6·10/2 = 7); constant: never decays, watched from the start."""
    trainer, mon = tiny_trainer(tmp_path, "train.epochs=10", f"schedule={schedule}")
    mon.on_fit_start(trainer)
    assert mon.arm_epoch == arm and mon.epochs == 10


def test_robust_overfitting_is_declared_through_the_callback_after_the_decay(tmp_path):
    trainer, mon = tiny_trainer(tmp_path, "train.epochs=40", "schedule={name: multistep, milestones: [20], gamma: 0.1}",
                                "monitor.action=stop")
    mon.on_fit_start(trainer)
    assert mon.arm_epoch == 20 and mon.n_val == 200
    rule = next(r for r in mon.ro_rules if r.name == "robust_overfitting")
    assert rule.window == 2  # 40 epochs / 20
    series = [0.4] * 12 + [0.15] * 8 + [0.6] * 4 + [0.6 - 0.1 * k for k in range(1, 17)]  # a deep dip before the decay
    declared = None
    for epoch, v in enumerate(series, start=1):
        mon.on_validation_end(trainer, {"val_robust_acc": v, "lr": 0.1 if epoch < 20 else 0.01})
        if mon.ro_declared and declared is None:
            declared = epoch
    assert declared is not None and declared > 24 and trainer.should_stop
    (event,) = [e for e in mon.events if e["kind"] == "robust_overfitting"]
    assert event["watched_after_epoch"] == 20 and "robust overfitting" in event["message"]


def co_history(series, n):
    return [Check(step=i, epoch=0, clean=c, fgsm=f, pgd=p, n=n) for i, (c, f, p) in enumerate(series)]


def test_co_thresholds_follow_the_check_size():
    drop = [(0.8, 0.6, 0.5), (0.8, 0.6, 0.25)]  # 25 points
    assert detect_catastrophic(co_history(drop, 1000)) is not None  # the 20-point floor rules
    assert detect_catastrophic(co_history(drop, 32)) is None  # 25 points is noise on 32 images
    gap = [(0.9, 0.72, 0.4)]  # 32 points
    assert detect_catastrophic(co_history(gap, 1000)) is not None
    assert detect_catastrophic(co_history(gap, 64)) is None
    assert detect_catastrophic(co_history([(0.9, 0.95, 0.05)], 64)) is not None  # a real collapse, even on 64


@pytest.mark.parametrize("n", [64, 256])
def test_co_false_alarm_rate_on_a_healthy_run(n):
    """100 checks of a healthy run: PGD accuracy flat at 0.45, the FGSM−PGD gap at the healthy 0.2 (both binomial
    on n images): fewer than 1 % + Monte-Carlo error of 400 runs declare."""
    rules = [build_rule({"name": "pgd_drop", "horizon": 100}), build_rule({"name": "fgsm_pgd_gap", "horizon": 100})]
    gen = torch.Generator().manual_seed(n)
    runs, alarms = 400, 0
    for _ in range(runs):
        pgd = torch.binomial(torch.full((100,), float(n)), torch.full((100,), 0.45), generator=gen) / n
        gap = torch.binomial(torch.full((100,), float(n)), torch.full((100,), 0.2), generator=gen) / n
        hist = [Check(step=i, epoch=0, clean=0.9, fgsm=float(p + g), pgd=float(p), n=n) for i, (p, g) in enumerate(zip(pgd, gap))]
        alarms += any(r(History(checks=hist[: i + 1])) for i in range(100) for r in rules)
    assert alarms / runs <= 0.01 + 2 * math.sqrt(0.01 * 0.99 / runs), alarms


# -- rollback to the last healthy check -----------------------------------------------------------------
@pytest.mark.slow
def test_rollback_skips_a_check_that_passed_inside_the_collapse(tmp_path):
    """Checks at steps 2, 4, 6, 8: PGD 0.45, 0.46, 0.32 (14 points down: below the 20-point threshold, so it passes,
    but more than half-way to it, so it is not healthy), 0.02 (declared). The rollback restores step 4's weights."""
    trainer, _ = tiny_trainer(tmp_path, "monitor.action=rollback", "monitor.remedy={kind: lr, factor: 0.5}",
                              "train.epochs=1")
    script = [(0.8, 0.5, 0.45), (0.82, 0.55, 0.46), (0.85, 0.6, 0.32), (0.9, 0.9, 0.02)] + [(0.9, 0.6, 0.4)] * 50
    mon = replace_monitor(trainer, script, n=None, action="rollback", remedy={"kind": "lr", "factor": 0.5})
    saved = {}

    class Spy(Callback):
        def on_batch_end(self, tr, logs):
            if tr.step in (4, 6):
                saved[tr.step] = {k: v.clone() for k, v in tr.model.state_dict().items()}

    trainer.callbacks.insert(0, Spy())
    events = []

    class Events(Callback):
        def on_event(self, tr, event):
            events.append(event)

    trainer.callbacks.append(Events())
    trainer.fit()
    checks = [e for e in events if e["kind"] == "monitor_check"]
    assert [c["healthy"] for c in checks[:4]] == [1.0, 1.0, 0.0, 0.0]
    rollback = next(e for e in events if e["kind"] == "rollback")
    assert rollback["step"] == 8 and rollback["to_step"] == 4
    assert [c.pgd for c in mon.checks][:3] == [0.45, 0.46, 0.4]  # the unhealthy and collapsed checks were dropped
    assert any(not torch.equal(saved[4][k], saved[6][k]) for k in saved[4])


def test_monitor_eval_reads_the_official_log_format_and_the_stored_curve():
    import importlib.util

    spec = importlib.util.spec_from_file_location("monitor_eval", ROOT / "scripts" / "monitor_eval.py")
    me = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(me)
    log = ("[2020/01/26 15:44:46] - Epoch \t Train Time \t Test Time \t LR\n"
           "[2020/01/26 15:48:23] - 0 \t 178.1 \t \t 35.1 \t \t 0.1000 \t 1.9980 \t 0.2667 \t 2.1746 \t \t 0.1930 "
           "\t \t 1.8033 \t 0.3498 \t 1.9983 \t \t 0.2602\n"
           "[2020/01/26 15:48:23] - validation 1.8224 \t 0.3580 \t 2.0133 \t 0.2670\n")
    (row,) = me.parse_rice_log(log)
    assert row["epoch"] == 1 and row["lr"] == 0.1 and row["test_robust_acc"] == 0.2602 and row["val_robust_acc"] == 0.267
    curve, source = me.load_curve(me.CURVE)
    assert "locuslab/robust_overfitting" in source and len(curve["epoch"]) == 200
    assert first_decay(curve["lr"]) == 100
    assert max(range(200), key=lambda i: curve["val_robust_acc"][i]) + 1 == 103  # the peak the issue names
    # the old margin rule fires at epoch 145 on the recorded curve (issue 15), and the replay's one-pass reading of the
    # default rule agrees with calling it after every epoch
    old = build_rule("robust_overfitting_margin")
    hist = History(val_robust=curve["val_robust_acc"], lr=curve["lr"], n_val=1000, epochs=200)
    assert me.first_declaration(old, hist) == 145
    new = build_rule({"name": "robust_overfitting", "window": 10}, false_alarm=0.01)
    first = me.first_declaration(new, hist)
    calls = next(k for k in range(1, 201) if new(History(val_robust=hist.val_robust[:k], lr=hist.lr[:k], n_val=1000,
                                                          epochs=200)) is not None)
    assert first == calls and first > 100


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


def test_attack_remedy_keeps_the_training_attacks_batchnorm_options(tmp_path):
    """An attack remedy replaces the method, not the recipe's BN handling (update_bn_stats, first_batch_bn_mode)."""
    trainer, monitor = tiny_trainer(tmp_path, "monitor.action=rollback", "monitor.remedy={kind: attack, name: nfgsm}",
                                    "attack.bn_mode=train", "attack.update_bn_stats=true",
                                    "attack.first_batch_bn_mode=eval")
    trainer.apply(monitor.remedy)
    assert trainer.attack.name == "nfgsm"
    assert trainer.attack.bn_mode == "train" and trainer.attack.update_bn_stats is True
    assert trainer.attack.first_batch_bn_mode == "eval"
