"""The ``fast`` AutoAttack backend: per example the official package's outcome (pyautoattack), inside the threat
model, the model untouched.

Each component runs beside the official class on the same batch (the FGSM-RS digits CNN, ε 0.1, reduced steps /
queries) and must flag exactly the same examples as broken; the whole cascade through ``evaluate_robustness`` must
give the robust flags of the official ``run_standard_evaluation``.
"""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import digits_batch
from robustrain.errors import ConfigError
from robustrain.evaluation import fast_autoattack as fa
from robustrain.evaluation.autoattack import autoattack_stages
from robustrain.evaluation.backends import BACKENDS, make_backend
from robustrain.evaluation.pipeline import EvalPlan, evaluate_robustness
from robustrain.threat import make_threat

official = pytest.importorskip("pyautoattack")
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted  # noqa: E402
from pyautoattack.fab_pt import FABAttack_PT  # noqa: E402
from pyautoattack.square import SquareAttack  # noqa: E402

EPS = 0.1
STEPS = 12
QUERIES = 150
N = 120
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data(digits, trained_digits_model):
    """Test digits the model classifies correctly (what the cascade hands an attack)."""
    x, y = digits_batch(digits[1], N)
    with torch.no_grad():
        ok = trained_digits_model(x).max(1)[1] == y
    return x[ok], y[ok]


def robust(model, adv, y):
    with torch.no_grad():
        return model(adv).max(1)[1] == y


def official_attack(name, model, eps, norm="Linf"):
    common = dict(eps=eps, norm=norm, seed=0, device="cpu", verbose=False)
    return {
        "apgd-ce": lambda: APGDAttack(model, n_iter=STEPS, loss="ce", **common),
        "apgd-dlr": lambda: APGDAttack(model, n_iter=STEPS, loss="dlr", n_restarts=2, **common),
        "apgd-t": lambda: APGDAttack_targeted(model, n_iter=STEPS, n_target_classes=9, **common),
        "fab-t": lambda: FABAttack_PT(model, n_iter=STEPS, targeted=True, n_target_classes=9, **common),
        "square": lambda: SquareAttack(model, n_queries=QUERIES, p_init=0.8, resc_schedule=False, **common),
    }[name]()


def fast_attack(name, model, x, y, eps, norm="linf"):
    kw = dict(norm=norm, eps=eps, seed=0)
    return {
        "apgd-ce": lambda: fa.apgd(model, x, y, steps=STEPS, loss="ce", **kw),
        "apgd-dlr": lambda: fa.apgd(model, x, y, steps=STEPS, loss="dlr", restarts=2, **kw),
        "apgd-t": lambda: fa.apgd_targeted(model, x, y, steps=STEPS, target_classes=9, **kw),
        "fab-t": lambda: fa.fab_targeted(model, x, y, steps=STEPS, target_classes=9, **kw),
        "square": lambda: fa.square(model, x, y, queries=QUERIES, **kw),
    }[name]()


@pytest.mark.parametrize("name,eps,norm", [("apgd-ce", EPS, "linf"), ("apgd-ce", 0.2, "linf"),
                                           ("apgd-ce", 0.5, "l2"), ("apgd-dlr", EPS, "linf"),
                                           ("apgd-t", EPS, "linf"), ("apgd-t", 0.4, "l2"), ("fab-t", EPS, "linf"),
                                           ("fab-t", 0.2, "linf"), ("square", EPS, "linf"), ("square", 0.2, "linf")])
def test_component_flags_equal_the_official_class(trained_digits_model, data, name, eps, norm):
    model = trained_digits_model
    x, y = data
    torch.manual_seed(1)
    theirs = robust(model, official_attack(name, model, eps, {"linf": "Linf", "l2": "L2"}[norm]).perturb(x, y), y)
    torch.manual_seed(2)  # the components seed themselves: the caller's RNG state must not matter
    ours_adv = fast_attack(name, model, x, y, eps, norm)
    ours = robust(model, ours_adv, y)
    assert torch.equal(ours, theirs), f"{name}: {(ours != theirs).sum()} of {len(y)} flags differ"
    assert 0 < int((~ours).sum()) < len(y), "the check needs both broken and robust points"
    delta = (ours_adv - x).flatten(1)
    size = delta.abs().max(1)[0] if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-6 and float(ours_adv.min()) >= 0 and float(ours_adv.max()) <= 1
    assert torch.equal(ours_adv[ours], x[ours]), "a point not broken comes back unchanged"


def test_components_leave_the_model_and_rng_alone(trained_digits_model, data):
    model = trained_digits_model
    x, y = data
    before = copy.deepcopy(model.state_dict())
    rng = torch.random.get_rng_state()
    spec = autoattack_stages("standard", 10, steps=3, queries=20)
    backend = make_backend("fast")
    for s in spec:
        backend.perturb(model, s, x[:20], y[:20], norm="linf", eps=EPS, seed=0)
    assert not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_unsupported_settings_name_the_official_backend(trained_digits_model, data):
    x, y = data
    assert "fast" in BACKENDS
    with pytest.raises(ConfigError, match="--backend autoattack"):
        fa.square(trained_digits_model, x, y, norm="l2", eps=0.5)
    with pytest.raises(ConfigError, match="--backend autoattack"):
        fa.fab_targeted(trained_digits_model, x, y, norm="l1", eps=1.0)
    rand = autoattack_stages("rand", 10)[0]
    with pytest.raises(ConfigError, match="EOT"):
        make_backend("fast").perturb(trained_digits_model, rand, x, y, norm="linf", eps=EPS, seed=0)
    spy = []
    plan = EvalPlan(make_threat("l2", 0.5), attacks=["clean", "autoattack"], backend="fast", aa_steps=2)
    with pytest.MonkeyPatch.context() as mp:  # refused when the stages are built, before APGD runs
        mp.setattr(fa, "apgd", lambda *a, **k: spy.append(1))
        with pytest.raises(ConfigError, match="no fab-t for the l2 threat model"):
            evaluate_robustness(trained_digits_model, x, y, plan, num_classes=10)
    assert spy == []


def official_standard(model, x, y, *, eps, batch_size):
    """The official ``run_standard_evaluation`` with the components rebuilt for reduced steps / queries."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device="cpu")
    aa.verbose = False
    aa.apgd = official_attack("apgd-ce", model, eps)
    aa.apgd_targeted = official_attack("apgd-t", model, eps)
    aa.fab = official_attack("fab-t", model, eps)
    aa.square = official_attack("square", model, eps)
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    return y_adv == y


def test_cascade_flags_equal_official_run_standard_evaluation(trained_digits_model, digits):
    model = trained_digits_model
    x, y = digits_batch(digits[1], 90)
    eps = 0.15  # breaks points in every stage but FAB-T at these reduced settings
    theirs = official_standard(model, x, y, eps=eps, batch_size=40)
    plan = EvalPlan(make_threat("linf", eps), attacks=["clean", "autoattack"], batch_size=40, aa_steps=STEPS,
                    square_queries=QUERIES, seed=0, backend="fast")
    report, result = evaluate_robustness(model, x, y, plan, num_classes=10)
    assert report["backend"]["name"] == "fast"
    assert torch.equal(result.final, theirs), f"{(result.final != theirs).sum()} flags differ"
    stages = {s["name"]: s["robust_acc"] for s in report["stages"]}
    assert stages["clean"] > stages["apgd-ce"] > stages["square"] > 0
