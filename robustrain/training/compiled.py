"""``torch.compile`` for the training forward, with a clean fallback to eager where it cannot compile."""
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
