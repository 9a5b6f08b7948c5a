"""Errors robustrain raises for bad input.

Every message says what was received, what was expected and how to fix it.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class RobustrainError(Exception):
    """Base class of every error robustrain raises on purpose."""


class ConfigError(RobustrainError, ValueError):
    """A config value or key is invalid."""


class UnknownNameError(RobustrainError, KeyError):
    """A name (model, attack, dataset, ...) is not registered."""

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


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest valid name to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Build the error for an unknown ``kind`` called ``name`` that lists the valid ``choices``."""
    choices = sorted(choices)
    hint = closest(name, choices)
    msg = f"unknown {kind} {name!r}; expected one of: {', '.join(choices)}."
    if hint is not None:
        msg += f" Did you mean {hint!r}?"
    return UnknownNameError(msg)
