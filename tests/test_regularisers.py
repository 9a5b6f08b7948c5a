"""Regularisers against catastrophic overfitting: each term against an independent computation from its formula on
a tiny model and fixed tensors, ELLE-A's λ rule, exact state round trips, and a Trainer run through the config."""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from robustrain.attacks import FGSM, AttackResult
from robustrain.config import load_config
from robustrain.errors import ConfigError
from robustrain.build import build_trainer
from robustrain.regularisers import (AAER, ELLE, ELLEA, REGULARISERS, ConvergeSmooth, GradAlign, WeightCentralisation,
                                     build_regulariser)
from robustrain.regularisers.convergesmooth import in_constant_segment, smoothed_ce
from robustrain.regularisers.elle import elle_default_lambda
from robustrain.regularisers.gradalign import gradalign_default_lambda
from robustrain.threat import make_threat
from robustrain.training import CrossEntropy, LRSchedule, StepContext, Trainer, load_checkpoint

from conftest import KillAt, digits_batch, make_digits_model

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quickstart_digits.yaml"
EPS = 0.1
THREAT = make_threat("linf", EPS)


# -- helpers ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch(digits):
    x, y = digits_batch(digits[0], 16)
    return x, y


def plain_model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The digits CNN without BatchNorm, so every example's output is independent of the rest of the batch."""
    return make_digits_model(batchnorm=False).to(dtype).train()


def context(model, x, y, *, seed: int = 0, epoch: int = 0, result: AttackResult | None = None) -> StepContext:
    """A training step's context after the objective: zero-init FGSM (step ε), then CE on x_adv."""
    gen = torch.Generator().manual_seed(seed)
    if result is None:
        result = FGSM(THREAT, bn_mode="train")(model, x, y, generator=gen)
    ctx = StepContext(model, x, y, result, epoch, 0, gen, contextlib.nullcontext)
    CrossEntropy()(ctx)
    return ctx


def gen_at(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def per_example_losses(model, points: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ℓ(x_i) one example at a time (a separate forward each)."""
    return torch.stack([F.cross_entropy(model(points[i:i + 1]), y[i:i + 1]) for i in range(len(y))])


def weight_grads(model) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


# -- defaults per ε ---------------------------------------------------------------------------------------
def test_paper_defaults_per_eps():
    lin = lambda e: make_threat("linf", e / 255)  # noqa: E731
    lams = [elle_default_lambda(lin(e)) for e in (2, 8, 10, 16, 20, 22, 26)]
    assert lams == [1000, 1000, 5000, 5000, 5000, 10000, 10000]
    assert gradalign_default_lambda(lin(8)) == pytest.approx(0.2)
    assert gradalign_default_lambda(lin(16)) == pytest.approx(2.0)
    assert gradalign_default_lambda(lin(2)) == pytest.approx(0.036, abs=5e-4)  # the official script's 0.036
    assert gradalign_default_lambda(lin(24)) == pytest.approx(2.0)
    a = AAER(lin(8), variant="rs")
    assert (a.lam1, a.lam2, a.lam3) == (1.0, 2.5, 1.5)
    a = AAER(lin(16), variant="n")
    assert (a.lam2, a.lam3) == (8.5, 1.5)
    with pytest.raises(ConfigError, match="lam2 and lam3"):
        AAER(lin(10))
    e = ELLEA(lin(16))
    assert (e.lam, e.lam_max, e.decay, e.sensitivity) == (0.0, 4000.0, 0.99, 2.0)


def test_unknown_regulariser_option_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"lam_max"):
        build_regulariser("elle_a", THREAT, lam_mx=10.0)
    with pytest.raises(ConfigError, match=r"did you mean 'regularisers\[0\].lam'"):
        load_config(QUICK, ["regularisers=[{name: elle, lamb: 5}]"])
    cfg = load_config(QUICK, ["regularisers=[{name: gradalign, lam: 1/5}]"])
    assert cfg.regularisers[0]["lam"] == pytest.approx(0.2)


# -- ELLE ------------------------------------------------------------------------------------------------
def test_elle_error_matches_the_formula(batch):
    x, y = batch
    x = x.double()  # E_lin is a small difference of O(1) losses: compare in float64
    model = plain_model(torch.float64)
    ctx = context(model, x, y, seed=3)
    state = ctx.generator.get_state()
    out = ELLE(THREAT, lam=100.0)(ctx)
    # independent: the same draws, E_lin written out example by example
    g = torch.Generator()
    g.set_state(state)
    u = torch.rand(x.shape, generator=g).double() * 2 - 1
    u2 = torch.rand(x.shape, generator=g).double() * 2 - 1
    a = torch.rand(len(y), generator=g).double()
    xa, xb = x + EPS * u, x + EPS * u2
    xc = (1 - a)[:, None, None, None] * xa + a[:, None, None, None] * xb
    with torch.no_grad():
        la, lb, lc = (per_example_losses(model, p, y) for p in (xa, xb, xc))
    expected = sum((lc[i] - (1 - a[i]) * la[i] - a[i] * lb[i]) ** 2 for i in range(len(y))) / len(y)
    assert float(out["error"]) == pytest.approx(float(expected), rel=1e-3)
    assert float(out["loss"].detach()) == pytest.approx(100.0 * float(expected), rel=1e-3)
    assert float(expected) > 0
    # the triplets are not clipped (paper, official CIFAR code); clip=True keeps them in the box
    assert (xa.min() < 0) or (xa.max() > 1)
    # single backprop: the weights get a gradient from E_lin alone, no create_graph needed
    out["loss"].backward()
    assert all(gr.abs().sum() > 0 for gr in weight_grads(model))


def test_elle_clip_option_keeps_triplets_in_the_box(batch):
    x, y = batch
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            seen.append(z.detach().clone())
            return self.inner(z)

    model = Spy(plain_model())
    ctx = context(model, x, y)
    seen.clear()
    ELLE(THREAT, lam=1.0, clip=True)(ctx)
    assert len(seen) == 1 and seen[0].shape[0] == 3 * len(y)  # one forward of the 3B concatenation
    assert seen[0].min() >= 0 and seen[0].max() <= 1


def test_elle_a_lambda_follows_the_rule_on_a_scripted_sequence():
    term = ELLEA(THREAT, lam_max=4000.0, decay=0.99, sensitivity=2.0)
    errors = [1.0, 2.0, 100.0,  # a spike while the history has only 2 values: no trigger
              0.0, 2.0,
              3.2,  # history [1,2,100,0,2]: mean 21, std 39.5 → no trigger
              ]
    lams = []
    for e in errors:
        term.update(e)
        lams.append(term.lam)
    assert lams == [0.0] * 6
    # population std: history [0, 2, 0, 2] has mean 1, population std 1 (sample std 1.155);
    # 3.2 > 1 + 2·1 triggers with the population std and would not with the sample std (threshold 3.31)
    term = ELLEA(THREAT)
    for e in [0.0, 2.0, 0.0, 2.0, 3.2]:
        term.update(e)
    assert term.lam == 4000.0
    term.update(1.0)
    assert term.lam == pytest.approx(4000.0 * 0.99)
    term.update(1.0)
    assert term.lam == pytest.approx(4000.0 * 0.99 ** 2)
    assert term.history == [0.0, 2.0, 0.0, 2.0, 3.2, 1.0, 1.0]


def test_elle_a_new_lambda_is_used_from_the_next_step(batch):
    x, y = batch
    model = plain_model()
    term = ELLEA(THREAT)
    term.history = [0.0, 0.0, 0.0]  # any positive error is a spike now
    ctx = context(model, x, y)
    out = term(ctx)
    assert out["lam"] == 0.0 and float(out["loss"].detach()) == 0.0
    assert float(out["error"]) > 0  # computed even at λ = 0
    term.after_step(ctx, out)
    out2 = term(context(model, x, y, seed=1))
    assert out2["lam"] == 4000.0 and out2["triggered"] == 1.0
    assert float(out2["loss"].detach()) == pytest.approx(4000.0 * float(out2["error"]))


@given(values=st.lists(st.integers(0, 1000), min_size=1, max_size=40))
def test_elle_a_lambda_is_reset_or_decayed(values):
    term = ELLEA(THREAT, lam_max=50.0, decay=0.9)
    for t, v in enumerate(values):
        before, history = term.lam, list(term.history)
        term.update(float(v))
        assert term.lam in (50.0, pytest.approx(0.9 * before))
        if t <= 2:
            assert term.lam == pytest.approx(0.9 * before)  # never triggers before 3 values
        elif v > max(history) + 2.0 * (max(history) - min(history)) / 2 + 1:  # mean + 2·std is at most this
            assert term.lam == 50.0
        elif v <= min(history):  # never above the mean
            assert term.lam == pytest.approx(0.9 * before)
    assert term.history == [float(v) for v in values]


def _sgd_by_hand(w: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, lr: float, momentum: float = 0.9,
                 wd: float = 5e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of SGD with momentum and coupled weight decay (PyTorch's rule, dampening 0), written out."""
    d = g + wd * w
    buf = d.clone() if buf is None else momentum * buf + d
    return w - lr * buf, buf


@pytest.mark.parametrize("cls", [ELLE, ELLEA])
def test_elle_code_behaviour_takes_two_sgd_steps_with_the_same_gradient(cls, batch):
    """behaviour: code = the official loop: optimizer.step(); scheduler.step(); optimizer.step(), one backward."""
    x, y = batch
    sched = LRSchedule("cyclic", 0.1, 4, 2, peak=0.5)  # lr per step 0, 0.05, 0.1, 0.05, (0): every step differs
    runs = {}
    for behaviour in ("paper", "code"):
        model = plain_model()
        term = cls(THREAT, behaviour=behaviour, **({"lam": 50.0} if cls is ELLE else {}))
        if cls is ELLEA:
            term.lam = 50.0  # as after a spike, so the term shapes the gradient
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        trainer = Trainer(model, FGSM(THREAT, bn_mode="train"), opt, sched, [], epochs=1, loss_terms=[term], seed=3)
        params = list(model.parameters())
        w = [p.detach().clone() for p in params]
        bufs: list[torch.Tensor | None] = [None] * len(params)
        grads = []
        for k, (xb, yb) in enumerate(((x[:8], y[:8]), (x[8:], y[8:]))):
            logs = trainer.train_step(xb, yb)
            g = [p.grad.detach().clone() for p in params]  # this batch's gradient (kept after the step)
            grads.append(g)
            # independent: the same gradient, one SGD update per official optimizer.step(), the second one with the
            # lr and CyclicLR momentum of the next iteration (momentum = 0.9 − 0.1·lr/lr_max, 0.8 at the peak)
            for t in ([k, k + 1] if behaviour == "code" else [k]):
                for i in range(len(params)):
                    w[i], bufs[i] = _sgd_by_hand(w[i], g[i], bufs[i], sched(t), momentum=0.9 - 0.1 * sched(t) / 0.1)
            for p, want in zip(params, w):
                assert torch.allclose(p.detach(), want, rtol=1e-5, atol=1e-7), (behaviour, k)
            assert logs["lr"] == sched(k)  # the logged lr is the batch's first step's
            trainer.step += 1
        runs[behaviour] = (w, grads)
        if cls is ELLEA:
            assert len(term.history) == 2  # λ is updated once per batch, not per optimiser step
    # the first batch's gradient is the same in both behaviours (same weights, same draws); the weights are not
    assert all(torch.equal(a, b) for a, b in zip(runs["paper"][1][0], runs["code"][1][0]))
    assert not all(torch.allclose(a, b) for a, b in zip(runs["paper"][0], runs["code"][0]))


def test_elle_behaviour_through_the_config_and_the_trainer(tmp_path):
    cfg = load_config(QUICK, ["regularisers=[{name: elle, lam: 50, behaviour: code}]", "attack={name: fgsm, clip: false}",
                              f"out_dir={tmp_path}"])
    trainer, _ = build_trainer(cfg, tmp_path / "run")
    assert trainer.loss_terms[0].optimizer_steps == 2 and trainer.attack.clip is False
    assert load_config(QUICK, ["regularisers=[{name: elle_a}]"]).regularisers[0].get("behaviour") is None
    assert ELLE(THREAT).behaviour == "paper" and ELLE(THREAT).optimizer_steps == 1  # the default is the paper


@pytest.mark.slow
@pytest.mark.parametrize("warmup_epochs", [2, 0], ids=["eps_warmup", "no_warmup"])
def test_elle_and_gradalign_draw_in_the_radius_the_attack_used(tmp_path, monkeypatch, warmup_epochs):
    """During the ε warm-up the step context carries the attack's scaled threat model: ELLE's triplets and
    GradAlign's η lie in the ball the attack used at that step, not in the full ε-ball; without warm-up: full ε."""
    import robustrain.kernels as kernels_module
    import robustrain.regularisers.gradalign as gradalign_module

    seen: dict[str, list[tuple[float, float]]] = {"elle": [], "gradalign": []}
    triplets, points = kernels_module.elle_triplets, gradalign_module.random_points

    def spy_triplets(threat, x, generator=None, **kw):
        out = triplets(threat, x, generator, **kw)
        seen["elle"].append((threat.eps, max(float((p - x).abs().max()) for p in out[:2])))
        return out

    def spy_points(ctx, threat, clip):
        out = points(ctx, threat, clip)
        seen["gradalign"].append((threat.eps, float((out - ctx.x).abs().max())))
        return out

    monkeypatch.setattr(kernels_module, "elle_triplets", spy_triplets)
    monkeypatch.setattr(gradalign_module, "random_points", spy_points)
    cfg = load_config(QUICK, ["regularisers=[{name: elle, lam: 1}, {name: gradalign, lam: 0.1}]",
                              "attack={name: fgsm, bn_mode: train}", f"train.eps_warmup_epochs={warmup_epochs}",
                              "train.epochs=3", "data.train_subset=128", "data.batch_size=64", "data.val_size=64",
                              "validation.attack={name: pgd, steps: 1, restarts: 1}", "validation.fgsm=false",
                              "wandb.mode=disabled", "train.progress=false", f"out_dir={tmp_path}"])
    trainer, _ = build_trainer(cfg, tmp_path / "run")
    attack_eps = []
    original_call = type(trainer.attack).__call__

    def record_attack(self, model, x, y, **kw):
        attack_eps.append(self.threat.eps)
        return original_call(self, model, x, y, **kw)

    monkeypatch.setattr(type(trainer.attack), "__call__", record_attack)  # FGSM: the training attack only
    trainer.fit()
    steps = 2 * warmup_epochs  # two batches per epoch
    expected = [EPS * min(1.0, (s + 1) / steps) if steps else EPS for s in range(6)]
    assert trainer.step == 6 and attack_eps == pytest.approx(expected)
    for name in ("elle", "gradalign"):
        radii = [r for r, _ in seen[name]]
        assert radii == pytest.approx(expected), name  # the attack's radius of each step
        assert all(dist <= r + 1e-6 for r, dist in seen[name]), name  # the points lie in that ball
    if steps:
        assert seen["elle"][0][1] < EPS / 2 and seen["gradalign"][0][1] < EPS / 2  # not the full ε-ball


@pytest.mark.parametrize("init_scale", [0.0, 2.0], ids=["elle_fgsm", "nfgsm_elle_a"])
def test_fgsm_clip_false_leaves_the_box_like_the_official_elle_attack(init_scale, batch):
    x, y = batch  # digits: many pixels exactly 0 or 1
    model = plain_model()
    attack = FGSM(THREAT, step=EPS, init_scale=init_scale, project=False, clip=False)
    res = attack(model, x, y, generator=gen_at(5))
    # independent: x_adv = x + δ₀ + step·sign(∇ℓ(x + δ₀)), δ₀ = r·ε·U[−1, 1] from the same draws, never clipped
    g = gen_at(5)
    r = init_scale * EPS
    delta0 = torch.rand(x.shape, generator=g).mul_(2 * r).sub_(r) if init_scale else torch.zeros_like(x)
    xi = (x + delta0).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), xi)
    assert torch.allclose(res.x_init, x + delta0, atol=1e-7)
    assert torch.allclose(res.x_adv, x + delta0 + EPS * grad.sign(), atol=1e-6)
    assert res.x_adv.min() < 0 or res.x_adv.max() > 1  # outside the [0,1] box
    # honest bounds: the ball bound still holds, the box does not, and the attack says so
    assert attack.max_norm == pytest.approx(init_scale * EPS + EPS) and attack.in_box is False
    assert bool((THREAT.norms(res.x_adv - x) <= attack.max_norm + 1e-6).all())
    assert not bool(THREAT.contains(x, res.x_adv, radius=attack.max_norm).all())
    clipped = FGSM(THREAT, step=EPS, init_scale=init_scale, project=False)(model, x, y, generator=gen_at(5))
    assert bool(THREAT.contains(x, clipped.x_adv, radius=attack.max_norm, atol=1e-6).all())
    assert FGSM(THREAT).clip is True and FGSM(THREAT).in_box is True


# -- GradAlign -------------------------------------------------------------------------------------------
def test_gradalign_value_is_the_hand_written_cosine_and_reaches_the_weights(batch):
    x, y = batch
    model = plain_model()
    ctx = context(model, x, y, seed=5)
    state = ctx.generator.get_state()
    out = GradAlign(THREAT, lam=0.7)(ctx)
    # independent: ∇ℓ at the clean point (zero-init FGSM starts there) and at x + η with the same η
    g = torch.Generator()
    g.set_state(state)
    eta = (torch.rand(x.shape, generator=g) * 2 - 1) * EPS
    grads = []
    for point in (x, x + eta):
        p = point.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad(F.cross_entropy(model(p), y, reduction="sum"), p)
        grads.append(gr.flatten(1))
    cos = F.cosine_similarity(grads[0], grads[1], dim=1).mean()
    assert float(out["cos"]) == pytest.approx(float(cos), abs=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(0.7 * (1 - float(cos)), abs=1e-5)
    assert 0 < float(out["loss"].detach())
    # double backprop: the penalty alone gives a non-zero gradient on every weight tensor
    model.zero_grad()
    out["loss"].backward()
    assert all(gr.abs().sum() > 0 for gr in weight_grads(model))


def test_gradalign_weight_gradient_matches_finite_differences(batch):
    x, y = batch
    torch.manual_seed(0)
    model = plain_model(torch.float64)
    x64 = x.double()
    result = FGSM(THREAT, bn_mode="train")(model, x64, y, generator=gen_at(0))  # g1 held fixed (detached)
    term = GradAlign(THREAT, lam=1.0)

    def penalty() -> torch.Tensor:
        ctx = StepContext(model, x64, y, result, 0, 0, gen_at(11), contextlib.nullcontext)
        return term(ctx)["loss"]

    model.zero_grad()
    penalty().backward()
    analytic = weight_grads(model)
    direction = [torch.randn_like(p) for p in model.parameters()]
    h = 1e-6

    def shift(t: float) -> None:
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.add_(t * d)

    shift(h)
    up = float(penalty().detach())
    shift(-2 * h)
    down = float(penalty().detach())
    shift(h)
    numeric = (up - down) / (2 * h)
    predicted = sum(float((a * d).sum()) for a, d in zip(analytic, direction))
    assert predicted == pytest.approx(numeric, rel=1e-4, abs=1e-8)
    assert abs(predicted) > 1e-6


def test_gradalign_excludes_zero_gradients(batch):
    x, y = batch
    model = plain_model()
    ctx = context(model, x, y)
    grad = ctx.result.grad_init.clone()
    grad[:4] = 0
    ctx.result = AttackResult(ctx.result.x_adv, ctx.result.delta, ctx.result.x_init, grad_init=grad)
    out = GradAlign(THREAT)(ctx)
    assert out["n_valid"] == len(y) - 4


# -- AAER ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam2_gradient", [False, True], ids=["official_code", "formula_gradient"])
def test_aaer_selects_abnormal_examples_and_matches_the_formula(lam2_gradient):
    y = torch.tensor([0, 1, 2, 0])
    z_adv = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, 1.0, 0.0], [-0.5, 2.0, 0.5]], requires_grad=True)
    l_adv = F.cross_entropy(z_adv.detach(), y, reduction="none")
    change = torch.tensor([0.5, -0.2, 0.3, -0.1])  # ℓ_init − ℓ_adv: examples 0 and 2 are abnormal
    z_init = z_adv.detach() + torch.tensor([[1.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.2]])
    x = torch.zeros(4, 1, 8, 8)
    result = AttackResult(x_adv=x, delta=x, x_init=x, logits_init=z_init, loss_init=l_adv + change)
    ctx = StepContext(torch.nn.Identity(), x, y, result, 0, 0, gen_at(0), contextlib.nullcontext, logits_adv=z_adv)
    out = AAER(THREAT, lam1=1.5, lam2=2.5, lam3=1.5, lam2_gradient=lam2_gradient)(ctx)
    v_a = (1.0 ** 2 + 2.0 ** 2) / 2  # ‖z_init − z_adv‖² of examples 0 and 2
    v_n = (0.1 ** 2 + 0.2 ** 2) / 2
    expected = 1.5 * (2 / 4) * (2.5 * (0.5 + 0.3) / 2 + 1.5 * (v_a - v_n))
    assert out["count"] == 2 and out["rate"] == 0.5
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(out["loss_drop"]) == pytest.approx(0.4, rel=1e-5)
    out["loss"].backward()
    # gradients only through the abnormal examples' ℓ_adv and z_adv: V_N is a stop-gradient
    assert z_adv.grad[[1, 3]].abs().sum() == 0 and z_adv.grad[[0, 2]].abs().sum() > 0
    # by hand for example 0: ∂/∂z of 1.5·(1/2)·[2.5·(−ℓ_adv)/2 + 1.5·‖z_init − z‖²/2]; the official code's λ2 term
    # is a constant (both losses detached), so only the variation part has a gradient there
    p0 = torch.softmax(z_adv.detach()[0], 0)
    dce = p0 - F.one_hot(y[0], 3).float()
    ce_part = 2.5 * (-dce) / 2 if lam2_gradient else torch.zeros(3)
    by_hand = 1.5 * 0.5 * (ce_part + 1.5 * (-2 * (z_init[0] - z_adv.detach()[0])) / 2)
    assert torch.allclose(z_adv.grad[0], by_hand, atol=1e-6)


@pytest.mark.parametrize("old", [False, True])
def test_aaer_deprecated_drop_gradient_maps_onto_lam2_gradient_and_warns(old):
    with pytest.warns(FutureWarning, match=f"drop_gradient is deprecated.*Write lam2_gradient: {str(old).lower()}"):
        term = AAER(THREAT, lam2=2.5, lam3=1.5, drop_gradient=old)
    assert term.lam2_gradient is old  # the old name meant the opposite of what it says: true KEPT the gradient
    assert AAER(THREAT, lam2=2.5, lam3=1.5).lam2_gradient is False  # default: the official code's detached term
    with pytest.raises(ConfigError, match="give only lam2_gradient"):
        AAER(THREAT, lam2=2.5, lam3=1.5, drop_gradient=old, lam2_gradient=old)
    # through a config: the old key still validates, and building the term warns and maps it
    cfg = load_config(QUICK, [f"regularisers=[{{name: aaer, lam2: 2.5, lam3: 1.5, drop_gradient: {str(old).lower()}}}]"])
    with pytest.warns(FutureWarning, match="lam2_gradient"):
        term = build_regulariser("aaer", THREAT, **{k: v for k, v in cfg.regularisers[0].items() if k != "name"})
    assert term.lam2_gradient is old
    # same gradients as the new spelling, on the fixed tensors of the formula test
    y = torch.tensor([0, 1, 2, 0])
    z0 = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, 1.0, 0.0], [-0.5, 2.0, 0.5]])
    x = torch.zeros(4, 1, 8, 8)
    grads = []
    for t in (term, AAER(THREAT, lam2=2.5, lam3=1.5, lam2_gradient=old)):
        z = z0.clone().requires_grad_(True)
        res = AttackResult(x, x, x, logits_init=z0 + 1, loss_init=F.cross_entropy(z0, y, reduction="none")
                           + torch.tensor([0.5, -0.2, 0.3, -0.1]))
        t(StepContext(torch.nn.Identity(), x, y, res, 0, 0, gen_at(0), contextlib.nullcontext, logits_adv=z))["loss"].backward()
        grads.append(z.grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("change", [[0.5, 0.1, 0.3, 0.2], [-0.5, -0.1, -0.3, 0.0]],
                         ids=["all_abnormal", "none_abnormal"])
def test_aaer_is_zero_unless_both_groups_are_present(change):
    y = torch.tensor([0, 1, 2, 0])
    z_adv = torch.randn(4, 3, generator=gen_at(1), requires_grad=True)
    l_adv = F.cross_entropy(z_adv.detach(), y, reduction="none")
    x = torch.zeros(4, 1, 8, 8)
    result = AttackResult(x, x, x, logits_init=z_adv.detach() + 1, loss_init=l_adv + torch.tensor(change))
    ctx = StepContext(torch.nn.Identity(), x, y, result, 0, 0, gen_at(0), contextlib.nullcontext, logits_adv=z_adv)
    out = AAER(THREAT, lam2=2.0, lam3=1.0)(ctx)
    assert float(out["loss"].detach()) == 0.0
    assert out["count"] == sum(c > 0 for c in change)


def test_aaer_runs_no_forward_pass(batch):
    x, y = batch
    calls = []
    model = plain_model()
    model.register_forward_hook(lambda *a: calls.append(1))
    ctx = context(model, x, y)
    calls.clear()
    AAER(THREAT, lam2=2.5, lam3=1.5)(ctx)
    assert calls == []


# -- ConvergeSmooth and weight centralisation ------------------------------------------------------------
def test_label_smoothed_benign_loss_puts_0_6_on_the_true_class():
    logits = torch.randn(5, 10, generator=gen_at(2))
    y = torch.tensor([0, 3, 9, 1, 1])
    target = torch.full((5, 10), 0.4 / 9)
    target[torch.arange(5), y] = 0.6
    expected = -(target * torch.log_softmax(logits, 1)).sum(1)
    assert torch.allclose(smoothed_ce(logits, y, 0.6), expected, atol=1e-6)


def test_convergesmooth_segments_with_stride():
    active = [e for e in range(110) if in_constant_segment(e, [0, 100, 105, 110], 1)]
    assert active == list(range(2, 99)) + [102, 103, 107, 108]
    assert not in_constant_segment(1, None, 1) and in_constant_segment(2, None, 1)


def test_convergesmooth_gate_and_sign(batch):
    x, y = batch
    model = plain_model()
    with torch.no_grad():
        benign = float(smoothed_ce(model(x), y, 0.6).mean())
    cases = {  # previous epoch mean u_{t−1} → expected sign of the term
        benign - 0.1: 1.0,  # benign loss above the band: +w2·L (under-fitting)
        benign + 0.1: -1.0,  # below: −w2·L (over-fitting)
        benign + 0.02: 0.0,  # inside the band of 0.03: nothing
    }
    for u_prev, sign in cases.items():
        term = ConvergeSmooth(THREAT, w2=2.0, segments=[0, 10], stride=1)
        term.means = [u_prev + 0.5, u_prev]  # |d| = 0.5 → γ_t = γ_max = 0.03
        out = term(context(model, x, y, epoch=3))
        assert out["threshold"] == pytest.approx(0.03)
        assert out["sign"] == sign and out["gate"] == abs(sign)
        assert float(out["loss"].detach()) == pytest.approx(sign * 2.0 * benign, rel=1e-5)
        assert out["loss"].requires_grad == (sign != 0)
    # outside a constant-lr segment (epoch 1 with stride 1, or 9 = end − stride) the gate is closed
    for epoch in (1, 9):
        term = ConvergeSmooth(THREAT, segments=[0, 10], stride=1)
        term.means = [5.0, benign - 1]
        out = term(context(model, x, y, epoch=epoch))
        assert out["active"] == 0.0 and float(out["loss"].detach()) == 0.0


def test_convergesmooth_benign_init_takes_the_loss_at_the_attack_start_point(batch):
    """benign: init = FGSM_RS_CS.py's "benign" forward at x + δ₀ (clipped random start), with the graph to the
    weights; benign: clean = the paper (and FGSM_MEP_CS.py) at x."""
    x, y = batch
    model = plain_model()
    res = FGSM(THREAT, init_scale=1.0, step=EPS, project=False, bn_mode="train")(model, x, y, generator=gen_at(4))
    assert not torch.equal(res.x_init, x) and 0 <= res.x_init.min() and res.x_init.max() <= 1
    target = torch.full((len(y), 10), 0.4 / 9)
    target[torch.arange(len(y)), y] = 0.6
    points = {"init": res.x_init, "clean": x}
    for benign, point in points.items():
        with torch.no_grad():  # by hand: label-smoothed CE (0.6 on the true class, 0.4/9 elsewhere) at the point
            value = float(-(target * torch.log_softmax(model(point), 1)).sum(1).mean())
        term = ConvergeSmooth(THREAT, w2=2.0, segments=[0, 10], stride=1, benign=benign)
        term.means = [value + 0.6, value + 0.5]  # benign loss 0.5 below the last epoch mean: over-fitting → −w2·L
        ctx = context(model, x, y, epoch=3, result=res)
        model.zero_grad()
        out = term(ctx)
        assert float(out["benign_loss"]) == pytest.approx(value, rel=1e-5) and out["sign"] == -1.0
        assert float(out["loss"].detach()) == pytest.approx(-2.0 * value, rel=1e-5)
        out["loss"].backward()
        got = weight_grads(model)
        model.zero_grad()
        (-2.0 * F.cross_entropy(model(point), y, label_smoothing=4 / 9)).backward()  # the same target, torch's way
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, weight_grads(model))), benign
        term.after_step(ctx, out)
        term.on_epoch_end(3)
        assert term.means[-1] == pytest.approx(value, rel=1e-5)  # u_t is the mean of this loss
    with torch.no_grad():  # the two points give different losses here, so the test tells them apart
        assert float(smoothed_ce(model(res.x_init), y, 0.6).mean()) != pytest.approx(
            float(smoothed_ce(model(x), y, 0.6).mean()))


def test_behaviour_options_are_checked_and_name_the_choices():
    assert load_config(QUICK, ["regularisers=[{name: elle, behaviour: code}]"]).regularisers[0]["behaviour"] == "code"
    with pytest.raises(ConfigError, match=r"regularisers\[0\]\.behaviour = 'cod'.*paper, code.*Did you mean 'code'"):
        load_config(QUICK, ["regularisers=[{name: elle_a, behaviour: cod}]"])
    with pytest.raises(ConfigError, match=r"regulariser 'gradalign' has no paper/code behaviour switch.*: elle, elle_a"):
        load_config(QUICK, ["regularisers=[{name: gradalign, behaviour: code}]"])
    with pytest.raises(ConfigError, match=r"'convergesmooth' has no paper/code behaviour switch \(.*benign: clean \| init"):
        load_config(QUICK, ["regularisers=[{name: convergesmooth, behaviour: code}]"])
    with pytest.raises(ConfigError, match=r"'aaer' has no paper/code behaviour switch \(.*lam2_gradient"):
        load_config(QUICK, ["regularisers=[{name: aaer, lam2: 1, lam3: 1, behaviour: paper}]"])
    with pytest.raises(ConfigError, match=r"attack 'fgsm' has no paper/code behaviour switch"):
        load_config(QUICK, ["attack={name: fgsm, behaviour: code}"])
    with pytest.raises(ConfigError, match=r"weight_perturbation\.behaviour = 'official'.*'lap'.*paper, code"):
        load_config(QUICK, ["weight_perturbation={name: lap, beta: 0.01, behaviour: official}"])
    with pytest.raises(ConfigError, match="behaviour must be one of paper, code"):
        ELLEA(THREAT, behaviour="official")
    with pytest.raises(ConfigError, match="benign must be one of clean, init"):
        ConvergeSmooth(THREAT, benign="x_init")
    with pytest.raises(ConfigError, match=r"unknown key 'regularisers\[0\]\.benign'"):
        load_config(QUICK, ["regularisers=[{name: elle, benign: init}]"])
    # the box-leaving FGSM is for training only
    assert load_config(QUICK, ["attack={name: nfgsm, clip: false}"]).attack["clip"] is False
    for where in ("validation.attack", "eval.attack"):
        with pytest.raises(ConfigError, match=rf"{where}\.clip: false leaves the \[0,1\] image box"):
            load_config(QUICK, [f"{where}={{name: fgsm, clip: false}}"])


def test_convergesmooth_threshold_and_epoch_means(batch):
    x, y = batch
    term = ConvergeSmooth(THREAT, gamma=0.03, gamma_ratio=1.5)
    assert term.threshold() == 0.03  # no history yet
    term.means = [1.0, 0.99]
    assert term.threshold() == pytest.approx(0.02)  # |d| = 0.01 < γ_min = 0.02
    term.means = [1.0, 0.975]
    assert term.threshold() == pytest.approx(0.025)
    term.signed_d = True  # the code's signed d: a falling loss gives γ_min
    assert term.threshold() == pytest.approx(0.02)
    # u_t is the per-example mean of the epoch's benign losses
    term = ConvergeSmooth(THREAT)
    model = plain_model()
    total, n = 0.0, 0
    for k, size in enumerate((16, 7)):
        ctx = context(model, x[:size], y[:size], seed=k)
        out = term(ctx)
        term.after_step(ctx, out)
        with torch.no_grad():
            total += float(smoothed_ce(model(x[:size]), y[:size], 0.6).sum())
        n += size
    term.on_epoch_end(0)
    assert term.means == [pytest.approx(total / n, rel=1e-6)]


def test_convergesmooth_example_based_gates_each_example(batch):
    x, y = batch
    model = plain_model()
    with torch.no_grad():
        losses = smoothed_ce(model(x), y, 0.6)
    u = float(losses.median())
    term = ConvergeSmooth(THREAT, example_based=True, stride=0)
    term.means = [u]
    out = term(context(model, x, y, epoch=1))
    dev = losses - u
    expected = ((dev.abs() > 0.03).float() * dev.sign() * losses).mean()
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(out["gate"]) == pytest.approx(float((dev.abs() > 0.03).float().mean()))


def test_weight_centralisation_value_and_gradient(batch):
    x, y = batch
    model = plain_model()
    term = WeightCentralisation(THREAT, w3=0.1)
    ctx = context(model, x, y)
    assert float(term(ctx)["loss"]) == 0.0  # no history during the first epoch
    snapshots = []
    for k in range(3):  # three epochs: change the weights, end the epoch
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * (k + 1) * torch.randn(p.shape, generator=gen_at(k)))
        term.after_step(ctx, {})
        term.on_epoch_end(k)
        snapshots.append([p.detach().clone() for p in model.parameters()])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    mean = [sum(s[i] for s in snapshots) / 3 for i in range(len(snapshots[0]))]
    diff = [p.detach() - m for p, m in zip(model.parameters(), mean)]
    dist = math.sqrt(sum(float((d ** 2).sum()) for d in diff))
    model.zero_grad()
    out = term(context(model, x, y))
    assert out["snapshots"] == 3
    assert float(out["loss"].detach()) == pytest.approx(0.1 * dist, rel=1e-5)
    out["loss"].backward()
    for p, d in zip(model.parameters(), diff):
        assert torch.allclose(p.grad, 0.1 * d / dist, atol=1e-7)


# -- state: round trip and exact resume -------------------------------------------------------------------
def assert_same_state(a: dict, b: dict, where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        u, v = a[key], b[key]
        if isinstance(u, list) and u and isinstance(u[0], torch.Tensor):
            assert len(u) == len(v) and all(torch.equal(p, q) for p, q in zip(u, v)), (where, key)
        else:
            assert u == v, (where, key)


def _round_trip(state: dict, tmp_path: Path) -> dict:
    torch.save(state, tmp_path / "state.pt")
    return torch.load(tmp_path / "state.pt", weights_only=True)


@pytest.mark.parametrize("name", [pytest.param("elle_a", marks=pytest.mark.slow), "convergesmooth", "weight_centralisation"])
def test_state_dict_round_trip_gives_identical_continuation(name, batch, tmp_path):
    x, y = batch
    options = {"convergesmooth": {"stride": 0, "gamma": 0.001}}.get(name, {})

    def run(term, model, steps, start):
        outs = []
        for s in range(start, start + steps):
            ctx = context(model, x, y, seed=s, epoch=s // 2)
            out = term(ctx)
            (F.cross_entropy(ctx.logits_adv, y) + out["loss"]).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.sub_(0.05 * p.grad)
                    p.grad = None
            term.after_step(ctx, out)
            if s % 2 == 1:  # two steps per epoch
                term.on_epoch_end(s // 2)
            outs.append({k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()})
        return outs

    model = plain_model()
    term = build_regulariser(name, THREAT, **options)
    if name == "elle_a":
        term.lam = 50.0  # as after a spike: λ and the history both carry over
    run(term, model, 5, 0)
    saved_state = _round_trip(term.state_dict(), tmp_path)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    full = run(term, model, 3, 5)
    resumed_model = plain_model()
    resumed_model.load_state_dict(saved_model)
    resumed = build_regulariser(name, THREAT, **options)
    resumed.load_state_dict(saved_state)
    again = run(resumed, resumed_model, 3, 5)
    assert again == full
    assert_same_state(resumed.state_dict(), term.state_dict())
    assert any(o["loss"] != 0 for o in full)  # the state mattered: the term was on after the resume


ALL_SIX = ("regularisers=[{name: elle, lam: 50}, {name: elle_a, lam_max: 40}, {name: gradalign}, "
           "{name: aaer, lam2: 2.5, lam3: 1.5}, {name: convergesmooth, stride: 0}, {name: weight_centralisation}]")
FAST = ["train.progress=false", "validation.attack={name: pgd, steps: 2, restarts: 1}", "train.log_every=1",
        "data.batch_size=200", "data.val_size=100", "train.epochs=2", "train.checkpoint_every=2"]


@pytest.mark.slow
def test_trainer_run_through_the_config_logs_every_term_and_resumes_exactly(tmp_path):
    cfg = load_config(QUICK, [*FAST, ALL_SIX, f"out_dir={tmp_path}"])
    full, _ = build_trainer(cfg, tmp_path / "full")
    full.fit()
    per_epoch = full.steps_per_epoch
    kill = per_epoch + 3  # mid-epoch 2: ConvergeSmooth's gate and the weight history are live
    assert full.step > kill

    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == full.step  # every step logged
    expected = {"elle": ["loss", "error", "lam"], "elle_a": ["loss", "error", "lam", "triggered"],
                "gradalign": ["loss", "cos", "n_valid"], "aaer": ["loss", "count", "rate", "loss_drop", "var_gap"],
                "convergesmooth": ["loss", "benign_loss", "threshold", "u_prev", "active", "gate", "sign"],
                "weight_centralisation": ["loss", "distance", "snapshots"]}
    assert set(expected) == set(REGULARISERS)
    for r in steps:
        for name, keys in expected.items():
            for k in keys:
                assert f"{name}/{k}" in r, f"{name}/{k} missing at step {r['step']}"
    last = steps[-1]
    assert last["weight_centralisation/snapshots"] == 1 and last["convergesmooth/active"] == 1.0
    assert last["elle/loss"] == pytest.approx(50 * last["elle/error"], rel=1e-5)

    killed, _ = build_trainer(cfg, tmp_path / "killed")
    killed.callbacks.append(KillAt(kill))
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    ckpt = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert per_epoch < ckpt["trainer"]["step"] <= kill and ckpt["trainer"]["batch_in_epoch"] > 0
    assert set(ckpt["loss_terms"]) == set(REGULARISERS)
    torch.manual_seed(99)
    resumed, _ = build_trainer(cfg, tmp_path / "killed")
    resumed.fit(resume=tmp_path / "killed" / "last.pt")
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for a, b in zip(full.loss_terms, resumed.loss_terms):
        assert_same_state(a.state_dict(), b.state_dict(), a.name)

    def logged(run: str) -> list[dict]:  # each step once, with the uninterrupted run's values (timings aside)
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "images_per_s")} for line in lines]

    assert logged("killed") == logged("full")


# -- recipes ---------------------------------------------------------------------------------------------
ELLE_A = {"name": "elle_a", "lam_max": 4000, "decay": 0.99, "sensitivity": 2}
PAPER = {  # recipe → (ε·255, attack name, attack step·255, project, regulariser options that must match the paper)
    "cifar10_elle": (8, "fgsm", 8, False, [{"name": "elle", "lam": 1000, "behaviour": "paper"}]),
    "cifar10_elle_eps16": (16, "fgsm", 16, False, [{"name": "elle", "lam": 5000, "behaviour": "paper"}]),
    "cifar10_elle_code": (8, "fgsm", 8, False, [{"name": "elle", "lam": 1000, "behaviour": "code"}]),
    "cifar10_elle_code_eps16": (16, "fgsm", 16, False, [{"name": "elle", "lam": 5000, "behaviour": "code"}]),
    "cifar10_elle_a": (8, "fgsm", 8, False, [{**ELLE_A, "behaviour": "paper"}]),
    "cifar10_elle_a_eps16": (16, "fgsm", 16, False, [{**ELLE_A, "behaviour": "paper"}]),
    "cifar10_elle_a_code": (8, "fgsm", 8, False, [{**ELLE_A, "behaviour": "code"}]),
    "cifar10_elle_a_code_eps16": (16, "fgsm", 16, False, [{**ELLE_A, "behaviour": "code"}]),
    "cifar10_nfgsm_elle_a": (8, "nfgsm", 8, False, [{**ELLE_A, "behaviour": "paper"}]),
    "cifar10_nfgsm_elle_a_eps16": (16, "nfgsm", 16, False, [{**ELLE_A, "behaviour": "paper"}]),
    "cifar10_nfgsm_elle_a_code": (8, "nfgsm", 8, False, [{**ELLE_A, "behaviour": "code"}]),
    "cifar10_nfgsm_elle_a_code_eps16": (16, "nfgsm", 16, False, [{**ELLE_A, "behaviour": "code"}]),
    "cifar10_gradalign": (8, "fgsm", 10, True, [{"name": "gradalign", "lam": 0.2}]),
    "cifar10_gradalign_eps16": (16, "fgsm", 20, True, [{"name": "gradalign", "lam": 2.0}]),
    "cifar10_aaer_rs": (8, "fgsm_rs", 10, True, [{"name": "aaer", "lam1": 1.0, "lam2": 2.5, "lam3": 1.5,
                                                  "lam2_gradient": False}]),
    "cifar10_aaer_rs_eps16": (16, "fgsm_rs", 20, True, [{"name": "aaer", "lam2": 7.0, "lam3": 3.25, "lam2_gradient": False}]),
    "cifar10_aaer_n": (8, "nfgsm", 8, False, [{"name": "aaer", "lam2": 1.5, "lam3": 0.15, "lam2_gradient": False}]),
    "cifar10_aaer_n_eps16": (16, "nfgsm", 16, False, [{"name": "aaer", "lam2": 8.5, "lam3": 1.5, "lam2_gradient": False}]),
    "cifar10_convergesmooth": (8, "fgsm_rs", 8, False, [{"name": "convergesmooth", "w2": 1.0, "gamma": 0.03,
                                                        "segments": [0, 100, 105, 110], "stride": 1, "benign": "clean"},
                                                       {"name": "weight_centralisation", "w3": 0.1}]),
    "cifar10_convergesmooth_eps16": (16, "fgsm_rs", 16, False, [{"name": "convergesmooth", "w2": 1.0, "benign": "clean"},
                                                               {"name": "weight_centralisation", "w3": 0.1}]),
    "cifar10_convergesmooth_code": (8, "fgsm_rs", 8, False, [{"name": "convergesmooth", "w2": 1.0, "gamma": 0.03,
                                                             "segments": [0, 100, 105, 110], "stride": 1,
                                                             "benign": "init", "signed_d": True}]),
    "cifar10_convergesmooth_code_eps16": (16, "fgsm_rs", 16, False, [{"name": "convergesmooth", "benign": "init",
                                                                     "signed_d": True}]),
}
RAW_INPUTS = ("elle", "gradalign", "convergesmooth")  # official code without a mean/std layer


@pytest.mark.parametrize("recipe", sorted(PAPER))
def test_cifar10_recipes_have_the_paper_settings(recipe):
    eps, attack, step, project, regs = PAPER[recipe]
    path = ROOT / "configs" / f"{recipe}.yaml"
    cfg = load_config(path)
    assert cfg.threat.eps == pytest.approx(eps / 255) and cfg.model.name == "preact_resnet18"
    assert cfg.attack["name"] == attack and cfg.attack["step"] == pytest.approx(step / 255)
    assert cfg.attack.get("project", attack != "nfgsm") is project
    assert cfg.attack.get("init_scale", 2.0 if attack == "nfgsm" else None) == (2.0 if attack == "nfgsm" else None)
    # every one of these official loops runs its training attack on the model in train mode (BN statistics move)
    assert cfg.attack["bn_mode"] == "train" and cfg.attack["update_bn_stats"] is True
    assert cfg.model.normalise is not any(m in recipe for m in RAW_INPUTS)
    # the box-leaving FGSM belongs to the ELLE code-behaviour recipes only
    assert cfg.attack.get("clip", True) is not ("elle" in recipe and "_code" in recipe)
    # the PGD-50-10 step: ε/4 where the official evaluation scripts use it (ELLE, AAER, GradAlign), 2/255 for
    # ConvergeSmooth (its test.py uses α = 2/255 at every ε)
    eval_step = 2 / 255 if "convergesmooth" in recipe else cfg.threat.eps / 4
    assert cfg.eval.attack["step"] == pytest.approx(eval_step) and cfg.eval.attack["steps"] == 50
    # the header says which behaviour it follows
    head = path.read_text().split("\nname:")[0]
    assert "behaviour" in head.lower() and ("behaviour: code" in head.lower()) == ("_code" in recipe)
    assert len(cfg.regularisers) == len(regs)
    for got, want in zip(cfg.regularisers, regs):
        assert {k: got.get(k) for k in want} == want
    threat = make_threat("linf", cfg.threat.eps)
    for section in cfg.regularisers:  # each builds; the recipe's λ equal the class defaults at this ε where they exist
        term = build_regulariser(section["name"], threat, **{k: v for k, v in section.items() if k != "name"})
        if section["name"] in ("elle", "gradalign"):
            assert term.lam == pytest.approx(type(term)(threat).lam)
        if section["name"] == "aaer":
            default = AAER(threat, variant=section["variant"])
            assert (term.lam2, term.lam3) == (default.lam2, default.lam3)
        if section["name"] in ("elle", "elle_a"):
            assert term.optimizer_steps == (2 if "_code" in recipe else 1)
    if "convergesmooth" in recipe:
        assert cfg.schedule.milestones == [100, 105] and cfg.train.epochs == 110 and cfg.optim.lr == 0.1
        assert cfg.train.label_smoothing == pytest.approx(4 / 9)  # 0.6 on the true class, as the official code
    else:
        assert cfg.train.epochs == 30
        assert cfg.schedule.name == ("interp" if "gradalign" in recipe else "cyclic")  # GradAlign: np.interp by hand
        assert cfg.optim.lr == (0.3 if "gradalign" in recipe else 0.2)


@pytest.mark.parametrize("recipe", ["cifar10_lap_zero", "cifar10_lap_rs", "cifar10_lap_nfgsm", "cifar10_lap_zero_eps16",
                                    "cifar10_lap_rs_eps16", "cifar10_lap_nfgsm_eps16"])
def test_lap_recipes_evaluate_with_step_eps_over_4_and_update_bn_statistics(recipe):
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml")
    assert cfg.eval.attack["step"] == pytest.approx(cfg.threat.eps / 4)  # CIFAR10/utils.py evaluate_pgd: ε/4
    assert cfg.attack["update_bn_stats"] is True and cfg.attack.get("clip", True) is True
