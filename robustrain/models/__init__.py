"""Image classifiers with the normalisation inside: PreActResNet-18, WideResNets, a small CNN, any timm model.

Build every model with :func:`create_model`; its first module is :class:`Normalise`, so it takes
images in [0, 1] and returns logits.
"""
from __future__ import annotations

from robustrain.models.normalise import Normalise as Normalise
from robustrain.models.normalise import NormalisedModel as NormalisedModel
from robustrain.models.registry import MODELS as MODELS
from robustrain.models.registry import create_model as create_model
from robustrain.models.registry import list_models as list_models
from robustrain.models.registry import register_model as register_model

from robustrain.registry import import_modules

# Importing the architecture modules registers their factories (every module here whose name does not start with
# ``_``: a new architecture file is the whole change).
from robustrain.models import preact_resnet as preact_resnet  # noqa: E402  isort: skip
from robustrain.models import small_cnn as small_cnn  # noqa: E402  isort: skip
from robustrain.models import wide_resnet as wide_resnet  # noqa: E402  isort: skip

import_modules(__name__, __path__)

__all__ = ["MODELS", "Normalise", "NormalisedModel", "create_model", "list_models", "register_model"]
