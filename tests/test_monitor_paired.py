"""The paired robust-overfitting rule (per-example validation flags) and the monitor's recording of the flags."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustrain.training.monitor_rules import History, build_rule


def persistent_flags(curve, n, flip, seed):
    """Flags whose accuracy follows ``curve`` while each epoch redraws only a share ``flip`` of the images: the
    images changed move towards the target accuracy, the others keep their flag."""
    gen = torch.Generator().manual_seed(seed)
    flags = [torch.rand(n, generator=gen) < curve[0]]
    for p in curve[1:]:
        f = flags[-1].clone()
        redraw = torch.rand(n, generator=gen) < flip
        f[redraw] = torch.rand(int(redraw.sum()), generator=gen) < p
        # hold the accuracy near the curve: turn the surplus (or deficit) of robust images over, at random
        k = int(round(p * n)) - int(f.sum())
        pool = (~f if k > 0 else f).nonzero().flatten()
        f[pool[torch.randperm(len(pool), generator=gen)[: abs(k)]]] = k > 0
        flags.append(f)
    return flags


def history(flags, decay=10):
    epochs = len(flags)
    acc = [float(f.float().mean()) for f in flags]
    lr = [0.1 if e < decay else 0.01 for e in range(1, epochs + 1)]
    return History(val_robust=acc, lr=lr, n_val=len(flags[0]), epochs=epochs, val_flags=flags)


def first(rule, hist):
    """The first epoch at which calling the rule after every epoch declares."""
    for k in range(1, len(hist.val_robust) + 1):
        sub = History(val_robust=hist.val_robust[:k], lr=hist.lr[:k], n_val=hist.n_val, epochs=hist.epochs,
                      val_flags=hist.val_flags[:k])
        if rule(sub) is not None:
            return k
    return None


def test_a_small_decline_on_the_same_images_is_declared_where_the_unpaired_rule_cannot_see_it():
    # 1,000 images, 1 % of them redrawn per epoch; after the decay (epoch 10) a plateau at 0.52, then 3 points down
    curve = [0.45] * 10 + [0.52] * 8 + [0.49] * 12
    hist = history(persistent_flags(curve, 1000, 0.01, seed=1))
    paired = build_rule({"name": "robust_overfitting_paired", "window": 5})
    unpaired = build_rule({"name": "robust_overfitting", "window": 5})
    declared = first(paired, hist)
    assert declared is not None and 18 < declared <= 24
    assert first(unpaired, hist) is None  # 3 points are below its binomial threshold at n = 1,000 (3.3)
    ev = paired(History(val_robust=hist.val_robust[:declared], lr=hist.lr[:declared], n_val=1000, epochs=30,
                        val_flags=hist.val_flags[:declared]))
    assert ev["smoothed_drop"] > ev["threshold"] >= 0.01 and ev["discordant_images"] > 0
    assert "paired on the same images" in paired.message(ev)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), flip=st.sampled_from([0.01, 0.05, 0.2]))
def test_a_flat_curve_is_not_declared(seed, flip):
    hist = history(persistent_flags([0.45] * 10 + [0.5] * 30, 500, flip, seed))
    assert first(build_rule({"name": "robust_overfitting_paired", "window": 3}), hist) is None


def test_one_pass_statistic_agrees_with_epoch_by_epoch_calls():
    curve = [0.45] * 10 + [0.52] * 8 + [0.50 - 0.005 * i for i in range(20)]
    hist = history(persistent_flags(curve, 400, 0.02, seed=3))
    rule = build_rule({"name": "robust_overfitting_paired", "window": 4, "patience": 2})
    stats = rule.statistic(hist)
    run, one_pass = 0, None
    for row in stats:
        run = run + 1 if row["drop"] > row["threshold"] else 0
        if run >= rule.patience:
            one_pass = row["epoch"]
            break
    assert one_pass is not None and one_pass == first(rule, hist)
    assert all(row["epoch"] > 10 for row in stats)  # watched only after the decay


def test_without_flags_the_rule_declares_nothing():
    curve = [0.45] * 10 + [0.6] * 10 + [0.2] * 10
    hist = history(persistent_flags(curve, 200, 0.05, seed=0))
    rule = build_rule({"name": "robust_overfitting_paired", "window": 3})
    assert rule(hist) is not None
    assert rule(History(val_robust=hist.val_robust, lr=hist.lr, n_val=200, epochs=30)) is None
    assert rule(History(val_robust=hist.val_robust, lr=hist.lr, n_val=200, epochs=30, val_flags=hist.val_flags[1:])) is None
    with pytest.raises(ValueError, match="window"):
        build_rule({"name": "robust_overfitting_paired", "window": 0})


def test_the_monitor_records_the_flags_and_keeps_them_in_its_state(tmp_path):
    from test_monitor import tiny_trainer

    trainer, mon = tiny_trainer(tmp_path, "train.epochs=1", "monitor.rules=[robust_overfitting_paired]")
    for epoch in range(3):
        metrics = trainer.validate()
        mon.on_validation_end(trainer, {"epoch": epoch + 1, "lr": 0.1, **metrics})
    assert len(mon.val_flags) == 3 and mon.val_flags[0].dtype == torch.bool
    assert mon.val_flags[0].numel() == len(trainer.val_loader.dataset)
    assert float(mon.val_flags[-1].float().mean()) == pytest.approx(mon.val_robust[-1])
    assert torch.equal(mon.val_flags[0], mon.val_flags[1])  # the same model, images and starts: the same flags
    again, mon2 = tiny_trainer(tmp_path, "train.epochs=1", "monitor.rules=[robust_overfitting_paired]")
    mon2.load_state_dict(mon.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(mon2.val_flags, mon.val_flags)) and len(mon2.val_flags) == 3
    assert mon2.history().val_flags and isinstance(mon2.ro_rules[0], type(build_rule("robust_overfitting_paired")))
