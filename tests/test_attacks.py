"""Attacks stay in the threat model, never change the model (also when it raises), and are at least as
strong as the reference implementation."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from robustrain.attacks import ATTACKS, FGSM, PGD, attack_guard, build_attack
from robustrain.errors import ConfigError, UnknownNameError
from robustrain.threat import make_threat

from conftest import digits_batch, make_digits_model


def snapshot(model: nn.Module):
    return {
        "modes": [m.training for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "req": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "track": [getattr(m, "track_running_stats", None) for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["req"] == before["req"]
    assert after["track"] == before["track"]
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"
    for g0, g1 in zip(before["grad"], after["grad"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)


def attack_kwargs(name: str) -> dict:
    return {"steps": 3, "restarts": 2} if name in ("pgd", "cw") else {"steps": 2} if name == "beta" else {}


@pytest.fixture(scope="module")
def model_with_bn():
    return make_digits_model(batchnorm=True)


@pytest.mark.slow
@given(name=st.sampled_from(sorted(ATTACKS)), norm=st.sampled_from(["linf", "l2", "l1"]), eps=st.floats(0.0, 0.4),
       bn_mode=st.sampled_from(["eval", "train"]), training=st.booleans(), seed=st.integers(0, 10_000),
       n=st.integers(1, 9))
def test_outputs_stay_in_threat_model_and_model_is_untouched(model_with_bn, digits, name, norm, eps, bn_mode,
                                                             training, seed, n):
    model = model_with_bn
    model.train(training)
    if seed % 2:  # dirty gradients must survive the attack
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.5)
    else:
        for p in model.parameters():
            p.grad = None
    x, y = digits_batch(digits[0], n, offset=seed % 1000)
    threat = make_threat(norm, {"linf": eps, "l2": 4 * eps, "l1": 20 * eps}[norm])
    attack = build_attack(name, threat, bn_mode=bn_mode, **attack_kwargs(name))
    before = snapshot(model)
    res = attack(model, x, y, generator=torch.Generator().manual_seed(seed))
    assert_unchanged(model, before)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.delta.dtype == torch.float32
    assert threat.contains(x, res.x_adv, radius=attack.max_norm, atol=1e-5).all()
    assert threat.contains(x, res.x_init, radius=attack.max_norm, atol=1e-5).all()
    assert torch.allclose(res.x_adv, x + res.delta, atol=1e-6)
    assert res.loss_init.shape == (n,) and res.logits_init.shape == (n, 10)
    assert res.grad_init.shape == x.shape
    assert not res.x_adv.requires_grad


class Exploding(nn.Module):
    """Runs the real model, then raises on the k-th call."""

    def __init__(self, inner: nn.Module, fail_on: int):
        super().__init__()
        self.inner, self.calls, self.fail_on = inner, 0, fail_on

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        if self.calls >= self.fail_on:
            raise RuntimeError("boom")
        return out


@given(name=st.sampled_from(sorted(ATTACKS)), fail_on=st.integers(1, 4), bn_mode=st.sampled_from(["eval", "train"]),
       training=st.booleans())
def test_model_restored_when_it_raises(model_with_bn, digits, name, fail_on, bn_mode, training):
    model = Exploding(model_with_bn, fail_on)
    model.train(training)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.inner.net.features[0].weight.requires_grad_(False)  # a frozen layer stays frozen
    before = snapshot(model)
    x, y = digits_batch(digits[0], 5)
    attack = build_attack(name, make_threat("linf", 0.1), bn_mode=bn_mode, **attack_kwargs(name))
    try:
        attack(model, x, y, generator=torch.Generator().manual_seed(0))
    except RuntimeError as e:
        assert "boom" in str(e)
    assert_unchanged(model, before)
    model.inner.net.features[0].weight.requires_grad_(True)


def test_attack_does_no_weight_gradient_work(model_with_bn, digits):
    seen = []
    model = model_with_bn
    hooks = [p.register_hook(lambda g: seen.append(g)) for p in model.parameters()]
    try:
        x, y = digits_batch(digits[0], 8)
        build_attack("pgd", make_threat("linf", 0.1), steps=2)(model, x, y)
    finally:
        for h in hooks:
            h.remove()
    assert seen == []


def test_train_bn_mode_uses_batch_statistics(digits):
    model = make_digits_model(batchnorm=True)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_mean.fill_(5.0)  # absurd running stats: eval-mode logits differ from batch-stat logits
    x, y = digits_batch(digits[0], 16)
    seen = {}

    def hook(module, inp, out):
        seen["training"] = module.training

    h = bn.register_forward_hook(hook)
    r_train = build_attack("fgsm", make_threat("linf", 0.1), bn_mode="train")(model.eval(), x, y)
    assert seen["training"] is True
    r_eval = build_attack("fgsm", make_threat("linf", 0.1), bn_mode="eval")(model, x, y)
    assert seen["training"] is False
    h.remove()
    assert not torch.allclose(r_train.logits_init, r_eval.logits_init)
    assert (bn.running_mean == 5.0).all()


def test_single_step_variants_follow_their_recipes(digits):
    model = make_digits_model(batchnorm=False)
    x, y = digits_batch(digits[0], 32)
    eps = 0.1
    t = make_threat("linf", eps)
    fgsm = build_attack("fgsm", t)(model, x, y)
    assert torch.equal(fgsm.x_init, x)  # zero init
    # interior pixels move by exactly eps
    interior = (x > eps) & (x < 1 - eps)
    assert torch.allclose(fgsm.delta.abs()[interior], torch.full_like(fgsm.delta[interior], eps))
    rs = build_attack("fgsm_rs", t)
    assert rs.step == pytest.approx(1.25 * eps) and rs.project and rs.init_scale == 1.0
    nf = build_attack("nfgsm", t)
    assert nf.step == pytest.approx(eps) and not nf.project and nf.init_scale == 2.0
    r = nf(model, x, y, generator=torch.Generator().manual_seed(1))
    assert t.norms(r.delta).max() > eps  # no projection: leaves the eps-ball
    assert t.norms(r.delta).max() <= 3 * eps + 1e-6
    # the step is exactly one signed-gradient step from the init point (before the box clip)
    step = (r.x_adv - r.x_init)[interior & (r.x_init > eps) & (r.x_init < 1 - eps)]
    assert torch.allclose(step.abs(), torch.full_like(step, eps), atol=1e-6)


def test_same_generator_seed_gives_same_result(digits):
    model = make_digits_model()
    x, y = digits_batch(digits[0], 16)
    a = build_attack("pgd", make_threat("l2", 1.0), steps=3, restarts=2)
    r1 = a(model, x, y, generator=torch.Generator().manual_seed(3))
    r2 = a(model, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(r1.x_adv, r2.x_adv)


@pytest.mark.slow
def test_pgd_keep_best_is_no_weaker_than_last_iterate(trained_digits_model, digits):
    x, y = digits_batch(digits[1], 300)
    t = make_threat("linf", 0.1)
    model = trained_digits_model

    def acc(attack):
        r = attack(model, x, y, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return (model(r.x_adv).argmax(1) == y).float().mean().item()

    last = acc(PGD(t, steps=10, keep_best=False))
    best = acc(PGD(t, steps=10, keep_best=True))
    best_r = acc(PGD(t, steps=10, restarts=3, keep_best=True))
    assert best <= last
    assert best_r <= best


@pytest.mark.parametrize("norm,eps,reference", [pytest.param("linf", 0.1, "PGD", marks=pytest.mark.slow),
                                                ("l2", 0.5, "PGDL2")])
def test_pgd_at_least_as_strong_as_torchattacks(trained_digits_model, digits, norm, eps, reference):
    """Same settings (10 steps of eps/4, one random start) on the same trained model: robustrain's robust
    accuracy may not exceed torchattacks' by more than 0.5 pp."""
    torchattacks = pytest.importorskip("torchattacks")
    model = trained_digits_model
    x = torch.cat([digits[0].images, digits[1].images]).float() / 255  # all 1,797 images: 1 example = 0.06 pp
    y = torch.cat([digits[0].labels, digits[1].labels])
    alpha, steps = eps / 4, 10
    torch.manual_seed(0)
    x_ta = getattr(torchattacks, reference)(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    r = PGD(make_threat(norm, eps), steps=steps, step=alpha)(model, x, y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
        ta_acc = (model(x_ta).argmax(1) == y).float().mean().item()
        our_acc = (model(r.x_adv).argmax(1) == y).float().mean().item()
    assert clean > 0.9
    assert ta_acc < clean - 0.02  # the comparison is meaningful: the attack does something
    assert our_acc <= ta_acc + 0.005, (our_acc, ta_acc)


def test_bad_attack_inputs(digits):
    model = make_digits_model()
    t = make_threat("linf", 0.1)
    with pytest.raises(UnknownNameError, match="fgsm_rs"):
        build_attack("fgsm-rs", t)
    with pytest.raises(ConfigError, match="unknown key 'stpes' for attack 'pgd'; did you mean 'steps'"):
        build_attack("pgd", t, stpes=3)
    with pytest.raises(ConfigError, match="bn_mode"):
        build_attack("fgsm", t, bn_mode="batch")
    x, y = digits_batch(digits[0], 4)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        FGSM(t)(model, x * 255, y)
    with pytest.raises(ValueError, match="labels"):
        FGSM(t)(model, x, y[:2])


def test_guard_rejects_unknown_mode():
    with pytest.raises(ConfigError):
        with attack_guard(nn.Linear(2, 2), "sometimes"):
            pass


def test_attack_does_not_copy_or_replace_the_model(digits):
    model = make_digits_model()
    ref = copy.deepcopy(model)
    x, y = digits_batch(digits[0], 8)
    build_attack("nfgsm", make_threat("linf", 0.2), bn_mode="train")(model, x, y)
    for (k, v), (_, w) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(v, w), k


# -- update_bn_stats: the official Wong / Rice / ELLE / AAER training attacks run the model in train mode ----------
def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("name,forwards", [("fgsm_rs", 1), ("nfgsm", 1), ("pgd", 3)])
def test_update_bn_stats_updates_running_statistics_as_train_mode_forwards_do(digits, name, forwards):
    model = make_digits_model(batchnorm=True)
    x, y = digits_batch(digits[0], 16)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    kwargs = {"steps": 3, "keep_best": False} if name == "pgd" else {}
    before = snapshot(model)
    stats0 = _bn_stats(model)
    # default: the statistics are untouched (and the model restored)
    plain = build_attack(name, make_threat("linf", 0.1), bn_mode="train", **kwargs)(model, x, y, generator=gen())
    assert_unchanged(model, before)
    # asked for: they change, by exactly what the attack's train-mode forwards at its own points would do
    attack = build_attack(name, make_threat("linf", 0.1), bn_mode="train", update_bn_stats=True, **kwargs)
    r = attack(model, x, y, generator=gen())
    assert torch.equal(r.x_adv, plain.x_adv)  # the attack itself is the same (batch statistics either way)
    stats1 = _bn_stats(model)
    assert any(not torch.equal(stats0[k], stats1[k]) for k in stats0)
    assert all(int(v) == forwards for k, v in stats1.items() if "num_batches" in k)
    # every other guarantee still holds: mode, requires_grad, .grad, parameters, track_running_stats
    after = snapshot(model)
    assert after["modes"] == before["modes"] and after["req"] == before["req"] and after["track"] == before["track"]
    for k, v in before["state"].items():
        if k not in stats0:
            assert torch.equal(after["state"][k], v), k
    if forwards == 1:  # single step: the statistics of an official loop's one model(X + delta0) train-mode forward
        ref = make_digits_model(batchnorm=True).train()
        with torch.no_grad():
            ref(r.x_init)
        for k, v in _bn_stats(ref).items():
            assert torch.equal(stats1[k], v), k


def test_update_bn_stats_with_eval_mode_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="bn_mode"):
        build_attack("fgsm_rs", make_threat("linf", 0.1), bn_mode="eval", update_bn_stats=True)
    with pytest.raises(ConfigError, match="bn_mode"):
        with attack_guard(nn.BatchNorm1d(2), "eval", update_bn_stats=True):
            pass
    from pathlib import Path

    from robustrain.config import load_config

    quick = Path(__file__).resolve().parent.parent / "configs" / "quickstart_digits.yaml"
    with pytest.raises(ConfigError, match="update_bn_stats.*bn_mode: train"):
        load_config(quick, ["attack.bn_mode=eval", "attack.update_bn_stats=true"])
    with pytest.raises(ConfigError, match="eval.attack.update_bn_stats"):
        load_config(quick, ["eval.attack={name: pgd, update_bn_stats: true}"])
    cfg = load_config(quick, ["attack.update_bn_stats=true"])
    assert cfg.attack["update_bn_stats"] is True and cfg.attack["bn_mode"] == "train"


def test_update_bn_stats_restores_the_model_when_it_raises(digits):
    model = make_digits_model(batchnorm=True)
    x, y = digits_batch(digits[0], 8)
    before = snapshot(model)

    def boom(module, inp, out):
        raise RuntimeError("boom")

    h = model.net.classifier.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        build_attack("fgsm_rs", make_threat("linf", 0.1), bn_mode="train", update_bn_stats=True)(model, x, y)
    h.remove()
    after = snapshot(model)
    assert after["modes"] == before["modes"] and after["req"] == before["req"] and after["track"] == before["track"]


def test_clip_init_false_is_wong_mnist_fgsm(digits):
    """locuslab/fast_adversarial MNIST/train_mnist.py: delta ~ U(-ε, ε) NOT clipped to the box before the gradient,
    then clamp(delta + α·sign(g), -ε, ε) and the box clip; it changes the attack (hence the weights)."""
    model = make_digits_model()
    x, y = digits_batch(digits[0], 32)
    eps, alpha = 0.3, 0.375
    wong = build_attack("fgsm_rs", make_threat("linf", eps), step=alpha, bn_mode="train", clip_init=False)
    r = wong(model, x, y, generator=torch.Generator().manual_seed(1))
    d0 = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * (2 * eps) - eps  # the same draw
    assert torch.allclose(r.x_init, x + d0, atol=1e-6)
    assert (r.x_init < 0).any() or (r.x_init > 1).any()  # the gradient is taken outside the box
    d = d0.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x + d), y).backward()
    expected = torch.max(torch.min(1 - x, (d0 + alpha * d.grad.sign()).clamp(-eps, eps)), -x)
    torch.testing.assert_close(r.delta, expected, atol=1e-6, rtol=0)
    assert ((r.x_adv >= 0) & (r.x_adv <= 1)).all() and r.delta.abs().max() <= eps + 1e-6
    clipped = build_attack("fgsm_rs", make_threat("linf", eps), step=alpha, bn_mode="train")
    r2 = clipped(model, x, y, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(r2.x_adv, r.x_adv)  # the box-clipped start gives another attack
    with pytest.raises(ConfigError, match="clip_init"):
        build_attack("fgsm_rs", make_threat("linf", eps), clip=False, clip_init=True)


@pytest.mark.slow
def test_first_batch_bn_mode_eval_is_the_awp_rwp_loops_first_batch(tmp_path):
    """csdongxian/AWP, Robust-Weight-Perturbation: the first batch of every epoch after the first is attacked in the
    eval mode the end-of-epoch evaluation left the model in; every other batch in train mode."""
    from pathlib import Path

    from robustrain.config import load_config
    from robustrain.build import build_trainer

    quick = Path(__file__).resolve().parent.parent / "configs" / "quickstart_digits.yaml"
    cfg = load_config(quick, ["train.progress=false", "train.epochs=3", "data.train_subset=128", "data.batch_size=64",
                              "model.kwargs={input_size: 8, batchnorm: true}", "attack.update_bn_stats=true",
                              "attack.first_batch_bn_mode=eval", "validation.attack={name: pgd, steps: 1, restarts: 1}",
                              "validation.fgsm=false", "wandb.mode=disabled", f"out_dir={tmp_path}"])
    trainer, _ = build_trainer(cfg, tmp_path / "run")
    bn = next(m for m in trainer.model.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    h = bn.register_forward_pre_hook(
        lambda m, inp: seen.append((trainer.epoch, trainer.batch_in_epoch, m.training, int(m.num_batches_tracked)))
        if not m.weight.requires_grad and torch.is_grad_enabled() else None)
    trainer.fit()
    h.remove()
    attack_calls = [(e, b, training) for e, b, training, _ in seen if b < trainer.steps_per_epoch]  # not validation
    assert attack_calls == [(0, 0, True), (0, 1, True), (1, 0, False), (1, 1, True), (2, 0, False), (2, 1, True)]
    assert trainer.attack.bn_mode == "train" and trainer.attack.update_bn_stats  # the recipe's attack is unchanged
    with pytest.raises(ConfigError, match="first_batch_bn_mode"):
        load_config(quick, ["attack.first_batch_bn_mode=sometimes"])
    with pytest.raises(ConfigError, match="first_batch_bn_mode"):
        load_config(quick, ["validation.attack={name: pgd, first_batch_bn_mode: eval}"])


# -- describing and scaling (Attack.settings, Attack.scaled) ---------------------------------------------------------
def _options(name: str) -> st.SearchStrategy[dict]:
    """Configured values of every option of attack ``name`` (each one drawn or left out)."""
    common = {"bn_mode": st.sampled_from(["eval", "train"]), "first_batch_bn_mode": st.sampled_from([None, "eval"]),
              "step": st.floats(0.0, 0.2)}
    own = {
        "fgsm": {"init_scale": st.floats(0.0, 3.0), "project": st.booleans()},
        "pgd": {"steps": st.integers(1, 20), "restarts": st.integers(1, 4), "random_start": st.booleans(),
                "keep_best": st.booleans()},
        "beta": {"steps": st.integers(1, 20), "restarts": st.integers(1, 4), "random_start": st.booleans()},
        "trades": {"steps": st.integers(1, 20), "restarts": st.integers(1, 4), "random_start": st.booleans(),
                   "keep_best": st.booleans(), "loss": st.sampled_from(["kl", "ce"]), "init_std": st.floats(0.0, 0.01),
                   "clip_init": st.booleans()},
        "fgsm_mep": {"momentum_decay": st.floats(0.0, 1.0), "reset_every": st.integers(0, 50),
                     "init": st.sampled_from(["sign", "zero"]), "clip_init": st.booleans(),
                     "label_smoothing": st.floats(0.0, 0.9), "buffer_device": st.sampled_from([None, "cpu"])},
    }
    strategies = {**common, **own.get("fgsm" if name in ("fgsm_rs", "nfgsm") else name, {})}
    chosen = st.fixed_dictionaries({}, optional=strategies)
    if name in ("fgsm", "fgsm_rs", "nfgsm"):  # clip: false leaves the box everywhere, so clip_init must be false too
        clip = st.sampled_from([{}, {"clip": True}, {"clip": True, "clip_init": False}, {"clip": False}])
        chosen = st.builds(lambda a, b: {**a, **b}, chosen, clip)
    return chosen


@st.composite
def configured_attack(draw, norms=("linf", "l2")):
    name = draw(st.sampled_from(sorted(ATTACKS)))
    norm = draw(st.sampled_from(norms))
    eps = draw(st.floats(0.001, 0.5))
    return name, make_threat(norm, eps), draw(_options(name))


@given(configured=configured_attack(), factor=st.floats(0.0, 2.0), second=st.floats(0.0, 1.0))
def test_scaled_scales_radius_and_step_and_nothing_else(configured, factor, second):
    name, threat, options = configured
    attack = build_attack(name, threat, **options)
    before = dict(vars(attack))
    scaled = attack.scaled(factor)
    assert dict(vars(attack)) == before and attack.threat is threat  # the original is untouched
    assert type(scaled) is type(attack) and type(scaled.threat) is type(threat)
    assert scaled.threat.eps == threat.eps * factor and scaled.step == attack.step * factor
    for key, value in vars(attack).items():
        if key not in ("threat", "step", "_scale"):
            assert vars(scaled)[key] is value, key  # everything else, shared state included, is the original's
    assert set(vars(scaled)) == set(vars(attack))
    s0, s1 = attack.settings(), scaled.settings()
    changed = {k for k in s0 if s0[k] != s1[k]}
    assert changed <= {"radius", "scale", "step", "max_norm", "step_rule"}
    assert s1["radius"] == threat.eps * factor and s1["step"] == attack.step * factor and s1["scale"] == factor
    assert s1["max_norm"] == pytest.approx(factor * s0["max_norm"], rel=1e-9, abs=1e-12)
    if "step" not in options:
        assert s1["step_rule"] == s0["step_rule"]  # a default rule (1.25·ε, ε/4) holds at every radius
    twice = scaled.scaled(second)  # scaling composes
    assert twice.threat.eps == threat.eps * factor * second and twice.settings()["scale"] == factor * second


def test_scaled_rejects_a_bad_factor():
    attack = build_attack("pgd", make_threat("linf", 0.1))
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="scale factor"):
            attack.scaled(bad)


@given(configured=configured_attack())
def test_settings_round_trip_the_configured_values(configured):
    import json

    from robustrain.attacks import attack_arguments

    name, threat, options = configured
    attack = build_attack(name, threat, **options)
    settings = attack.settings()
    json.dumps(settings)  # plain data
    for key, value in options.items():
        assert settings[key] == value, key
    assert settings["name"] == name and settings["norm"] == threat.norm and settings["radius"] == threat.eps
    assert settings["step"] == attack.step and settings["scale"] == 1.0
    rebuilt_options = {k: settings[k] for k in attack_arguments(type(attack))
                       if k in settings and k not in ("amp_dtype", "loss_fn")}
    rebuilt = build_attack(name, threat, **rebuilt_options).settings()
    assert {k: v for k, v in rebuilt.items() if k != "step_rule"} == {k: v for k, v in settings.items()
                                                                       if k != "step_rule"}


def test_settings_state_the_real_step_and_its_rule():
    threat = make_threat("linf", 8 / 255)
    expected = {"fgsm": (8 / 255, "ε"), "fgsm_rs": (10 / 255, "1.25·ε"), "nfgsm": (8 / 255, "ε"),
                "pgd": (2 / 255, "ε/4"), "trades": (2 / 255, "ε/4"), "fgsm_mep": (8 / 255, "ε"), "cw": (2 / 255, "ε/4"),
                "beta": (2 / 255, "ε/4")}
    assert set(expected) == set(ATTACKS)
    for name, (step, rule) in expected.items():
        s = build_attack(name, threat).settings()
        assert s["step"] == pytest.approx(step) and s["step_rule"] == rule, name
    pgd = build_attack("pgd", threat, steps=50, restarts=10, step=2 / 255)
    assert pgd.settings()["step_rule"] == "fixed 2/255" and pgd.label == "pgd-50-10"
    assert pgd.scaled(0.5).settings()["step_rule"] == "fixed 2/255, scaled by 0.5"
    assert build_attack("trades", threat, step=0.007).settings()["step_rule"] == "fixed 0.007"
    assert build_attack("trades", threat).label == "trades"
    s = build_attack("nfgsm", threat).settings()
    assert s["projection"] == "none" and s["max_norm"] == pytest.approx(3 * 8 / 255) and s["steps"] == 1


def test_single_step_attack_ascends_the_label_smoothed_loss(digits):
    """``label_smoothing`` (FastAT_Benchmark's attack gradient): the step follows the sign of ∇ of CE with label
    smoothing, which differs from plain CE's on some pixels; 0 is plain CE."""
    x, y = digits_batch(digits[0], 32)
    model = make_digits_model(batchnorm=False)
    threat = make_threat("linf", 0.1)
    smoothed = build_attack("nfgsm", threat, init_scale=0.0, label_smoothing=0.4)
    plain = build_attack("nfgsm", threat, init_scale=0.0)
    xg = x.clone().requires_grad_(True)
    grad_s, = torch.autograd.grad(nn.functional.cross_entropy(model(xg), y, label_smoothing=0.4, reduction="sum"), xg)
    grad_p, = torch.autograd.grad(nn.functional.cross_entropy(model(xg), y, reduction="sum"), xg)
    want_s = (x + 0.1 * grad_s.sign()).clamp(0, 1)
    want_p = (x + 0.1 * grad_p.sign()).clamp(0, 1)
    assert not torch.equal(want_s, want_p)  # the case can tell the two losses apart
    assert torch.allclose(smoothed(model, x, y).x_adv, want_s, atol=1e-6)
    assert torch.allclose(plain(model, x, y).x_adv, want_p, atol=1e-6)
    assert smoothed.settings()["label_smoothing"] == 0.4 and "0.4" in smoothed.settings()["loss_fn"]


@pytest.mark.parametrize("bad", [1.0, -0.1, "lots", True])
def test_single_step_attack_rejects_bad_label_smoothing(bad):
    with pytest.raises(ConfigError, match=r"fgsm_rs: label_smoothing must be a number in \[0, 1\).*got"):
        build_attack("fgsm_rs", make_threat("linf", 0.1), label_smoothing=bad)
