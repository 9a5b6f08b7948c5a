"""Decoding one image to a uint8 C x H x W tensor: PIL images, numpy arrays and tensors; resizing and crops.

Resizing happens only when asked (``image_size``): the shorter side is scaled to ``resize`` (default
``image_size``) with PIL's antialiased bilinear filter and the centre ``image_size`` x ``image_size`` square is
kept, the usual evaluation transform (ImageNet: resize 256, crop 224). :func:`random_resized_crop` is the
Inception-style training crop (area 8 %..100 %, aspect 3/4..4/3), drawn from a given generator.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
CHANNELS = (1, 3)


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def to_pil(image: Any, where: str) -> Any:
    """A PIL image from a PIL image, a uint8 numpy array (H x W or H x W x C) or a uint8 tensor (C x H x W)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        image = image.numpy() if image.dim() == 2 else image.permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"{where}: images must be uint8 (0..255); got a {image.dtype} array. Convert with "
                             "(x * 255).round().astype(np.uint8) if the values are in [0, 1].")
        return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    raise ValueError(f"{where}: expected a PIL image, a uint8 numpy array or a uint8 tensor; got {type(image).__name__}.")


def open_image(path: str) -> Any:
    """The decoded image at ``path`` (PIL); a file PIL cannot read raises ValueError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e}); remove or replace the file.") from e


def to_tensor(img: Any, channels: int) -> torch.Tensor:
    """A PIL image as a uint8 tensor of shape ``channels`` x H x W (converted to L or RGB)."""
    img = img.convert("L" if channels == 1 else "RGB")
    array = np.array(img, dtype=np.uint8)  # a writable copy
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def resize_center(img: Any, size: int, resize: int | None = None) -> Any:
    """Scale the shorter side to ``resize`` (default ``size``), keep the centre ``size`` x ``size`` square."""
    from PIL import Image

    short = resize or size
    w, h = img.size
    if (w, h) != (short, short) or short != size:
        scale = short / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.BILINEAR)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def random_resized_crop(img: Any, size: int, generator: torch.Generator,
                        scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Any:
    """A random crop of area ``scale`` of the image and aspect ``ratio`` (log-uniform), resized to ``size``,
    then a horizontal flip with probability 1/2; 10 tries, then the central crop of the nearest allowed aspect."""
    from PIL import Image

    w, h = img.size
    area = w * h
    u = torch.rand(41, generator=generator, dtype=torch.float64).tolist()
    box = None
    for t in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[4 * t])
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[4 * t + 1])
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left = min(int(u[4 * t + 2] * (w - cw + 1)), w - cw)
            top = min(int(u[4 * t + 3] * (h - ch + 1)), h - ch)
            box = (left, top, left + cw, top + ch)
            break
    if box is None:
        aspect = w / h
        if aspect < ratio[0]:
            cw, ch = w, round(w / ratio[0])
        elif aspect > ratio[1]:
            cw, ch = round(h * ratio[1]), h
        else:
            cw, ch = w, h
        left, top = (w - cw) // 2, (h - ch) // 2
        box = (left, top, left + cw, top + ch)
    img = img.resize((size, size), Image.BILINEAR, box=box)
    if u[40] < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img
