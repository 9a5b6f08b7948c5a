"""What AWP, RWP and LAP share: the parameter rule, the ascent gradient that leaves the model's state alone,
per-layer scaling, and the perturb → step → restore context.

Restore semantics (AWP, paper LAP): the optimiser step runs at ``w + v`` and its update ``u`` is applied to
``w``. With ``w₁`` the weights after the step, the restore sets ``w ← w₀ + (w₁ − (w₀ + v))`` where ``w₀`` is a
saved copy and ``w₀ + v`` is recomputed exactly as it was applied, so a step that changes nothing (zero
learning rate) gives back ``w₀`` bit for bit (the official ``w₁ − v`` does not: ``(w₀ + v) − v ≠ w₀`` in
floating point). When the body raises, the weights are copied back from ``w₀``: no exception leaks a
perturbed model.

The ascent passes run with the model in its current (train) mode but with every norm layer's running
statistics frozen (batch statistics are used, the running buffers and ``num_batches_tracked`` are not
touched), take gradients with ``torch.autograd.grad`` (no parameter ``.grad`` is written) and never touch the
optimiser, so BN statistics and optimiser state are exactly those of training without the perturbation.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry
from ..threat import ThreatModel
from ..training.hooks import StepContext, WeightPerturbation
from .selection import ParameterRule

WEIGHT_PERTURBATIONS: Registry[type[WeightPerturbation]] = Registry("weight perturbation", base=WeightPerturbation)
"""The weight perturbations by name; each is registered at its definition with ``@register_weight_perturbation``."""
register_weight_perturbation = WEIGHT_PERTURBATIONS.register

NORM_EPS = 1e-20
"""Added to a gradient's norm before dividing by it (the official codes' EPS): a zero gradient gives v = 0."""


@contextlib.contextmanager
def running_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Norm layers use batch statistics in train mode but leave their running buffers alone; restored in
    ``finally``."""
    norms = [m for m in model.modules() if getattr(m, "track_running_stats", False)]
    try:
        for m in norms:
            m.track_running_stats = False
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def _without_gradient_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    """``DistributedDataParallel.no_sync()`` of ``model`` or of the module it wraps (the training module may be
    DDP, or a compiled wrapper around it), else nothing: an ascent pass must not arm DDP's gradient reducer."""
    for m in (model, getattr(model, "module", None)):
        if isinstance(m, nn.parallel.DistributedDataParallel):
            return m.no_sync()
    return contextlib.nullcontext()


def ascent_gradients(model: nn.Module, params: Sequence[nn.Parameter], loss_fn: Callable[[], Tensor]) -> list[Tensor]:
    """Gradients of ``loss_fn()`` with respect to ``params`` (zeros for unused ones), running statistics frozen.

    In a process group the gradients are averaged over the ranks, so every rank perturbs its weights alike (the
    direction of the global batch, as the official single-process codes compute it)."""
    with running_stats_frozen(model), _without_gradient_sync(model):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    out = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            for g in out:
                torch.distributed.all_reduce(g)
                g.div_(world)
    return out


def layer_scaled(directions: Sequence[Tensor], params: Sequence[Tensor], scales: Sequence[float]) -> list[Tensor]:
    """``v_l = s_l · ‖w_l‖ · d_l / (‖d_l‖ + 1e-20)`` per tensor (AWP's and LAP's layer-wise normalisation)."""
    out = []
    for d, p, s in zip(directions, params, scales):
        out.append(d * (float(s) * p.detach().norm() / (d.norm() + NORM_EPS)))
    return out


def global_scaled(directions: Sequence[Tensor], params: Sequence[Tensor], scale: float) -> list[Tensor]:
    """``v = s · ‖w‖ · d / (‖d‖ + 1e-20)`` with one norm over all tensors together (RWP's normalisation)."""
    w_norm = torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in params]))
    d_norm = torch.linalg.vector_norm(torch.stack([d.norm() for d in directions]))
    factor = float(scale) * w_norm / (d_norm + NORM_EPS)
    return [d * factor for d in directions]


@contextlib.contextmanager
def perturbed(params: Sequence[nn.Parameter], v: Sequence[Tensor], *, keep: bool = False) -> Iterator[None]:
    """``w ← w + v`` for the body; afterwards the body's update is moved back onto the unperturbed weights
    (``keep=False``) or the perturbed weights are kept (``keep=True``, the official LAP code). When the body
    raises, the weights are restored exactly in either case."""
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for p, d in zip(params, v):
            p.add_(d)
    finished = False
    try:
        yield
        finished = True
    finally:
        with torch.no_grad():
            for p, w0, d in zip(params, saved, v):
                if not finished:
                    p.copy_(w0)
                elif not keep:
                    update = p - (w0 + d)  # w0 + d is recomputed bit for bit as applied above
                    p.copy_(torch.where(update == 0, w0, w0 + update))  # where: keeps the sign of a zero weight


class Perturbation(WeightPerturbation):
    """Base of AWP, RWP and LAP: the parameter rule, the warm-up and the context.

    Subclasses implement :meth:`perturbation` (the ``v`` for the selected parameters); ``keep`` says whether
    the perturbation stays after the step.

    Args:
        threat: the training threat model (LAP's default β depends on ε).
        modules: module kinds whose parameters are perturbed (see ``selection.MODULE_KINDS``).
        params: parameter names inside those modules.
        warmup_epochs: epochs trained without the perturbation first (AWP: 0 for CIFAR PGD-AT, 5 for SVHN, 10
            for TRADES-AWP).
    """

    keep = False

    def __init__(self, threat: ThreatModel, *, modules: Sequence[str] = ("conv", "linear"),
                 params: Sequence[str] = ("weight",), warmup_epochs: int = 0):
        if int(warmup_epochs) < 0:
            raise ConfigError(f"{self.name}: warmup_epochs must be >= 0, got {warmup_epochs}.")
        self.threat = threat
        self.rule = ParameterRule(tuple(modules) if not isinstance(modules, str) else (modules,),
                                  tuple(params) if not isinstance(params, str) else (params,))
        self.warmup_epochs = int(warmup_epochs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "threat")
        return f"{type(self).__name__}({args})"

    def selected(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for _, p in self.rule.select(model)]

    def active(self, ctx: StepContext) -> bool:
        return ctx.epoch >= self.warmup_epochs

    def perturbation(self, ctx: StepContext, loss_fn: Callable[..., Tensor], params: list[nn.Parameter]) -> list[Tensor]:
        raise NotImplementedError

    @contextlib.contextmanager
    def applied(self, ctx: StepContext, loss_fn: Callable[..., Tensor]) -> Iterator[None]:
        if not self.active(ctx):
            yield
            return
        params = self.selected(ctx.model)
        v = self.perturbation(ctx, loss_fn, params)
        with perturbed(params, v, keep=self.keep):
            yield

    def state_dict(self) -> dict[str, Any]:
        return {}  # stateless: the warm-up reads ctx.epoch, every draw is deterministic
