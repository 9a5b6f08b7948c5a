"""What every attack shares: the result it returns, the guard that leaves the model untouched, and the
input-gradient step.

Contract (design.md): an attack takes the model on every call, takes gradients with respect to the
perturbation only (parameters are frozen for the duration, so the backward pass does no weight-gradient
work), and restores model mode, BatchNorm statistics, parameter ``.grad`` and ``requires_grad`` in
``finally``, also when the model raises.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..guards import restore_modes
from ..registry import Registry
from ..threat import ThreatModel

LossFn = Callable[[Tensor, Tensor], Tensor]
"""(logits, labels) -> per-example loss of shape (B,)."""

BN_MODES = ("eval", "train")


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy, computed in fp32."""
    return F.cross_entropy(logits.float(), y, reduction="none")


class SmoothedCrossEntropy:
    """Per-example cross-entropy with label smoothing (torch's convention), in fp32; a class so attacks pickle."""

    def __init__(self, label_smoothing: float):
        self.label_smoothing = float(label_smoothing)

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing, reduction="none")

    def __repr__(self) -> str:
        return f"SmoothedCrossEntropy({self.label_smoothing:.6g})"


def smoothed_loss(name: str, label_smoothing: Any, kwargs: dict[str, Any]) -> float:
    """Check an attack's ``label_smoothing`` option (in [0, 1)) and, when it is > 0 and no ``loss_fn`` was given,
    put the label-smoothed cross-entropy into ``kwargs["loss_fn"]``; returns the smoothing as a float."""
    try:
        smoothing = float(label_smoothing)
    except (TypeError, ValueError):
        smoothing = float("nan")
    if isinstance(label_smoothing, bool) or not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"{name}: label_smoothing must be a number in [0, 1) (0 = plain cross-entropy, 0.4 = "
                          f"FastAT_Benchmark's), got {label_smoothing!r}.")
    if kwargs.get("loss_fn") is None and smoothing > 0:
        kwargs["loss_fn"] = SmoothedCrossEntropy(smoothing)
    return smoothing


@dataclass
class AttackResult:
    """The adversarial input and what regularisers need from the attack, all detached.

    Attributes:
        x_adv: adversarial input, in [0,1], dtype of the clean input.
        delta: the perturbation ``x_adv - x`` in fp32.
        x_init: the starting point ``x + delta_0`` of the attack.
        logits_init: model logits at ``x_init`` (from the attack's own forward pass).
        loss_init: per-example loss at ``x_init``.
        grad_init: input gradient of the summed loss at ``x_init``.
        loss_adv: per-example loss at ``x_adv`` when the attack evaluated it (keep-best PGD), else None.
    """

    x_adv: Tensor
    delta: Tensor
    x_init: Tensor
    logits_init: Tensor | None = None
    loss_init: Tensor | None = None
    grad_init: Tensor | None = None
    loss_adv: Tensor | None = None


class _CompileState:
    """An attack's compiled loss and whether compiling failed, shared with its shallow copies (the ε warm-up's
    :meth:`Attack.scaled` copies the attack every step), so a failure is tried and reported once."""

    def __init__(self) -> None:
        self.fn: Callable[..., tuple[Tensor, Tensor, Tensor]] | None = None  # built on first use
        self.failed = False

    def __getstate__(self) -> dict:
        return {"fn": None, "failed": self.failed}  # compiled code does not pickle; rebuilt on first use

    def __repr__(self) -> str:
        return f"_CompileState(compiled={self.fn is not None}, failed={self.failed})"


def _norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if getattr(m, "track_running_stats", False)]


def _check_bn_update(bn_mode: str, update_bn_stats: bool) -> None:
    if update_bn_stats and bn_mode != "train":
        raise ConfigError(
            f"update_bn_stats=True needs bn_mode='train' (got bn_mode={bn_mode!r}): only a model in train mode "
            "updates BatchNorm running statistics (the official Wong / Rice / ELLE / AAER training attacks run "
            "the model in train mode); in eval mode BatchNorm uses them. Set bn_mode: train or drop update_bn_stats."
        )


@contextlib.contextmanager
def attack_guard(model: nn.Module, bn_mode: str = "eval", update_bn_stats: bool = False) -> Iterator[None]:
    """Run an attack on ``model`` without changing it.

    Inside the block, parameters do not require grad and the model is in eval mode
    (``bn_mode="eval"``) or in train mode with BatchNorm using batch statistics but not updating its
    running statistics (``bn_mode="train"``, the recipe of Wong et al. and Rice et al.). On exit, even
    through an exception, every module's mode, every parameter's ``requires_grad`` and ``.grad`` and
    every norm layer's ``track_running_stats`` flag are as they were.

    ``update_bn_stats=True`` (only with ``bn_mode="train"``) is the one exception, asked for explicitly: the
    attack's forward passes then update the BatchNorm running statistics (and ``num_batches_tracked``) exactly
    as a train-mode forward does, as the official training loops do, whose attack runs on the model in train
    mode (locuslab/fast_adversarial CIFAR10/train_fgsm.py@54f7287, locuslab/robust_overfitting
    train_cifar.py@c47a25c, pdejorge/N-FGSM train.py@0a9e4f0, LIONS-EPFL/ELLE, tmllab AAER). Everything else is
    still restored.
    """
    if bn_mode not in BN_MODES:
        raise ConfigError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}.")
    _check_bn_update(bn_mode, update_bn_stats)
    params = list(model.parameters())
    flags = [(p, p.requires_grad, p.grad) for p in params]
    norms = _norm_layers(model)
    with restore_modes(model):
        try:
            model.train(bn_mode == "train")
            if bn_mode == "train" and not update_bn_stats:
                for m in norms:
                    m.track_running_stats = False  # batch statistics, running buffers left alone
            for p in params:
                p.requires_grad_(False)
            yield
        finally:
            for m in norms:
                m.track_running_stats = True
            for p, req, grad in flags:
                p.requires_grad_(req)
                p.grad = grad


def format_step(value: float, norm: str) -> str:
    """A length in input units as papers write it: a short decimal as it is (0.1, 0.007), else ``k/255`` for L∞ when
    k is a multiple of 0.5 (2/255), else six significant digits."""
    value = float(value)
    if float(f"{value:.4g}") == value:
        return f"{value:.4g}"
    if norm == "linf":
        k2 = value * 255 * 2
        if abs(k2 - round(k2)) < 1e-6:
            return f"{round(k2) / 2:g}/255"
    return f"{value:.6g}"


def ratio_rule(ratio: float) -> str:
    """The step rule of a step that is ``ratio·ε``: "ε", "1.25·ε"."""
    return "ε" if ratio == 1 else f"{ratio:g}·ε"


def check_inputs(x: Tensor, y: Tensor) -> None:
    """Raise a clear error when inputs are not a batch of images in [0,1] with matching labels."""
    if not torch.is_floating_point(x):
        raise TypeError(f"attack inputs must be floating point images in [0,1], got dtype {x.dtype}.")
    if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected images of shape (B, ...) and labels of shape (B,), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}."
        )
    if x.numel() == 0:
        raise ValueError(f"expected at least one image, got an empty batch of shape {tuple(x.shape)}.")
    lo, hi = torch.aminmax(x.detach())
    if not (lo.item() >= 0.0 and hi.item() <= 1.0):  # NaN fails both comparisons
        n_bad = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(
            f"attack inputs must lie in [0,1] (normalisation belongs inside the model), got values in "
            f"[{lo.item():.4g}, {hi.item():.4g}]" + (f" with {n_bad} non-finite (NaN or inf) values; find where the "
                                                     "images were computed" if n_bad else "") + "."
        )


class Attack:
    """Base class: subclasses implement :meth:`run`; :meth:`__call__` adds the guard and the checks.

    Args:
        threat: the feasible set (ball ∩ box).
        loss_fn: per-example loss to ascend; cross-entropy by default.
        bn_mode: "eval" (evaluation and TRADES-style training attacks) or "train" (Wong / Rice training
            attacks: batch statistics, running statistics untouched).
        update_bn_stats: with ``bn_mode="train"``, let the attack's forward passes update the BatchNorm running
            statistics as the official Wong / Rice / N-FGSM / ELLE / AAER loops do (their attack runs the model in
            train mode). Default False: the statistics are left untouched. With ``bn_mode="eval"`` a ConfigError.
        first_batch_bn_mode: a training-loop option read by the Trainer: the ``bn_mode`` of the attack on the
            first batch of every epoch after the first (None: ``bn_mode``). ``eval`` reproduces the official AWP and
            RWP loops (csdongxian/AWP AT_AWP/train_cifar10.py@a7acf5d, ChaojianYu/Robust-Weight-Perturbation
            AT_AWP_RWP/train_cifar10.py@1aaa83f): their end-of-epoch evaluation leaves the model in eval mode and
            ``model.train()`` comes only after the attack, so that one batch is attacked on running statistics
            (which it then does not update).
        amp_dtype: autocast dtype for the model's forward (e.g. torch.bfloat16); the perturbation and
            its update stay fp32.
        compile: run the forward, the loss and the input-gradient backward through ``torch.compile``
            (opt-in; the first call for a new model mode or input shape pays the compilation, tens of
            seconds on CPU). On CPU (width-16 PreActResNet-18, batch 128) PGD-10 ran about 1.5x faster
            than eager with a contiguous model and 1.2-1.4x with a channels_last one (results/benchmarks/attack.md).
            When compilation fails the attack warns once and runs eagerly from then on.

    Describing and scaling itself: :meth:`settings` states everything the attack does (its real step and the rule
    that chose it, radius, start, projection, box clip, BatchNorm mode, ...) as plain data, so reports never guess;
    :meth:`scaled` is the same attack at a fraction of its radius (the ε warm-up), with every field listed in
    :attr:`scaled_fields` scaled along.
    """

    name = "attack"
    scaled_fields: tuple[str, ...] = ()
    """The attack's lengths in input units that scale with the radius in :meth:`scaled` (``("step",)`` for every
    attack of the library). Lengths given in units of ε (FGSM's ``init_scale``) follow the radius by themselves;
    lengths that do not depend on ε (TRADES' ``init_std``) are not listed."""

    def __init__(
        self,
        threat: ThreatModel,
        *,
        loss_fn: LossFn | None = None,
        bn_mode: str = "eval",
        update_bn_stats: bool = False,
        first_batch_bn_mode: str | None = None,
        amp_dtype: torch.dtype | None = None,
        compile: bool = False,
    ):
        if bn_mode not in BN_MODES:
            raise ConfigError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}.")
        if first_batch_bn_mode not in (None, *BN_MODES):
            raise ConfigError(f"first_batch_bn_mode must be null or one of {BN_MODES}, got {first_batch_bn_mode!r}.")
        self.first_batch_bn_mode = first_batch_bn_mode
        _check_bn_update(bn_mode, bool(update_bn_stats))
        self.threat = threat
        self.loss_fn: LossFn = loss_fn or cross_entropy
        self.bn_mode = bn_mode
        self.update_bn_stats = bool(update_bn_stats)
        self.amp_dtype = amp_dtype
        self.compile = bool(compile)
        self._compile_state = _CompileState()
        self._scale = 1.0  # radius and step relative to the attack as configured (scaled() multiplies it)
        self._step_given: float | None = None  # the configured step (input units), None when the default rule chose it
        self._default_step_rule: str | None = None

    @property
    def max_norm(self) -> float:
        """Radius of the ball every output lies in (ε, except for attacks that do not project)."""
        return self.threat.eps

    # -- describing and scaling ---------------------------------------------------------------------
    @property
    def label(self) -> str:
        """The attack's name in tables and reports (``pgd-50-10`` for PGD, else :attr:`name`)."""
        return self.name

    def _record_step(self, given: float | None, default_rule: str) -> None:
        """Remember how ``self.step`` was chosen, for :attr:`step_rule`: ``given`` (input units) when the caller set
        it, else ``default_rule`` (e.g. "1.25·ε")."""
        self._step_given = None if given is None else float(given)
        self._default_step_rule = default_rule

    @property
    def step_rule(self) -> str | None:
        """How the step was chosen: the default's rule relative to ε ("ε", "1.25·ε", "ε/4"; it holds for scaled
        copies too), "fixed 2/255" for a configured step (", scaled by f" on a scaled copy), None for an attack
        without a step or one that does not record it."""
        if getattr(self, "step", None) is None:
            return None
        given = getattr(self, "_step_given", None)
        if given is None:
            return getattr(self, "_default_step_rule", None)
        scale = getattr(self, "_scale", 1.0)
        rule = f"fixed {format_step(given, self.threat.norm)}"
        return rule if scale == 1.0 else f"{rule}, scaled by {scale:.6g}"

    def scaled(self, factor: float) -> "Attack":
        """A shallow copy whose radius and every length in :attr:`scaled_fields` (the step) are multiplied by
        ``factor`` (the ε warm-up: the Trainer's training attack, the overfitting monitor's probes); nothing else
        changes, and state is shared with the original (the compiled loss, ``fgsm_mep``'s per-example buffers)."""
        factor = float(factor)
        if not math.isfinite(factor) or factor < 0:
            raise ConfigError(f"{self.name}: the scale factor must be a finite number >= 0, got {factor!r}.")
        out = copy.copy(self)
        out.threat = self.threat.scaled(factor)
        for field_name in self.scaled_fields:
            setattr(out, field_name, getattr(self, field_name) * factor)
        out._scale = getattr(self, "_scale", 1.0) * factor
        return out

    def _procedure(self) -> dict[str, Any]:
        """steps, restarts, start, projection and box_clip in words (subclasses say what they do)."""
        return {"steps": None, "restarts": None, "start": None, "projection": None, "box_clip": None}

    def _options(self) -> dict[str, Any]:
        """The subclass's own constructor options under their argument names, as configured (resolved)."""
        return {}

    def loss_name(self) -> str:
        """The attack loss in words (the function's name, or its repr)."""
        return getattr(self.loss_fn, "__name__", None) or repr(self.loss_fn)

    def settings(self) -> dict[str, Any]:
        """What this attack does, as JSON-ready plain data (what reports and logs state, so no caller guesses).

        Keys, in this order: ``name``, ``label``, ``norm``, ``radius`` (its ε: a scaled copy's is the scaled one),
        ``scale`` (radius and step relative to the attack as configured: 1, or the warm-up factor), ``step`` (input
        units, the real one; None without a step), ``step_rule`` (:attr:`step_rule`), ``steps``, ``restarts``,
        ``start``, ``projection``, ``box_clip`` (in words), ``max_norm``, ``bn_mode``, ``update_bn_stats``,
        ``first_batch_bn_mode``, ``loss_fn``, ``amp_dtype``, ``compile``, then the subclass's own constructor options
        under their argument names (``init_scale``, ``keep_best``, ...), so the configured values read back.
        """
        return {
            "name": self.name, "label": self.label, "norm": self.threat.norm, "radius": self.threat.eps,
            "scale": getattr(self, "_scale", 1.0), "step": getattr(self, "step", None), "step_rule": self.step_rule,
            **self._procedure(),
            "max_norm": self.max_norm, "bn_mode": self.bn_mode, "update_bn_stats": self.update_bn_stats,
            "first_batch_bn_mode": self.first_batch_bn_mode, "loss_fn": self.loss_name(),
            "amp_dtype": None if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch."),
            "compile": self.compile,
            **self._options(),
        }

    def __repr__(self) -> str:
        skip = {"threat", "loss_fn"}
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in skip and not k.startswith("_"))
        return f"{type(self).__name__}({self.threat!r}, {args})"

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> AttackResult:
        check_inputs(x, y)
        x = x.detach()
        with attack_guard(model, self.bn_mode, getattr(self, "update_bn_stats", False)):
            return self.run(model, x, y, generator)

    def run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> AttackResult:
        raise NotImplementedError

    # -- shared steps -------------------------------------------------------------------------------
    def _autocast(self, x: Tensor) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.amp_dtype)

    def forward(self, model: nn.Module, x: Tensor, delta: Tensor) -> Tensor:
        """Logits at ``x + delta`` (fp32 sum, model dtype under autocast)."""
        with self._autocast(x):
            return model((x + delta).to(x.dtype))

    def input_gradient(
        self, model: nn.Module, x: Tensor, delta: Tensor, y: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Gradient of the summed per-example loss with respect to ``delta`` only.

        Returns (grad, logits, per-example loss), the last two detached.
        """
        delta = delta.detach().requires_grad_(True)
        state = self._compile_state
        if self.compile and not state.failed:
            try:
                if state.fn is None:
                    state.fn = torch.compile(type(self)._loss)  # unbound: each shallow copy passes itself
                return self._gradient(functools.partial(state.fn, self), model, x, delta, y)
            except Exception as err:  # compilation failed, or the model itself raises: tell them apart
                out = self._gradient(self._loss, model, x, delta, y)  # raises when the model does
                state.failed = True
                warnings.warn(
                    f"{type(self).__name__}: torch.compile failed ({type(err).__name__}: "
                    f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}); this attack runs "
                    "eagerly from now on.",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return out
        return self._gradient(self._loss, model, x, delta, y)

    def _loss(self, model: nn.Module, x: Tensor, delta: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(summed loss, logits, per-example loss) at ``x + delta``: what ``compile`` compiles."""
        logits = self.forward(model, x, delta)
        loss = self.loss_fn(logits, y)
        return loss.sum(), logits, loss

    @staticmethod
    def _gradient(
        loss_fn: Callable[..., tuple[Tensor, Tensor, Tensor]], model: nn.Module, x: Tensor, delta: Tensor, y: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        total, logits, loss = loss_fn(model, x, delta, y)
        (grad,) = torch.autograd.grad(total, delta)
        return grad, logits.detach(), loss.detach()


ATTACKS: Registry[type[Attack]] = Registry("attack", base=Attack)
"""The attacks by name; each is registered at its definition with ``@register_attack``."""
register_attack = ATTACKS.register
