"""Weight perturbation (AWP, RWP, LAP): exact restore, the papers' scalings against independent computations,
model state left alone by the ascent passes, recipes, and runs through the Trainer."""
from __future__ import annotations

import contextlib
import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from robustrain.attacks import FGSMRS
from robustrain.config import load_config
from robustrain.errors import ConfigError, UnknownNameError
from robustrain.build import build_trainer
from robustrain.models import create_model
from robustrain.perturbation import (AWP, LAP, RWP, WEIGHT_PERTURBATIONS, ParameterRule, build_weight_perturbation,
                                     lap_default_beta, lap_factors, lsc_mask)
from robustrain.threat import make_threat
from robustrain.training import CrossEntropy, StepContext, load_checkpoint

from conftest import KillAt, digits_batch, make_digits_model

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
THREAT = make_threat("linf", 0.1)


# -- helpers ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(digits):
    return digits_batch(digits[0], 256)


def batch_at(data, offset: int, n: int = 32):
    x, y = data
    return x[offset:offset + n], y[offset:offset + n]


def make_ctx(model, x, y, optimizer=None, seed: int = 0, epoch: int = 0) -> tuple[StepContext, callable]:
    """A trainer-like step: FGSM-RS attack, model in train mode, CE objective as loss_fn."""
    gen = torch.Generator().manual_seed(seed)
    result = FGSMRS(THREAT, bn_mode="train")(model, x, y, generator=gen)
    model.train()
    ctx = StepContext(model, x, y, result, epoch, 0, gen, contextlib.nullcontext, optimizer=optimizer)
    objective = CrossEntropy()

    def loss_fn(per_example: bool = False):
        out = objective(ctx)
        return out["per_example"] if per_example else out["loss"]

    return ctx, loss_fn


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict, b: dict, only_params: tuple[str, ...] | None = None) -> None:
    for k in a:
        if only_params is not None and k not in only_params:
            continue
        if a[k].is_floating_point():
            assert torch.equal(bits(a[k]), bits(b[k])), f"{k} differs"
        else:
            assert torch.equal(a[k], b[k]), f"{k} differs"


def selected(model, wp) -> list[tuple[str, torch.nn.Parameter]]:
    return wp.rule.select(model)


def method(name: str, **kw):
    return {"awp": lambda: AWP(THREAT, gamma=kw.get("gamma", 0.01)),
            "rwp": lambda: RWP(THREAT, gamma=kw.get("gamma", 0.01), steps=2, c_min=kw.get("c_min", 10.0)),
            "lap": lambda: LAP(THREAT, beta=kw.get("gamma", 0.01) * 3),
            "lap_code": lambda: LAP(THREAT, beta=kw.get("gamma", 0.01) * 3, behaviour="code")}[name]()


def sgd(model, lr: float = 0.0):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def prime(opt, model, x, y) -> None:
    """One real step so the optimiser has momentum buffers (state that must survive untouched)."""
    model.train()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    lr = opt.param_groups[0]["lr"]
    opt.param_groups[0]["lr"] = 0.05
    opt.step()
    opt.param_groups[0]["lr"] = lr
    opt.zero_grad(set_to_none=True)


# -- the parameter rule -------------------------------------------------------------------------------------
def test_default_rule_selects_conv_and_linear_weights_in_network_order():
    model = create_model("preact_resnet18", num_classes=10, in_channels=3, width=4)
    chosen = ParameterRule().select(model)
    assert len(chosen) == 21  # the official --layer-number for PreActResNet-18
    expected = [n for n, p in model.named_parameters() if p.dim() >= 2 and n.endswith("weight")]
    assert [n for n, _ in chosen] == expected
    assert chosen[0][0].endswith("conv1.weight") and chosen[-1][1].shape[0] == 10  # stem first, classifier last
    norm = ParameterRule(modules=("norm",), params=("weight", "bias")).select(model)
    assert all(p.dim() == 1 for _, p in norm) and len(norm) == 2 * sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_rule_errors_say_what_to_fix():
    with pytest.raises(ConfigError, match="Did you mean 'conv'"):
        ParameterRule(modules=("convs",))
    with pytest.raises(ConfigError, match="selects no trainable parameter.*conv"):
        ParameterRule(params=("gain",)).select(make_digits_model())
    with pytest.raises(UnknownNameError, match="expected one of: awp, lap, rwp. Did you mean 'awp'"):
        build_weight_perturbation("awpp", THREAT)


def test_frozen_parameters_are_not_selected():
    model = make_digits_model()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first.weight.requires_grad_(False)
    names = [n for n, _ in ParameterRule().select(model)]
    assert len(names) == 3 and all(p is not first.weight for _, p in ParameterRule().select(model))


# -- exact restore ------------------------------------------------------------------------------------------
@settings(max_examples=12)
@given(name=st.sampled_from(["awp", "rwp", "lap", "lap_code"]), raises=st.sampled_from([None, "backward", "step"]),
       offset=st.integers(0, 200), gamma=st.floats(1e-4, 0.5), zeros=st.floats(0.0, 0.3), seed=st.integers(0, 2**16))
def test_perturb_then_zero_lr_step_restores_weights_bit_for_bit(data, name, raises, offset, gamma, zeros, seed):
    if name == "lap_code":  # the official-code behaviour keeps its perturbation after a normal exit (tested below),
        raises = "backward"  # and its Δ needs lr > 0, so its step must fail before the optimiser moves anything
    torch.manual_seed(seed)
    model = make_digits_model(seed=seed % 7)
    x, y = batch_at(data, offset)
    opt = sgd(model, lr=0.1 if name == "lap_code" else 0.0)  # lap_code's Δ is an optimiser step: lr 0 gives v = 0
    prime(opt, model, x, y)
    wp = method(name, gamma=gamma)
    with torch.no_grad():  # exact zeros of both signs in the perturbed tensors must come back with their sign
        for _, p in selected(model, wp):  # (not elsewhere: SGD's zero-lr step itself turns -0.0 into +0.0)
            mask = torch.rand(p.shape) < zeros
            p[mask] = torch.where(torch.rand(p.shape) < 0.5, 0.0, -0.0)[mask]
    params = dict(model.named_parameters())
    before = snapshot(model)
    ctx, loss_fn = make_ctx(model, x, y, opt, seed=seed)
    moved = []
    with contextlib.suppress(RuntimeError):
        with wp.applied(ctx, loss_fn):
            moved = [k for k, p in params.items() if not torch.equal(p, before[k])]
            opt.zero_grad()
            loss_fn().backward()
            if raises == "backward":
                raise RuntimeError("the step failed before the update")
            opt.step()  # lr 0: momentum and weight decay change the buffers, not the weights
            if raises == "step":
                raise RuntimeError("the step failed after the update")
    assert moved, "the weights were not perturbed inside the context"
    assert_bit_identical(before, snapshot(model), only_params=tuple(params))


def test_lap_code_behaviour_keeps_the_perturbation(data):
    model = make_digits_model()
    x, y = batch_at(data, 0)
    opt = sgd(model, lr=0.1)
    prime(opt, model, x, y)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    wp = LAP(THREAT, beta=0.05, behaviour="code")
    ctx, loss_fn = make_ctx(model, x, y, opt)
    with wp.applied(ctx, loss_fn):
        inside = {k: p.detach().clone() for k, p in model.named_parameters()}
    after = {k: p.detach() for k, p in model.named_parameters()}
    assert all(torch.equal(inside[k], after[k]) for k in after)  # kept, not removed
    assert any(not torch.equal(before[k], after[k]) for k in after)


@pytest.mark.parametrize("name", ["awp", "rwp", "lap", "lap_code"])
def test_ascent_leaves_bn_statistics_gradients_and_optimizer_state_alone(data, name):
    model = make_digits_model()
    x, y = batch_at(data, 32)
    opt = sgd(model, lr=0.1)
    prime(opt, model, x, y)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)  # a stale gradient must survive too
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    ctx, loss_fn = make_ctx(model, x, y, opt)
    before = snapshot(model)
    wp = method(name)
    with contextlib.suppress(KeyboardInterrupt), wp.applied(ctx, loss_fn):
        raise KeyboardInterrupt  # nothing but the perturbation ran
    assert_bit_identical(before, snapshot(model))
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert {id(p) for p in opt.state} == set(state)
    for p, s in opt.state.items():
        assert all(torch.equal(v, state[id(p)][k]) for k, v in s.items())
    assert model.training


# -- AWP ---------------------------------------------------------------------------------------------------
def independent_gradients(model, x_adv, y, names):
    """∇ CE(f(x_adv)) on a separate copy of the model (train mode), by ordinary backward."""
    twin = copy.deepcopy(model).train()
    F.cross_entropy(twin(x_adv), y).backward()
    grads = dict(twin.named_parameters())
    return [grads[n].grad for n in names]


@settings(max_examples=10)
@given(gamma=st.floats(1e-3, 0.2), offset=st.integers(0, 200), seed=st.integers(0, 100))
def test_awp_layer_norms_are_gamma_times_weight_norms_along_the_gradient(data, gamma, offset, seed):
    model = make_digits_model(seed=seed)
    x, y = batch_at(data, offset)
    wp = AWP(THREAT, gamma=gamma)
    ctx, loss_fn = make_ctx(model, x, y, seed=seed)
    chosen = selected(model, wp)
    w0 = [p.detach().clone() for _, p in chosen]
    grads = independent_gradients(model, ctx.result.x_adv, y, [n for n, _ in chosen])
    with wp.applied(ctx, loss_fn):
        v = [p.detach() - w for (_, p), w in zip(chosen, w0)]
    for vl, wl, gl in zip(v, w0, grads):
        assert vl.norm().item() == pytest.approx(gamma * wl.norm().item(), rel=1e-4)
        assert F.cosine_similarity(vl.flatten(), gl.flatten(), dim=0).item() == pytest.approx(1.0, abs=1e-4)


def test_awp_warmup_epochs_leave_the_weights_alone(data):
    model = make_digits_model()
    x, y = batch_at(data, 0)
    wp = AWP(THREAT, warmup_epochs=2)
    for epoch, expect_moved in ((0, False), (1, False), (2, True)):
        ctx, loss_fn = make_ctx(model, x, y, epoch=epoch)
        before = snapshot(model)
        with wp.applied(ctx, loss_fn):
            moved = any(not torch.equal(p, before[k]) for k, p in model.named_parameters())
        assert moved == expect_moved


# -- RWP ---------------------------------------------------------------------------------------------------
@given(losses=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=64), c_min=st.floats(0, 10))
def test_lsc_mask_selects_exactly_the_examples_below_c_min(losses, c_min):
    t = torch.tensor(losses, dtype=torch.float32)
    mask = lsc_mask(t, c_min)
    assert mask.tolist() == [1.0 if v < c_min else 0.0 for v in t.tolist()]


def rwp_reference(model, x_adv, y, names, gamma, c_min, steps):
    """RWP from the formula, on model copies: masked mean over the whole batch, global-norm scaling."""
    params = dict(model.named_parameters())
    w = [params[n].detach() for n in names]
    w_norm = torch.sqrt(sum((t.double() ** 2).sum() for t in w))
    total, scaled = None, [torch.zeros_like(t) for t in w]
    masks = []
    for _ in range(steps):
        twin = copy.deepcopy(model).train()
        twin_params = dict(twin.named_parameters())
        with torch.no_grad():
            for n, d in zip(names, scaled):
                twin_params[n].add_(gamma * d)
        per = F.cross_entropy(twin(x_adv), y, reduction="none")
        keep = per.detach() < c_min
        masks.append(keep)
        (per[keep].sum() / len(y)).backward()
        g = [twin_params[n].grad.detach() for n in names]
        total = g if total is None else [a + b for a, b in zip(total, g)]
        d_norm = torch.sqrt(sum((t.double() ** 2).sum() for t in total))
        scaled = [t * (w_norm / (d_norm + 1e-20)).float() for t in total]
    return [gamma * d for d in scaled], masks


@settings(max_examples=10)
@given(c_quantile=st.floats(0.0, 1.0), offset=st.integers(0, 200), steps=st.integers(1, 3))
def test_rwp_matches_the_formula_with_the_low_loss_mask(data, c_quantile, offset, steps):
    model = make_digits_model(batchnorm=False)  # no BN: an example's loss does not depend on the others
    x, y = batch_at(data, offset)
    ctx, loss_fn = make_ctx(model, x, y)
    with torch.no_grad():
        per = F.cross_entropy(model(ctx.result.x_adv), y, reduction="none")
    c_min = float(torch.quantile(per, c_quantile)) + 1e-4
    wp = RWP(THREAT, gamma=0.01, c_min=c_min, steps=steps)
    chosen = selected(model, wp)
    names = [n for n, _ in chosen]
    expected, masks = rwp_reference(model, ctx.result.x_adv, y, names, 0.01, c_min, steps)
    w0 = [p.detach().clone() for _, p in chosen]
    with wp.applied(ctx, loss_fn):
        v = [p.detach() - w for (_, p), w in zip(chosen, w0)]
    if not masks[0].any():
        assert all(torch.equal(t, torch.zeros_like(t)) for t in v)  # nothing below c_min: no perturbation
        return
    total = math.sqrt(sum(float(t.norm()) ** 2 for t in v))
    assert total == pytest.approx(0.01 * math.sqrt(sum(float(t.norm()) ** 2 for t in w0)), rel=1e-4)  # global norm
    for a, b in zip(v, expected):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-6)


def test_rwp_ignores_high_loss_examples(data):
    """Replacing the examples above c_min by other high-loss examples changes nothing (one step, no BN)."""
    model = make_digits_model(batchnorm=False)
    x, y = batch_at(data, 0, 64)
    ctx, _ = make_ctx(model, x, y)
    with torch.no_grad():
        logits = model(ctx.result.x_adv)
    per = F.cross_entropy(logits, y, reduction="none")
    c_min = float(per.median())
    low = per < c_min
    wrong_y = torch.where(low, y, logits.argmin(1))  # the least likely label: the loss can only grow

    def v_for(labels):
        m = copy.deepcopy(model)
        c, lf = make_ctx(m, x, labels)
        c.result = ctx.result
        with torch.no_grad():
            still_high = F.cross_entropy(m(ctx.result.x_adv), labels, reduction="none")[~low] >= c_min
        chosen = selected(m, RWP(THREAT))
        w0 = [p.detach().clone() for _, p in chosen]
        with RWP(THREAT, c_min=c_min, steps=1).applied(c, lf):
            return [p.detach() - w for (_, p), w in zip(chosen, w0)], bool(still_high.all())

    v1, _ = v_for(y)
    v2, all_high = v_for(wrong_y)
    assert all_high and bool((wrong_y != y).any())
    for a, b in zip(v1, v2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


# -- LAP ---------------------------------------------------------------------------------------------------
@given(num_layers=st.integers(1, 60), gamma=st.floats(0.05, 3.0))
def test_lap_factors_follow_the_formula(num_layers, gamma):
    lam = lap_factors(num_layers, gamma)
    assert len(lam) == num_layers and lam[0] == 1.0
    for l, value in enumerate(lam, start=1):
        expected = 1.0 if num_layers == 1 else 1 - (math.log(l) / math.log(num_layers)) ** gamma
        assert value == pytest.approx(expected, abs=1e-12)
    if num_layers > 1:
        assert lam[-1] == pytest.approx(0.0, abs=1e-12)
        assert all(a >= b for a, b in zip(lam, lam[1:]))


def test_lap_factors_for_preactresnet18_match_the_spec():
    lam = lap_factors(21, 0.3)  # methods.md §6.3: λ_2 ≈ 0.36, λ_3 ≈ 0.26, λ_5 ≈ 0.17, λ_10 ≈ 0.08, λ_16 ≈ 0.03
    for l, v in ((2, 0.36), (3, 0.26), (5, 0.17), (10, 0.08), (16, 0.03)):
        assert lam[l - 1] == pytest.approx(v, abs=0.006)


def test_lap_default_beta_is_the_readme_table():
    for eps, row in {8: (0.03, 0.002, 0.001), 16: (0.07, 0.05, 0.005)}.items():
        threat = make_threat("linf", eps / 255)
        assert [lap_default_beta(threat, v) for v in ("fgsm", "fgsm_rs", "nfgsm")] == list(row)
    with pytest.raises(ConfigError, match="set beta explicitly"):
        LAP(make_threat("linf", 10 / 255))
    assert LAP(make_threat("linf", 10 / 255), beta=0.01).beta == 0.01


@pytest.mark.parametrize("behaviour", ["paper", "code"])
def test_lap_layer_norms_and_directions(data, behaviour):
    model = make_digits_model()
    x, y = batch_at(data, 64)
    opt = sgd(model, lr=0.1)
    prime(opt, model, x, y)
    beta, gamma = 0.2, 0.3
    wp = LAP(THREAT, beta=beta, gamma=gamma, behaviour=behaviour)
    ctx, loss_fn = make_ctx(model, x, y, opt)
    chosen = selected(model, wp)
    names = [n for n, _ in chosen]
    w0 = [p.detach().clone() for _, p in chosen]
    if behaviour == "paper":  # ascent direction of CE at the attack's start point
        ref = independent_gradients(model, ctx.result.x_init, y, names)
    else:  # the weight change of one real optimiser step (descent, momentum and weight decay included)
        twin = copy.deepcopy(model).train()
        twin_opt = sgd(twin, lr=0.1)
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # (load_state_dict would share the buffers)
        F.cross_entropy(twin(ctx.result.x_init), y).backward()
        twin_opt.step()
        twin_params = dict(twin.named_parameters())
        ref = [twin_params[n].detach() - w for n, w in zip(names, w0)]
    with contextlib.suppress(KeyboardInterrupt), wp.applied(ctx, loss_fn):
        v = [p.detach() - w for (_, p), w in zip(chosen, w0)]
        raise KeyboardInterrupt
    lam = lap_factors(len(names), gamma)
    assert len(names) == 4 and lam[-1] == 0.0
    for vl, wl, rl, lam_l in zip(v, w0, ref, lam):
        assert vl.norm().item() == pytest.approx(beta * lam_l * wl.norm().item(), rel=1e-4, abs=1e-7)
        if lam_l > 0:
            assert F.cosine_similarity(vl.flatten(), rl.flatten(), dim=0).item() == pytest.approx(1.0, abs=1e-3)


# -- recipes and runs ----------------------------------------------------------------------------------------
RECIPES = {  # recipe → (weight perturbation options that must match the paper, attack name, ε·255)
    "cifar10_pgd_at_awp": ({"name": "awp", "gamma": 0.01, "warmup_epochs": 0}, "pgd", 8),
    "cifar10_pgd_at_rwp": ({"name": "rwp", "gamma": 0.01, "c_min": 1.7, "steps": 10}, "pgd", 8),
    "cifar10_trades_awp": ({"name": "awp", "gamma": 0.005, "warmup_epochs": 9}, "trades", 8),  # --awp-warmup 10, epochs from 1
    "cifar10_lap_zero": ({"name": "lap", "variant": "fgsm", "beta": 0.03, "gamma": 0.3}, "fgsm", 8),
    "cifar10_lap_rs": ({"name": "lap", "variant": "fgsm_rs", "beta": 0.002, "gamma": 0.3}, "fgsm_rs", 8),
    "cifar10_lap_nfgsm": ({"name": "lap", "variant": "nfgsm", "beta": 0.001, "gamma": 0.3}, "nfgsm", 8),
    "cifar10_lap_zero_eps16": ({"name": "lap", "variant": "fgsm", "beta": 0.07}, "fgsm", 16),
    "cifar10_lap_rs_eps16": ({"name": "lap", "variant": "fgsm_rs", "beta": 0.05}, "fgsm_rs", 16),
    "cifar10_lap_nfgsm_eps16": ({"name": "lap", "variant": "nfgsm", "beta": 0.005}, "nfgsm", 16),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipes_have_the_paper_settings(recipe):
    options, attack, eps = RECIPES[recipe]
    path = ROOT / "configs" / f"{recipe}.yaml"
    cfg = load_config(path)
    model = "wrn34_10" if recipe.startswith("cifar10_trades") else "preact_resnet18"  # the papers' architectures
    assert cfg.model.name == model and cfg.threat.eps == pytest.approx(eps / 255)
    assert cfg.attack["name"] == attack
    for k, v in options.items():
        assert cfg.weight_perturbation[k] == pytest.approx(v) if isinstance(v, float) else cfg.weight_perturbation[k] == v
    wp = build_weight_perturbation(cfg.weight_perturbation["name"], make_threat("linf", cfg.threat.eps),
                                   **{k: v for k, v in cfg.weight_perturbation.items() if k != "name"})
    assert type(wp) is WEIGHT_PERTURBATIONS[options["name"]]
    if options["name"] == "lap":
        assert "LAP behaviour: code" in path.read_text() and cfg.weight_perturbation["behaviour"] == "code"
        assert cfg.train.epochs == 30 and cfg.schedule.name == "cyclic"
    else:
        assert cfg.train.epochs == 200 and cfg.schedule.name == "multistep"


FAST = ["train.progress=false", "validation.attack={name: pgd, steps: 3, restarts: 1}", "train.log_every=1",
        "data.batch_size=64", "data.val_size=200", "train.epochs=4", "train.checkpoint_every=3",
        "eval.attack={name: pgd, steps: 5, restarts: 1}", "wandb.mode=disabled"]


@pytest.mark.slow
def test_awp_training_on_digits_learns_and_resumes_exactly(tmp_path):
    cfg = load_config(QUICK, [*FAST, "weight_perturbation={name: awp, gamma: 0.01}", f"out_dir={tmp_path}"])
    full, _ = build_trainer(cfg, tmp_path / "full")
    hist = full.fit()
    assert hist[-1]["val_clean_acc"] > 0.6 and hist[-1]["val_robust_acc"] > 0.3  # chance is 0.1
    kill = full.steps_per_epoch + 2
    killed, _ = build_trainer(cfg, tmp_path / "killed")
    killed.callbacks.append(KillAt(kill))
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert 0 < load_checkpoint(tmp_path / "killed" / "last.pt")["trainer"]["batch_in_epoch"]
    torch.manual_seed(7)
    resumed, _ = build_trainer(cfg, tmp_path / "killed")
    resumed.fit(resume=tmp_path / "killed" / "last.pt")
    assert_bit_identical(snapshot(full.model), snapshot(resumed.model))
    lines = [json.loads(s) for s in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in lines if r["kind"] == "step")
