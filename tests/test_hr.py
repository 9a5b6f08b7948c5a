"""HR (training/procedures/hr.py): the closed-form HD weights against hand-computed values and against the official
convex program (HR_Neural_Networks/HR.py@f6d952d ``_initialise_HD_problem``, transcribed in tests/parity/case_hr.py
and solved by a generic solver); the per-example weights reproduce the official loss; the Trainer's main loss;
config errors."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import record_per_example
from parity.case_hr import official_hd_program  # HR.py's HD program, transcribed, solved by SLSQP
from robustrain.errors import ConfigError
from robustrain.training.procedures.hr import HR, example_weights, hd_weights, kl_worst_case, poisoned_mass

ROOT = Path(__file__).resolve().parent.parent


def value(p: torch.Tensor, loss: torch.Tensor) -> float:
    return float(p[:-1] @ loss.double() + p[-1] * loss.double().max())


def kl(q: torch.Tensor, p: torch.Tensor) -> float:
    m = q > 0
    return float((q[m] * (q[m] / p[m]).log()).sum())


# -- hand-computed -------------------------------------------------------------------------------------------
def test_poisoning_moves_alpha_from_the_smallest_losses_to_the_worst_point():
    q = poisoned_mass(torch.tensor([3.0, 1.0, 2.0, 0.5]), 0.3)
    # 1/N = 0.25: the smallest loss (0.5) loses all its 0.25, the next (1.0) loses 0.05; 0.3 on the worst point
    assert q.tolist() == pytest.approx([0.25, 0.20, 0.25, 0.0, 0.3])


def test_kl_step_by_hand():
    # q = (1/2, 1/2) on losses (0, 1): p ∝ q/(η − ℓ); at η = 2, p = (1/3, 2/3) and KL(q‖p) = ½·log(9/8)
    r = 0.5 * math.log(9 / 8)
    p = kl_worst_case(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), r)
    assert p.tolist() == pytest.approx([1 / 3, 2 / 3], abs=1e-9)
    assert kl_worst_case(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), 0.0).tolist() == [0.5, 0.5]
    assert kl_worst_case(torch.tensor([0.5, 0.5]), torch.tensor([2.0, 2.0]), 1.0).tolist() == [0.5, 0.5]


def test_hr_loss_by_hand():
    # ℓ = (1, 3), α = 0.5, r = 0: q = (0, 1/2, 1/2) = p; the loss Σ p ℓ + p_worst·max ℓ = 1.5 + 1.5 = 3
    loss = torch.tensor([1.0, 3.0])
    p = hd_weights(loss, alpha=0.5, r=0.0)
    assert p.tolist() == pytest.approx([0.0, 0.5, 0.5])
    w = example_weights(loss, p)
    assert w.tolist() == pytest.approx([0.0, 2.0]) and (w * loss).mean().item() == pytest.approx(3.0)


# -- against the official program ----------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), alpha=st.sampled_from([0.0, 1e-6, 0.05, 0.1, 0.3]),
       r=st.sampled_from([0.0, 0.01, 0.1, 0.2, 1.0]))
def test_hd_weights_solve_the_official_program(seed, n, alpha, r):
    loss = np.random.default_rng(seed).exponential(1.0, size=n)
    p = hd_weights(torch.tensor(loss), alpha=alpha, r=r)
    # feasible for the official program: on the simplex, KL(q ‖ p) <= r for the q the poisoning step gives
    q = poisoned_mass(torch.tensor(loss), alpha)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12) and bool((p >= 0).all())
    assert kl(q, p) <= r + 1e-9
    assert float(q[-1]) == pytest.approx(min(alpha, 1.0), abs=1e-12) and bool((q[:-1] <= 1 / n + 1e-15).all())
    if r == 0:  # the KL ball of radius 0 is q itself (the generic solver cannot handle r = 0: no interior point)
        assert torch.allclose(p, q, atol=1e-15)
        return
    # optimal: no feasible point the generic solver finds is better, and where it converges it finds ours
    p_ref, v_ref, converged = official_hd_program(loss, alpha, r)
    ours = value(p, torch.tensor(loss))
    q_ref = poisoned_mass(torch.tensor(loss), alpha)  # with it, p_ref is a feasible point whenever this KL holds
    if kl(q_ref, torch.tensor(p_ref).clamp(min=1e-300)) <= r + 1e-9:
        assert ours >= v_ref - 1e-6 * max(1.0, abs(v_ref))
    if converged:
        assert ours == pytest.approx(v_ref, rel=1e-6, abs=1e-8)
        # the worst-case atom sits at max ℓ, so its mass and the arg-max example's are interchangeable (the optimum is
        # not unique there): compare the mass each loss value gets
        def on_losses(w):
            w = np.asarray(w, dtype=float)
            out = w[:n].copy()
            out[int(np.argmax(loss))] += w[n]
            return out
        assert np.abs(on_losses(p.numpy()) - on_losses(p_ref)).max() < 1e-4


@given(seed=st.integers(0, 10_000), n=st.integers(1, 16), alpha=st.floats(0.0, 0.9), r=st.floats(0.0, 2.0))
def test_example_weights_reproduce_the_official_loss_and_its_gradient(seed, n, alpha, r):
    g = torch.Generator().manual_seed(seed)
    loss = (torch.rand(n, generator=g) * 3).requires_grad_(True)
    if n > 2:
        with torch.no_grad():
            loss[1] = loss.max()  # a tie at the maximum
    p = hd_weights(loss, alpha=alpha, r=r)
    ours = (example_weights(loss.detach(), p).float() * loss).mean()
    (g_ours,) = torch.autograd.grad(ours, loss)
    pf = p.float()  # the official: weights in float32, torch.dot(w[:N], ℓ) + torch.max(ℓ)·w[N]
    official = torch.dot(pf[:n], loss) + torch.max(loss) * pf[n]
    (g_official,) = torch.autograd.grad(official, loss)
    assert ours.item() == pytest.approx(official.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(g_ours, g_official, atol=1e-6)


# -- the procedure -----------------------------------------------------------------------------------------
def test_code_behaviour_substitutes_the_official_constants():
    assert HR(alpha=0.0, r=0.2, behaviour="code").alpha == 1e-6
    assert HR(alpha=0.05, r=0.0, behaviour="code").r == 0.001
    assert not HR(alpha=0.0, r=0.0, behaviour="code").active  # ERM, as the code's both-tiny branch
    paper = HR(alpha=0.0, r=0.2)
    assert paper.alpha == 0.0 and paper.r == 0.2 and paper.active
    assert not HR(alpha=0.0, r=0.0).active


def test_hr_weights_the_trainers_main_loss(tmp_path):
    from robustrain.build import build_trainer
    from robustrain.config import load_config

    def trainer(run, *extra):
        cfg = load_config(ROOT / "configs" / "quickstart_digits.yaml", [
            "train.progress=false", "data.train_subset=128", "data.val_size=50", "data.batch_size=64",
            "schedule={name: constant}", f"out_dir={tmp_path}", *extra])
        return build_trainer(cfg, tmp_path / run)[0]

    plain, hr = trainer("plain"), trainer("hr", "procedures=[{name: hr, alpha: 0.1, r: 0.5}]")
    seen = record_per_example(plain)
    x, y = next(iter(plain.train_loader.iterate(0)))
    a, b = plain.train_step(x, y), hr.train_step(x, y)
    per = seen["per_example"]
    p = hd_weights(per, alpha=0.1, r=0.5)
    assert b["loss_main"] == pytest.approx(value(p, per), rel=1e-5)
    assert b["loss_main"] > a["loss_main"]  # the worst case within the ball is above the mean


@pytest.mark.parametrize("spec, message", [
    ("{name: hr, alpha: 1.0}", "alpha.*\\[0, 1\\)"),
    ("{name: hr, r: -0.1}", "r is the KL radius"),
    ("{name: hr, behaviour: official}", "behaviour.*paper.*code"),
    ("{name: hr, radius: 0.1}", "procedures\\[0\\].radius.*Valid keys: name, alpha, r, behaviour"),
])
def test_bad_hr_options_are_config_errors(spec, message):
    from robustrain.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs" / "quickstart_digits.yaml", [f"procedures=[{spec}]"])
