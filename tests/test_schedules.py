"""Schedules say what the official code does: the lr and the momentum of every iteration equal, float for float,
those of torch's CyclicLR / MultiStepLR and of the official scripts' own formulas (issue 13)."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from robustrain.config import load_config
from robustrain.errors import ConfigError, UnknownNameError
from robustrain.build import build_trainer
from robustrain.training import LRSchedule

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"


def _optimizer(kind: str, lr: float = 0.2) -> torch.optim.Optimizer:
    p = torch.nn.Parameter(torch.zeros(1))
    if kind == "sgd":
        return torch.optim.SGD([p], lr=lr, momentum=0.9, weight_decay=5e-4)
    return torch.optim.Adam([p], lr=lr)


def _torch_cyclic(total: int, up: float, down: float, lr: float, kind: str) -> list[tuple[float, float]]:
    """(lr, momentum or beta1) of every iteration of an official loop: CyclicLR stepped after each optimiser step."""
    opt = _optimizer(kind, lr)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.0, max_lr=lr, step_size_up=up, step_size_down=down)
    out = []
    for _ in range(total):
        g = opt.param_groups[0]
        out.append((g["lr"], g["momentum"] if kind == "sgd" else g["betas"][0]))
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("epochs,n,peak,kind", [
    (15, 40, 0.5, "sgd"),   # FGSM-RS (locuslab/fast_adversarial CIFAR10/train_fgsm.py): up = down = lr_steps / 2
    (30, 13, 0.5, "sgd"),   # N-FGSM CIFAR (pdejorge/N-FGSM train.py)
    (30, 17, 0.4, "sgd"),   # N-FGSM SVHN: up = lr_steps * 2 / 5, down = lr_steps * 3 / 5
    (7, 3, 0.4, "adam"),    # CyclicLR on Adam cycles beta1
])
def test_cyclic_equals_torch_cyclic_lr_with_momentum_step_by_step(epochs, n, peak, kind):
    total = epochs * n
    f = Fraction(peak).limit_denominator(100)
    ref = _torch_cyclic(total, total * f.numerator / f.denominator, total * (f.denominator - f.numerator) / f.denominator,
                        0.2, kind)
    s = LRSchedule("cyclic", 0.2, total, n, peak=peak).resolve(_optimizer(kind))
    assert s.cycle_momentum  # CyclicLR's default for an optimiser with momentum / beta1
    ours = [(s(k), s.momentum(k)) for k in range(total)]
    assert ours == ref  # exactly, every iteration


@pytest.mark.parametrize("epochs,n,peak,at", [
    (100, 3, 0.3, "epoch"),      # FastAT_Benchmark main.py: OneCycleLR(total_steps=total_epoch), stepped per epoch
    (7, 5, 0.25, "batch_end"),   # stepped per iteration (total_steps = all iterations)
])
def test_onecycle_equals_torch_one_cycle_lr_with_momentum(epochs, n, peak, at):
    opt = _optimizer("sgd", 0.1)
    per_epoch = at == "epoch"
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=epochs if per_epoch else epochs * n,
                                                pct_start=peak)
    ref = []
    for e in range(epochs):
        for i in range(n):
            g = opt.param_groups[0]
            ref.append((g["lr"], g["momentum"]))
            opt.step()
            if not per_epoch:
                sched.step()
        if per_epoch:
            sched.step()
    s = LRSchedule("onecycle", 0.1, epochs * n, n, peak=peak, at=at, base_momentum=0.85,
                   max_momentum=0.95).resolve(_optimizer("sgd"))
    assert s.cycle_momentum
    assert [(s(k), s.momentum(k)) for k in range(epochs * n)] == ref  # exactly, every iteration


def test_cyclic_momentum_is_0_8_at_the_lr_peak_and_0_9_at_the_ends():
    s = LRSchedule("cyclic", 0.2, 100, 10, peak=0.5).resolve(_optimizer("sgd"))
    assert s(0) == 0.0 and s.momentum(0) == 0.9
    assert s(50) == pytest.approx(0.2) and s.momentum(50) == pytest.approx(0.8)
    assert s(99) == pytest.approx(0.004) and s.momentum(99) == pytest.approx(0.898)


def test_cycle_momentum_default_and_switches():
    plain_sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.0)
    assert not LRSchedule("cyclic", 0.2, 10, 1).resolve(plain_sgd).cycle_momentum  # no momentum to cycle
    assert not LRSchedule("cyclic", 0.2, 10, 1, cycle_momentum=False).resolve(_optimizer("sgd")).momentum(5)
    assert LRSchedule("multistep", 0.1, 10, 1).resolve(_optimizer("sgd")).momentum(3) is None
    with pytest.raises(ConfigError, match="cycle_momentum"):
        LRSchedule("interp", 0.1, 10, 1, cycle_momentum=True)
    with pytest.raises(ConfigError, match="base_momentum"):
        LRSchedule("cyclic", 0.1, 10, 1, base_momentum=0.95)


@pytest.mark.parametrize("epochs", [10, 6, 15])
def test_interp_is_wong_mnist_np_interp_at_the_end_of_each_batch(epochs):
    """locuslab/fast_adversarial MNIST/train_mnist.py: np.interp([t], [0, epochs * 2//5, epochs], [0, lr, 0]) at
    t = epoch + (i+1)/len(loader) (integer division of the middle knot)."""
    n, lr = 7, 5e-3
    s = LRSchedule("interp", lr, epochs * n, n, peak=0.4)
    ref = [np.interp([e + (i + 1) / n], [0, epochs * 2 // 5, epochs], [0, lr, 0])[0]
           for e in range(epochs) for i in range(n)]
    assert [s(k) for k in range(epochs * n)] == ref
    assert s(0) > 0.0 and s(epochs * n - 1) == 0.0  # the first batch already has lr > 0, the last one lr 0


def test_multistep_default_equals_torch_multisteplr_stepped_per_epoch():
    n, epochs = 5, 30
    opt = _optimizer("sgd", 0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10, 20, 25], gamma=0.1)
    ref = []
    for _ in range(epochs):
        ref += [opt.param_groups[0]["lr"]] * n
        opt.step()
        sched.step()
    s = LRSchedule("multistep", 0.1, epochs * n, n, milestones=(10, 20, 25), gamma=0.1)
    assert [s(k) for k in range(epochs * n)] == ref


def test_multistep_count_from_1_is_the_trades_script():
    """yaodongyu/TRADES train_trades_cifar10.py: epochs 1..76, lr×0.1 if epoch >= 75 (also AWP, MART)."""
    n, epochs, lr = 3, 76, 0.1

    def official(epoch: int) -> float:
        out = lr
        if epoch >= 75:
            out = lr * 0.1
        if epoch >= 90:
            out = lr * 0.01
        if epoch >= 100:
            out = lr * 0.001
        return out

    ref = [official(e) for e in range(1, epochs + 1) for _ in range(n)]
    s = LRSchedule("multistep", lr, epochs * n, n, milestones=(75, 90, 100), factors=(0.1, 0.01, 0.001), count_from=1)
    assert [s(k) for k in range(epochs * n)] == ref
    late = LRSchedule("multistep", lr, epochs * n, n, milestones=(75,), factors=(0.1,))  # 0-based: one epoch late
    assert s(74 * n) == pytest.approx(0.01) and late(74 * n) == 0.1 and late(75 * n) == pytest.approx(0.01)


def test_multistep_at_batch_end_is_the_rice_piecewise_schedule():
    """locuslab/robust_overfitting train_cifar.py 'piecewise': lr_max, lr_max/10., lr_max/100. at
    t = epoch + (i+1)/n compared as t/epochs < 0.5, < 0.75 (AWP, RWP alike): the decay comes one batch early."""
    n, epochs, lr = 11, 200, 0.1

    def official(t: float) -> float:
        if t / epochs < 0.5:
            return lr
        if t / epochs < 0.75:
            return lr / 10.
        return lr / 100.

    ref = [official(e + (i + 1) / n) for e in range(epochs) for i in range(n)]
    s = LRSchedule("multistep", lr, epochs * n, n, milestones=(100, 150), factors=("1/10", "1/100"), at="batch_end")
    assert [s(k) for k in range(epochs * n)] == ref
    assert s(100 * n - 2) == lr and s(100 * n - 1) == lr / 10.  # the last batch of epoch 99 (0-based) decays
    assert lr / 10. != lr * 0.1  # why "1/10" is a fraction string: the two floats differ


def test_bad_schedule_options_are_config_errors():
    with pytest.raises(ConfigError, match="count_from"):
        load_config(QUICK, ["schedule.count_from=2"])
    with pytest.raises(ConfigError, match="factors"):
        load_config(QUICK, ["schedule.name=multistep", "schedule.milestones=[5, 8]", "schedule.factors=[0.1]"])
    with pytest.raises(ConfigError, match="batch_end"):
        load_config(QUICK, ["schedule.at=batch_ends"])
    with pytest.raises(UnknownNameError, match="interp"):
        load_config(QUICK, ["schedule.name=interpolate"])
    with pytest.raises(ConfigError, match="cycle_momentum"):
        load_config(QUICK, ["schedule.name=constant", "schedule.cycle_momentum=true"])


def _steps(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "step"]


def test_lr_and_momentum_are_in_metrics_jsonl_at_every_logged_step(tmp_path):
    cfg = load_config(QUICK, ["train.progress=false", "train.epochs=2", "train.log_every=1", "data.train_subset=256",
                              "validation.attack={name: pgd, steps: 2, restarts: 1}", "validation.fgsm=false",
                              "wandb.mode=disabled", f"out_dir={tmp_path}"])
    trainer, _ = build_trainer(cfg, tmp_path / "run")
    trainer.fit()
    steps = _steps(tmp_path / "run" / "metrics.jsonl")
    total = trainer.step
    assert len(steps) == total
    s = trainer.schedule
    for r in steps:  # the record of step k+1 is the lr and momentum the k-th optimiser step ran with
        assert r["lr"] == s(r["step"] - 1) and r["momentum"] == s.momentum(r["step"] - 1)
    peak = max(steps, key=lambda r: r["lr"])
    assert peak["momentum"] == pytest.approx(0.8, abs=0.02) and steps[0]["momentum"] == 0.9
    assert trainer.optimizer.param_groups[0]["momentum"] == s.momentum(total - 1)


def test_adam_beta1_is_logged_as_momentum_and_interp_leaves_it(tmp_path):
    cfg = load_config(QUICK, ["train.progress=false", "train.epochs=1", "train.log_every=1", "data.train_subset=128",
                              "optim.name=adam", "optim.lr=0.005", "optim.weight_decay=0", "schedule.name=interp",
                              "schedule.peak=0.4", "validation.attack={name: pgd, steps: 2, restarts: 1}",
                              "validation.fgsm=false", "wandb.mode=disabled", f"out_dir={tmp_path}"])
    trainer, _ = build_trainer(cfg, tmp_path / "run")
    trainer.fit()
    steps = _steps(tmp_path / "run" / "metrics.jsonl")
    assert all(r["momentum"] == 0.9 for r in steps)
    assert [r["lr"] for r in steps] == [trainer.schedule(k) for k in range(trainer.step)]


def test_lr_scale_remedy_scales_lr_not_momentum(tmp_path):
    cfg = load_config(QUICK, ["train.progress=false", "train.epochs=1", "data.train_subset=128", "wandb.mode=disabled",
                              "validation.attack={name: pgd, steps: 2, restarts: 1}", f"out_dir={tmp_path}"])
    trainer, data = build_trainer(cfg, tmp_path / "run")
    trainer.lr_scale = 0.5
    x, y = next(iter(data.train.iterate(0)))
    trainer.step = 3
    logs = trainer.train_step(x, y)
    assert logs["lr"] == trainer.schedule(3) * 0.5 and logs["momentum"] == trainer.schedule.momentum(3)


def test_milestones_may_be_fractions_of_epochs():
    cfg = load_config(QUICK, ["schedule.name=multistep", "schedule.milestones=[5, 25/2]"])
    assert cfg.schedule.milestones == [5, 12.5]
    s = LRSchedule("multistep", 1.0, 20 * 4, 4, milestones=(5, 12.5), at="batch_end")
    assert s(12 * 4 + 0) == 0.1 and s(12 * 4 + 1) == pytest.approx(0.01)  # t = 12.5 at the end of batch 1 of epoch 12


def test_resolve_keeps_parsed_factors():
    s = LRSchedule("multistep", 0.1, 200 * 3, 3, milestones=(100, 150), factors=("1/10", "1/100"), at="batch_end")
    r = s.resolve(_optimizer("sgd"))  # dataclasses.replace re-runs __post_init__ on the parsed factors
    assert [r(k) for k in range(600)] == [s(k) for k in range(600)] and r.momentum(5) is None
