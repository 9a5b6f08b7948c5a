"""The threat model: an L∞, L2 or L1 ball of radius ε around each input, intersected with the [0,1] box.

Everything here works per example: a batch of perturbations ``delta`` of shape (B, ...) is drawn,
normalised, projected and measured example by example. Inputs are images in [0,1]; normalisation is
a layer inside the model, so the threat model never sees mean or std.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from .errors import ConfigError
from .registry import choice


def _per_example(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a (B,) tensor so it broadcasts against ``like`` of shape (B, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def clip_to_box(x: Tensor, delta: Tensor) -> Tensor:
    """The part of ``delta`` that keeps ``x + delta`` inside [0,1]."""
    return (x + delta).clamp_(0.0, 1.0).sub_(x)


class ThreatModel(ABC):
    """A norm ball of radius ``eps`` intersected with the [0,1] box."""

    norm: str = ""
    pgd_start_rule = "uniform in the ε-ball, clipped to the box"
    """What :meth:`pgd_start` draws, in words (attack settings and reports)."""

    def __init__(self, eps: float):
        eps = float(eps)
        if not math.isfinite(eps) or eps < 0:
            raise ConfigError(f"eps must be a finite number >= 0, got {eps!r}.")
        self.eps = eps

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:.6g})"

    def scaled(self, factor: float) -> "ThreatModel":
        """The same ball with radius ``factor·ε`` (the ε warm-up's radius; see :meth:`Attack.scaled`)."""
        return type(self)(self.eps * factor)

    @abstractmethod
    def norms(self, delta: Tensor) -> Tensor:
        """Per-example norm of ``delta`` (shape (B,))."""

    @abstractmethod
    def ascent_direction(self, grad: Tensor) -> Tensor:
        """The steepest-ascent direction of unit norm for a gradient (sign for L∞, g/‖g‖ for L2)."""

    @abstractmethod
    def project(self, delta: Tensor, radius: float | None = None) -> Tensor:
        """Project ``delta`` onto the ball of ``radius`` (default ε), per example."""

    @abstractmethod
    def sample_ball(self, like: Tensor, radius: float, generator: torch.Generator | None) -> Tensor:
        """Uniform samples from the ball of ``radius`` with the shape, device and fp32 dtype of ``like``."""

    def random_init(
        self, x: Tensor, generator: torch.Generator | None = None, scale: float = 1.0
    ) -> Tensor:
        """A random start: uniform in the ball of radius ``scale * eps``, then intersected with the box.

        ``scale`` is 1 for FGSM-RS and PGD and k (default 2) for N-FGSM. The result is fp32.
        """
        delta = self.sample_ball(x, scale * self.eps, generator)
        return clip_to_box(x.float(), delta)

    def pgd_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The random start of a PGD restart (fp32, inside the ball and the box).

        Uniform in the ball by default; :class:`L2Ball` overrides it (see there).
        """
        return self.random_init(x, generator)

    def project_feasible(self, x: Tensor, delta: Tensor, radius: float | None = None) -> Tensor:
        """``delta`` moved into the ball of ``radius`` (default ε) around ``x`` and the [0,1] box (fp32 in, fp32 out).

        The ball's projection followed by the box clip; for L∞ (separable) and L1 (:class:`L1Ball`, computed
        jointly) this is the exact Euclidean projection onto ball ∩ box, for L2 the usual approximation."""
        return clip_to_box(x.float(), self.project(delta, radius))

    def contains(self, x: Tensor, x_adv: Tensor, radius: float | None = None, atol: float = 1e-6) -> Tensor:
        """Per-example flag: ``x_adv`` is in [0,1] and within ``radius`` (default ε) of ``x``."""
        radius = self.eps if radius is None else radius
        delta = (x_adv.float() - x.float())
        in_ball = self.norms(delta) <= radius + atol
        flat = x_adv.float().flatten(1)
        in_box = (flat.min(dim=1).values >= -atol) & (flat.max(dim=1).values <= 1 + atol)
        return in_ball & in_box


class LinfBall(ThreatModel):
    """‖δ‖∞ ≤ ε."""

    norm = "linf"

    def norms(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).abs().amax(dim=1)

    def ascent_direction(self, grad: Tensor) -> Tensor:
        return grad.sign()

    def project(self, delta: Tensor, radius: float | None = None) -> Tensor:
        r = self.eps if radius is None else radius
        return delta.clamp(-r, r)

    def sample_ball(self, like: Tensor, radius: float, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(like.shape, generator=generator, device=like.device, dtype=torch.float32)
        return u.mul_(2 * radius).sub_(radius)


class L2Ball(ThreatModel):
    """‖δ‖₂ ≤ ε, per example."""

    norm = "l2"
    _tiny = 1e-12
    pgd_start_rule = "Gaussian direction with radius U(0, ε), clipped to the box"

    def norms(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).norm(p=2, dim=1)

    def ascent_direction(self, grad: Tensor) -> Tensor:
        n = self.norms(grad).clamp_min(self._tiny)
        return grad / _per_example(n, grad)

    def project(self, delta: Tensor, radius: float | None = None) -> Tensor:
        r = self.eps if radius is None else radius
        n = self.norms(delta)
        factor = (r / n.clamp_min(self._tiny)).clamp(max=1.0)
        return delta * _per_example(factor, delta)

    def sample_ball(self, like: Tensor, radius: float, generator: torch.Generator | None) -> Tensor:
        # Uniform in the d-dimensional ball: Gaussian direction, radius r·U^(1/d).
        g = torch.randn(like.shape, generator=generator, device=like.device, dtype=torch.float32)
        d = like[0].numel()
        u = torch.rand(like.shape[0], generator=generator, device=like.device, dtype=torch.float32)
        r = radius * u.pow(1.0 / d)
        return g / _per_example(self.norms(g).clamp_min(self._tiny), g) * _per_example(r, g)


    def pgd_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Gaussian direction with radius U(0, ε), as torchattacks.PGDL2 and Madry's robustness library.

        In d dimensions a point uniform in the ball lies at radius ≈ ε (the median is ε·2^(-1/d)), so
        PGD would spend most of its budget undoing the random part; measured on digits (L2, ε = 0.5,
        10 steps) the ball-uniform start left 1 pp more robust accuracy than this one.
        """
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float32)
        delta = g / _per_example(self.norms(g).clamp_min(self._tiny), g) * _per_example(self.eps * u, g)
        return clip_to_box(x.float(), delta)


def project_l1_box(delta: Tensor, radius: float, x: Tensor | None = None) -> Tensor:
    """The exact Euclidean projection of ``delta`` onto {‖δ‖₁ ≤ radius} ∩ {x + δ ∈ [0,1]}, per example.

    The problem separates by coordinate once the L1 constraint's multiplier λ ≥ 0 is fixed: each coordinate is
    soft-thresholded by λ and then clipped to the room the box leaves in its direction,
    δ'_i = sign(δ_i)·clip(|δ_i| − λ, 0, u_i) with u_i = 1 − x_i (δ_i > 0) or x_i (δ_i < 0) (Croce & Hein 2021,
    "Mind the box", Lemma 1). λ = 0 when the box-clipped δ is already inside the ball; otherwise
    f(λ) = Σ_i clip(|δ_i| − λ, 0, u_i) is piecewise linear and non-increasing with breakpoints max(|δ_i| − u_i, 0)
    (the coordinate starts shrinking) and |δ_i| (it reaches 0), so λ solves f(λ) = radius on the segment between
    two sorted breakpoints. Without ``x`` there is no box (u_i = ∞: the projection onto the L1 ball).
    Computed in float64; a last rescale absorbs rounding so that every output is inside the ball.
    """
    shape, dtype = delta.shape, delta.dtype
    d = delta.detach().reshape(shape[0], -1).double()
    a = d.abs()
    if x is None:
        u = torch.full_like(a, math.inf)
    else:
        xf = x.detach().reshape(shape[0], -1).double()
        u = torch.where(d > 0, 1.0 - xf, xf).clamp_min(0.0)
    f0 = torch.minimum(a, u).sum(dim=1)
    lam = torch.zeros_like(f0)
    over = f0 > radius
    if bool(over.any()):
        ao, uo = a[over], u[over]
        pos = torch.cat([(ao - uo).clamp_min(0.0), ao], dim=1)
        step = torch.cat([-torch.ones_like(ao), torch.ones_like(ao)], dim=1)
        pos, order = pos.sort(dim=1)
        slope = step.gather(1, order).cumsum(dim=1)          # df/dλ just after each breakpoint
        gain = slope[:, :-1] * (pos[:, 1:] - pos[:, :-1])
        f = f0[over].unsqueeze(1) + torch.cat([torch.zeros_like(gain[:, :1]), gain.cumsum(dim=1)], dim=1)
        k = (f <= radius).to(torch.int8).argmax(dim=1).clamp_min(1)  # first breakpoint where f ≤ radius (f ends at 0)
        prev = (k - 1).unsqueeze(1)
        s = slope.gather(1, prev).squeeze(1).clamp(max=-1.0)
        lam[over] = pos.gather(1, prev).squeeze(1) + (f.gather(1, prev).squeeze(1) - radius) / -s
    out = d.sign() * torch.minimum((a - lam.unsqueeze(1)).clamp_min(0.0), u)
    out = out.to(dtype)
    n = out.abs().sum(dim=1, dtype=torch.float64)
    fix = (radius / n.clamp_min(1e-300)).clamp(max=1.0)
    shrink = 1 - 4 * torch.finfo(dtype).eps
    out = torch.where((n > radius).unsqueeze(1), out * fix.to(dtype).unsqueeze(1) * shrink, out)
    return out.reshape(shape)


class L1Ball(ThreatModel):
    """‖δ‖₁ ≤ ε, per example (the threat model of APGD-L1 and Square-L1, Croce & Hein 2021).

    :meth:`project_feasible` is the exact projection onto ball ∩ box (:func:`project_l1_box`); robustrain's own
    PGD steps along a sparse direction (:meth:`ascent_direction`), a much weaker attack under L1 than APGD-L1:
    evaluate L1 robustness with ``apgd-ce`` / ``apgd-t`` / ``square`` (the official AutoAttack's L1 components).
    """

    norm = "l1"
    sparsity = 0.01
    """The fraction of coordinates (at least one) that :meth:`ascent_direction` moves, the largest gradients first."""

    def norms(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).abs().sum(dim=1)

    def ascent_direction(self, grad: Tensor) -> Tensor:
        """sign(g) on the ⌈1 %⌉ coordinates with the largest |g| per example, zero elsewhere, unit L1 norm."""
        g = grad.flatten(1)
        k = max(1, math.ceil(self.sparsity * g.shape[1]))
        top = g.abs().topk(k, dim=1).indices
        out = torch.zeros_like(g).scatter_(1, top, g.gather(1, top).sign())
        return (out / out.abs().sum(dim=1, keepdim=True).clamp_min(1.0)).view_as(grad)

    def project(self, delta: Tensor, radius: float | None = None) -> Tensor:
        return project_l1_box(delta, self.eps if radius is None else radius)

    def project_feasible(self, x: Tensor, delta: Tensor, radius: float | None = None) -> Tensor:
        out = project_l1_box(delta.float(), self.eps if radius is None else radius, x.float())
        return clip_to_box(x.float(), out)  # only rounding to undo: the projection is already inside the box

    def sample_ball(self, like: Tensor, radius: float, generator: torch.Generator | None) -> Tensor:
        # Uniform in the d-dimensional L1 ball: iid Laplace coordinates normalised (uniform on the sphere), radius r·U^(1/d).
        e = -torch.rand(like.shape, generator=generator, device=like.device, dtype=torch.float32).clamp_min(1e-12).log()
        s = torch.rand(like.shape, generator=generator, device=like.device, dtype=torch.float32) < 0.5
        lap = torch.where(s, e, -e)
        d = like[0].numel()
        u = torch.rand(like.shape[0], generator=generator, device=like.device, dtype=torch.float32)
        r = radius * u.pow(1.0 / d)
        return lap / _per_example(self.norms(lap).clamp_min(1e-12), lap) * _per_example(r, lap)

    def contains(self, x: Tensor, x_adv: Tensor, radius: float | None = None, atol: float = 1e-6) -> Tensor:
        """As for every ball, with the tolerance also relative (1e-6·ε): an L1 norm sums thousands of fp32 values."""
        radius = self.eps if radius is None else radius
        return super().contains(x, x_adv, radius, atol + 1e-6 * radius)


THREAT_MODELS = {"linf": LinfBall, "l2": L2Ball, "l1": L1Ball}
NORMS = tuple(THREAT_MODELS)
"""The threat-model norms, as configs and the command line spell them."""


def check_radius(value: float, where: str, norm: str) -> None:
    """Raise for a negative radius, and for an L∞ radius above 1 (pixel levels written without /255)."""
    if not value >= 0 or value == float("inf"):  # NaN fails the comparison
        raise ConfigError(f"{where} must be a finite number >= 0, got {value}.")
    if norm == "linf" and value > 1:
        raise ConfigError(
            f"{where} = {value:g} is larger than the whole [0,1] pixel range; robustrain works on images in "
            f"[0,1], so an L∞ radius of {value:g} pixel levels is written {value:g}/255 "
            f"(= {value / 255:.6f}). Set {where}: {value:g}/255."
        )


def make_threat(norm: str, eps: float) -> ThreatModel:
    """Build the threat model ``norm`` ("linf", "l2" or "l1") of radius ``eps``."""
    key = str(norm).lower()
    aliases = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l2": "l2", "2": "l2", "l1": "l1", "1": "l1"}
    key = aliases.get(key, key)
    return THREAT_MODELS[choice("threat-model norm", key, THREAT_MODELS)](eps)
