"""``compile=True``: the same attack as eager, the same contracts, and a clean eager fallback."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from robustrain.attacks import PGD, build_attack
from robustrain.threat import make_threat

from conftest import digits_batch, make_digits_model
from test_attacks import assert_unchanged, snapshot


def _broken_compiler(*args, **kwargs):
    raise RuntimeError("simulated compiler failure")


@pytest.mark.slow
def test_compile_failure_falls_back_to_eager_and_warns_once(digits):
    model = make_digits_model()
    x, y = digits_batch(digits[0], 8)
    attack = PGD(make_threat("linf", 0.1), steps=3, compile=True)
    attack._compile_state.fn = _broken_compiler  # what a failing torch.compile does on first call
    before = snapshot(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r1 = attack(model, x, y, generator=torch.Generator().manual_seed(0))
        r2 = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert [str(w.message) for w in caught if w.category is RuntimeWarning] == [
        "PGD: torch.compile failed (RuntimeError: simulated compiler failure); this attack runs eagerly from now on."
    ]
    eager = PGD(make_threat("linf", 0.1), steps=3)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r1.x_adv, eager.x_adv) and torch.equal(r2.x_adv, eager.x_adv)
    assert_unchanged(model, before)


def test_model_error_is_not_taken_for_a_compile_failure(digits):
    class Refuses(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(64, 10)

        def forward(self, x):
            raise ValueError("model says no")

    x, y = digits_batch(digits[0], 4)
    attack = build_attack("fgsm_rs", make_threat("linf", 0.1), compile=True)
    attack._compile_state.fn = _broken_compiler
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match="model says no"):
            attack(Refuses(), x, y)
    assert attack.compile and not attack._compile_state.failed


def test_compile_state_is_shared_by_shallow_copies_and_dropped_by_pickling(digits):
    import copy
    import pickle

    model = make_digits_model()
    x, y = digits_batch(digits[0], 4)
    attack = PGD(make_threat("linf", 0.1), steps=2, compile=True)
    attack._compile_state.fn = _broken_compiler
    assert pickle.loads(pickle.dumps(attack))._compile_state.fn is None
    assert copy.deepcopy(attack)._compile_state.fn is None
    assert "_compile_state" not in repr(attack) and "compile=True" in repr(attack)
    scaled = copy.copy(attack)  # what the Trainer's eps warm-up does every step
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        scaled(model, x, y)
    assert attack._compile_state.failed  # the next copy does not try (and warn) again


@pytest.mark.slow
@pytest.mark.parametrize("name,bn_mode", [("pgd", "eval"), ("fgsm_rs", "train")])
def test_compiled_attack_matches_eager_and_keeps_the_contract(digits, name, bn_mode):
    model = make_digits_model(batchnorm=True)
    x, y = digits_batch(digits[0], 32)
    kwargs = {"steps": 3} if name == "pgd" else {}
    before = snapshot(model)
    seen = []
    hooks = [p.register_hook(lambda g: seen.append(g)) for p in model.parameters()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager
            compiled = build_attack(name, make_threat("linf", 0.1), bn_mode=bn_mode, compile=True, **kwargs)
            r = compiled(model, x, y, generator=torch.Generator().manual_seed(0))
    finally:
        for h in hooks:
            h.remove()
    assert seen == []  # no weight-gradient work in the compiled backward either
    assert_unchanged(model, before)
    eager = build_attack(name, make_threat("linf", 0.1), bn_mode=bn_mode, **kwargs)
    e = eager(model, x, y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(r.grad_init, e.grad_init, rtol=1e-4, atol=1e-6)
    assert (r.x_adv == e.x_adv).float().mean() > 0.99  # a sign may flip where the gradient is ~0
    assert make_threat("linf", 0.1).contains(x, r.x_adv).all()


@pytest.mark.slow
def test_shallow_copy_with_another_loss_uses_its_own_loss(digits):
    import copy

    model = make_digits_model(batchnorm=True).eval()
    x, y = digits_batch(digits[0], 16)
    attack = build_attack("fgsm", make_threat("linf", 0.1), compile=True)
    attack(model, x, y)
    descend = copy.copy(attack)  # shares the compiled function, passes itself to it
    descend.loss_fn = lambda logits, labels: -torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    g_up = attack(model, x, y).grad_init
    g_down = descend(model, x, y).grad_init
    torch.testing.assert_close(g_down, -g_up)
