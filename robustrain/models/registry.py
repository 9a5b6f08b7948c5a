"""The model registry: ``register_model`` for factories and ``create_model``, the one public way in."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from robustrain.errors import ConfigError, UnknownNameError, unknown_choice
from robustrain.models.normalise import Normalise, NormalisedModel
from robustrain.models.timm_models import TIMM_PREFIX, create_timm_model
from robustrain.registry import Registry

__all__ = ["MODELS", "create_model", "list_models", "register_model"]

ModelFactory = Callable[..., nn.Module]

# The arguments create_model passes to every factory itself.
_COMMON_ARGS = ("num_classes", "in_channels")


def _factory_options(fn: ModelFactory) -> dict[str, inspect.Parameter]:
    """A factory's own arguments (besides num_classes and in_channels)."""
    return {p.name: p for p in inspect.signature(fn).parameters.values()
            if p.name not in _COMMON_ARGS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_factory(name: str, fn: ModelFactory) -> None:
    missing = [arg for arg in _COMMON_ARGS if arg not in inspect.signature(fn).parameters]
    if missing:
        raise ValueError(f"model factory {name!r} must accept {', '.join(missing)} as keyword arguments.")


MODELS: Registry[ModelFactory] = Registry("model", options=_factory_options, validate=_check_factory)
"""Model name -> factory. A factory takes ``num_classes`` and ``in_channels`` plus its own keyword arguments and
returns the bare network (no Normalise); ``create_model`` adds the normalisation. Registered at each definition with
``@register_model`` (under the function's name, as in timm)."""

register_model = MODELS.register
"""Register a model factory under its function name (a decorator). The factory must accept ``num_classes`` and
``in_channels`` keyword arguments and return an ``nn.Module`` that maps normalised images ``[B, in_channels, H, W]``
to logits ``[B, num_classes]``; a name registered twice or a factory without those arguments raises ValueError."""


def list_models() -> list[str]:
    """The registered model names, sorted. Any timm model is also available as ``timm:<timm name>``."""
    return sorted(MODELS)


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}.")
    return value


def _build_registered(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    """Call the factory for ``name`` after checking ``kwargs`` against its signature."""
    fn = MODELS[name]
    sig = inspect.signature(fn)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        MODELS.check(name, kwargs)
    try:
        sig.bind(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as err:
        accepted = ", ".join(MODELS.options(name)) or "none"
        raise ConfigError(f"model {name!r}: {err}; it accepts: {accepted}.") from err
    return fn(num_classes=num_classes, in_channels=in_channels, **kwargs)


def create_model(
        name: str,
        *,
        num_classes: int,
        in_channels: int = 3,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        normalise: bool = True,
        channels_last: bool = False,
        **kwargs: Any,
) -> NormalisedModel:
    """Build a classifier by name, with :class:`Normalise` as its first module.

    Args:
        name: A registered name (see :func:`list_models`) or ``timm:<timm model name>``.
        num_classes: Number of output logits.
        in_channels: Number of image channels (3 for CIFAR-10, 1 for MNIST and digits).
        mean: Per-channel mean of the data (or one value for all channels); the default 0 with
            ``std=1`` leaves inputs unnormalised.
        std: Per-channel standard deviation (or one value for all channels).
        normalise: ``False`` builds the model without the mean/std layer: ``model.normalise`` is an
            ``nn.Identity`` (no buffers in the ``state_dict``), so the network sees raw [0, 1] inputs, as the
            official Wong-MNIST (locuslab/fast_adversarial MNIST/mnist_net.py), TRADES, TRADES-AWP, MART, ELLE and
            ConvergeSmooth code feeds it. ``mean`` and ``std`` are then ignored.
        channels_last: Convert the model to ``torch.channels_last`` (faster convolutions on CPU and
            tensor-core GPUs; feed it channels_last inputs too).

    Keyword Args:
        kwargs: Arguments of the model factory, e.g. ``width`` for ``preact_resnet18``, ``depth`` and
            ``widen`` for ``wide_resnet``. ``None`` values are dropped, so ``None`` means "the model's
            own default". For ``timm:`` models they go to ``timm.create_model``.

    Returns:
        ``NormalisedModel``: ``model.normalise`` (an ``nn.Identity`` with ``normalise=False``) then
        ``model.net``, mapping ``[B, C, H, W]`` images in [0, 1] to logits ``[B, num_classes]``.

    Raises:
        UnknownNameError: For an unknown model name; the message lists the choices.
        ConfigError: For an argument the factory does not accept, or invalid sizes, mean or std.

    Example:
        >>> model = create_model("preact_resnet18", num_classes=10, width=16,
        ...                      mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {name!r}.")
    num_classes = _check_count(num_classes, "num_classes")
    in_channels = _check_count(in_channels, "in_channels")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if not isinstance(normalise, bool):
        raise ConfigError(f"normalise must be true or false, got {normalise!r}.")
    norm_layer: nn.Module = Normalise(mean, std, channels=in_channels) if normalise else nn.Identity()

    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX):]
        try:
            net = create_timm_model(timm_name, num_classes=num_classes, in_channels=in_channels, **kwargs)
        except UnknownNameError as err:
            if timm_name not in MODELS:
                raise
            raise UnknownNameError(f"{err} robustrain's own model is called {timm_name!r}, without 'timm:'.") from None
    elif name in MODELS:
        net = _build_registered(name, num_classes, in_channels, kwargs)
    else:
        raise unknown_choice("model", name, [*list_models(), f"{TIMM_PREFIX}<timm name>"])

    model = NormalisedModel(norm_layer, net)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
