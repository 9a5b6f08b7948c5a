"""The fused attack-step kernels in Triton (imported lazily by ``dispatch.py``; needs ``triton``).

One pass over memory each where the operation is elementwise (L∞ step, L∞ random start, keep-best copy,
ELLE triplets); the per-example L2 kernels run tiles of whole examples (one CIFAR image per program, several
small ones) and read each example two or three times (norms, then the write), which the GPU's cache mostly
serves. Arithmetic follows
``reference.py`` operation by operation in fp32, and kernels are launched without fused multiply-add, so
the results equal the reference bit for bit (the L2 norms sum in a different order: within a few ulp).

Inputs must be contiguous (the launchers make them so); offsets are 32-bit, so a tensor holds fewer than
2^31 elements. With ``TRITON_INTERPRET=1`` set before triton is first imported, the same kernels run on
CPU tensors through the Triton interpreter (slow; for the parity tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import reference

BLOCK = 1024
_NO_FMA = {"enable_fp_fusion": False}


def interpreted() -> bool:
    """Whether these kernels were built for the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_linf_step_kernel, InterpretedFunction) and isinstance(tl.rand, InterpretedFunction)


def _launch_options() -> dict:
    return {} if interpreted() else _NO_FMA


@triton.jit
def _round_to(v, dtype: tl.constexpr):
    """fp32 ``v`` rounded to ``dtype``; bf16 by round-to-nearest-even on the bits (as torch and the GPU do; the
    interpreter's own bf16 cast truncates), so the interpreter and the GPU agree with the reference."""
    if dtype == tl.bfloat16:
        u = v.to(tl.uint32, bitcast=True)
        u = (u + (((u >> 16) & 1) + 0x7FFF)) >> 16
        return u.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(dtype)


@triton.jit
def _linf_step_kernel(delta_ptr, grad_ptr, x_ptr, out_ptr, n, step, eps, PROJECT: tl.constexpr,
                      BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    d = tl.load(delta_ptr + offs, mask=m, other=0.0).to(tl.float32)
    g = tl.load(grad_ptr + offs, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    s = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
    d = d + step * s
    if PROJECT:
        d = tl.minimum(tl.maximum(d, -eps), eps)
    y = tl.minimum(tl.maximum(x + d, 0.0), 1.0)
    tl.store(out_ptr + offs, y - x, mask=m)


@triton.jit
def _l2_step_kernel(delta_ptr, grad_ptr, x_ptr, out_ptr, B, D, step, eps, tiny, PROJECT: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    base = (rows.to(tl.int64) * D)[:, None]
    rmask = (rows < B)[:, None]
    acc = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    for start in range(0, D, BLOCK):
        cols = (start + tl.arange(0, BLOCK))[None, :]
        g = tl.load(grad_ptr + base + cols, mask=rmask & (cols < D), other=0.0).to(tl.float32)
        acc += g * g
    ng = tl.maximum(tl.sqrt(tl.sum(acc, axis=1)), tiny)[:, None]
    factor = 1.0
    if PROJECT:
        acc2 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        for start in range(0, D, BLOCK):
            cols = (start + tl.arange(0, BLOCK))[None, :]
            m = rmask & (cols < D)
            g = tl.load(grad_ptr + base + cols, mask=m, other=0.0).to(tl.float32)
            d = tl.load(delta_ptr + base + cols, mask=m, other=0.0).to(tl.float32)
            d = d + step * (g / ng)
            acc2 += tl.where(m, d * d, 0.0)
        nd = tl.maximum(tl.sqrt(tl.sum(acc2, axis=1)), tiny)[:, None]
        factor = tl.minimum(eps / nd, 1.0)
    for start in range(0, D, BLOCK):
        cols = (start + tl.arange(0, BLOCK))[None, :]
        m = rmask & (cols < D)
        g = tl.load(grad_ptr + base + cols, mask=m, other=0.0).to(tl.float32)
        d = tl.load(delta_ptr + base + cols, mask=m, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + base + cols, mask=m, other=0.0).to(tl.float32)
        d = d + step * (g / ng)
        if PROJECT:
            d = d * factor
        y = tl.minimum(tl.maximum(x + d, 0.0), 1.0)
        tl.store(out_ptr + base + cols, y - x, mask=m)


@triton.jit
def _linf_start_kernel(x_ptr, out_ptr, n, seed, two_r, r, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.rand(seed, offs)
    d = u * two_r - r
    y = tl.minimum(tl.maximum(x + d, 0.0), 1.0)
    tl.store(out_ptr + offs, y - x, mask=m)


@triton.jit
def _l2_start_kernel(x_ptr, out_ptr, B, D, seed, radius, inv_d, tiny, UNIFORM_IN_BALL: tl.constexpr,
                     ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    first = rows * D  # philox counter of each example's first element (32-bit)
    base = (rows.to(tl.int64) * D)[:, None]
    rmask = (rows < B)[:, None]
    acc = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    for start in range(0, D, BLOCK):
        cols = (start + tl.arange(0, BLOCK))[None, :]
        g = tl.randn(seed, first[:, None] + cols)
        acc += tl.where(rmask & (cols < D), g * g, 0.0)
    n = tl.maximum(tl.sqrt(tl.sum(acc, axis=1)), tiny)[:, None]
    _, _, u, _ = tl.rand4x(seed, first)
    if UNIFORM_IN_BALL:
        r = radius * tl.exp(tl.log(u) * inv_d)
    else:
        r = radius * u
    r = r[:, None]
    for start in range(0, D, BLOCK):
        cols = (start + tl.arange(0, BLOCK))[None, :]
        m = rmask & (cols < D)
        g = tl.randn(seed, first[:, None] + cols)
        x = tl.load(x_ptr + base + cols, mask=m, other=0.0).to(tl.float32)
        d = g / n * r
        y = tl.minimum(tl.maximum(x + d, 0.0), 1.0)
        tl.store(out_ptr + base + cols, y - x, mask=m)


@triton.jit
def _keep_best_kernel(best_ptr, delta_ptr, better_ptr, n, D, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    better = tl.load(better_ptr + offs // D, mask=m, other=0) != 0
    d = tl.load(delta_ptr + offs, mask=m & better, other=0.0)
    tl.store(best_ptr + offs, d, mask=m & better)


@triton.jit
def _elle_kernel(x_ptr, xa_ptr, xb_ptr, xc_ptr, a_ptr, n, D, seed, two_eps, eps, CLIP: tl.constexpr,
                 BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    ua, ub, _, _ = tl.rand4x(seed, offs)
    first = (offs // D) * D
    _, _, a, _ = tl.rand4x(seed, first)
    eta_a = ua * two_eps - eps
    eta_b = ub * two_eps - eps
    if CLIP:
        eta_a = tl.minimum(tl.maximum(x + eta_a, 0.0), 1.0) - x
        eta_b = tl.minimum(tl.maximum(x + eta_b, 0.0), 1.0) - x
    xa = _round_to(x + eta_a, xa_ptr.dtype.element_ty)
    xb = _round_to(x + eta_b, xb_ptr.dtype.element_ty)
    xc = (1.0 - a) * xa.to(tl.float32) + a * xb.to(tl.float32)
    tl.store(xa_ptr + offs, xa, mask=m)
    tl.store(xb_ptr + offs, xb, mask=m)
    tl.store(xc_ptr + offs, _round_to(xc, xc_ptr.dtype.element_ty), mask=m)
    tl.store(a_ptr + offs // D, a, mask=m & (offs == first))


# -- launchers ------------------------------------------------------------------------------------------
def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def _c(t: Tensor) -> Tensor:
    return t if t.is_contiguous() else t.contiguous()


def linf_step(delta: Tensor, grad: Tensor, x: Tensor, step: float, eps: float | None) -> Tensor:
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    n = out.numel()
    if n:
        _linf_step_kernel[_grid(n)](_c(delta), _c(grad), _c(x), out, n, float(step),
                                    0.0 if eps is None else float(eps), PROJECT=eps is not None, BLOCK=BLOCK,
                                    **_launch_options())
    return out


def _row_tiles(b: int, d: int) -> tuple[int, int, tuple[int]]:
    """(ROWS, BLOCK, grid) of the per-example kernels: tiles of ROWS examples x BLOCK elements, at most 4096
    elements, so small examples share a program (CIFAR's 3072 get one each)."""
    block = min(max(triton.next_power_of_2(d), 16), 4096)
    rows = max(1, min(4096 // block, triton.next_power_of_2(b)))
    return rows, block, (triton.cdiv(b, rows),)


def l2_step(delta: Tensor, grad: Tensor, x: Tensor, step: float, eps: float | None) -> Tensor:
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    b = x.shape[0]
    if out.numel():
        d = out.numel() // b
        rows, block, grid = _row_tiles(b, d)
        _l2_step_kernel[grid](_c(delta), _c(grad), _c(x), out, b, d, float(step), 0.0 if eps is None else float(eps),
                              reference.TINY, PROJECT=eps is not None, ROWS=rows, BLOCK=block, **_launch_options())
    return out


def linf_random_start(x: Tensor, radius: float, seed: int) -> Tensor:
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    n = out.numel()
    if n:
        _linf_start_kernel[_grid(n)](_c(x), out, n, int(seed), float(2 * radius), float(radius), BLOCK=BLOCK,
                                     **_launch_options())
    return out


def l2_random_start(x: Tensor, radius: float, seed: int, uniform_in_ball: bool) -> Tensor:
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    b = x.shape[0]
    if out.numel():
        d = out.numel() // b
        rows, block, grid = _row_tiles(b, d)
        _l2_start_kernel[grid](_c(x), out, b, d, int(seed), float(radius), float(1.0 / d), reference.TINY,
                               UNIFORM_IN_BALL=bool(uniform_in_ball), ROWS=rows, BLOCK=block, **_launch_options())
    return out


def keep_best_copy(best_delta: Tensor, delta: Tensor, better: Tensor) -> None:
    """``best_delta[better] = delta[better]`` in place (``best_delta`` must be contiguous)."""
    n = best_delta.numel()
    if n:
        _keep_best_kernel[_grid(n)](best_delta, _c(delta), _c(better.to(torch.int8)), n, n // best_delta.shape[0],
                                    BLOCK=BLOCK)


def linf_elle_triplets(x: Tensor, eps: float, seed: int, clip: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x = _c(x)
    xa, xb, xc = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    b = x.shape[0]
    a = torch.empty(b, dtype=torch.float32, device=x.device)
    n = x.numel()
    if n:
        _elle_kernel[_grid(n)](x, xa, xb, xc, a, n, n // b, int(seed), float(2 * eps), float(eps), CLIP=bool(clip),
                               BLOCK=BLOCK, **_launch_options())
    return xa, xb, xc, a
