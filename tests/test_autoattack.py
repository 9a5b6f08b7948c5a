"""AutoAttack evaluation: the cascade, the report and its schema, the sanity checks, resume, the CLI.

Reduced iteration counts (APGD/FAB 4 steps, Square 30 queries) on 60 digits test images keep this fast; the
CLI's defaults stay the standard ones.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from conftest import digits_batch, make_digits_model
from robustrain.evaluation.autoattack import autoattack_stages
from robustrain.evaluation.backends import TorchattacksBackend
from robustrain.evaluation.pipeline import EvalPlan, evaluate_robustness
from robustrain.evaluation.report import ReportSchemaError, markdown, validate_report
from robustrain.evaluation.sanity import checks_before
from robustrain.threat import make_threat

EPS = 0.1
N = 60


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Attacks on tiny models are dominated by thread hand-offs; one thread is faster and steadier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quick_plan(**kw) -> EvalPlan:
    base = dict(attacks=["clean", "pgd", "autoattack"], sections={"pgd": {"name": "pgd", "steps": 5, "restarts": 1}},
                batch_size=25, aa_steps=4, square_queries=30, seed=0)
    return EvalPlan(make_threat("linf", EPS), **{**base, **kw})


@pytest.fixture(scope="module")
def data(digits):
    return digits_batch(digits[1], N)


@pytest.fixture(scope="module")
def recorded(trained_digits_model, data):
    """One evaluation with every batch handed to the AutoAttack backend recorded."""
    calls = []
    original = TorchattacksBackend.perturb

    def spy(self, model, spec, x, y, **kw):
        calls.append((spec.name, x.clone(), y.clone()))
        return original(self, model, spec, x, y, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(TorchattacksBackend, "perturb", spy)
    try:
        report, result = evaluate_robustness(trained_digits_model, *data, quick_plan(), num_classes=10)
    finally:
        mp.undo()
    return report, result, calls


def strip_timing(report: dict) -> dict:
    r = copy.deepcopy(report)
    r.pop("runtime"), r.pop("resumed")
    for s in r["stages"]:
        s.pop("seconds")
    return r


def test_standard_settings_follow_the_official_code():
    names = [(s.name, s.settings.get("steps"), s.settings.get("restarts"), s.settings.get("target_classes"))
             for s in autoattack_stages("standard", 10)]
    assert names == [("apgd-ce", 100, 1, None), ("apgd-t", 100, 1, 9), ("fab-t", 100, 1, 9), ("square", None, 1, None)]
    assert autoattack_stages("standard", 10)[3].settings["queries"] == 5000
    plus = {s.name: s.settings for s in autoattack_stages("plus", 10)}
    assert list(plus) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert plus["apgd-ce"]["restarts"] == plus["fab"]["restarts"] == 5 and plus["apgd-t"]["target_classes"] == 9
    rand = autoattack_stages("rand", 10)
    assert [s.name for s in rand] == ["apgd-ce", "apgd-dlr"] and all(s.settings["eot_iter"] == 20 for s in rand)
    assert autoattack_stages("standard", 4)[1].settings["target_classes"] == 3  # never more targets than classes - 1


def test_every_stage_attacks_only_still_robust_points(recorded, data):
    report, result, calls = recorded
    x, y = data
    stages = {s["name"]: s for s in report["stages"]}
    for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
        s = stages[name]
        before = stages[s["after"]]["robust"]
        assert s["attacked"] == before  # the candidates are exactly the points robust after the previous stage
        attacked = torch.tensor([c == "1" for c in s["attacked"]])
        seen = [(cx, cy) for stage, cx, cy in calls if stage == name]
        if attacked.any():  # what the backend really received, batch by batch, is x[attacked] in order
            assert torch.equal(torch.cat([cx for cx, _ in seen]), x[attacked])
            assert torch.equal(torch.cat([cy for _, cy in seen]), y[attacked])
        else:
            assert seen == []
    assert stages["pgd-5-1"]["attacked"] == stages["clean"]["robust"]


def test_final_accuracy_is_the_per_example_minimum(recorded, trained_digits_model, data):
    report, result, _ = recorded
    x, y = data
    flags = {s["name"]: torch.tensor([c == "1" for c in s["robust"]]) for s in report["stages"]}
    worst = torch.stack(list(flags.values())).all(dim=0)  # min over every stage's per-example result
    assert report["final"]["robust"] == "".join("1" if v else "0" for v in worst.tolist())
    assert report["final"]["robust_acc"] == pytest.approx(worst.float().mean().item())
    assert report["final"]["robust_acc"] <= min(s["robust_acc"] for s in report["stages"])
    chain = [flags[n].float().mean().item() for n in ("clean", "apgd-ce", "apgd-t", "fab-t", "square")]
    assert chain == sorted(chain, reverse=True)
    # independent recomputation: the returned adversarial inputs, fed to the model, give exactly these flags
    assert result.x_adv_complete
    assert bool(make_threat("linf", EPS).contains(x, result.x_adv, atol=1e-5).all())
    with torch.no_grad():
        assert torch.equal(trained_digits_model(result.x_adv).argmax(1) == y, worst)
    assert report["final"]["robust_acc"] < report["accuracy"]["clean"]  # the attacks found something


def test_report_validates_against_its_schema(recorded):
    report = json.loads(json.dumps(recorded[0]))  # what report.json holds
    validate_report(report)
    assert report["backend"]["name"] == "torchattacks" and report["standard"] is False
    assert report["settings"]["pgd-5-1"]["step"] == pytest.approx(EPS / 4)
    assert report["environment"]["torchattacks"] and len(report["model"]["sha256"]) == 64
    assert f"{100 * report['final']['robust_acc']:.2f}%" in markdown(report)
    for break_it in (lambda r: r.pop("seed"), lambda r: r["final"].update(robust_acc=1.5),
                     lambda r: r["stages"][1].update(robust="01"), lambda r: r["threat"].update(norm="l7"),
                     lambda r: r["sanity"]["checks"][0].update(level="fine")):
        bad = copy.deepcopy(report)
        break_it(bad)
        with pytest.raises(ReportSchemaError):
            validate_report(bad)


def test_report_states_each_attacks_real_step(trained_digits_model, data):
    """FGSM's step is ε (not the ε/4 reports used to write for every attack); PGD's is the configured one."""
    x, y = data
    plan = quick_plan(attacks=["clean", "fgsm", "pgd"], sections={"fgsm": {"name": "fgsm"},
                                                                  "pgd": {"name": "pgd", "steps": 3, "step": 0.03}})
    report, _ = evaluate_robustness(trained_digits_model, x[:20], y[:20], plan, num_classes=10)
    report = json.loads(json.dumps(report))
    validate_report(report)
    fgsm, pgd = report["settings"]["fgsm"], report["settings"]["pgd-3-1"]
    assert fgsm["step"] == pytest.approx(EPS) and fgsm["step_rule"] == "ε" and fgsm["radius"] == pytest.approx(EPS)
    assert pgd["step"] == pytest.approx(0.03) and pgd["step_rule"] == "fixed 0.03" and pgd["steps"] == 3
    assert {s["name"]: s["settings"] for s in report["stages"]}["fgsm"] == fgsm
    assert "- fgsm: step 0.1 (ε), 1 step(s)" in markdown(report)
    default = quick_plan(attacks=["clean", "pgd"])
    report, _ = evaluate_robustness(trained_digits_model, x[:20], y[:20], default, num_classes=10)
    assert report["settings"]["pgd-5-1"]["step"] == pytest.approx(EPS / 4)
    assert report["settings"]["pgd-5-1"]["step_rule"] == "ε/4"
    bad = json.loads(json.dumps(report))
    bad["stages"][1]["settings"].pop("step_rule")
    with pytest.raises(ReportSchemaError, match="step_rule"):
        validate_report(bad)


def _levels(report):
    return {c["name"]: c["level"] for c in report["sanity"]["checks"]}


def test_clean_model_passes_every_check(recorded):
    assert recorded[0]["sanity"]["n_errors"] == 0
    assert all(level == "ok" for level in _levels(recorded[0]).values())


def test_sanity_fires_on_a_model_left_in_train_mode(trained_digits_model, data):
    model = copy.deepcopy(trained_digits_model).train()  # has BatchNorm: train-mode outputs differ
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="train mode"):
        report, _ = evaluate_robustness(model, *data, quick_plan(attacks=["clean"]), num_classes=10)
    assert _levels(report)["eval_mode"] == "warning"
    assert model.training  # the caller's mode is restored ...
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # ... and BN statistics untouched
    with torch.no_grad():  # ... and the evaluation ran in eval mode
        expected = trained_digits_model(data[0]).argmax(1) == data[1]
    assert report["stages"][0]["robust"] == "".join("1" if v else "0" for v in expected.tolist())


class Noisy(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + torch.randn(x.shape[0], 10)


class Quantised(nn.Module):
    """Rounds its input first: a gradient-masking 'defence' whose input gradient is zero everywhere."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


def test_sanity_fires_on_randomised_and_masked_models(trained_digits_model, data):
    x, y = data
    noisy = checks_before(Noisy(trained_digits_model), x, y, given_training=False)
    assert {c.name: c.level for c in noisy}["deterministic"] == "error"
    eot = checks_before(Noisy(trained_digits_model), x, y, given_training=False, randomised_ok=True)
    assert {c.name: c.level for c in eot}["deterministic"] == "ok"  # expected under --version rand (EOT)
    masked = {c.name: c.level for c in checks_before(Quantised(trained_digits_model), x, y, given_training=False)}
    assert masked["zero_gradients"] == "warning" and masked["deterministic"] == "ok"
    random_weights = make_digits_model(seed=1).eval()
    with torch.no_grad():
        for p in random_weights.parameters():
            p.normal_(0, 1e-3, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning):
        report, _ = evaluate_robustness(random_weights, x, y, quick_plan(attacks=["clean"]), num_classes=10)
    assert _levels(report)["near_chance"] == "warning"


def test_sanity_fires_on_softmax_outputs(trained_digits_model, data):
    model = nn.Sequential(trained_digits_model, nn.Softmax(dim=1))
    levels = {c.name: c.level for c in checks_before(model, *data, given_training=False)}
    assert levels["logits"] == "error"


def test_adversarial_examples_outside_the_ball_are_caught_not_counted(trained_digits_model, data, monkeypatch):
    def too_far(self, model, spec, x, y, **kw):
        return (x + 3 * EPS * torch.sign(torch.randn_like(x))).clamp(0, 1)

    monkeypatch.setattr(TorchattacksBackend, "perturb", too_far)
    with pytest.warns(RuntimeWarning, match="outside"):
        report, _ = evaluate_robustness(trained_digits_model, *data, quick_plan(attacks=["clean", "autoattack"]),
                                        num_classes=10)
    levels = _levels(report)
    assert levels["in_threat_model:apgd-ce"] == "error"
    assert report["accuracy"]["autoattack"] == report["accuracy"]["clean"]  # invalid examples break nothing


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_same_report(recorded, trained_digits_model, data, tmp_path,
                                                          monkeypatch):
    calls = {"n": 0}
    original = TorchattacksBackend.perturb

    def dies_in_fab(self, model, spec, x, y, **kw):
        if spec.name == "fab-t":
            calls["n"] += 1
            if calls["n"] == 2:  # second batch of the third stage
                raise Interrupt
        return original(self, model, spec, x, y, **kw)

    monkeypatch.setattr(TorchattacksBackend, "perturb", dies_in_fab)
    with pytest.raises(Interrupt):
        evaluate_robustness(trained_digits_model, *data, quick_plan(), num_classes=10, out_dir=tmp_path)
    state = list(tmp_path.glob(".eval_state-*.json"))
    assert len(state) == 1
    saved = json.loads(state[0].read_text())["stages"]
    assert saved["fab-t"]["next_batch"] == 1 and not saved["fab-t"]["done"] and "square" not in saved
    monkeypatch.setattr(TorchattacksBackend, "perturb", original)
    report, result = evaluate_robustness(trained_digits_model, *data, quick_plan(), num_classes=10, out_dir=tmp_path)
    assert report["resumed"] and not result.x_adv_complete
    assert strip_timing(report) == strip_timing(recorded[0])
    assert not list(tmp_path.glob(".eval_state-*.json"))  # removed once complete


def test_cli_evaluates_a_module_factory_model(trained_digits_model, tmp_path, monkeypatch, capsys):
    from robustrain.cli import main
    from robustrain.evaluation.report import file_sha256

    torch.save(trained_digits_model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "digits_factory.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom conftest import make_digits_model\n\n"
        "def build():\n    return make_digits_model()\n" % str(__import__("pathlib").Path(__file__).parent))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = main(["eval", "--model", "digits_factory:build", "--weights", "w.pt", "--dataset", "digits", "--eps", "0.1",
                 "--n-ex", "30", "--batch-size", "15", "--steps", "3", "--restarts", "1", "--aa-steps", "3",
                 "--square-queries", "20", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    assert report["model"]["weights_sha256"] == file_sha256(tmp_path / "w.pt")
    assert [s["name"] for s in report["stages"]] == ["clean", "pgd-3-1", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert (out / "report.md").read_text().startswith("# Robustness evaluation: digits_factory:build")
    assert "worst-case robust accuracy" in capsys.readouterr().out
    assert main(["eval", "--model", "digits_factory:build", "--dataset", "digits"]) == 2  # no --eps
    assert "--eps" in capsys.readouterr().err


def test_official_backend_runs_the_cascade_as_torchattacks_does(recorded, trained_digits_model, data, monkeypatch):
    """The official AutoAttack code (PyPI pyautoattack, for real): each stage builds the right official component
    with the stage's settings and gets the cascade's points; per-stage robust accuracy matches the torchattacks
    backend's on the same examples and seeds (within 2 of 60 examples)."""
    from robustrain.evaluation.backends import OfficialBackend

    built = []
    original = OfficialBackend.build

    def spy(self, model, spec, **kw):
        atk = original(self, model, spec, **kw)
        built.append((spec.name, type(atk).__name__, dict(vars(atk))))
        return atk

    monkeypatch.setattr(OfficialBackend, "build", spy)
    report, _ = evaluate_robustness(trained_digits_model, *data, quick_plan(attacks=["clean", "autoattack"],
                                                                            backend="autoattack"), num_classes=10)
    validate_report(report)
    assert report["backend"]["name"] == "autoattack" and report["backend"]["version"].startswith("pyautoattack")
    order = [n for i, (n, _, _) in enumerate(built) if i == 0 or built[i - 1][0] != n]
    assert order == ["apgd-ce", "apgd-t", "fab-t", "square"]
    kinds = {n: (cls, attrs) for n, cls, attrs in built}
    assert kinds["apgd-ce"][0] == "APGDAttack" and kinds["apgd-ce"][1]["loss"] == "ce"
    assert kinds["apgd-ce"][1]["n_iter"] == 4 and kinds["apgd-ce"][1]["n_restarts"] == 1
    assert kinds["apgd-t"][0] == "APGDAttack_targeted" and kinds["apgd-t"][1]["n_target_classes"] == 9
    assert kinds["fab-t"][1]["targeted"] is True and kinds["fab-t"][1]["n_target_classes"] == 9
    assert kinds["square"][0] == "SquareAttack" and kinds["square"][1]["n_queries"] == 30
    ported = recorded[0]
    for name in ("clean", "apgd-ce", "apgd-t", "fab-t", "square"):
        assert abs(report["accuracy"][name] - ported["accuracy"][name]) <= 2 / N + 1e-9, name
