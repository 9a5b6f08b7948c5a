"""Name → class registries with argument checking, shared by attacks and regularisers.

A registered class takes its positional inputs (e.g. the threat model) and keyword-only options; a config
section ``{name: ..., option: value}`` is checked against those options before anything is built.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from .errors import ConfigError, closest, unknown_name


def keyword_arguments(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword-only arguments of ``cls`` and its bases' constructors, in definition order."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in params:
                params[p.name] = p
    return params


def takes_number(param: inspect.Parameter) -> bool:
    """Whether an argument is annotated as a float (so "8/255" in a config is parsed as a fraction)."""
    return "float" in str(param.annotation)


def check_options(kind: str, registry: Mapping[str, type], name: str, options: Mapping[str, Any],
                  where: str | None = None, hidden: tuple[str, ...] = ()) -> list[str]:
    """Raise for an unknown ``name`` or option; return the valid option names."""
    if name not in registry:
        raise unknown_name(kind, name, registry)
    valid = [a for a in keyword_arguments(registry[name]) if a not in hidden]
    for key in options:
        if key not in valid:
            hint = closest(str(key), valid)
            label = f"{where}.{key}" if where else key
            raise ConfigError(
                f"{kind} {name!r} got an unknown argument {label!r}; it accepts: {', '.join(valid) or 'none'}."
                + (f" Did you mean {(where + '.' if where else '') + hint!r}?" if hint else "")
            )
    return valid


def build(kind: str, registry: Mapping[str, type], name: str, *args: Any, **options: Any) -> Any:
    """A fresh ``registry[name](*args, **options)`` after :func:`check_options`."""
    check_options(kind, registry, name, options)
    return registry[name](*args, **options)
