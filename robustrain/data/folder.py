"""Image folders: the ImageFolder layout (``folder``), Tiny-ImageNet and ImageNet.

* ``folder``: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (or ``ROOT/val/<class>/*``), any image format PIL
  reads, files found recursively inside each class folder; the classes are the training class folders in sorted
  order (label 0 is the first), and the test split must have the same class folders.
* ``tiny_imagenet``: the distributed ``tiny-imagenet-200`` folder: ``train/<wnid>/images/*.JPEG`` and the
  validation images ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` (the test split here: the
  official test images carry no labels). 200 classes, 64 x 64.
* ``imagenet``: ILSVRC-2012 as ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the validation images sorted
  into class folders, as torchvision.datasets.ImageNet or the usual valprep script leave them), ImageNet's
  published mean and std.

Images are decoded with PIL and converted to ``channels`` (3: RGB, 1: grey); they are resized only when
``image_size`` is given (shorter side to ``resize`` or ``image_size``, centre crop), otherwise they must all have
the same size.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from robustrain.data.images import is_image_file
from robustrain.data.items import ImageSource, file_source
from robustrain.data.sources import register_dataset
from robustrain.errors import ConfigError, DataNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEST_FOLDERS = ("test", "val")


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, hidden files and folders skipped), sorted."""
    out = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(here) / f for f in sorted(files) if is_image_file(f) and not f.startswith(".")]
    return out


def _look(root: Path, dataset: str, expected: str) -> None:
    if not root.is_dir():
        raise DataNotFoundError(f"{dataset}: data.root {str(root)!r} is not a folder. Expected {expected}.")


def _contents(root: Path) -> str:
    entries = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(root))
    return ", ".join(entries[:12]) + (f", ... ({len(entries)} entries)" if len(entries) > 12 else "") or "nothing"


def _split_folder(root: Path, train: bool, dataset: str, expected: str, test_names: tuple[str, ...]) -> Path:
    names = ("train",) if train else test_names
    for name in names:
        if (root / name).is_dir():
            return root / name
    hint = ""
    if root.is_dir() and _subfolders(root) and not any((root / n).is_dir() for n in ("train", *test_names)):
        hint = (" The folders there look like class folders: put them under train/ (and a held-out copy under "
                f"{test_names[0]}/), e.g. {root}/train/<class>/*.png.")
    raise DataNotFoundError(
        f"{dataset}: no {' or '.join(n + '/' for n in names)} folder in {str(root)!r} (it holds: {_contents(root)}). "
        f"Expected {expected}.{hint}")


def _class_files(split_dir: Path, classes: list[str], dataset: str, expected: str,
                 inner: str = "") -> list[tuple[Path, int]]:
    loose = [e.name for e in os.scandir(split_dir) if e.is_file() and is_image_file(e.name)]
    if loose:
        raise ConfigError(f"{dataset}: {len(loose)} image file(s) directly in {str(split_dir)!r} (e.g. {loose[0]}); "
                          f"expected {expected}: every image inside its class folder.")
    files = []
    for label, cls in enumerate(classes):
        found = _images_in(split_dir / cls / inner if inner else split_dir / cls)
        if not found:
            raise ConfigError(f"{dataset}: class folder {str(split_dir / cls)!r} holds no image files (looked for "
                              f"{', '.join(('.png', '.jpg', '.jpeg', '...'))}); remove the folder or add its images.")
        files += [(p, label) for p in found]
    return files


def _same_classes(train: list[str], test: list[str], test_dir: Path, dataset: str) -> None:
    if train != test:
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise ConfigError(
            f"{dataset}: the class folders of {str(test_dir)!r} differ from those of train/ (labels come from the "
            f"sorted training class folders, so they must be the same): only in train: {only_train or 'none'}; only "
            f"in {test_dir.name}: {only_test or 'none'}. Rename, add or remove class folders so both splits have the "
            "same ones.")


@register_dataset("folder")
def folder_source(root: Path | None, train: bool, *, image_size: int | None = None, resize: int | None = None,
                  channels: int = 3, name: str = "folder", test_folders: tuple[str, ...] = TEST_FOLDERS,
                  mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> ImageSource:
    """The ``train`` or test split of an ImageFolder layout as an :class:`ImageSource`."""
    expected = (f"ROOT/train/<class>/<image> and ROOT/{'|'.join(test_folders)}/<class>/<image> (the ImageFolder "
                "layout; data.root = ROOT)")
    if root is None:
        raise ConfigError(f"{name}: data.root is not set; point it at the folder that holds train/ and "
                          f"{test_folders[0]}/.")
    root = Path(root)
    _look(root, name, expected)
    train_dir = _split_folder(root, True, name, expected, test_folders)
    classes = _subfolders(train_dir)
    if not classes:
        raise ConfigError(f"{name}: {str(train_dir)!r} has no class folders (it holds: {_contents(train_dir)}); "
                          f"expected {expected}.")
    split_dir = train_dir if train else _split_folder(root, False, name, expected, test_folders)
    if not train:
        _same_classes(classes, _subfolders(split_dir), split_dir, name)
    files = _class_files(split_dir, classes, name, expected)
    return file_source(name, "train" if train else "test", files, classes, str(split_dir), image_size=image_size,
                       resize=resize, channels=channels, mean=mean, std=std)


@register_dataset("imagenet")
def imagenet_source(root: Path | None, train: bool, *, image_size: int | None = None, resize: int | None = None,
                    channels: int = 3) -> ImageSource:
    """ILSVRC-2012: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` with ImageNet's published statistics."""
    if root is not None and not train:
        val = Path(root) / "val"
        if val.is_dir() and not _subfolders(val) and any(is_image_file(e.name) for e in os.scandir(val)):
            raise ConfigError(
                f"imagenet: {str(val)!r} holds the validation images directly; they must be sorted into class folders "
                "(val/<wnid>/*.JPEG). torchvision.datasets.ImageNet(root, split='val') does it from the devkit, or "
                "use the valprep script that ships with many ImageNet training codes.")
    return folder_source(root, train, image_size=image_size, resize=resize, channels=channels, name="imagenet",
                         test_folders=("val",), mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_dataset("tiny_imagenet")
def tiny_imagenet_source(root: Path | None, train: bool, *, image_size: int | None = None, resize: int | None = None,
                         channels: int = 3) -> ImageSource:
    """Tiny-ImageNet-200: ``train/<wnid>/images/*`` and ``val/images/*`` labelled by ``val/val_annotations.txt``."""
    expected = ("the tiny-imagenet-200 folder: train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
                "val/val_annotations.txt (data.root = that folder)")
    name = "tiny_imagenet"
    if root is None:
        raise ConfigError(f"{name}: data.root is not set; point it at the tiny-imagenet-200 folder.")
    root = Path(root)
    _look(root, name, expected)
    train_dir = _split_folder(root, True, name, expected, ("val",))
    classes = _subfolders(train_dir)
    if not classes:
        raise ConfigError(f"{name}: {str(train_dir)!r} has no class folders; expected {expected}.")
    options: dict[str, Any] = {"image_size": image_size, "resize": resize, "channels": channels}
    if train:
        inner = "images" if (train_dir / classes[0] / "images").is_dir() else ""
        files = _class_files(train_dir, classes, name, expected, inner)
        return file_source(name, "train", files, classes, str(train_dir), **options)
    val = _split_folder(root, False, name, expected, ("val",))
    annotations = val / "val_annotations.txt"
    if not annotations.is_file():
        if _subfolders(val) and _subfolders(val) != ["images"]:  # already sorted into class folders
            _same_classes(classes, _subfolders(val), val, name)
            return file_source(name, "test", _class_files(val, classes, name, expected), classes, str(val), **options)
        raise DataNotFoundError(f"{name}: {str(annotations)!r} does not exist; expected {expected}.")
    label_of = {c: i for i, c in enumerate(classes)}
    files = []
    for n, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in label_of:
            raise ConfigError(f"{name}: {annotations}:{n}: expected 'file<TAB>wnid<TAB>...' with a wnid that is a "
                              f"training class folder; got {line[:80]!r}.")
        path = val / "images" / parts[0]
        if not path.is_file():
            raise DataNotFoundError(f"{name}: {annotations}:{n} names {str(path)!r}, which does not exist.")
        files.append((path, label_of[parts[1]]))
    return file_source(name, "test", files, classes, str(val), **options)
