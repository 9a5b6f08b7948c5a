"""Training procedures: methods that act on the model, the optimiser or the batch, not (only) through a loss term.

A procedure is one file in this package: a :class:`~robustrain.training.hooks.Procedure` subclass decorated with
:func:`register_procedure`; every module here whose name does not start with ``_`` is imported when the package
is, so adding a procedure is adding its file (and a recipe with ``procedures: [{name: ..., ...}]``). Its options
are the keyword-only arguments of its constructor; the config checks them (unknown names and options are
:class:`~robustrain.errors.ConfigError` naming the choices) before anything is built.

The hook points (before the attack, per-example loss weights, before / after the optimiser step, epoch start /
end) and their order are documented on :class:`~robustrain.training.hooks.Procedure`.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, TypeVar

from ...registry import build
from ..hooks import Procedure

PROCEDURES: dict[str, type[Procedure]] = {}
P = TypeVar("P", bound=type)


def register_procedure(cls: P) -> P:
    """Class decorator: register a :class:`Procedure` under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Procedure)):
        raise TypeError(f"register_procedure: {cls!r} is not a Procedure subclass")
    if cls.name in PROCEDURES and PROCEDURES[cls.name] is not cls:
        raise ValueError(f"two training procedures are named {cls.name!r}")
    PROCEDURES[cls.name] = cls
    return cls


def build_procedure(spec: str | dict[str, Any]) -> Procedure:
    """A fresh procedure from a name or ``{name: ..., option: value}``; unknown names and options raise with the
    valid choices."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    return build("training procedure", PROCEDURES, str(name), **spec)


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["PROCEDURES", "Procedure", "build_procedure", "register_procedure"]
