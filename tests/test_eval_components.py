"""AutoAttack components run alone (apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square) and the cw attack, through both
backends: the official AutoAttack code (PyPI ``pyautoattack``, for real) and torchattacks; the L1 threat model.

A small CNN trained on digits (tests/conftest.py); reduced iteration counts keep it fast. Every component must stay
inside the threat model, leave the model as it was, and give the same numbers on both backends (torchattacks'
components are ports of the official code) on the same examples and seeds.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import digits_batch
from robustrain.evaluation.autoattack import COMPONENTS, autoattack_stages, component_spec
from robustrain.evaluation.pipeline import EvalPlan, evaluate_robustness
from robustrain.evaluation.report import validate_report
from robustrain.threat import make_threat

from test_attacks import assert_unchanged, snapshot

N = 60
QUICK = {"batch_size": 30, "aa_steps": 10, "square_queries": 100, "seed": 0}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(digits):
    return digits_batch(digits[1], N)


def run(model, data, norm, eps, attacks, backend):
    plan = EvalPlan(make_threat(norm, eps), attacks=["clean", *attacks], backend=backend, **QUICK)
    report, result = evaluate_robustness(model, *data, plan, num_classes=10)
    validate_report(report)
    return report, result


def test_official_package_is_installed_and_is_the_backend():
    from robustrain.evaluation.backends import OfficialBackend

    backend = OfficialBackend()
    assert backend.version().startswith("pyautoattack ")  # the PyPI package, a dependency of robustrain


def test_standalone_settings_are_the_first_version_holding_them():
    standard = {s.name: s for s in autoattack_stages("standard", 10)}
    plus = {s.name: s for s in autoattack_stages("plus", 10)}
    for name in COMPONENTS:
        assert component_spec(name, 10) == standard.get(name, plus.get(name))
    assert component_spec("apgd-dlr", 10).settings["restarts"] == 5 and component_spec("fab", 10).version == "plus"
    l1 = {s.name: s.settings for s in autoattack_stages("standard", 10, norm="l1")}
    # the official _set_version for norm='L1': 5 APGD restarts, 5 APGD-T targets, the 3ε/2ε/ε schedule
    assert l1["apgd-ce"]["restarts"] == 5 and l1["apgd-ce"]["largereps"] and l1["apgd-t"]["target_classes"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_both_backends_agree_on_every_component(trained_digits_model, data, norm, eps):
    """The official code and torchattacks on the same examples, seeds and settings: the same robust accuracy for each
    component (within 2 of 60 examples: the two differ in float details), every output inside the threat model."""
    model = trained_digits_model
    before = snapshot(model)
    reports = {b: run(model, data, norm, eps, list(COMPONENTS), b)[0] for b in ("autoattack", "torchattacks")}
    assert_unchanged(model, before)
    official, ported = reports["autoattack"], reports["torchattacks"]
    assert official["backend"]["name"] == "autoattack" and ported["backend"]["name"] == "torchattacks"
    clean = official["accuracy"]["clean"]
    for name in COMPONENTS:
        a, b = official["accuracy"][name], ported["accuracy"][name]
        assert abs(a - b) <= 2 / N + 1e-9, (name, a, b)
        assert a <= clean  # a component attacks clean-correct points only
    for r in reports.values():
        for s in r["stages"][1:]:
            assert s["group"] == "component" and s["after"] == "clean"
            assert s["adversarial"]["n_outside"] == 0 and s["adversarial"]["n_nonfinite"] == 0
            assert s["adversarial"]["max_norm"] <= eps * (1 + 1e-5)
    # the white-box components break what a small Square budget does not
    assert official["accuracy"]["apgd-ce"] < official["accuracy"]["square"]


@pytest.mark.slow
def test_l1_apgd_and_square_through_the_official_code(trained_digits_model, data):
    """L1 (the default backend for it is the official code): APGD-L1 and Square-L1 stay inside ball ∩ box, beat
    robustrain's sparse-step PGD under the same budget, and torchattacks is refused with the way out."""
    from robustrain.errors import ConfigError

    model = trained_digits_model
    before = snapshot(model)
    report, result = run(model, data, "l1", 2.0, ["apgd-ce", "square", "pgd"], None)
    assert_unchanged(model, before)
    assert report["backend"]["name"] == "autoattack" and report["threat"] == {"norm": "l1", "eps": 2.0}
    acc = report["accuracy"]
    assert acc["apgd-ce"] < acc["clean"] and acc["apgd-ce"] <= acc["pgd-50-10"]
    for s in report["stages"][1:]:
        assert s["adversarial"]["n_outside"] == 0 and s["adversarial"]["max_norm"] <= 2.0 * (1 + 1e-5)
    x, _ = data
    threat = make_threat("l1", 2.0)
    assert threat.contains(x, result.x_adv).all()
    with pytest.raises(ConfigError, match="--backend autoattack"):
        run(model, data, "l1", 2.0, ["apgd-ce"], "torchattacks")


@pytest.mark.slow
@pytest.mark.parametrize("eps", [0.5, 1.0])
def test_cw_is_at_least_as_strong_as_torchattacks_cw_within_the_radius(trained_digits_model, digits, eps):
    """robustrain's cw (PGD on the C&W margin, inside the L2 ball) against torchattacks.CW (the original
    minimum-norm L2 attack, 100 steps) counted within the same radius, for three trade-off constants c."""
    import torchattacks

    from robustrain.attacks import build_attack

    model = trained_digits_model
    x, y = digits_batch(digits[1], 100)
    cw = build_attack("cw", make_threat("l2", eps))
    adv = cw(model, x, y, generator=torch.Generator().manual_seed(0)).x_adv
    with torch.no_grad():
        ours = (model(adv).argmax(1) == y).float().mean().item()
    for c in (0.1, 1.0, 10.0):
        ref = torchattacks.CW(model, c=c, kappa=0, steps=100, lr=0.01)(x, y)
        inside = (ref - x).flatten(1).norm(dim=1) <= eps + 1e-6
        with torch.no_grad():
            theirs = ((model(ref).argmax(1) == y) | ~inside).float().mean().item()
        assert ours <= theirs, (c, ours, theirs)


def test_cli_runs_components_under_l1(trained_digits_model, tmp_path, monkeypatch, capsys):
    from robustrain.cli import main

    torch.save(trained_digits_model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "digits_factory.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom conftest import make_digits_model\n\n"
        "def build():\n    return make_digits_model()\n" % str(__import__("pathlib").Path(__file__).parent))
    monkeypatch.chdir(tmp_path)
    common = ["eval", "--model", "digits_factory:build", "--weights", "w.pt", "--dataset", "digits", "--n-ex", "30",
              "--batch-size", "15", "--aa-steps", "5", "--square-queries", "30", "--no-progress"]
    code = main([*common, "--attack", "apgd-ce,square", "--norm", "l1", "--eps", "1.5", "--out", "out"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["clean", "apgd-ce", "square"]
    assert report["backend"]["name"] == "autoattack" and report["threat"]["norm"] == "l1"
    # the target command: components alone, L1, two radii -> a report each and the sweep table
    code = main([*common, "--attack", "apgd-ce,square", "--norm", "l1", "--eps", "4/255,8/255", "--out", "sweep"])
    assert code == 0, capsys.readouterr().err
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["eps_label"] for r in sweep["rows"]] == ["4/255", "8/255"] and sweep["threat"]["norm"] == "l1"
    assert {"clean_acc", "apgd-ce_acc", "square_acc", "worst_case_acc"} <= set(sweep["rows"][0])
    assert "| 8/255 |" in capsys.readouterr().out
    assert main([*common, "--attack", "apgd", "--eps", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "'apgd' is not an attack" in err and "apgd-ce" in err


def test_progress_bars_count_examples_and_only_attacked_points(trained_digits_model, data, capsys):
    """The bars count examples (not batches), and the running accuracy is over the examples evaluated so far: at
    the end of a stage it equals the stage's robust fraction of the points it attacked."""
    import re

    plan = EvalPlan(make_threat("linf", 0.1), attacks=["clean", "apgd-ce"], batch_size=25, aa_steps=3, seed=0)
    report, _ = evaluate_robustness(trained_digits_model, *data, plan, num_classes=10, progress=True)
    err = capsys.readouterr().err
    stage = report["stages"][1]
    n_att = stage["n_attacked"]
    assert f"{n_att}/{n_att} [" in err and "ex/s" in err  # examples, not batches
    finals = re.findall(r"robust (\d+\.\d\d)% of (\d+)", err)
    assert finals and finals[-1] == (f"{100 * stage['n_robust'] / n_att:.2f}", str(n_att))
    assert re.findall(r"correct (\d+\.\d\d)% of (\d+)", err)[-1] == (f"{100 * report['accuracy']['clean']:.2f}", str(N))


def test_epoch_lines_show_accuracies_in_percent(capsys):
    from types import SimpleNamespace

    from robustrain.training.callbacks import ProgressBar

    ProgressBar(enabled=True).on_epoch_end(SimpleNamespace(epoch=3, epochs=10),
                                           {"val_clean_acc": 0.98125, "val_robust_acc": 0.5, "train_loss": 0.4321})
    assert capsys.readouterr().out.strip() == "epoch 3/10  val_clean_acc=98.12%  val_robust_acc=50.00%  train_loss=0.4321"
