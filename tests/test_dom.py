"""DOM (training/procedures/dom.py) against an independent transcription of the official computation
(tmllab/2024_ICLR_DOM DOM.py@9b4cadb: the removal mask and ``data_augment``), its warm-up position, its BatchNorm
modes, its config errors and an exact resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import KillAt, record_per_example
from robustrain.build import build_trainer
from robustrain.config import load_config
from robustrain.errors import ConfigError
from robustrain.training.procedures import build_procedure
from robustrain.training.procedures.dom import DOM, distract, removal_weights

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
TINY = ["train.progress=false", "data.train_subset=256", "data.val_size=100", "data.batch_size=64",
        "validation.attack={name: pgd, steps: 2, restarts: 1}", "eval.attack={name: pgd, steps: 2, restarts: 1}"]
BN = "model.kwargs={input_size: 8, batchnorm: true}"


def tiny(tmp_path: Path, *extra: str, run: str = "run"):
    cfg = load_config(QUICK, [*TINY, f"out_dir={tmp_path}", *extra])
    return build_trainer(cfg, tmp_path / run)[0]


def official_data_augment(X, y, tran_x, clamp, transform, loss_fn, max_arg_iteration, arg_strength):
    """data_augment of DOM.py, transcribed line by line in its own form (a while loop on count_i, in-place
    indexing of X and tran_x); ``transform`` and ``loss_fn`` stand for the torchvision pipeline and the model's CE."""
    count_i = 1
    while count_i <= max_arg_iteration:
        X_index = torch.where(tran_x)[0]
        X_arg = torch.clamp(transform(X[X_index].clone()), min=0, max=1)
        loss = loss_fn(X_arg, y[X_index])
        Change_index = torch.where(loss >= clamp)[0]
        Final_index = X_index[Change_index]
        if count_i == max_arg_iteration:
            X[X_index] = X_arg
        else:
            X[X_index] = X[X_index] * (1 - arg_strength) + X_arg * arg_strength
            X[Final_index] = X_arg[Change_index]
        tran_x[Final_index] = False
        count_i += 1
        if tran_x.sum().item() == 0:
            break
    return X


# -- the formulas ----------------------------------------------------------------------------------------
def test_removal_keeps_exactly_the_examples_at_or_above_the_threshold():
    loss = torch.tensor([0.1, 1.5, 2.0, 1.4999, 0.0])
    assert removal_weights(loss, 1.5).tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    per_example = torch.tensor([3.0, 2.0, 1.0, 4.0, 5.0])
    # the code: (robust_loss * loss_clamp).mean() over the WHOLE batch (5), not over the kept examples
    assert (removal_weights(loss, 1.5) * per_example).mean().item() == pytest.approx((2.0 + 1.0) / 5)


def test_distract_on_hand_computed_tensors():
    # one-pixel images; the "augmentation" adds 0.3 (clipped to 1); the "natural loss" is 10·pixel; τ = 4, k = 3,
    # s = 0.5. Pending: examples 0, 1, 2 (example 3 is not touched).
    x = torch.tensor([0.05, 0.20, 0.50, 0.00]).view(4, 1, 1, 1)
    y = torch.zeros(4, dtype=torch.long)
    pending = torch.tensor([True, True, True, False])
    out = distract(x, y, pending, loss_of=lambda v, _: 10 * v.flatten(), transform=lambda v: v + 0.3,
                   threshold=4.0, iterations=3, strength=0.5)
    # it 1: a = [0.35, 0.50, 0.80]; losses 3.5, 5, 8 -> ex 1 and 2 reach τ and become a; ex 0 blends to 0.2
    # it 2: ex 0: a = 0.5, loss 5 >= 4 -> 0.5, done.
    assert out.flatten().tolist() == pytest.approx([0.5, 0.5, 0.8, 0.0])
    assert x.flatten().tolist() == pytest.approx([0.05, 0.20, 0.50, 0.00])  # the input is not changed
    # never reaching τ: the last iteration leaves the full augmentation, whatever its loss
    out = distract(x, y, pending, loss_of=lambda v, _: 0 * v.flatten(), transform=lambda v: v + 0.3,
                   threshold=4.0, iterations=2, strength=0.5)
    # it 1: blend x·0.5 + (x+0.3)·0.5 = x + 0.15; it 2: (x + 0.15) + 0.3, clipped
    assert out.flatten().tolist() == pytest.approx([0.5, 0.65, 0.95, 0.0])


@given(seed=st.integers(0, 2 ** 16), iterations=st.integers(1, 5), strength=st.floats(0.0, 1.0),
       threshold=st.floats(0.0, 3.0))
def test_distract_equals_the_official_data_augment(seed, iterations, strength, threshold):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 2, 3, 3, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    w = torch.randn(2 * 9, 3, generator=g)
    pending = torch.rand(8, generator=g) < 0.6
    shifts = iter(torch.randn(iterations, 1, 2, 3, 3, generator=g) * 0.3)

    def loss_fn(v, labels):
        return torch.nn.functional.cross_entropy(v.flatten(1) @ w, labels, reduction="none")

    transforms_ours, transforms_ref = [], []

    def transform(v):  # the same random "augmentation" for both: one shared draw per call
        shift = next(shifts)
        transforms_ref.append(shift)
        return v * 1.2 + shift

    ours = distract(x, y, pending, loss_of=loss_fn, transform=transform, threshold=threshold,
                    iterations=iterations, strength=strength)
    transforms_ours, transforms_ref = transforms_ref, []
    shifts = iter(transforms_ours)
    ref = official_data_augment(x.clone(), y, pending.clone(), threshold, transform, loss_fn, iterations, strength)
    assert torch.equal(ours, ref)


# -- the warm-up position --------------------------------------------------------------------------------
def test_dom_starts_at_the_code_progress_position():
    dom = DOM()
    dom.setup(epochs=4, steps_per_epoch=5)
    on = [dom.active(s // 5, s) for s in range(20)]
    # t = epoch + (i+1)/5 >= 2: the last batch of epoch 1 (t = 2.0) already counts, as training_t >= epochs/2
    assert on == [False] * 9 + [True] * 11
    dom = DOM(start=0.5)
    dom.setup(epochs=5, steps_per_epoch=4)  # E/2 = 2.5: from the second batch of epoch 2
    assert [dom.active(s // 4, s) for s in range(20)].index(True) == 9


def test_dom_needs_the_trainers_setup():
    with pytest.raises(RuntimeError, match="setup"):
        DOM().active(0, 0)


# -- in the Trainer ----------------------------------------------------------------------------------------
def test_dom_re_weights_the_main_loss_by_the_natural_loss_mask(tmp_path):
    plain = tiny(tmp_path, "train.epochs=1", run="plain")
    dom = tiny(tmp_path, "train.epochs=1", "procedures=[{name: dom, threshold: 2.3, start: 0.0}]", run="dom")
    x, y = next(iter(plain.train_loader.iterate(0)))
    with torch.no_grad():
        natural = torch.nn.functional.cross_entropy(dom.model(x), y, reduction="none")
    mask = (natural >= 2.3).float()
    assert 0 < mask.sum() < len(mask)  # the untrained model: some above, some below
    seen = record_per_example(plain)
    a, b = plain.train_step(x, y), dom.train_step(x, y)
    assert a["train_adv_acc"] == b["train_adv_acc"]  # the same attack and forward: only the loss is masked
    assert a["loss_main"] == pytest.approx(seen["per_example"].mean().item(), rel=1e-6)
    assert b["loss_main"] == pytest.approx((mask * seen["per_example"]).mean().item(), rel=1e-6)


@pytest.mark.slow
def test_dom_re_leaves_training_unchanged_before_the_start(tmp_path):
    plain = tiny(tmp_path, "train.epochs=2", run="plain")
    dom = tiny(tmp_path, "train.epochs=2", "procedures=[{name: dom, threshold: 100.0, start: 0.99}]", run="dom")
    plain.fit()
    dom.fit()  # the natural forward of a model without BatchNorm changes nothing; active only at the very last batch
    logs_p, logs_d = plain.history, dom.history
    assert logs_p[0] == logs_d[0]  # epoch 1 identical
    assert not all(torch.equal(v, dom.model.state_dict()[k]) for k, v in plain.model.state_dict().items())


def test_dom_da_augments_only_the_low_loss_examples_reproducibly(tmp_path):
    trainer = tiny(tmp_path, "train.epochs=1")
    x, y = next(iter(trainer.train_loader.iterate(0)))
    with torch.no_grad():
        natural = torch.nn.functional.cross_entropy(trainer.model(x), y, reduction="none")
    tau = natural.median().item()
    outs = []
    for _ in range(2):
        dom = build_procedure({"name": "dom", "operate": "augment", "threshold": tau, "start": 0.0, "iterations": 2,
                               "strength": 0.5, "augmentation": "randaugment"})
        dom.setup(epochs=1, steps_per_epoch=4)
        state = torch.random.get_rng_state()
        gen = torch.Generator().manual_seed(7)
        outs.append(dom.augment(trainer.model, x, y, epoch=0, step=0, generator=gen))
        assert torch.equal(torch.random.get_rng_state(), state)  # torch's global generator is left alone
    assert torch.equal(outs[0], outs[1])  # reproducible from the trainer's generator
    changed = (outs[0] != x).flatten(1).any(1)
    assert changed.any()
    assert not changed[natural > tau].any()  # high-loss examples keep their inputs
    assert outs[0].min() >= 0 and outs[0].max() <= 1


def test_dom_natural_forward_moves_batchnorm_statistics_except_on_epoch_first_batches(tmp_path):
    trainer = tiny(tmp_path, "train.epochs=1", BN, "procedures=[{name: dom, first_batch_bn_mode: eval}]")
    dom = trainer.procedures[0]
    x, y = next(iter(trainer.train_loader.iterate(0)))
    bn = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    before = bn.running_mean.clone()
    dom.on_epoch_start(trainer.model, trainer.optimizer, 1)  # the first batch of epoch 2: eval mode, no update
    assert dom.augment(trainer.model, x, y, epoch=1, step=4, generator=trainer.generator) is None
    assert torch.equal(bn.running_mean, before)
    dom.augment(trainer.model, x, y, epoch=1, step=5, generator=trainer.generator)  # later batches: train mode
    assert not torch.equal(bn.running_mean, before)
    assert trainer.model.training and all(p.requires_grad for p in trainer.model.parameters())


@pytest.mark.slow
def test_dom_da_resumes_bit_identically(tmp_path):
    extra = ["train.epochs=3", "train.checkpoint_every=3", BN,
             "procedures=[{name: dom, operate: augment, threshold: 1.0, start: 0.3, iterations: 2, strength: 0.5, "
             "first_batch_bn_mode: eval}]"]
    full = tiny(tmp_path, *extra, run="full")
    full.fit()
    killed = tiny(tmp_path, *extra, run="killed")
    killed.callbacks.append(KillAt(6))
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = tiny(tmp_path, *extra, run="killed")
    resumed.fit(resume=tmp_path / "killed" / "last.pt")
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.history == full.history


# -- config errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, message", [
    ("{name: dom, operate: remvoe}", "operate = 'remvoe'.*remove, augment.*Did you mean 'remove'"),
    ("{name: dom, iterations: 3}", "iterations only apply to operate: augment"),
    ("{name: dom, operate: augment, iterations: 0}", "iterations.*must be >= 1"),
    ("{name: dom, operate: augment, strength: 1.5}", "strength.*\\[0, 1\\]"),
    ("{name: dom, operate: augment, augmentation: augmixx}", "augmentation = 'augmixx'.*Did you mean 'augmix'"),
    ("{name: dom, threshold: -1}", "threshold.*>= 0"),
    ("{name: dom, start: 50}", "start is the fraction"),
    ("{name: dom, bn_mode: eval}", "update_bn_stats: true needs bn_mode: train"),
    ("{name: dom, treshold: 1}", "procedures\\[0\\].treshold.*did you mean 'procedures\\[0\\].threshold'"),
])
def test_bad_dom_options_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_config(QUICK, [f"procedures=[{spec}]"])
