"""The executable specification of the attack-step kernels, in plain PyTorch.

Every function here is what a fused kernel in ``triton_kernels.py`` must compute, operation by operation
(the same fp32 operations in the same order, no fused multiply-add), so the parity tests can ask for equal
bits. The perturbation ``delta`` is always fp32; images ``x`` and gradients may be fp32, bf16 or fp16 and
are widened to fp32 before any arithmetic.

Randomness. The attacks' eager path draws from a ``torch.Generator`` (:func:`uniform_start` and
:func:`triplets` take that noise as an argument). A fused kernel cannot share torch's generator, so the
fused path draws one seed from the generator and generates the noise inside the kernel with Triton's
counter-based Philox4x32-10 (``tl.rand`` / ``tl.randint4x``). :func:`philox_uniform` reproduces that
generator bit for bit with 64-bit integer tensor operations:

* key ``(seed mod 2^32, seed >> 32)``, counter ``(i, 0, 0, 0)`` for element ``i`` of the flattened tensor;
  ten rounds; output word ``w`` (0-3) of the four the block cipher returns;
* the word, read as int32 ``v``, becomes ``float32(v if v >= 0 else ~v) * float32(4.6566127342e-10)``,
  a number in [0, 1).

So the fused path and the eager path draw different (equally distributed) numbers for the same generator;
each is reproducible, and the fused path equals :func:`linf_random_start` / :func:`linf_elle_triplets` bit for
bit and :func:`l2_random_start` within a few ulp (it uses log, cos and exp).
"""
from __future__ import annotations

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_UNIFORM_SCALE = 4.6566127342e-10  # Triton's uint_to_uniform_float for 32-bit words
TINY = 1e-12  # the norm floor of L2Ball


def _per_example(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _box(x: Tensor, delta: Tensor) -> Tensor:
    """The part of ``delta`` that keeps ``x + delta`` inside [0,1] (``threat.clip_to_box``)."""
    return (x + delta).clamp(0.0, 1.0) - x


# -- steps --------------------------------------------------------------------------------------------
def linf_step(delta: Tensor, grad: Tensor, x: Tensor, step: float, eps: float | None) -> Tensor:
    """One L∞ ascent step: ``δ + step·sign(g)``, clamped to [−ε, ε] (skipped when ``eps`` is None), then
    to the box. sign(0) = 0, so a zero gradient leaves δ where it is. Returns fp32."""
    d = delta.float() + step * grad.float().sign()
    if eps is not None:
        d = d.clamp(-eps, eps)
    return _box(x.float(), d)


def l2_step(delta: Tensor, grad: Tensor, x: Tensor, step: float, eps: float | None) -> Tensor:
    """One L2 ascent step per example: ``δ + step·g/max(‖g‖, 1e-12)``, scaled back onto the ε-ball when
    outside it (skipped when ``eps`` is None), then clipped to the box. Returns fp32."""
    g = grad.float()
    n = g.flatten(1).norm(p=2, dim=1).clamp_min(TINY)
    d = delta.float() + step * (g / _per_example(n, g))
    if eps is not None:
        nd = d.flatten(1).norm(p=2, dim=1)
        factor = (eps / nd.clamp_min(TINY)).clamp(max=1.0)
        d = d * _per_example(factor, d)
    return _box(x.float(), d)


# -- keep-best ----------------------------------------------------------------------------------------
def keep_best_mask(best_loss: Tensor, best_wrong: Tensor, loss: Tensor, wrong: Tensor) -> Tensor:
    """Per example: the new point is better (misclassified beats correctly classified; among equals the
    higher loss wins; ties keep the old point)."""
    return (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))


def keep_best(best_delta: Tensor, best_loss: Tensor, best_wrong: Tensor, delta: Tensor, loss: Tensor,
              wrong: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The keep-best update of PGD restarts: (new best δ, its loss, its misclassified flag)."""
    better = keep_best_mask(best_loss, best_wrong, loss, wrong)
    return (torch.where(_per_example(better, delta), delta, best_delta), torch.where(better, loss, best_loss),
            wrong | best_wrong)


# -- random points from given noise -------------------------------------------------------------------
def uniform_start(x: Tensor, u: Tensor, radius: float) -> Tensor:
    """The L∞ random start from uniform noise ``u`` in [0,1): ``u·2r − r``, clipped to the box (fp32)."""
    return _box(x.float(), u.float() * (2 * radius) - radius)


def triplets(x: Tensor, eta_a: Tensor, eta_b: Tensor, a: Tensor, clip: bool) -> tuple[Tensor, Tensor, Tensor]:
    """ELLE's triplet from the noise ``eta_a``, ``eta_b`` (points of the ball) and per-example ``a``:
    ``x_a = x + η_a``, ``x_b = x + η_b`` (each clipped to the box when ``clip``), ``x_c = (1−a)·x_a + a·x_b``,
    computed in fp32 (fp64 for fp64 inputs) and returned in the dtype of ``x``; x_c is formed from x_a, x_b
    after their rounding to that dtype."""
    xw = x if x.dtype in (torch.float32, torch.float64) else x.float()
    points = []
    for eta in (eta_a, eta_b):
        if clip:
            eta = _box(xw, eta)
        points.append((xw + eta.to(xw.dtype)).to(x.dtype))
    x_a, x_b = points
    aw = _per_example(a.to(xw.dtype), x)
    wa = x_a if x_a.dtype == xw.dtype else x_a.to(xw.dtype)
    wb = x_b if x_b.dtype == xw.dtype else x_b.to(xw.dtype)
    x_c = ((1 - aw) * wa + aw * wb).to(x.dtype)
    return x_a, x_b, x_c


# -- Philox4x32-10, as Triton's tl.randint4x --------------------------------------------------------------
def _mul32(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(high, low) 32-bit words of ``a·b`` for a constant ``a`` < 2^32 and int64 ``b`` in [0, 2^32)."""
    p_hi = a * (b >> 16)  # < 2^48
    p_lo = a * (b & 0xFFFF)
    low = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    high = (p_hi + (p_lo >> 16)) >> 16
    return high, low


def philox_words(seed: int, n: int, device: torch.device | str = "cpu", start: int = 0,
                 stride: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four 32-bit output words (int64 tensors) of Philox4x32-10 with key ``seed`` for the counters
    ``start, start + stride, ...`` (``n`` of them), as ``tl.randint4x(seed, counter)``."""
    seed = int(seed)
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"philox seed must be in [0, 2^63), got {seed}.")
    c0 = torch.arange(n, device=device, dtype=torch.int64) * stride + start
    if n and int(c0.max()) >= 2 ** 31:
        raise ValueError("philox counters must stay below 2^31 (the kernels use 32-bit offsets).")
    zero = torch.zeros_like(c0)
    return philox4x32(c0, zero, zero, zero, seed & _MASK32, (seed >> 32) & _MASK32)


def philox4x32(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: int, k1: int,
               rounds: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The Philox4x32 block cipher (Salmon et al., SC 2011) on counters given as int64 tensors of 32-bit
    words, with the key (k0, k1)."""
    for _ in range(rounds):
        hi_b, lo_b = _mul32(_ROUND_B, c2)
        hi_a, lo_a = _mul32(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def word_to_uniform(w: Tensor) -> Tensor:
    """A 32-bit word (int64 tensor) to fp32 in [0, 1), as Triton's ``uint_to_uniform_float``."""
    v = torch.where(w >= 2 ** 31, _MASK32 - w, w)  # the int32 reading v < 0 becomes ~v = 2^32 - 1 - w
    return v.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32, device=w.device)


def philox_uniform(seed: int, n: int, word: int = 0, device: torch.device | str = "cpu", start: int = 0,
                   stride: int = 1) -> Tensor:
    """``n`` fp32 uniforms from output word ``word`` (0 is ``tl.rand``) at counters start, start+stride, …"""
    return word_to_uniform(philox_words(seed, n, device, start, stride)[word])


def linf_random_start(x: Tensor, radius: float, seed: int) -> Tensor:
    """The fused L∞ random start: :func:`uniform_start` with ``u[i] = tl.rand(seed, i)``."""
    u = philox_uniform(seed, x.numel(), 0, x.device).view(x.shape)
    return uniform_start(x, u, radius)


def philox_normal(seed: int, n: int, device: torch.device | str = "cpu") -> Tensor:
    """``n`` fp32 standard normals as ``tl.randn(seed, i)``: Box–Muller on words 0 and 1 of counter i,
    ``sqrt(−2·log(max(u0, 1e-7)))·cos(2π·u1)``."""
    w = philox_words(seed, n, device)
    u0 = word_to_uniform(w[0]).clamp_min(1.0e-7)
    u1 = word_to_uniform(w[1])
    return (-2.0 * u0.log()).sqrt() * (6.283185307179586 * u1).cos()


def l2_random_start(x: Tensor, radius: float, seed: int, uniform_in_ball: bool) -> Tensor:
    """The fused L2 random start: a Gaussian direction (element i: ``tl.randn(seed, i)``) scaled to the
    per-example radius ``radius·u`` (PGD's start, ``uniform_in_ball=False``) or ``radius·exp(log(u)/D)``
    (= radius·u^(1/D), uniform in the ball), where u is word 2 of counter k·D for example k; then the box clip.
    log/cos/exp are library functions whose last bit may differ between torch, numpy (the interpreter) and
    the GPU, so the kernel matches this within a few ulp rather than bit for bit."""
    b = x.shape[0]
    d = x.numel() // b if b else 1
    g = philox_normal(seed, x.numel(), x.device).view(x.shape)
    u = philox_uniform(seed, b, 2, x.device, stride=d)
    r = radius * ((u.log() * (1.0 / d)).exp() if uniform_in_ball else u)
    n = g.flatten(1).norm(p=2, dim=1).clamp_min(TINY)
    return _box(x.float(), g / _per_example(n, g) * _per_example(r, g))


def linf_elle_triplets(x: Tensor, eps: float, seed: int, clip: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fused L∞ ELLE triplet: element i uses words 0 and 1 of counter i for η_a and η_b
    (``u·2ε − ε``); example k uses word 2 of counter k·D (D elements per example) for a.
    Returns (x_a, x_b, x_c, a) with ``a`` fp32 of shape (B,)."""
    n, b = x.numel(), x.shape[0]
    w = philox_words(seed, n, x.device)
    eta_a = word_to_uniform(w[0]).view(x.shape) * (2 * eps) - eps
    eta_b = word_to_uniform(w[1]).view(x.shape) * (2 * eps) - eps
    a = philox_uniform(seed, b, 2, x.device, stride=n // b if b else 1)
    return (*triplets(x, eta_a, eta_b, a, clip), a)
