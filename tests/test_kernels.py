"""The attack-step kernels: the PyTorch reference is what the attacks computed before, the Triton kernels equal
the reference bit for bit (L2: within one fp32 ulp at 1.0, the norms sum in another order), the dispatcher
picks and refuses as documented, and attacks take input gradients with every parameter frozen.

The parity tests (``test_fused_*``) need the Triton interpreter on CPU, which must be switched on
(TRITON_INTERPRET=1) before triton is first imported. In a plain pytest process (where another test may already
have imported triton) they are skipped and ``test_parity_through_the_triton_interpreter`` runs them in a
subprocess with the variable set. On a machine with CUDA they also run in the process itself, on the GPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustrain import kernels
from robustrain.attacks import FGSM, PGD, FGSMRS, attack_guard
from robustrain.errors import ConfigError, KernelUnavailableError
from robustrain.kernels import reference as R
from robustrain.threat import L2Ball, LinfBall, clip_to_box

from conftest import digits_batch, make_digits_model

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRETER
DEVICE = "cuda" if CUDA else "cpu"
_runs_fused = pytest.mark.skipif(not (INTERPRETER or CUDA),
                                 reason="runs in the TRITON_INTERPRET=1 subprocess (or here on a CUDA device)")


def fused(test):
    """A kernel-parity test: on a CUDA device (selected by ``-m gpu``, as scripts/gpu_check.sh does) or through the
    Triton interpreter."""
    return pytest.mark.gpu(_runs_fused(test))

SHAPES = [(1, 3, 5, 7), (129, 3, 5, 7), (3, 1, 67, 65)]  # odd sizes; the last has D = 4355 > one L2 block
DTYPES = [torch.float32, torch.bfloat16]


def case(shape, dtype, seed=0, device="cpu"):
    """x with whole examples at the box edges (0 and 1), δ in the ball, a gradient with zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    x.view(shape[0], -1)[:, ::11] = 0.0
    x.view(shape[0], -1)[:, 5::11] = 1.0
    if shape[0] > 2:
        x[1] = 0.0
        x[2] = 1.0
    x = x.to(dtype)
    delta = clip_to_box(x.float(), (torch.rand(shape, generator=g) * 2 - 1) * 0.05)
    grad = torch.randn(shape, generator=g)
    grad.view(shape[0], -1)[:, ::7] = 0.0
    grad[0, 0] = 0.0
    if shape[0] > 3:
        grad[3] = 0.0  # a whole example without gradient (L2: the 1e-12 floor)
    return x.to(device), delta.to(device), grad.to(dtype).to(device)


# -- the reference is what the attacks computed before ------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("project", [True, False])
def test_reference_steps_equal_the_threat_model_formulas(dtype, project):
    x, delta, grad = case((129, 3, 5, 7), dtype)
    for threat, step in ((LinfBall(0.03), 0.01), (L2Ball(0.3), 0.1)):
        d = delta + step * threat.ascent_direction(grad.float())
        expected = clip_to_box(x.float(), threat.project(d) if project else d)
        fn = R.linf_step if threat.norm == "linf" else R.l2_step
        assert torch.equal(fn(delta, grad, x, step, threat.eps if project else None), expected)
        assert torch.equal(kernels.ascent_step(threat, delta, grad, x, step, project=project, backend="reference"),
                           expected)


def test_reference_random_start_and_triplets_draw_what_the_threat_model_draws():
    x, _, _ = case((9, 1, 8, 8), torch.float32)
    for threat in (LinfBall(0.1), L2Ball(0.5)):
        ours = kernels.random_start(threat, x, torch.Generator().manual_seed(4), scale=2.0, backend="reference")
        assert torch.equal(ours, threat.random_init(x, torch.Generator().manual_seed(4), scale=2.0))
        ours = kernels.pgd_start(threat, x, torch.Generator().manual_seed(5), backend="reference")
        assert torch.equal(ours, threat.pgd_start(x, torch.Generator().manual_seed(5)))
        for clip in (False, True):  # ELLE's triplet as elle.py built it before the kernels
            g = torch.Generator().manual_seed(6)
            eta_a, eta_b = threat.sample_ball(x, threat.eps, g), threat.sample_ball(x, threat.eps, g)
            a = torch.rand(9, generator=g)
            if clip:
                eta_a, eta_b = clip_to_box(x, eta_a), clip_to_box(x, eta_b)
            x_a, x_b = x + eta_a, x + eta_b
            x_c = (1 - a.view(-1, 1, 1, 1)) * x_a + a.view(-1, 1, 1, 1) * x_b
            got = kernels.elle_triplets(threat, x, torch.Generator().manual_seed(6), clip=clip, backend="reference")
            for p, q in zip(got, (x_a, x_b, x_c, a)):
                assert torch.equal(p, q)


def test_reference_keep_best_prefers_misclassified_then_higher_loss():
    best_delta, delta = torch.zeros(5, 2), torch.ones(5, 2)
    best_loss = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    loss = torch.tensor([2.0, 0.5, 0.5, 1.0, 2.0])
    best_wrong = torch.tensor([False, False, True, False, True])
    wrong = torch.tensor([False, True, False, False, False])
    d, l, w = R.keep_best(best_delta, best_loss, best_wrong, delta, loss, wrong)
    # 0: higher loss; 1: newly misclassified; 2: loses its misclassification; 3: tie keeps old; 4: old wrong
    assert d[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert l.tolist() == [2.0, 0.5, 1.0, 1.0, 1.0]
    assert w.tolist() == [False, True, True, False, True]


def test_philox_matches_the_random123_known_answers():
    """Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors)."""
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, out in kat:
        words = R.philox4x32(*(torch.tensor([c]) for c in ctr), *key)
        assert tuple(int(w) for w in words) == out


@pytest.mark.slow
def test_philox_uniforms_are_uniform_in_0_1():
    u = R.philox_uniform(123, 200_000)
    assert u.dtype == torch.float32 and 0.0 <= u.min() and u.max() < 1.0
    hist = torch.histc(u, bins=10, min=0.0, max=1.0) / u.numel()
    assert (hist - 0.1).abs().max() < 0.005  # 10 sd of a bin is ≈ 0.007
    assert abs(float(R.philox_uniform(124, 200_000).mean()) - 0.5) < 0.005
    start = R.linf_random_start(torch.full((4, 3, 8, 8), 0.5), 0.1, 7)
    assert start.abs().max() <= 0.1 and start.std() > 0.05  # uniform on [-0.1, 0.1]: sd 0.058
    g = R.philox_normal(8, 200_000)
    assert abs(float(g.mean())) < 0.01 and abs(float(g.std()) - 1) < 0.01
    x = torch.full((4000, 1, 2, 2), 0.5)  # D = 4, radius 0.1: never clipped by the box
    radii = R.l2_random_start(x, 0.1, 9, uniform_in_ball=False).flatten(1).norm(dim=1) / 0.1  # U(0, 1)
    assert abs(float(radii.mean()) - 0.5) < 0.015 and float(radii.max()) <= 1 + 1e-6
    radii = R.l2_random_start(x, 0.1, 9, uniform_in_ball=True).flatten(1).norm(dim=1) / 0.1  # U^(1/4): mean 0.8
    assert abs(float(radii.mean()) - 0.8) < 0.01 and float(radii.max()) <= 1 + 1e-6


# -- the dispatcher -----------------------------------------------------------------------------------------
def test_backend_argument_and_environment_variable(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    assert kernels.choose("op", x) == "reference"  # auto on CPU tensors
    monkeypatch.setenv(kernels.ENV_VAR, "reference")
    assert kernels.requested_backend("auto") == "reference"
    assert kernels.requested_backend("triton") == "triton"  # the argument wins
    monkeypatch.setenv(kernels.ENV_VAR, "fused")
    with pytest.raises(ConfigError, match="ROBUSTRAIN_KERNELS"):
        kernels.choose("op", x)
    monkeypatch.delenv(kernels.ENV_VAR)
    with pytest.raises(ConfigError, match="backend"):
        kernels.choose("op", x, backend="cuda")


@pytest.mark.skipif(INTERPRETER, reason="checks the plain (non-interpreted) process")
def test_forcing_triton_on_cpu_without_the_interpreter_names_the_missing_requirement(monkeypatch, digits):
    x, delta, grad = case((2, 1, 4, 4), torch.float32)
    with pytest.raises(KernelUnavailableError, match="no CUDA device|triton is not importable"):
        kernels.linf_step(delta, grad, x, 0.1, 0.1, backend="triton")
    monkeypatch.setenv(kernels.ENV_VAR, "triton")
    with pytest.raises(KernelUnavailableError, match="ROBUSTRAIN_KERNELS=triton"):
        kernels.linf_step(delta, grad, x, 0.1, 0.1)
    xd, yd = digits_batch(digits[0], 4)
    with pytest.raises(KernelUnavailableError):  # the attacks go through the dispatcher
        FGSMRS(LinfBall(0.1))(make_digits_model(), xd, yd)
    monkeypatch.setenv(kernels.ENV_VAR, "reference")
    FGSMRS(LinfBall(0.1))(make_digits_model(), xd, yd)


# -- attacks take input gradients only -------------------------------------------------------------------------
class _Probe(torch.autograd.Function):
    """Identity whose backward records the model's parameter state (it runs last in the backward pass)."""

    @staticmethod
    def forward(ctx, z, record):
        ctx.record = record
        return z.view_as(z)

    @staticmethod
    def backward(ctx, g):
        ctx.record()
        return g, None


class Probed(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, bool]] = []

    def record(self) -> None:
        params = list(self.inner.parameters())
        self.seen.append((any(p.requires_grad for p in params), any(p.grad is not None for p in params)))

    def forward(self, z):
        return self.inner(_Probe.apply(z, self.record))


@pytest.mark.parametrize("attack", [FGSMRS(LinfBall(0.1), bn_mode="train"), PGD(L2Ball(0.5), steps=3, restarts=2)])
def test_attack_backward_runs_with_parameters_frozen_and_writes_no_grad(digits, attack):
    model = Probed(make_digits_model(batchnorm=True)).train()
    x, y = digits_batch(digits[0], 16)
    attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert len(model.seen) == (1 if isinstance(attack, FGSM) else 6)
    assert model.seen == [(False, False)] * len(model.seen)  # no parameter required grad, none got a .grad
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    with attack_guard(model):
        assert not any(p.requires_grad for p in model.parameters())


# -- parity through the Triton interpreter ---------------------------------------------------------------------
@pytest.mark.slow
def test_parity_through_the_triton_interpreter():
    """Run this file's ``test_fused_*`` tests in a subprocess with TRITON_INTERPRET=1 set before any import."""
    if INTERPRETER:
        pytest.skip("already inside the interpreter run")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop(kernels.ENV_VAR, None)
    here = Path(__file__)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here), "-k",
                           "fused_"], cwd=here.parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


L2_TOL = 2.0 ** -23
"""The L2 kernels' bound: one fp32 ulp at 1.0, the largest coordinate of the box. The kernel sums the norms in
another order (the norm moves by about one ulp), and where δ + step·g/‖g‖ cancels the difference shows at the
operands' scale; the L2 random start also uses log/cos/exp, whose last bit differs between libraries. Measured:
at most 2^-24, on 2-24 % (step) and 2-13 % (start) of the elements."""


@fused
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_steps_equal_the_reference(shape, dtype):
    x, delta, grad = case(shape, dtype, device=DEVICE)
    for eps in (0.03, None):
        got_linf = kernels.linf_step(delta, grad, x, 0.01, eps, backend="triton")
        assert got_linf.dtype == torch.float32
        assert torch.equal(got_linf, R.linf_step(delta, grad, x, 0.01, eps))
        got_l2 = kernels.l2_step(delta, grad, x, 0.2, eps, backend="triton")
        ref = R.l2_step(delta, grad, x, 0.2, eps)
        assert got_l2.dtype == torch.float32
        assert (got_l2 - ref).abs().max() <= L2_TOL
        if eps is not None:
            assert (got_l2.flatten(1).norm(dim=1) <= eps * (1 + 1e-6)).all()
    if shape[0] > 3:  # zero gradient (eps None): δ is only clipped, already in the box (sign(0) = 0; 0/1e-12 = 0)
        assert torch.equal(got_linf[3], delta[3]) and torch.equal(got_l2[3], delta[3])


@fused
@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_random_start_keep_best_and_triplets_equal_the_reference(shape, dtype, monkeypatch):
    x, delta, grad = case(shape, dtype, device=DEVICE)
    for seed, clip in ((0, False), (2 ** 31 - 2, True)):
        monkeypatch.setattr(kernels.dispatch, "_seed", lambda generator: seed)  # the draw is tested apart
        got = kernels.random_start(LinfBall(0.05), x, None, scale=2.0, backend="triton")
        assert torch.equal(got, R.linf_random_start(x, 0.1, seed))
        uniform_in_ball = clip  # L2 (Box–Muller, exp/log: library functions, so within L2_TOL); one mode per seed
        got = (kernels.random_start(L2Ball(0.25), x, None, scale=2.0, backend="triton") if uniform_in_ball
               else kernels.pgd_start(L2Ball(0.25), x, None, backend="triton"))
        ref = R.l2_random_start(x, 0.5 if uniform_in_ball else 0.25, seed, uniform_in_ball)
        assert got.dtype == torch.float32 and (got - ref).abs().max() <= L2_TOL
        got = kernels.elle_triplets(LinfBall(0.05), x, None, clip=clip, backend="triton")
        ref = R.linf_elle_triplets(x, 0.05, seed, clip)
        assert [p.dtype for p in got] == [dtype, dtype, dtype, torch.float32]
        for p, q in zip(got, ref):
            assert torch.equal(p, q)
    b = shape[0]
    g = torch.Generator().manual_seed(1)
    best_loss, loss = torch.rand(b, generator=g).to(DEVICE), torch.rand(b, generator=g).to(DEVICE)
    best_wrong, wrong = (torch.rand(b, generator=g) < 0.5).to(DEVICE), (torch.rand(b, generator=g) < 0.5).to(DEVICE)
    ref = R.keep_best(delta.clone(), best_loss, best_wrong, -delta, loss, wrong)
    got = kernels.keep_best_update(delta.clone(), best_loss, best_wrong, -delta, loss, wrong, backend="triton")
    for p, q in zip(got, ref):
        assert torch.equal(p, q)


@fused
def test_fused_seed_comes_from_the_generator():
    x, _, _ = case((5, 3, 5, 7), torch.float32, device=DEVICE)
    seed = int(torch.randint(0, 2 ** 31 - 1, (), generator=torch.Generator().manual_seed(9)))
    got = kernels.pgd_start(LinfBall(0.03), x, torch.Generator().manual_seed(9), backend="triton")
    assert torch.equal(got, R.linf_random_start(x, 0.03, seed))


@fused
@settings(max_examples=6, deadline=None)
@given(b=st.integers(1, 6), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 99),
       bf16=st.booleans())
def test_fused_random_shapes(b, c, h, w, seed, bf16):
    x, delta, grad = case((b, c, h, w), torch.bfloat16 if bf16 else torch.float32, seed, device=DEVICE)
    assert torch.equal(kernels.linf_step(delta, grad, x, 0.02, 0.03, backend="triton"),
                       R.linf_step(delta, grad, x, 0.02, 0.03))
    ref = R.l2_step(delta, grad, x, 0.2, 0.1)
    assert (kernels.l2_step(delta, grad, x, 0.2, 0.1, backend="triton") - ref).abs().max() <= L2_TOL


@fused
def test_fused_forced_triton_refuses_unsupported_dtype_and_operation():
    x, delta, grad = case((2, 1, 4, 4), torch.float64, device=DEVICE)
    with pytest.raises(KernelUnavailableError, match="float64"):
        kernels.linf_step(delta, grad, x, 0.1, 0.1, backend="triton")
    assert kernels.choose("op", x) == "reference"  # auto never interprets CPU tensors
    with pytest.raises(KernelUnavailableError, match="no fused kernel"):
        kernels.elle_triplets(L2Ball(0.5), x.float(), backend="triton")


@fused
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fused_attacks_through_the_fused_path_match_the_reference(monkeypatch, digits, norm):
    """PGD without random start is deterministic: fused steps and keep-best give the reference's result."""
    model = make_digits_model(batchnorm=False).to(DEVICE)
    x, y = (t.to(DEVICE) for t in digits_batch(digits[0], 17))
    threat = LinfBall(0.1) if norm == "linf" else L2Ball(0.6)
    attack = PGD(threat, steps=3, restarts=1, random_start=False, keep_best=True)
    monkeypatch.setenv(kernels.ENV_VAR, "reference")
    ref = attack(model, x, y)
    monkeypatch.setenv(kernels.ENV_VAR, "triton")
    got = attack(model, x, y)
    if norm == "linf":
        assert torch.equal(got.delta, ref.delta)
    else:
        assert torch.allclose(got.delta, ref.delta, atol=1e-6)
    res = FGSMRS(threat)(model, x, y, generator=torch.Generator().manual_seed(0))  # the fused random start
    assert threat.contains(x, res.x_adv, atol=1e-6).all() and threat.contains(x, res.x_init, atol=1e-6).all()
