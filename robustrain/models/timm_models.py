"""Any timm model by name, as ``timm:<timm name>`` (always built without pretrained weights)."""
from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from robustrain.errors import ConfigError, UnknownNameError

__all__ = ["TIMM_PREFIX", "create_timm_model"]

TIMM_PREFIX = "timm:"


def _close_timm_names(name: str, all_names: list[str], n: int = 8) -> list[str]:
    """A few timm names close to ``name``: names containing it, then the most similar by spelling."""
    base = name.split(".", 1)[0]
    containing = [m for m in all_names if base and base in m][:n]
    similar = difflib.get_close_matches(base, all_names, n=n, cutoff=0.6)
    ordered = list(dict.fromkeys(containing[: n // 2] + similar + containing))
    return ordered[:n]


def create_timm_model(name: str, *, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build the timm model ``name`` with random weights (``pretrained=False``).

    Args:
        name: A timm model name (``timm.list_models()``), without the ``timm:`` prefix.
        num_classes: Number of output logits.
        in_channels: Number of image channels (timm's ``in_chans``).

    Keyword Args:
        kwargs: Passed to ``timm.create_model`` (e.g. ``drop_rate``).

    Raises:
        UnknownNameError: When timm has no model called ``name``; lists a few close timm names.
        ConfigError: For ``pretrained``/``in_chans`` in ``kwargs`` or an argument the model rejects.
    """
    import timm  # imported here so that `import robustrain.models` stays fast

    if "pretrained" in kwargs:
        raise ConfigError(
            "timm models are always built with pretrained=False (robustrain never downloads weights); "
            "remove 'pretrained' and load a checkpoint into model.net with load_state_dict instead."
        )
    if "in_chans" in kwargs or "num_classes" in kwargs:
        raise ConfigError("pass in_channels and num_classes to create_model, not in_chans/num_classes in kwargs.")
    if not timm.is_model(name):
        close = [TIMM_PREFIX + m for m in _close_timm_names(name, timm.list_models())]
        hint = f" Close timm names: {', '.join(close)}." if close else ""
        raise UnknownNameError(
            f"unknown model {TIMM_PREFIX + name!r}: timm {timm.__version__} has no model {name!r}.{hint} "
            f"Search the timm names with timm.list_models('*part*')."
        )
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ConfigError(
            f"model {TIMM_PREFIX + name!r} does not accept argument(s) {', '.join(sorted(kwargs))}: {err}. "
            f"See the timm model's constructor for the accepted arguments."
        ) from err
