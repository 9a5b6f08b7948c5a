"""What the weight-averaging procedures (``ema``, ``swa``) share: the averaged copy of the model, how its BatchNorm
buffers are kept, which evaluations use it, and its checkpoint state.

The averaged model is a copy of the training model (``copy.deepcopy``, parameters frozen) made at the first hook that
sees the model (``on_epoch_start`` of epoch 0, so it starts from the initial weights θ₀), or when a checkpoint's
state is restored. Only floating-point entries are averaged; integer buffers (BatchNorm's ``num_batches_tracked``)
are copied from the training model.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...guards import restore_modes
from ...registry import choice
from ..hooks import Procedure

USES = ("validation", "final")
"""Where the averaged weights can stand in for the training weights: ``validation`` (the held-out validation after
each epoch, and therefore the choice of ``best.pt``) and ``final`` (the ``eval_model`` of every checkpoint: the final
test evaluation of best and last, and ``robustrain eval RUN``)."""


def check_choice(where: str, value: Any, choices: Iterable[str]) -> str:
    return str(choice("", value, choices, where))


def check_uses(name: str, use_for: Any) -> tuple[str, ...]:
    if isinstance(use_for, str):
        use_for = [use_for]
    if not isinstance(use_for, (list, tuple)) or any(u not in USES for u in use_for):
        raise ConfigError(f"{name}.use_for = {use_for!r}: expected a list drawn from {', '.join(USES)} (e.g. "
                          "[validation, final]; [] keeps the training weights everywhere and only records the average).")
    return tuple(dict.fromkeys(use_for))


def plain_model(module: nn.Module) -> nn.Module:
    """The plain model behind a DDP (``.module``) or compiled (``._orig_mod``) training module."""
    for attr in ("module", "_orig_mod"):
        while isinstance(getattr(module, attr, None), nn.Module):
            module = getattr(module, attr)
    return module


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_bn(model: nn.Module, inputs: Iterable[Tensor]) -> None:
    """Reset every BatchNorm layer's running statistics and recompute them as the plain average over ``inputs``
    (forwards in train mode with ``momentum=None``, each layer's momentum and every module's mode restored) — the
    procedure of SWA (Izmailov et al. 2018) and ``torch.optim.swa_utils.update_bn``."""
    layers = bn_layers(model)
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    try:
        with restore_modes(model):
            model.train()
            for x in inputs:
                model(x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum


class WeightAveraging(Procedure):
    """Base of ``ema`` and ``swa``: keeps the averaged model and hands it to the Trainer's evaluations."""

    provides_eval_model = True
    buffer_modes: tuple[str, ...] = ("average", "copy")

    def __init__(self, *, buffers: str, use_for: Any):
        self.buffers = check_choice(f"{self.name}.buffers", buffers, self.buffer_modes)
        self.use_for = check_uses(self.name, use_for)
        self.averaged: nn.Module | None = None
        self.n_averaged = 0  # updates folded into the average so far
        self._pending: dict[str, Tensor] | None = None  # a checkpoint's averaged weights, loaded once the model is seen

    # -- the averaged copy ---------------------------------------------------------------------------------------
    def ensure(self, model: nn.Module) -> nn.Module:
        """The averaged model, made from ``model`` (and a restored checkpoint's weights) the first time."""
        if self.averaged is None:
            self.averaged = copy.deepcopy(model)
            for p in self.averaged.parameters():
                p.requires_grad_(False)
            self.averaged.eval()
            if self._pending is not None:
                self.averaged.load_state_dict(self._pending)
                self._pending = None
        return self.averaged

    @torch.no_grad()
    def fold_in(self, model: nn.Module, decay: float) -> None:
        """``avg ← decay·avg + (1 − decay)·θ`` for every floating-point parameter (and buffer, with
        ``buffers: average``); ``decay`` 0 copies. Integer buffers, and all buffers with ``buffers: copy``, are
        copied; with ``buffers: own`` (CURE's teacher) no buffer is touched."""
        avg = self.ensure(model)
        mine = dict(avg.named_parameters())
        for k, p in model.named_parameters():
            self._mix(mine[k], p, decay)
        if self.buffers == "own":  # the copy keeps its own buffers (its own train-mode forwards update them)
            self.n_averaged += 1
            return
        mine_b = dict(avg.named_buffers())
        for k, b in model.named_buffers():
            if self.buffers == "average" and b.is_floating_point():
                self._mix(mine_b[k], b, decay)
            elif self.buffers == "copy" or not b.is_floating_point():
                mine_b[k].copy_(b)
        self.n_averaged += 1

    @staticmethod
    def _mix(avg: Tensor, new: Tensor, decay: float) -> None:
        if decay == 0.0:
            avg.copy_(new)
        else:
            avg.mul_(decay).add_(new.detach(), alpha=1.0 - decay)

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        mine = dict(self.ensure(model).named_buffers())
        for k, b in model.named_buffers():
            mine[k].copy_(b)

    # -- hooks --------------------------------------------------------------------------------------------------
    def on_epoch_start(self, model, optimizer, epoch):
        self.ensure(model)  # epoch 0: the average starts at the initial weights θ₀

    def eval_model(self, model: nn.Module, purpose: str) -> nn.Module | None:
        if purpose not in self.use_for or self.n_averaged == 0:
            return None  # nothing averaged yet (e.g. before SWA's start epoch): the training weights
        return self.ensure(model)

    # -- checkpoint ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        averaged = self.averaged.state_dict() if self.averaged is not None else self._pending
        if averaged is None:
            return {}
        return {"averaged": averaged, "n_averaged": self.n_averaged, **self._extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.n_averaged = int(state["n_averaged"])
        self._load_extra(state)
        if self.averaged is not None:  # already made (e.g. a monitor rollback): restore in place
            self.averaged.load_state_dict(state["averaged"])
        else:
            self._pending = {k: v.detach().clone() for k, v in state["averaged"].items()}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` added."""
