"""Training objectives (CE, TRADES, MART) and the TRADES / MART attack: values and gradients against independent
computations written the way the official codes write them, config checks, and a TRADES-AWP run that learns."""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from robustrain.attacks import AttackResult, TRADESAttack, build_attack, kl_from_clean
from robustrain.config import load_config
from robustrain.errors import ConfigError, UnknownNameError
from robustrain.build import build_trainer
from robustrain.threat import make_threat
from robustrain.training import MART, TRADES, CrossEntropy, StepContext, build_objective

from conftest import digits_batch, make_digits_model

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
THREAT = make_threat("linf", 0.1)


@pytest.fixture(scope="module")
def data(digits):
    return digits_batch(digits[0], 256)


def step_context(model, x, y, x_adv) -> StepContext:
    delta = (x_adv - x).float()
    result = AttackResult(x_adv=x_adv, delta=delta, x_init=x)
    return StepContext(model, x, y, result, 0, 0, torch.Generator().manual_seed(0), contextlib.nullcontext)


def inputs(data, offset: int, seed: int, n: int = 24):
    x, y = data
    x, y = x[offset:offset + n], y[offset:offset + n]
    g = torch.Generator().manual_seed(seed)
    x_adv = (x + 0.1 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    return x, y, x_adv


def grads_of(model, loss) -> list[torch.Tensor]:
    return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()))]


def trades_reference(model, x, y, x_adv, beta):
    """As yaodongyu/TRADES trades.py writes it: KLDivLoss(sum) of log-softmax(adv) against softmax(natural), / B."""
    logits_nat = model(x)
    loss_natural = F.cross_entropy(logits_nat, y)
    kl = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(model(x_adv), dim=1), F.softmax(logits_nat, dim=1))
    return loss_natural + beta * kl / len(y)


def mart_reference(model, x, y, x_adv, beta):
    """As YisenWang/MART mart.py writes it: argsort for the strongest wrong class, NLL of log(1.0001 − p), KLDivLoss
    of log(p_adv + 1e-12) weighted by (1.0000001 − p_y(x))."""
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(model(x), dim=1)
    true_probs = torch.gather(nat_probs, 1, y.unsqueeze(1).long()).squeeze()
    kl = torch.nn.KLDivLoss(reduction="none")(torch.log(adv_probs + 1e-12), nat_probs)
    loss_robust = (1.0 / len(y)) * torch.sum(torch.sum(kl, dim=1) * (1.0000001 - true_probs))
    return loss_adv + float(beta) * loss_robust


@pytest.mark.slow
@settings(max_examples=10)
@given(name=st.sampled_from(["trades", "mart"]), beta=st.floats(0.0, 10.0), offset=st.integers(0, 200),
       seed=st.integers(0, 1000))
def test_trades_and_mart_match_the_official_formulas(data, name, beta, offset, seed):
    model = make_digits_model(batchnorm=False).train()  # no BN: the two forwards of each side see the same model
    x, y, x_adv = inputs(data, offset, seed)
    ctx = step_context(model, x, y, x_adv)
    objective = build_objective(name, beta=beta)
    out = objective(ctx)
    reference = (trades_reference if name == "trades" else mart_reference)(model, x, y, x_adv, beta)
    assert out["loss"].item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)
    assert out["per_example"].shape == y.shape
    assert out["per_example"].mean().item() == pytest.approx(out["loss"].item(), rel=1e-6)
    for a, b in zip(grads_of(model, out["loss"]), grads_of(model, reference)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ctx.logits_adv, model(x_adv))  # the adversarial forward is left for loss terms


def test_trades_is_clean_ce_when_the_adversarial_input_is_the_clean_one(data):
    model = make_digits_model(batchnorm=False)
    x, y, _ = inputs(data, 0, 0)
    out = TRADES(beta=6.0)(step_context(model, x, y, x.clone()))
    assert out["kl"].abs().item() < 1e-6
    assert out["loss"].item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)


def test_cross_entropy_objective_per_example_and_label_smoothing(data):
    model = make_digits_model(batchnorm=False)
    x, y, x_adv = inputs(data, 10, 1)
    out = CrossEntropy(label_smoothing=0.2)(step_context(model, x, y, x_adv))
    logp = F.log_softmax(model(x_adv), dim=1)
    by_hand = -(0.8 * logp.gather(1, y[:, None]).squeeze(1) + 0.2 * logp.mean(dim=1))
    torch.testing.assert_close(out["per_example"], by_hand, rtol=1e-5, atol=1e-6)
    assert out["loss"].item() == pytest.approx(by_hand.mean().item(), rel=1e-5)


def test_objective_options_are_checked():
    with pytest.raises(ConfigError, match="beta must be >= 0"):
        MART(beta=-1)
    with pytest.raises(UnknownNameError, match="Did you mean 'trades'"):
        build_objective("trade")
    with pytest.raises(ConfigError, match="did you mean 'objective.beta'"):
        load_config(QUICK, ["objective={name: trades, bta: 6}"])
    with pytest.raises(ConfigError, match="label smoothing belongs to the ce objective"):
        load_config(QUICK, ["objective={name: trades}", "train.label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="loss must be kl"):
        build_attack("trades", THREAT, loss="ce2")
    with pytest.raises(ConfigError, match="did you mean 'weight_perturbation.c_min'"):
        load_config(QUICK, ["weight_perturbation={name: rwp, cmin: 1.7}"])
    with pytest.raises(ConfigError, match="must be a mapping with a 'name'"):
        load_config(QUICK, ["weight_perturbation.gamma=0.01"])


# -- the TRADES attack ---------------------------------------------------------------------------------------
def test_kl_attack_loss_is_the_kl_from_the_clean_prediction():
    g = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    by_hand = torch.nn.KLDivLoss(reduction="none")(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1)).sum(1)
    torch.testing.assert_close(kl_from_clean(clean)(adv, torch.zeros(8, dtype=torch.long)), by_hand)


@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_trades_attack_ascends_its_loss_inside_the_ball_and_leaves_the_model_alone(trained_digits_model, data, loss):
    model = trained_digits_model
    model.train()
    x, y = data[0][:64], data[1][:64]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    attack = TRADESAttack(THREAT, loss=loss, steps=10, step=THREAT.eps / 4, bn_mode="eval")
    res = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert model.training and all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert bool(THREAT.contains(x, res.x_adv).all())
    model.eval()
    with torch.no_grad():
        clean, start, adv = model(x), model(res.x_init), model(res.x_adv)
    if loss == "kl":
        value = lambda z: kl_from_clean(clean)(z, y)  # noqa: E731
    else:
        value = lambda z: F.cross_entropy(z, y, reduction="none")  # noqa: E731
    assert value(adv).mean() > 2 * value(start).mean() + 1e-3
    model.train()


def test_trades_attack_starts_from_small_gaussian_noise():
    x = torch.full((64, 1, 8, 8), 0.5)
    attack = TRADESAttack(THREAT, steps=1, step=0.0, init_std=0.001)
    delta = attack.start(x, torch.Generator().manual_seed(3))
    assert delta.std().item() == pytest.approx(0.001, rel=0.05) and abs(delta.mean().item()) < 1e-4


# -- recipes and a run -----------------------------------------------------------------------------------------
def test_trades_recipe_has_the_paper_settings():
    cfg = load_config(ROOT / "configs" / "cifar10_trades.yaml")
    assert cfg.objective == {"name": "trades", "beta": 6.0}
    assert cfg.attack["name"] == "trades" and cfg.attack["loss"] == "kl" and cfg.attack["steps"] == 10
    assert cfg.attack["step"] == pytest.approx(0.007) and cfg.threat.eps == pytest.approx(0.031)
    assert cfg.attack["bn_mode"] == "eval" and cfg.attack["init_std"] == pytest.approx(0.001)
    assert cfg.optim.weight_decay == pytest.approx(2e-4) and cfg.train.epochs == 76
    # adjust_learning_rate counts epochs from 1: `if epoch >= 75` decays from the 0-based epoch 74
    assert cfg.schedule.milestones[0] == 75 and cfg.schedule.count_from == 1 and cfg.model.normalise is False


@pytest.mark.slow
@pytest.mark.parametrize("objective, loss, perturbation", [
    ("trades", "kl", "{name: awp, gamma: 0.005, warmup_epochs: 1}"),  # TRADES-AWP
    ("mart", "ce", "{name: rwp, gamma: 0.01, c_min: 2.0, steps: 2}"),  # MART with RWP on its per-example loss
])
def test_objective_with_weight_perturbation_trains_on_digits(tmp_path, objective, loss, perturbation):
    cfg = load_config(QUICK, [
        "train.progress=false", "validation.attack={name: pgd, steps: 3, restarts: 1}", "data.batch_size=64",
        "data.val_size=200", "train.epochs=4", "wandb.mode=disabled", f"out_dir={tmp_path}",
        f"attack={{name: trades, loss: {loss}, steps: 3, bn_mode: eval}}", f"objective={{name: {objective}, beta: 6}}",
        f"weight_perturbation={perturbation}",
    ])
    trainer, _ = build_trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.objective, {"trades": TRADES, "mart": MART}[objective])
    assert trainer.weight_perturbation.name == perturbation.split(",")[0].split()[-1]
    hist = trainer.fit()
    assert hist[-1]["val_clean_acc"] > 0.6 and hist[-1]["val_robust_acc"] > 0.3  # chance is 0.1
