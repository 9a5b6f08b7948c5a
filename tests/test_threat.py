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
