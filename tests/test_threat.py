"""The threat model: samples, directions and projections stay where they must, per example."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from robustrain.errors import UnknownNameError
from robustrain.threat import L2Ball, LinfBall, clip_to_box, make_threat

shapes = st.tuples(st.integers(1, 7), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9))


@given(shape=shapes, eps=st.floats(0.0, 0.5), scale=st.floats(0.0, 3.0), seed=st.integers(0, 2**31 - 1),
       norm=st.sampled_from(["linf", "l2"]))
def test_random_init_is_in_scaled_ball_and_box(shape, eps, scale, seed, norm):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    threat = make_threat(norm, eps)
    delta = threat.random_init(x, torch.Generator().manual_seed(seed), scale=scale)
    assert delta.dtype == torch.float32 and delta.shape == x.shape
    assert (threat.norms(delta) <= scale * eps + 1e-5).all()
    assert ((x + delta) >= -1e-7).all() and ((x + delta) <= 1 + 1e-7).all()
    again = threat.random_init(x, torch.Generator().manual_seed(seed), scale=scale)
    assert torch.equal(delta, again)


@given(shape=shapes, eps=st.floats(1e-3, 2.0), seed=st.integers(0, 2**31 - 1), norm=st.sampled_from(["linf", "l2"]))
def test_projection_is_idempotent_and_inside(shape, eps, seed, norm):
    g = torch.Generator().manual_seed(seed)
    threat = make_threat(norm, eps)
    delta = torch.randn(shape, generator=g) * 3
    p = threat.project(delta)
    assert (threat.norms(p) <= eps * (1 + 1e-5)).all()
    assert torch.allclose(threat.project(p), p, atol=1e-6)
    inside = delta * 0.0 + threat.project(delta * 1e-3 * eps)  # points already inside are unchanged
    assert torch.allclose(threat.project(inside), inside)


def test_l2_projection_is_per_example():
    threat = L2Ball(1.0)
    delta = torch.zeros(2, 1, 2, 2)
    delta[0] = 3.0  # norm 6 -> scaled to 1
    delta[1] = 0.1  # norm 0.2 -> unchanged
    p = threat.project(delta)
    assert torch.allclose(threat.norms(p), torch.tensor([1.0, 0.2]))
    assert torch.allclose(p[1], delta[1])


def test_ascent_directions():
    g = torch.tensor([[[[3.0, -4.0]]], [[[0.0, 2.0]]]])
    assert torch.equal(LinfBall(0.1).ascent_direction(g), g.sign())
    d = L2Ball(0.1).ascent_direction(g)
    assert torch.allclose(d.flatten(1), torch.tensor([[0.6, -0.8], [0.0, 1.0]]))


def test_l2_samples_fill_the_ball_uniformly():
    # radius of a uniform sample in d dims has P(r <= t*eps) = t^d; in 2 dims the median radius is eps/sqrt(2)
    threat = L2Ball(1.0)
    x = torch.full((20000, 1, 1, 2), 0.5)
    r = threat.norms(threat.sample_ball(x, 0.5, torch.Generator().manual_seed(0)))
    assert abs(r.median().item() - 0.5 / math.sqrt(2)) < 0.01
    assert r.max().item() <= 0.5 + 1e-6


def test_clip_to_box_and_contains():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    d = clip_to_box(x, torch.tensor([[-0.2, 0.1, 0.3]]))
    assert torch.allclose(x + d, torch.tensor([[0.0, 0.6, 1.0]]))
    threat = LinfBall(0.1)
    assert threat.contains(x, x + d).item()
    assert not threat.contains(x, x + 0.2).item()


def test_bad_threat_inputs():
    with pytest.raises(UnknownNameError, match="linf"):
        make_threat("l3", 0.1)
    with pytest.raises(ValueError, match="eps"):
        make_threat("linf", -1)


# -- L1 ball ∩ box: the exact projection --------------------------------------------------------------------
def _l1_box_by_bisection(delta, x, radius):
    """The projection's closed form with λ found by bisection (float64), the reference for the sorted solver."""
    a = delta.abs().double()
    u = (torch.where(delta > 0, 1 - x, x).double() if x is not None else torch.full_like(a, math.inf))
    def f(lam):
        return torch.minimum((a - lam[:, None]).clamp_min(0), u).sum(1)
    lo, hi = torch.zeros(a.shape[0], dtype=torch.float64), a.amax(1) + 1
    for _ in range(100):
        mid = (lo + hi) / 2
        big = f(mid) > radius
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    lam = torch.where(f(torch.zeros_like(lo)) > radius, hi, torch.zeros_like(hi))
    return delta.double().sign() * torch.minimum((a - lam[:, None]).clamp_min(0), u)


@given(b=st.integers(1, 5), d=st.integers(1, 60), radius=st.floats(0.0, 8.0), scale=st.floats(0.01, 5.0),
       seed=st.integers(0, 2**31 - 1), binary=st.booleans(), box=st.booleans())
def test_l1_box_projection_is_exact_and_inside(b, d, radius, scale, seed, binary, box):
    from robustrain.threat import project_l1_box

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, d, generator=g, dtype=torch.float64)
    if binary:  # pixels on the box's faces: no room on one side
        x = (x > 0.5).double()
    delta = torch.randn(b, d, generator=g, dtype=torch.float64) * scale
    p = project_l1_box(delta, radius, x if box else None)
    assert (p.abs().sum(1) <= radius * (1 + 1e-12) + 1e-12).all()
    if box:
        assert ((x + p) >= 0).all() and ((x + p) <= 1).all()
    assert torch.allclose(p, _l1_box_by_bisection(delta, x if box else None, radius), atol=1e-9)
    assert torch.allclose(project_l1_box(p, radius, x if box else None), p, atol=1e-9)  # idempotent
    # no feasible point is closer (a random feasible point, and the box-clipped input scaled into the ball)
    q = project_l1_box(torch.randn(b, d, generator=g, dtype=torch.float64), radius, x if box else None)
    assert ((p - delta).norm(dim=1) <= (q - delta).norm(dim=1) + 1e-9).all()


@given(shape=shapes, eps=st.floats(0.0, 30.0), seed=st.integers(0, 2**31 - 1))
def test_l1_every_output_is_inside_ball_and_box(shape, eps, seed):
    """fp32 images: random starts, projections and PGD steps of the L1 threat model never leave ball ∩ box."""
    from robustrain.kernels import ascent_step

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    threat = make_threat("l1", eps)
    start = threat.random_init(x, torch.Generator().manual_seed(seed))
    proj = threat.project_feasible(x, torch.randn(shape, generator=g) * 10)
    step = ascent_step(threat, start, torch.randn(shape, generator=g), x, eps)
    for delta in (start, proj, step):
        assert delta.dtype == torch.float32
        assert (threat.norms(delta) <= eps * (1 + 1e-6) + 1e-7).all()  # fp32: within rounding of x + δ − x
        assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()  # the box: exactly
        assert threat.contains(x, x + delta).all()  # x + δ rounded to fp32: the default tolerance


def test_l1_ascent_direction_is_sparse_with_unit_norm():
    from robustrain.threat import L1Ball

    g = torch.randn(3, 1, 20, 20)
    d = L1Ball(1.0).ascent_direction(g)
    assert torch.allclose(d.flatten(1).abs().sum(1), torch.ones(3))
    assert ((d.flatten(1) != 0).sum(1) == 4).all()  # 1 % of 400 coordinates
    top = g.flatten(1).abs().argmax(1)
    assert torch.equal(d.flatten(1).gather(1, top[:, None]).sign(), g.flatten(1).gather(1, top[:, None]).sign())
