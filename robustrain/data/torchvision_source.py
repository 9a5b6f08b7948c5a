"""``torchvision:<Class>``: any dataset class of ``torchvision.datasets`` by name, in its own on-disk layout.

The class is constructed with ``root`` (data.root), ``download`` (data.download) and the split: ``train=True |
False`` for classes that take ``train``, ``split="train" | "test"`` for those that take ``split``; every other
argument comes from ``data.options`` (``data.options.train`` / ``data.options.test``: arguments for one split only,
e.g. ``{split: val}`` for a dataset whose held-out split is called val). No transform is applied: items are
decoded to uint8 (PIL images as returned by torchvision) and held in memory, or streamed (``data.stream``).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from robustrain.data.items import ImageSource
from robustrain.errors import ConfigError, DataNotFoundError, unknown_choice

PREFIX = "torchvision:"
_SPLIT_KEYS = ("train", "test")


def dataset_class(class_name: str) -> type:
    """``torchvision.datasets.<class_name>``, or a ConfigError naming the closest classes."""
    try:
        import torchvision.datasets as tvd
    except ImportError as e:  # pragma: no cover - torchvision is a dependency
        raise ConfigError(f"data.name = {PREFIX}{class_name} needs torchvision, which cannot be imported ({e}).") from e
    names = sorted(n for n in dir(tvd) if isinstance(getattr(tvd, n), type) and n[0].isupper())
    if class_name not in names:
        raise unknown_choice("torchvision.datasets class", class_name, names,
                             note=f"Name one as data.name: {PREFIX}<Class>, e.g. {PREFIX}FashionMNIST.")
    return getattr(tvd, class_name)


def construct(class_name: str, root: Path | None, train: bool, download: bool, options: dict[str, Any]) -> Any:
    """The torchvision dataset of one split (no transform)."""
    cls = dataset_class(class_name)
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in options.items() if k not in _SPLIT_KEYS}
    split_options = options.get("train" if train else "test") or {}
    if not isinstance(split_options, dict):
        raise ConfigError(f"data.options.{'train' if train else 'test'} must be a mapping of {class_name} arguments "
                          f"for that split; got {split_options!r}.")
    kwargs.update(split_options)
    name = f"{PREFIX}{class_name}"
    if "root" in params:
        if root is None:
            raise ConfigError(f"{name}: data.root is not set; point it at the folder torchvision reads (and "
                              "downloads into, with data.download: true).")
        kwargs.setdefault("root", str(root))
    if "train" in params:
        kwargs.setdefault("train", train)
    elif "split" in params:
        kwargs.setdefault("split", "train" if train else "test")
    if "download" in params:
        kwargs.setdefault("download", download)
    unknown = [k for k in kwargs if k not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values())]
    if unknown:
        accepted = [p for p in params if p not in ("self", "transform", "target_transform", "transforms")]
        raise ConfigError(f"{name}: unknown argument(s) {unknown} in data.options; {class_name} accepts: "
                          f"{', '.join(accepted)}.")
    try:
        return cls(**kwargs)
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted. You can use download=True ..."
        raise DataNotFoundError(f"{name} ({'train' if train else 'test'} split) with {kwargs}: {e} Set "
                                "data.download: true to let torchvision download it, or point data.root at the "
                                "folder that holds its files.") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: constructing {class_name}(**{kwargs}) failed: {e}") from e


def _num_classes(ds: Any, labels_hint: list[int] | None, name: str) -> int:
    classes = getattr(ds, "classes", None)
    if classes:
        return len(classes)
    n = getattr(ds, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    if labels_hint:
        return max(labels_hint) + 1
    raise ConfigError(f"{name}: the dataset has neither 'classes' nor 'num_classes'; cannot tell its number of "
                      "classes.")


def _label(target: Any, name: str) -> int:
    if isinstance(target, torch.Tensor) and target.numel() == 1:
        target = target.item()
    if isinstance(target, bool) or not isinstance(target, int) and not hasattr(target, "__index__"):
        raise ConfigError(f"{name}: a target is {type(target).__name__} ({str(target)[:60]}); robustrain trains "
                          "classifiers and needs one integer class label per image (choose the dataset's "
                          "classification target in data.options, e.g. target_type: category).")
    return int(target)


OWN_OPTIONS = ("channels", "image_size", "resize")


def torchvision_source(class_name: str, root: Path | None, train: bool, *, download: bool = False,
                       **options: Any) -> ImageSource:
    """One split of ``torchvision.datasets.<class_name>`` as an :class:`ImageSource` (items decoded on demand).

    ``channels``, ``image_size`` and ``resize`` in ``options`` are robustrain's (as for image folders) unless the
    class itself takes an argument of that name (FakeData's ``image_size``): then they are the class's."""
    name = f"{PREFIX}{class_name}"
    params = inspect.signature(dataset_class(class_name).__init__).parameters
    own = {k: options.pop(k) for k in OWN_OPTIONS if k in options and k not in params}
    channels, image_size, resize = (own.get(k) for k in OWN_OPTIONS)
    ds = construct(class_name, root, train, download, options)
    if len(ds) == 0:
        raise ConfigError(f"{name}: the {'train' if train else 'test'} split is empty.")
    first, _ = ds[0]
    if channels is None:  # grey datasets (MNIST, FashionMNIST, ...) stay grey
        mode = getattr(first, "mode", None)
        shape = tuple(getattr(first, "shape", ()))
        channels = 1 if mode in ("L", "1", "I", "I;16", "F") or len(shape) == 2 or (len(shape) == 3 and shape[0] == 1) \
            else 3
    targets = getattr(ds, "targets", None)
    hint = [int(t) for t in targets] if isinstance(targets, (list, torch.Tensor)) and len(targets) == len(ds) else None
    num_classes = _num_classes(ds, hint, name)

    def get(i: int) -> tuple[Any, int]:
        image, target = ds[i]
        return image, _label(target, name)

    return ImageSource(name, "train" if train else "test", len(ds), get, num_classes,
                       tuple(getattr(ds, "classes", None) or ()), channels=channels, image_size=image_size,
                       resize=resize, where=str(root), describe=lambda i: f"item {i}")
