"""FGSM-MEP (Jia, Zhang, Wei, Wu, Chen, Cao & Ma, "Prior-guided adversarial initialization for fast adversarial
training", ECCV 2022, arXiv 2207.08859): FGSM from a per-example prior perturbation that is carried from epoch to
epoch and moved by a momentum of normalised gradients. Implemented as ConvergeSmooth's B-MEP base attack uses it
(FAT-CS/ConvergeSmooth ``FGSM_MEP_CS.py`` @ d94f6bc, read line by line; methods.md §4.3).

Per training batch with dataset indices I, current (augmented) images x, prior δ_p = P[I], momentum m = M[I]:

    g      = ∇_δ ℓ(x + δ_p, y)                             (one forward/backward at the prior; ℓ as ``label_smoothing``)
    m'     = g / ‖g‖₁ + μ·m                                (‖·‖₁ over the WHOLE batch gradient tensor, μ = 0.3)
    δ_adv  = box_x(Π_ε(δ_p + α·sign(g)))                   (the training perturbation: raw gradient, not m')
    P[I]  ← box_x(Π_ε(δ_p + α·sign(m')))                   (the stored prior: momentum direction)
    M[I]  ← m'

with Π_ε the clamp to [−ε, ε] and box_x(d) = max(min(d, 1 − x), −x) (the code's ``clamp(d, 0 − X, 1 − X)``). The
buffers are (re-)initialised when the epoch enters a new block of ``reset_every`` epochs (the code: ``epoch % 40 ==
0``, 0-based, so at epochs 0, 40, 80): P = Π_ε(α·sign(u)), u ~ U(−ε, ε) per element (so ±ε corners when α ≥ ε, ±α
otherwise; NOT box-clipped), M = 0.

What the official code does, and robustrain with it:

* The buffer is indexed by example, not by position in the epoch: the code permutes images, labels and both buffers
  together each epoch, which is a per-example buffer. The trainer passes the dataset indices of the batch.
* Augmentation comes first, the prior is added to the augmented view without being transformed (the code computes
  the crop/flip parameters and ignores them): the prior lives in the frame of whatever crop/flip the example gets
  this epoch. The box clip of the stored prior is relative to the view it was computed on, so the prior that comes
  back next epoch is not box-clipped for the new view: the code's start point x + δ_p can leave [0, 1] by up to ε
  (``clip_init: false``, as the code). The library default ``clip_init: true`` clips the start point to the box
  first (δ_p ← box_x(δ_p), used in both updates), so x_init is in the threat model like every other attack's start.
  The two change the trained weights; ``configs/cifar10_convergesmooth_mep.yaml`` follows the code.
* The code's attack loss is its label-smoothed CE (0.6 on the true class, 0.4/9 elsewhere) = torch's
  ``label_smoothing`` 4/9; the gradient is of the batch mean there, of the sum here (identical signs, identical
  g/‖g‖₁ up to rounding). The attack forward runs in train mode and updates BatchNorm running statistics
  (``bn_mode: train`` with the library's BN-statistics option, when the recipe asks for it).
* α = ε in the code (``--alpha 16``, ``--epsilon 16``); ``step`` defaults to ε.
* A batch whose gradient is exactly zero (‖g‖₁ = 0) gets m' = μ·m here; the code would divide by zero and write NaN
  into the buffers.
* L2 threat models: robustrain's generalisation (not in either paper): sign → the threat's ascent direction (g/‖g‖₂
  per example), clamp → the ε-ball projection.

Memory: two fp32 buffers of the training set's shape, prior and momentum (CIFAR-10: 50,000×3×32×32×4 B = 614 MB
each, 1.2 GB together), on the batch's device (the data device) unless ``buffer_device`` says otherwise; both are
saved in every checkpoint (Trainer ``attack`` entry), so a CIFAR-10 checkpoint grows by 1.2 GB.

Calling convention: ``attack(model, x, y, generator=g, indices=I, epoch=e, num_examples=N)`` (the Trainer does so
for every attack with ``needs_indices``). Without ``indices`` the call is stateless: the prior is a fresh random
initialisation for this batch and nothing is stored (evaluation, or a loop that cannot name its examples).
Distributed: every rank holds the whole buffer; the L1 norm is summed over ranks and each step's updated rows are
gathered from all ranks, so every rank's buffer equals the single-process one and rank 0's checkpoint is complete.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..distributed import all_gather_cat, all_reduce_sum, broadcast_object, current
from ..errors import CheckpointError, ConfigError
from ..threat import ThreatModel
from .base import Attack, AttackResult, ratio_rule, register_attack, smoothed_loss

INITS = ("sign", "zero")


class _MEPState:
    """The buffers and the block they were initialised for, shared by the shallow copies the ε warm-up makes of the
    attack (:meth:`Attack.scaled`, so a copy's update lands in the original's buffer)."""

    def __init__(self) -> None:
        self.prior: Tensor | None = None
        self.momentum: Tensor | None = None
        self.block = -1  # epoch // reset_every of the last initialisation; -1: never initialised

    def __repr__(self) -> str:
        shape = None if self.prior is None else tuple(self.prior.shape)
        return f"_MEPState(shape={shape}, block={self.block})"


def box(x: Tensor, delta: Tensor) -> Tensor:
    """``delta`` clamped so that ``x + delta`` lies in [0, 1]: max(min(δ, 1 − x), −x), as the official code."""
    x = x.float()
    return torch.maximum(torch.minimum(delta, 1.0 - x), -x)


def l1_normalised(grad: Tensor, norm: Tensor) -> Tensor:
    """``grad / norm`` (the whole batch's L1 norm); zero where the norm is zero."""
    return grad / torch.where(norm > 0, norm, torch.ones_like(norm))


@register_attack
class FGSMMEP(Attack):
    """FGSM-MEP: FGSM from a per-example prior kept across epochs and moved by momentum (see the module docstring).

    Args:
        threat: the threat model (L∞ in both papers).
        step: α in input units; default ε (the code: ``--alpha 16`` at ``--epsilon 16``).
        momentum_decay: μ in m' = g/‖g‖₁ + μ·m (0.3, the code's ``--momentum_decay``).
        reset_every: re-initialise prior and momentum when the 0-based epoch enters a new block of this many epochs
            (40, the code's ``--epochs_reset``); 0 never re-initialises after the first.
        init: "sign" (Π_ε(α·sign(u)), the code's ``--delta-init random``) or "zero" (``--delta-init zero``).
        clip_init: clip the start point x + δ_p to [0, 1] before the forward (library default); false is the code.
        label_smoothing: the attack loss is cross-entropy with this label smoothing (torch's convention: 4/9 is the
            code's 0.6-on-the-true-class target); 0 = plain CE.
        buffer_device: where the buffers live (e.g. "cpu" to keep 1.2 GB off the GPU); default: the batch's device.
        **kwargs: ``loss_fn``, ``bn_mode``, ``amp_dtype``, ``compile`` ... of :class:`Attack`. ``loss_fn`` replaces
            the label-smoothed CE.

    State: ``state_dict()`` / ``load_state_dict()`` (prior, momentum, block), saved by the Trainer with every
    checkpoint.
    """

    name = "fgsm_mep"
    scaled_fields = ("step",)
    needs_indices = True
    behaviour_note = ("its one code-vs-library difference is an explicit option: clip_init: false is the official "
                      "FGSM_MEP_CS.py start point x + δ_prior, unclipped to the box; true, the default, clips it")

    def __init__(
        self,
        threat: ThreatModel,
        *,
        step: float | None = None,
        momentum_decay: float = 0.3,
        reset_every: int = 40,
        init: str = "sign",
        clip_init: bool = True,
        label_smoothing: float = 0.0,
        buffer_device: str | None = None,
        **kwargs,
    ):
        smoothing = smoothed_loss(self.name, label_smoothing, kwargs)
        super().__init__(threat, **kwargs)
        self.step = float(threat.eps if step is None else step)
        self._record_step(step, ratio_rule(1.0))
        self.momentum_decay = float(momentum_decay)
        if isinstance(reset_every, bool) or not isinstance(reset_every, int) or reset_every < 0:
            raise ConfigError(f"{self.name}: reset_every must be an int >= 0 (0: never), got {reset_every!r}.")
        self.reset_every = reset_every
        if init not in INITS:
            raise ConfigError(f"{self.name}: init must be one of {INITS}, got {init!r}.")
        self.init = init
        self.clip_init = bool(clip_init)
        self.label_smoothing = smoothing
        self.buffer_device = None if buffer_device is None else str(buffer_device)
        if self.step < 0 or self.momentum_decay < 0:
            raise ConfigError(f"{self.name}: step and momentum_decay must be >= 0, got step={self.step}, "
                              f"momentum_decay={self.momentum_decay}.")
        self._state = _MEPState()
        self._batch: tuple[Tensor, int, int] | None = None  # (indices, epoch, num_examples) of the call in progress

    @property
    def in_box(self) -> bool:
        """Whether every returned point lies in the [0,1] box: ``x_adv`` always does; the start point ``x_init``
        only with ``clip_init`` (the code's start point may leave the box by up to ε)."""
        return self.clip_init

    def _procedure(self) -> dict:
        box = "clipped to the box" if self.clip_init else "not clipped to the box"
        start = (f"per-example prior ({self.init} init, momentum {self.momentum_decay:g}, reset every "
                 f"{self.reset_every} epochs), {box}")
        return {"steps": 1, "restarts": 1, "start": start, "projection": "ε-ball",
                "box_clip": "start and result" if self.clip_init else "result only"}

    def _options(self) -> dict:
        return {"momentum_decay": self.momentum_decay, "reset_every": self.reset_every, "init": self.init,
                "clip_init": self.clip_init, "label_smoothing": self.label_smoothing,
                "buffer_device": self.buffer_device}

    # -- calling -------------------------------------------------------------------------------------
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None,
                 indices: Tensor | None = None, epoch: int | None = None,
                 num_examples: int | None = None) -> AttackResult:
        if indices is not None:
            if epoch is None or num_examples is None:
                raise ValueError(f"{self.name}: with indices, also pass epoch and num_examples (the training set's "
                                 "size); the Trainer does.")
            indices = torch.as_tensor(indices).reshape(-1).to(torch.int64)
            if indices.numel() != x.shape[0]:
                raise ValueError(f"{self.name}: {indices.numel()} indices for a batch of {x.shape[0]} examples.")
            if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_examples):
                raise ValueError(f"{self.name}: indices must lie in [0, {num_examples}), got "
                                 f"[{int(indices.min())}, {int(indices.max())}].")
            self._batch = (indices, int(epoch), int(num_examples))
        try:
            return super().__call__(model, x, y, generator=generator)
        finally:
            self._batch = None

    def run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> AttackResult:
        if self._batch is None:  # stateless: a fresh prior, nothing stored
            prior = self._initial(x.shape, x.device, generator)
            momentum = torch.zeros_like(prior)
        else:
            indices, epoch, n = self._batch
            self._ensure(epoch, n, (n, *x.shape[1:]), x.device, generator)
            rows = indices.to(self._state.prior.device)
            prior = self._state.prior.index_select(0, rows).to(x.device)
            momentum = self._state.momentum.index_select(0, rows).to(x.device)
        if self.clip_init:
            prior = box(x, prior)
        grad, logits0, loss0 = self.input_gradient(model, x, prior, y)
        t = self.threat
        norm = grad.abs().sum()
        if self._batch is not None and current().enabled:
            norm = all_reduce_sum(norm)  # the single-process batch's L1 norm
        momentum = l1_normalised(grad, norm) + self.momentum_decay * momentum
        delta = box(x, t.project(prior + self.step * t.ascent_direction(grad)))
        if self._batch is not None:
            self._store(indices, box(x, t.project(prior + self.step * t.ascent_direction(momentum))), momentum)
        return AttackResult(
            x_adv=(x + delta).to(x.dtype),
            delta=delta,
            x_init=(x + prior).to(x.dtype),
            logits_init=logits0,
            loss_init=loss0,
            grad_init=grad,
        )

    # -- the buffers ---------------------------------------------------------------------------------
    def _initial(self, shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
        """A fresh prior: Π_ε(α·sign(u)) with random signs (the code's uniform draw, then its sign), or zeros."""
        if self.init == "zero":
            return torch.zeros(shape, device=device, dtype=torch.float32)
        where = generator.device if generator is not None else torch.device("cpu")  # draw where the generator is
        signs = torch.randint(0, 2, shape, generator=generator, device=where, dtype=torch.int8).to(device)
        return self.threat.project(self.threat.ascent_direction(signs.float().mul_(2).sub_(1)) * self.step)

    def _ensure(self, epoch: int, n: int, shape: tuple[int, ...], device: torch.device,
                generator: torch.Generator | None) -> None:
        """(Re-)initialise the buffers when there are none yet or ``epoch`` starts a new block."""
        s = self._state
        block = epoch // self.reset_every if self.reset_every else 0
        if s.prior is not None:
            if tuple(s.prior.shape) != shape:
                raise ValueError(f"{self.name}: the buffer holds {tuple(s.prior.shape)} (from a checkpoint or an "
                                 f"earlier call), this training set has {shape}.")
            if block == s.block:
                return
        where = torch.device(self.buffer_device) if self.buffer_device else device
        # One draw from the caller's generator seeds the whole buffer; in a process group rank 0's seed is used,
        # so every rank starts from the same buffer.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator
                                 else torch.device("cpu")).item())
        seed = broadcast_object(seed)
        gen = torch.Generator(device=where).manual_seed(seed)
        s.prior = self._initial(shape, where, gen)
        s.momentum = torch.zeros(shape, device=where, dtype=torch.float32)
        s.block = block

    def _store(self, indices: Tensor, prior: Tensor, momentum: Tensor) -> None:
        """Write this step's rows (every rank's, in a process group) into the buffers."""
        if current().enabled:
            indices, prior, momentum = all_gather_cat(indices), all_gather_cat(prior), all_gather_cat(momentum)
        s = self._state
        rows = indices.to(s.prior.device)
        s.prior.index_copy_(0, rows, prior.to(s.prior.device))
        s.momentum.index_copy_(0, rows, momentum.to(s.momentum.device))

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The buffers (not copies: ``torch.save`` them) and the block they were initialised for."""
        s = self._state
        return {"prior": s.prior, "momentum": s.momentum, "block": s.block}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (or inject a prior, e.g. the official code's first draw, with block 0)."""
        try:
            prior, momentum, block = state["prior"], state["momentum"], int(state["block"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{self.name}: attack state must hold prior, momentum and block; got "
                                  f"{sorted(state) if isinstance(state, dict) else type(state).__name__}.") from e
        if (prior is None) != (momentum is None) or (prior is not None and prior.shape != momentum.shape):
            raise CheckpointError(f"{self.name}: prior and momentum must both be tensors of one shape (or both None).")
        s = self._state
        if prior is not None and self.buffer_device:
            prior, momentum = prior.to(self.buffer_device), momentum.to(self.buffer_device)
        s.prior = None if prior is None else prior.float().clone()
        s.momentum = None if momentum is None else momentum.float().clone()
        s.block = block
