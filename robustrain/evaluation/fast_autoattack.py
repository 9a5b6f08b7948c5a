"""robustrain's own AutoAttack components (APGD, APGD-T, FAB-T, Square), written to give the official code's
per-example outcome (Croce & Hein, fra31/auto-attack, PyPI ``pyautoattack``) while skipping work whose result is
already fixed.

Each function takes one batch (the points the cascade hands over, in its order) and returns adversarial inputs:
for a point the attack broke an input the model misclassifies, for the others ``x`` itself. What makes them faster
than the official classes, and why the per-example outcome is the same:

* **APGD / APGD-T**: the official loop runs every iteration on every point of the batch, also on points already
  misclassified. The step size, the checkpoints and the oscillation test are per example, and the global counters
  (iteration, checkpoint length) do not depend on which points are present, so a point leaves the working batch at
  its first misclassified iterate: its flag ("broken") can no longer change. The random start is drawn exactly as
  the official code draws it (``manual_seed(seed)`` per call, one draw of the still-robust points' shape per
  restart or target class, on the CPU) and the arithmetic follows the same operations in the same order.
* **FAB-T** (1 restart, no random start): a point leaves the working batch as soon as it holds an adversarial
  input within ε (later iterations only shrink the norm found). The target classes run in turn, each on the points
  no earlier target broke (on a CPU, stacking them would only add work on points an earlier target breaks).
* **Square**: the official loop already drops fooled points; here the state of the points still to fool is kept
  compact (no gather / scatter of the whole batch per query), only the square window is recomputed, and the asserts
  over the whole batch are left out. The random draws (window position, signs) do not depend on the points and are
  the same calls in the same order; the forward passes see the same batches.

The per-example identity rests on the model computing each example independently of the others in its batch (eval
mode, no batch statistics) down to the last bit; on the CPU with one thread this holds for the convolution and
linear layers we tested (``tests/test_autoattack_fast.py``), and the benchmark (``scripts/bench_autoattack_fast.py``)
compares every example's flag with the official package. Only L∞ and L2 (APGD, APGD-T; FAB-T and Square: L∞) are
here; anything else raises :class:`~robustrain.errors.ConfigError` naming the official backend.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def _seed_all(seed: int, device: torch.device) -> None:
    """Seed the generators the official code seeds at the start of each attack call."""
    torch.random.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.random.manual_seed(seed)


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def _clean_ranking(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Which points the model classifies correctly, and its classes by ascending clean logit (row by row). The
    targeted attacks take target class ``rank`` from this one ranking; the official code recomputes the clean
    logits of the still-robust points for every target class (the same values: each example is computed
    independently of its batch, the premise of this module)."""
    clean = _predict(model, x)
    return clean.max(1)[1] == y, clean.sort(dim=1)[1]


def _row_view(v: Tensor, ndim: int) -> Tensor:
    return v.view(-1, *([1] * (ndim - 1)))


# -- APGD ----------------------------------------------------------------------------------------------------
def _unit(v: Tensor, norm: str) -> Tensor:
    """``v`` divided by its per-example norm (+1e-12), as the official ``normalize``."""
    flat = v.view(v.shape[0], -1)
    t = flat.abs().max(1)[0] if norm == "linf" else (flat ** 2).sum(-1).sqrt()
    return v / (_row_view(t, v.dim()) + 1e-12)


def _l2(v: Tensor) -> Tensor:
    return _row_view((v ** 2).view(v.shape[0], -1).sum(-1).sqrt(), v.dim())


def _ce(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _dlr(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    srt, ind = logits.sort(dim=1)
    top_is_y = (ind[:, -1] == y).float()
    u = torch.arange(logits.shape[0])
    return -(logits[u, y] - srt[:, -2] * top_is_y - srt[:, -1] * (1. - top_is_y)) / (srt[:, -1] - srt[:, -3] + 1e-12)


def _dlr_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    srt = logits.sort(dim=1)[0]
    u = torch.arange(logits.shape[0])
    return -(logits[u, y] - logits[u, target]) / (srt[:, -1] - .5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


_LOSSES = {"ce": _ce, "dlr": _dlr, "dlr-targeted": _dlr_targeted}


class _ApgdRun:
    """One APGD run (one restart, or one target class) on ``x`` whose points leave at their first misclassified
    iterate. ``broken`` and ``adv`` (per point of ``x``) hold the outcome."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, *, norm: str, eps: float,
                 steps: int, rho: float, loss: str):
        self.model, self.norm, self.eps, self.steps, self.rho = model, norm, eps, steps, rho
        self.loss_fn = _LOSSES[loss]
        n = x.shape[0]
        self.broken = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.adv = x.clone()
        noise = (2 * torch.rand(x.shape) - 1 if norm == "linf" else torch.randn(x.shape)).to(x.device)
        start = (x + self.eps * torch.ones_like(x) * _unit(noise, norm)).clamp(0., 1.)
        self._run(x, y, target, start)

    def _grad(self, xa: Tensor, y: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        xa = xa.clone().requires_grad_()
        with torch.enable_grad():
            logits = self.model(xa)
            loss = self.loss_fn(logits, y, target)
        g = torch.autograd.grad(loss.sum(), [xa])[0].detach()
        return logits.detach(), loss.detach(), g

    def _project(self, v: Tensor, x: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
        if self.norm == "linf":
            return torch.clamp(torch.min(torch.max(v, lo), hi), 0.0, 1.0)
        return torch.clamp(x + _unit(v - x, "l2") * torch.min(self.eps * torch.ones_like(x), _l2(v - x)), 0.0, 1.0)

    def _step(self, xa: Tensor, old: Tensor, g: Tensor, step: Tensor, x: Tensor, lo, hi, a: float) -> Tensor:
        momentum = xa - old
        moved = xa + step * (torch.sign(g) if self.norm == "linf" else _unit(g, "l2"))
        first = self._project(moved, x, lo, hi)
        return self._project(xa + (first - xa) * a + momentum * (1 - a), x, lo, hi)

    def _run(self, x: Tensor, y: Tensor, target: Tensor | None, xa: Tensor) -> None:
        steps, dev = self.steps, x.device
        n_check0, n_check_min, check_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
        idx = torch.arange(x.shape[0], device=dev)       # the points of ``x`` still in the working batch
        lo = hi = None
        if self.norm == "linf":
            lo, hi = x - self.eps, x + self.eps
        logits, loss, g = self._grad(xa, y, target)
        self._record_broken(idx, logits, y, xa)
        x_best, g_best, loss_best = xa.clone(), g.clone(), loss.clone()
        step = 2. * self.eps * torch.ones([x.shape[0], *([1] * (x.dim() - 1))], device=dev)
        old = xa.clone()
        history = torch.zeros([steps, x.shape[0]], device=dev)   # loss per iteration (row -1 is read while still 0)
        last_best, last_reduced = loss_best.clone(), torch.ones_like(loss_best)
        k, counter = n_check0, 0
        keep = ~self._misclassified(logits, y)
        state = [x, y, target, lo, hi, xa, old, g, x_best, g_best, loss_best, step, last_best, last_reduced, idx]
        for i in range(steps):
            if not bool(keep.all()):
                state = [None if t is None else t[keep] for t in state]
                history = history[:, keep]
                if state[0].shape[0] == 0:
                    return
            x, y, target, lo, hi, xa, old, g, x_best, g_best, loss_best, step, last_best, last_reduced, idx = state
            with torch.no_grad():
                a = 0.75 if i > 0 else 1.0
                new = self._step(xa, old, g, step, x, lo, hi, a)
                old = xa
                xa = new
            logits, loss, g = self._grad(xa, y, target)
            wrong = self._misclassified(logits, y)
            self._record_broken(idx[wrong], logits[wrong], y[wrong], xa[wrong])
            history[i] = loss
            better = loss > loss_best
            x_best[better], g_best[better], loss_best[better] = xa[better], g[better], loss[better]
            counter += 1
            if counter == k:
                ups = torch.zeros(x.shape[0], device=dev)
                for c in range(k):
                    ups += (history[i - c] > history[i - c - 1]).float()
                reduce = (ups <= k * self.rho * torch.ones_like(ups)).float()
                reduce = torch.max(reduce, (1. - last_reduced) * (last_best >= loss_best).float())
                last_reduced, last_best = reduce.clone(), loss_best.clone()
                sel = reduce > 0
                step[sel] /= 2.0
                xa[sel], g[sel] = x_best[sel].clone(), g_best[sel].clone()
                k, counter = max(k - check_decr, n_check_min), 0
            keep = ~wrong
            state = [x, y, target, lo, hi, xa, old, g, x_best, g_best, loss_best, step, last_best, last_reduced, idx]

    @staticmethod
    def _misclassified(logits: Tensor, y: Tensor) -> Tensor:
        return logits.max(1)[1] != y

    def _record_broken(self, idx: Tensor, logits: Tensor, y: Tensor, xa: Tensor) -> None:
        wrong = self._misclassified(logits, y)
        self.broken[idx[wrong]] = True
        self.adv[idx[wrong]] = xa[wrong].detach()


def _check_norm(what: str, norm: str, allowed: tuple[str, ...]) -> None:
    if norm not in allowed:
        raise ConfigError(f"--backend fast: {what} supports the {'/'.join(allowed)} threat models, got {norm!r}; use "
                          "--backend autoattack (the official code) for it.")


def apgd(model: nn.Module, x: Tensor, y: Tensor, *, norm: str, eps: float, steps: int = 100, restarts: int = 1,
         loss: str = "ce", rho: float = 0.75, seed: int = 0) -> Tensor:
    """APGD (untargeted, ``loss`` ``ce`` or ``dlr``): per example the outcome of the official ``APGDAttack.perturb``."""
    _check_norm("APGD", norm, ("linf", "l2"))
    if loss not in ("ce", "dlr"):
        raise ConfigError(f"APGD loss must be 'ce' or 'dlr', got {loss!r}.")
    x = x.detach().float()
    robust = _predict(model, x).max(1)[1] == y
    adv = x.clone()
    _seed_all(seed, x.device)
    for _ in range(restarts):
        todo = robust.nonzero().flatten()
        if todo.numel() == 0:
            break
        run = _ApgdRun(model, x[todo], y[todo], None, norm=norm, eps=eps, steps=steps, rho=rho, loss=loss)
        robust[todo[run.broken]] = False
        adv[todo[run.broken]] = run.adv[run.broken]
    return adv


def apgd_targeted(model: nn.Module, x: Tensor, y: Tensor, *, norm: str, eps: float, steps: int = 100,
                  restarts: int = 1, target_classes: int = 9, rho: float = 0.75, seed: int = 0) -> Tensor:
    """APGD-T (targeted DLR loss, the ``target_classes`` highest-scoring wrong classes in turn): per example the
    outcome of the official ``APGDAttack_targeted.perturb``."""
    _check_norm("APGD-T", norm, ("linf", "l2"))
    x = x.detach().float()
    robust, ranked = _clean_ranking(model, x, y)
    adv = x.clone()
    _seed_all(seed, x.device)
    for rank in range(2, target_classes + 2):
        for _ in range(restarts):
            todo = robust.nonzero().flatten()
            if todo.numel() == 0:
                return adv
            target = ranked[todo, -rank]
            run = _ApgdRun(model, x[todo], y[todo], target, norm=norm, eps=eps, steps=steps, rho=rho,
                           loss="dlr-targeted")
            robust[todo[run.broken]] = False
            adv[todo[run.broken]] = run.adv[run.broken]
    return adv


# -- FAB-T ---------------------------------------------------------------------------------------------------
def _linf_hyperplane_step(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """The smallest L∞ step ``d`` (rows) moving ``t`` onto the hyperplane ``w·z = b`` with ``t + d`` in [0,1] (as far
    as the box allows): sort the coordinates by their room in the box, find the breakpoint by bisection."""
    dev = t.device
    side = 2 * ((w * t).sum(1) - b >= 0) - 1
    w = w * side.unsqueeze(1)
    b = b * side
    neg = (w < 0).float()
    room_dir = (neg - t) * (w != 0).float()              # the step to the box face the move heads for
    room = neg - t * (2 * neg - 1)
    order = torch.argsort(room, dim=1)
    b = b - (w * t).sum(1)
    b_full = (w * room_dir).sum(1)
    rev = order.flip((1,))
    w_sorted = w.gather(1, rev)
    cum_w = torch.cumsum(w_sorted.abs(), dim=1)
    cum_b = torch.cumsum(-w_sorted * room_dir.gather(1, rev), dim=1) + b_full.unsqueeze(1)
    at_last = cum_b[:, -1] - cum_w[:, -1] * room.gather(1, order[:, 0:1]).squeeze(1)
    all_free = b - at_last > 0
    search = (b - b_full > 0) & (~all_free)
    lo = torch.zeros(int(search.sum()), device=dev)
    hi = torch.full_like(lo, w.shape[1] - 1)
    order_s, cb_s, cw_s, room_s, b_s = order[search], cum_b[search], cum_w[search], room[search], b[search]
    for _ in range(math.ceil(math.log2(w.shape[1]))):
        mid = torch.floor((lo + hi) / 2)
        mid_i = mid.long().unsqueeze(1)
        pos = order_s.gather(1, order_s.size(1) - 1 - mid_i)
        val = (cb_s.gather(1, mid_i) - cw_s.gather(1, mid_i) * room_s.gather(1, pos)).squeeze(1)
        up = b_s - val > 0
        lo = torch.where(up, mid, lo)
        hi = torch.where(up, hi, mid)
    lo = lo.long()
    d = room_dir
    if all_free.any():
        lam = torch.clamp_min((b[all_free] - cum_b[all_free, -1]) / (-cum_w[all_free, -1]), min=0).unsqueeze(-1)
        d[all_free] = (2 * neg[all_free] - 1) * lam
    lam = torch.clamp_min((b[search] - cum_b[search, lo]) / (-cum_w[search, lo]), min=0).unsqueeze(-1)
    d[search] = torch.min(lam, d[search]) * neg[search] + torch.max(-lam, d[search]) * (1 - neg[search])
    return d * (w != 0).float()


def _fab_run(model: nn.Module, x: Tensor, y: Tensor, target: Tensor, *, eps: float, steps: int, alpha_max: float,
             eta: float, beta: float) -> tuple[Tensor, Tensor]:
    """One FAB-T run (L∞, no random start) towards ``target``; a point leaves once it holds an adversarial input
    within ε. Returns (broken, adversarial inputs)."""
    n, dev = x.shape[0], x.device
    broken = torch.zeros(n, dtype=torch.bool, device=dev)
    adv_out = x.clone()
    idx = torch.arange(n, device=dev)
    im, la, lt = x, y, target
    x1, adv, best = x.clone(), x.clone(), 1e10 * torch.ones([n], device=dev)
    for _ in range(steps):
        m = x1.shape[0]
        u = torch.arange(m)
        xg = x1.clone().requires_grad_()
        with torch.enable_grad():
            out = model(xg)
            diff = -(out[u, la] - out[u, lt])
        g = torch.autograd.grad(diff.sum(), [xg])[0].detach()
        with torch.no_grad():
            df = diff.detach()
            w = g.reshape(m, -1)
            b = -df + (g * x1).reshape(m, -1).sum(-1)
            d3 = _linf_hyperplane_step(torch.cat((x1.reshape(m, -1), im.reshape(m, -1)), 0), torch.cat((w, w), 0),
                                       torch.cat((b, b), 0))
            d1, d2 = d3[:m].reshape(x1.shape), d3[-m:].reshape(x1.shape)
            a0 = d3.abs().max(dim=1, keepdim=True)[0].view(-1, *[1] * (x.dim() - 1))
            a0 = torch.max(a0, 1e-8 * torch.ones(a0.shape, device=dev))
            a1, a2 = a0[:m], a0[-m:]
            alpha = torch.min(torch.max(a1 / (a1 + a2), torch.zeros(a1.shape, device=dev)),
                              alpha_max * torch.ones(a1.shape, device=dev))
            x1 = ((x1 + eta * d1) * (1 - alpha) + (im + d2 * eta) * alpha).clamp(0.0, 1.0)
            hit = model(x1).max(1)[1] != la
            if bool(hit.any()):
                dist = (x1[hit] - im[hit]).reshape(int(hit.sum()), -1).abs().max(dim=1)[0]
                closer = dist < best[hit]
                rows = hit.nonzero().flatten()
                adv[rows[closer]] = x1[rows[closer]]
                best[rows[closer]] = dist[closer]
                x1[hit] = im[hit] + (x1[hit] - im[hit]) * beta
            done = best <= eps
            if bool(done.any()):
                broken[idx[done]] = True
                adv_out[idx[done]] = adv[done]
                keep = ~done
                idx, im, la, lt, x1, adv, best = idx[keep], im[keep], la[keep], lt[keep], x1[keep], adv[keep], best[keep]
                if idx.numel() == 0:
                    break
    return broken, adv_out


def fab_targeted(model: nn.Module, x: Tensor, y: Tensor, *, norm: str, eps: float, steps: int = 100,
                 target_classes: int = 9, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 restarts: int = 1, seed: int = 0) -> Tensor:
    """FAB-T (L∞, 1 restart): per example the outcome of the official ``FABAttack_PT(targeted=True).perturb``.

    ``seed`` is accepted for the backend's uniform call; with one restart FAB-T draws no random numbers."""
    _check_norm("FAB-T", norm, ("linf",))
    if restarts != 1:
        raise ConfigError(f"--backend fast: FAB-T runs 1 restart (the standard version), got {restarts}; use "
                          "--backend autoattack for more.")
    x = x.detach().float()
    robust, ranked = _clean_ranking(model, x, y)
    adv = x.clone()
    for rank in range(2, target_classes + 2):
        todo = robust.nonzero().flatten()
        if todo.numel() == 0:
            break
        broken, found = _fab_run(model, x[todo], y[todo], ranked[todo, -rank], eps=eps, steps=steps,
                                 alpha_max=alpha_max, eta=eta, beta=beta)
        robust[todo[broken]] = False
        adv[todo[broken]] = found[broken]
    return adv


# -- Square --------------------------------------------------------------------------------------------------
def _margin(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits = model(x)
    u = torch.arange(x.shape[0])
    correct = logits[u, y].clone()
    logits[u, y] = -float("inf")
    return correct - logits.max(dim=-1)[0]


def _square_fraction(it: int, p_init: float) -> float:
    """The official schedule of the square's area fraction over the queries (no rescaling)."""
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def _rand_sign(shape) -> Tensor:
    return torch.sign(2 * torch.rand(shape) - 1)


def _rand_int(high: int) -> int:
    return int((0 + high * torch.rand([1])).long())


def square(model: nn.Module, x: Tensor, y: Tensor, *, norm: str, eps: float, queries: int = 5000,
           p_init: float = 0.8, restarts: int = 1, rescale_schedule: bool = False, seed: int = 0) -> Tensor:
    """Square attack (L∞, margin loss): per example the outcome of the official ``SquareAttack.perturb``."""
    _check_norm("Square", norm, ("linf",))
    if restarts != 1 or rescale_schedule:
        raise ConfigError("--backend fast: Square runs 1 restart without schedule rescaling (the standard version); "
                          f"got restarts={restarts}, rescale_schedule={rescale_schedule}; use --backend autoattack.")
    with torch.inference_mode():
        adv = _square_linf(model, x.detach().float(), y, eps=eps, queries=queries, p_init=p_init, seed=seed)
    return adv.clone()  # a normal tensor again (made outside inference mode)


def _square_linf(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, queries: int, p_init: float,
                 seed: int) -> Tensor:
    """The official Square (L∞, margin loss) with the state of the points still to fool kept compact."""
    adv = x.clone()
    robust = model(x).max(1)[1] == y
    _seed_all(seed, x.device)
    todo = robust.nonzero().flatten()
    if todo.numel() == 0:
        return adv
    xs, ys = x[todo], y[todo]
    n, c, h, w = xs.shape
    n_features = c * h * w
    best = torch.clamp(xs + eps * _rand_sign([n, c, 1, w]).to(x.device), 0., 1.)
    margin = _margin(model, best, ys)
    idx = torch.arange(n, device=x.device)
    lo, hi = xs - eps, xs + eps
    fooled_best = best.clone()
    if not bool((margin < 0.0).all()):
        for it in range(queries):
            keep = margin > 0.0
            if not bool(keep.all()):
                done = ~keep
                fooled_best[idx[done]] = best[done]
                idx, best, margin, lo, hi, ys = idx[keep], best[keep], margin[keep], lo[keep], hi[keep], ys[keep]
                if idx.numel() == 0:
                    break
            s = max(int(round(math.sqrt(_square_fraction(it, p_init) * n_features / c))), 1)
            s = min(s, min(h, w))
            vh, vw = _rand_int(h - s), _rand_int(w - s)
            sign = 2. * eps * _rand_sign([c, 1, 1]).to(x.device)
            win = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
            cand = best.clone()
            cand[win] = torch.clamp(torch.min(torch.max(best[win] + sign, lo[win]), hi[win]), 0., 1.)
            m_new = _margin(model, cand, ys)
            better = (m_new < margin) | (m_new <= 0.)
            margin = torch.where(better, m_new, margin)
            best[better] = cand[better]
        else:
            fooled_best[idx] = best
    else:
        fooled_best = best
    wrong = model(fooled_best).max(1)[1] != y[todo]
    adv[todo[wrong]] = fooled_best[wrong]
    return adv
