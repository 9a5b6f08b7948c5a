"""The baseline recipes state the official settings they follow (issue 13): each resolves with load_config and
carries the official schedule (incl. momentum cycling), BatchNorm-update, normalisation and milestone conventions,
and its header names the paper and the official file@commit."""
from __future__ import annotations

from pathlib import Path

import pytest

from robustrain.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

CYCLIC = {"name": "cyclic", "peak": 0.5, "cycle_momentum": True, "base_momentum": 0.8, "max_momentum": 0.9}
RICE = {"name": "multistep", "milestones": [100, 150], "factors": ["1/10", "1/100"], "at": "batch_end", "count_from": 0}
WONG_MNIST = {"name": "interp", "peak": 0.4}

# recipe -> (official file@commit named in the header, schedule, attack options, model.normalise, extra checks)
RECIPES = {
    "cifar10_fgsm_rs": ("locuslab/fast_adversarial CIFAR10/train_fgsm.py@54f7287", CYCLIC,
                        {"name": "fgsm_rs", "bn_mode": "train", "update_bn_stats": True}, True,
                        {"train.epochs": 15, "optim.lr": 0.2, "optim.momentum": 0.9}),
    "cifar10_nfgsm": ("pdejorge/N-FGSM train.py@0a9e4f0", CYCLIC,
                      {"name": "nfgsm", "init_scale": 2.0, "project": False, "update_bn_stats": True}, True,
                      {"train.epochs": 30, "optim.lr": 0.2}),
    "cifar10_pgd_at": ("locuslab/robust_overfitting train_cifar.py@c47a25c", RICE,
                       {"name": "pgd", "steps": 10, "keep_best": False, "update_bn_stats": True}, True,
                       {"train.epochs": 200, "optim.lr": 0.1, "data.val_size": 1000}),
    "cifar10_pgd_at_awp": ("csdongxian/AWP AT_AWP/train_cifar10.py@a7acf5d", RICE,
                           {"name": "pgd", "update_bn_stats": True, "first_batch_bn_mode": "eval"}, True,
                           {"train.epochs": 200, "weight_perturbation.warmup_epochs": 0}),
    "cifar10_pgd_at_rwp": ("ChaojianYu/Robust-Weight-Perturbation AT_AWP_RWP/train_cifar10.py", RICE,
                           {"name": "pgd", "update_bn_stats": True, "first_batch_bn_mode": "eval"}, True,
                           {"train.epochs": 200}),
    "cifar10_trades": ("yaodongyu/TRADES train_trades_cifar10.py", {
        "name": "multistep", "milestones": [75, 90, 100], "factors": [0.1, 0.01, 0.001], "count_from": 1},
        {"name": "trades", "bn_mode": "eval", "clip_init": False}, False,
        {"train.epochs": 76, "optim.weight_decay": 2e-4}),
    "cifar10_trades_awp": ("csdongxian/AWP trades_AWP/train_trades_cifar.py@a7acf5d", {
        "name": "multistep", "milestones": [100, 150], "factors": [0.1, 0.01], "count_from": 1},
        {"name": "trades", "bn_mode": "eval", "clip_init": False}, False,
        {"train.epochs": 200, "weight_perturbation.warmup_epochs": 9, "weight_perturbation.gamma": 0.005}),
    "cifar10_dom_pgd_re": ("tmllab/2024_ICLR_DOM DOM.py@9b4cadb", {
        "name": "multistep", "milestones": [100, 150], "factors": ["1/10", "1/100"], "at": "epoch", "count_from": 0},
        {"name": "pgd", "steps": 10, "keep_best": False, "update_bn_stats": True, "first_batch_bn_mode": "eval"}, True,
        {"train.epochs": 200, "optim.lr": 0.1}),
    "cifar10_dom_fgsm_re": ("tmllab/2024_ICLR_DOM DOM.py@9b4cadb", {"name": "interp", "peak": 0.5},
                            {"name": "fgsm_rs", "update_bn_stats": True, "first_batch_bn_mode": "eval"}, True,
                            {"train.epochs": 100, "optim.lr": 0.2}),
    "cifar10_hr": ("RyanLucas3/HR_Neural_Networks Paper_experiments/Section_6.2/Rice_HR/Rice_HR.py", RICE,
                   {"name": "pgd", "steps": 10, "keep_best": False, "update_bn_stats": True}, True,
                   {"train.epochs": 200, "optim.lr": 0.1}),
    "mnist_fgsm_rs": ("locuslab/fast_adversarial MNIST/train_mnist.py@54f7287", WONG_MNIST,
                      {"name": "fgsm_rs", "step": 0.375, "clip_init": False}, False,
                      {"train.epochs": 10, "optim.name": "adam", "optim.lr": 5e-3, "optim.weight_decay": 0.0,
                       "data.batch_size": 100, "train.eps_warmup_epochs": 0.0, "threat.eps": 0.3}),
}
MNIST_STUDY = ["mnist_fgsm", "mnist_nfgsm", "mnist_elle", "mnist_elle_a", "mnist_aaer", "mnist_gradalign",
               "mnist_convergesmooth"]


def _get(cfg, dotted: str):
    node = cfg
    for key in dotted.split("."):
        node = node[key] if isinstance(node, dict) else getattr(node, key)
    return node


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_states_the_official_settings(recipe):
    source, schedule, attack, normalise, extra = RECIPES[recipe]
    path = CONFIGS / f"{recipe}.yaml"
    cfg = load_config(path)
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert source in header, f"{recipe}: the header must name {source}"
    for key, value in schedule.items():
        assert getattr(cfg.schedule, key) == value, (recipe, key)
    for key, value in attack.items():
        assert cfg.attack.get(key) == value, (recipe, key)
    assert cfg.model.normalise is normalise
    for key, value in extra.items():
        got = _get(cfg, key)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), (recipe, key)


@pytest.mark.parametrize("recipe", MNIST_STUDY)
def test_mnist_co_study_recipes_share_wongs_base(recipe):
    cfg = load_config(CONFIGS / f"{recipe}.yaml")
    base = load_config(CONFIGS / "mnist_fgsm_rs.yaml")
    assert cfg.model == base.model and cfg.optim == base.optim and cfg.schedule == base.schedule
    assert cfg.train.epochs == base.train.epochs == 10 and cfg.train.eps_warmup_epochs == 0.0
    assert cfg.data.batch_size == 100 and cfg.threat == base.threat and cfg.eval == base.eval
    header = (CONFIGS / f"{recipe}.yaml").read_text()
    assert "locuslab/fast_adversarial MNIST/train_mnist.py@54f7287" in header
    assert "stays near" not in header  # the contradicted claim is gone


def test_every_recipe_of_the_schedules_helper_resolves():
    names = [*RECIPES, *MNIST_STUDY, "mnist_fgsm_monitor", "quickstart_digits", "cifar10_ro_small"]
    for name in names:
        load_config(CONFIGS / f"{name}.yaml")
