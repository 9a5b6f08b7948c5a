"""BETA (attacks/beta.py): the margin and the best-target choice against hand-computed values and an independent
transcription of the paper's algorithm (one PGD per target class j, then argmax_j of the final margin), its
consistency (a positive margin is a misclassification), its strength against PGD, BETA-AT in the Trainer and
``robustrain eval --attack beta``. The guard and threat-model properties are tested with every attack in
tests/test_attacks.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import digits_batch
from robustrain.attacks import BETA, build_attack
from robustrain.attacks.beta import targeted_margin
from robustrain.errors import ConfigError
from robustrain.threat import make_threat

ROOT = Path(__file__).resolve().parent.parent


def linear_model(weight: torch.Tensor) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weight)
    return model.eval()


def test_targeted_margin_offsets_name_every_other_class():
    logits = torch.tensor([[1.0, 4.0, 2.0], [0.5, -1.0, 3.0]])
    y = torch.tensor([0, 2])
    got = [targeted_margin(logits, torch.stack([y, torch.full_like(y, k)], 1)).tolist() for k in (1, 2)]
    # example 0 (y = 0): k = 1 -> class 1: 4 - 1 = 3; k = 2 -> class 2: 2 - 1 = 1
    # example 1 (y = 2): k = 1 -> class 0: 0.5 - 3 = -2.5; k = 2 -> class 1: -1 - 3 = -4
    assert got == [[3.0, -2.5], [1.0, -4.0]]


def test_beta_on_a_linear_model_by_hand():
    # logits = W·x, x two pixels; the margin of target j is (W_j - W_y)·x, its L∞ ascent direction sign(W_j - W_y):
    # from x (no random start) with step ε and one step, δ_j = ε·sign(W_j - W_y), clipped to the [0,1] box.
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    x = torch.tensor([[0.5, 0.5]]).view(1, 1, 1, 2)
    y = torch.tensor([0])
    eps = 0.2
    attack = BETA(make_threat("linf", eps), steps=1, step=eps, random_start=False)
    res = attack(linear_model(W), x, y)
    # target 1: W1 - W0 = (-1, 1): δ = (-0.2, 0.2), x' = (0.3, 0.7), margin 0.7 - 0.3 = 0.4
    # target 2: W2 - W0 = (-0.5, 0.5): δ = (-0.2, 0.2), margin 0.5 - 0.3 = 0.2 -> target 1 wins
    assert res.delta.flatten().tolist() == pytest.approx([-0.2, 0.2])
    assert res.loss_adv.tolist() == pytest.approx([0.4])


def reference_beta(model, x, y, eps, step, steps, num_classes):
    """The paper's BETA, transcribed independently: for each class j, PGD (sign steps, projection, box) on the
    margin z_j - z_y from x; the margin of j = y does not count; keep per example the j with the largest final
    margin (first on ties)."""
    best_margin = torch.full((len(x),), -float("inf"))
    best = torch.zeros_like(x)
    for j in range(num_classes):
        delta = torch.zeros_like(x)
        for _ in range(steps):
            delta.requires_grad_(True)
            z = model(x + delta)
            margin = z[:, j] - z.gather(1, y[:, None]).squeeze(1)
            (g,) = torch.autograd.grad(margin.sum(), delta)
            delta = torch.clamp(delta.detach() + step * g.sign(), -eps, eps)
            delta = torch.clamp(x + delta, 0, 1) - x
        with torch.no_grad():
            z = model(x + delta)
            margin = z[:, j] - z.gather(1, y[:, None]).squeeze(1)
        margin[y == j] = -float("inf")
        wins = margin > best_margin
        best[wins], best_margin[wins] = delta[wins], margin[wins]
    return best, best_margin


def test_beta_equals_the_transcribed_algorithm(trained_digits_model, digits):
    x, y = digits_batch(digits[1], 64)
    model = trained_digits_model.eval()
    attack = BETA(make_threat("linf", 0.1), steps=5, step=0.025, random_start=False)
    res = attack(model, x, y)
    ref_delta, ref_margin = reference_beta(model, x, y, 0.1, 0.025, 5, 10)
    assert torch.allclose(res.loss_adv, ref_margin, atol=1e-5)
    same = (res.delta - ref_delta).flatten(1).abs().amax(1) < 1e-6
    assert same.float().mean() > 0.95  # a target chosen differently only where two margins tie to float noise
    assert torch.allclose(res.loss_adv[~same], ref_margin[~same], atol=1e-5)


def test_a_positive_margin_is_a_misclassification_and_beta_beats_pgd(trained_digits_model, digits):
    x, y = digits_batch(digits[1], 150)
    model = trained_digits_model.eval()
    threat = make_threat("linf", 0.1)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    beta = BETA(threat, steps=10)(model, x, y, generator=gen())
    with torch.no_grad():
        wrong = model(beta.x_adv).argmax(1) != y
    decided = beta.loss_adv.abs() > 1e-5
    assert torch.equal(wrong[decided], (beta.loss_adv > 0)[decided])
    pgd = build_attack("pgd", threat, steps=10, restarts=1)(model, x, y, generator=gen())
    with torch.no_grad():
        pgd_wrong = model(pgd.x_adv).argmax(1) != y
    assert wrong.float().mean() >= pgd_wrong.float().mean()  # BETA-10 finds at least as many errors as PGD-10


def test_bad_beta_options_are_config_errors():
    threat = make_threat("linf", 0.1)
    with pytest.raises(ConfigError, match="steps and restarts must be >= 1"):
        BETA(threat, steps=0)
    with pytest.raises(ConfigError, match="takes no loss_fn"):
        BETA(threat, loss_fn=lambda z, y: z.sum(1))
    from robustrain.config import load_config

    with pytest.raises(ConfigError, match="attack.*stpes.*steps"):
        load_config(ROOT / "configs" / "quickstart_digits.yaml", ["attack={name: beta, stpes: 3}"])


def test_beta_at_trains_and_reports_its_attack(tmp_path):
    from robustrain.build import build_trainer
    from robustrain.config import load_config

    cfg = load_config(ROOT / "configs" / "quickstart_digits.yaml", [
        "train.progress=false", "data.train_subset=128", "data.val_size=50", "data.batch_size=64",
        "attack={name: beta, steps: 2, bn_mode: train}", "schedule={name: constant}", f"out_dir={tmp_path}"])
    trainer, _ = build_trainer(cfg, tmp_path / "run")
    x, y = next(iter(trainer.train_loader.iterate(0)))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    logs = trainer.train_step(x, y)
    assert trainer.attack.settings()["label"] == "beta-2" and 0 <= logs["train_adv_acc"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


@pytest.mark.slow
def test_robustrain_eval_attack_beta(tmp_path):
    from robustrain.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "-c", str(ROOT / "configs" / "quickstart_digits.yaml"), "--run-dir", str(run),
                 *sum((["--set", o] for o in ["train.epochs=1", "train.progress=false", "data.train_subset=64",
                                               "data.val_size=50", "eval.n_ex=50",
                                               "validation.attack={name: pgd, steps: 2, restarts: 1}",
                                               "eval.attack={name: pgd, steps: 2, restarts: 1}"]), [])]) == 0
    assert main(["eval", str(run), "--attack", "pgd,beta", "--steps", "3", "--n-ex", "30", "--no-progress"]) == 0
    report = json.loads((run / "eval" / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert "beta-3" in stages or any(s.startswith("beta") for s in stages)
