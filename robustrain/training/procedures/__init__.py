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

from typing import Any

from ...registry import Registry, import_modules
from ..hooks import Procedure

PROCEDURES: Registry[type[Procedure]] = Registry("training procedure", base=Procedure)
"""The training procedures by name; each is registered at its definition with ``@register_procedure``."""
register_procedure = PROCEDURES.register


def build_procedure(spec: str | dict[str, Any]) -> Procedure:
    """A fresh procedure from a name or ``{name: ..., option: value}``; unknown names and options raise with the
    valid choices."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    return PROCEDURES.build(name, **spec)


import_modules(__name__, __path__)

__all__ = ["PROCEDURES", "Procedure", "build_procedure", "register_procedure"]
