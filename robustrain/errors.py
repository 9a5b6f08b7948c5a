"""Errors robustrain raises for bad input.

Every message says what was received, what was expected and how to fix it.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Sequence


class RobustrainError(Exception):
    """Base class of every error robustrain raises on purpose."""


class ConfigError(RobustrainError, ValueError):
    """A config value or key is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A name (model, attack, dataset, ...) is not registered, or a value is not one of its choices (a config error
    and a KeyError)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(RobustrainError, FileNotFoundError):
    """A dataset is not where the config says it is."""


class CheckpointError(RobustrainError, RuntimeError):
    """A checkpoint is missing, corrupted or incompatible."""


class NonFiniteLossError(RobustrainError, FloatingPointError):
    """The training loss became NaN or infinite."""


class KernelUnavailableError(RobustrainError, RuntimeError):
    """The fused (Triton) kernels were forced where they cannot run."""


# -- the messages for an unknown name, value or key (robustrain.registry raises them; no other copy) ----------
def suggestion(value: Any, choices: Iterable[Any]) -> str | None:
    """The choice closest in spelling to ``value`` (one of ``choices``), or None when none is close."""
    names = [str(c) for c in choices]
    matches = difflib.get_close_matches(str(value), names, n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """`` Did you mean 'x'?`` for the closest choice, or nothing."""
    hint = suggestion(value, choices)
    return f" Did you mean {hint!r}?" if hint else ""


def unknown_choice(kind: str, value: Any, choices: Iterable[Any], where: str | None = None,
                   note: str = "") -> UnknownNameError:
    """The error for ``value`` not among ``choices`` (in their order): what was received (at ``where``, a config
    key; ``kind`` may then be empty), the choices, the closest one, and ``note`` (what the choices mean). An
    :class:`UnknownNameError` is both a ConfigError and a KeyError."""
    listed = [str(c) for c in choices]
    if where:
        head = f"{where} = {value!r}" + (f" is not a known {kind}" if kind else "")
    else:
        head = f"unknown {kind or 'value'} {value!r}"
    return UnknownNameError(f"{head}; expected one of: {', '.join(listed) or 'none yet'}."
                            + did_you_mean(value, listed) + (f" {note}" if note else ""))


def unknown_key(key: Any, valid: Sequence[str], where: str | None = None, owner: str | None = None) -> ConfigError:
    """The error for a key (a config key or an option) not among ``valid``: the key with its path ``where``, the
    closest valid one and the valid keys. ``owner`` names what the keys belong to (``"attack 'pgd'"``)."""
    prefix = f"{where}." if where else ""
    hint = suggestion(key, valid)
    return ConfigError(
        f"unknown key {prefix + str(key)!r}" + (f" for {owner}" if owner else "")
        + (f"; did you mean {prefix + hint!r}?" if hint else ".")
        + f" Valid keys{' of ' + where if where and not owner else ''}: {', '.join(valid) or 'none'}."
    )
