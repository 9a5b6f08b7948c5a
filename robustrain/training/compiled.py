"""``torch.compile`` for the training step, with a clean fallback to eager where it cannot compile.

:class:`CompiledModule` compiles every training forward (and, through AOTAutograd, its backward): the objective's,
the loss terms' extra forwards. :class:`CompiledObjective` compiles the main forward together with the loss
(cross-entropy), so the compiled graph runs from ``x_adv`` to the per-example loss and back."""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


class CompiledModule(nn.Module):
    """Calls ``torch.compile(module)``; when compiling (or running the compiled code) raises, runs ``module`` eagerly
    instead, warns once and stays eager from then on. An error of the module itself still propagates (the eager
    call raises it too).

    The wrapper holds ``module`` as its only submodule, so ``parameters()``, ``train()`` and ``eval()`` act on it;
    state dicts and checkpoints are taken from the eager module, never from this wrapper.

    Args:
        module: the module to compile (the model, or its ``DistributedDataParallel`` wrapper).
        backend, mode: passed to ``torch.compile``.
    """

    def __init__(self, module: nn.Module, *, backend: Any = "inductor", mode: str | None = None):
        super().__init__()
        self.module = module
        self.failed = not hasattr(torch, "compile")
        compiled = None if self.failed else torch.compile(module, backend=backend, mode=mode)
        self.__dict__["compiled"] = compiled  # not a submodule: its parameters are ``module``'s

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # compilation failed, or the module itself raises: tell them apart
                out = self.module(*args, **kwargs)  # raises when the module does
                self.failed = True
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                warnings.warn(
                    f"train.compile: torch.compile of {type(self.module).__name__} failed ({type(err).__name__}: "
                    f"{first}); training runs eagerly from now on.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return out
        return self.module(*args, **kwargs)


class CompiledObjective:
    """The training step's main forward and loss as one ``torch.compile`` graph: the model's forward on
    ``x_adv`` (under the step's autocast), the fp32 cast and the objective's per-example loss; ``backward`` then
    runs the graph's compiled backward. For objectives with a ``per_example_loss(logits, y)`` (cross-entropy); any
    other objective is called as it is (its forwards still go through the compiled module, when there is one).

    On the first failure to compile (or to run the compiled code) the objective runs eagerly, with one warning,
    from then on; an error of the model itself still propagates (the eager call raises it too). Results equal the
    eager objective's up to float rounding (``tests/test_training_compile.py``).

    Args:
        objective: the Trainer's objective.
        module: what the training forward runs through, without a :class:`CompiledModule` around it (the model, or
            its ``DistributedDataParallel`` wrapper).
        backend, mode: passed to ``torch.compile``.
    """

    def __init__(self, objective: Any, module: nn.Module, *, backend: Any = "inductor", mode: str | None = None):
        self.objective = objective
        self.name = getattr(objective, "name", type(objective).__name__)
        self.module = module
        self.failed = not hasattr(torch, "compile")
        self._fn = None if self.failed else torch.compile(self._forward_loss, backend=backend, mode=mode)

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor, device_type: str,
                      amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = self.module(x)
        logits = logits.float()
        return logits, self.objective.per_example_loss(logits, y)

    def __call__(self, ctx) -> dict[str, Any]:
        if self.failed:
            return self.objective(ctx)
        x, y = ctx.result.x_adv, ctx.y
        amp = getattr(ctx.autocast(), "fast_dtype", None)  # the step's autocast: a torch.autocast, or none
        try:
            logits, per = self._fn(x, y, x.device.type, amp)
        except Exception as err:  # compilation failed, or the model itself raises: tell them apart
            out = self.objective(ctx)  # raises when the model does
            self.failed = True
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            warnings.warn(f"train.compile: torch.compile of the training step failed ({type(err).__name__}: {first}); "
                          "the step runs eagerly from now on.", RuntimeWarning, stacklevel=2)
            return out
        ctx.logits_adv = logits
        return {"loss": per.mean(), "per_example": per}


def compiled_objective(objective: Any, module: nn.Module) -> Any:
    """``objective`` as the compiled training step runs it: a :class:`CompiledObjective` when it has a
    ``per_example_loss``, else itself. ``module``: the training module (a :class:`CompiledModule` is unwrapped)."""
    if not callable(getattr(objective, "per_example_loss", None)):
        return objective
    return CompiledObjective(objective, module.module if isinstance(module, CompiledModule) else module)
