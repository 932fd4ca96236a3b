"""Image files of user data: which files count as images, a cheap header check, and loading one
into the square float tensor the models take.

Loading (:func:`load_image`): first frame, EXIF orientation applied, converted to RGB
(grayscale and 16-bit grayscale scaled to 8 bits, palettes expanded, transparency composited
over white), shorter side resized to ``image_size`` with an antialiased bicubic filter and the
centre square kept (one PIL resize of the centre box, the same as resizing then cropping).
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from ..checks import check_int

# File name suffixes taken as images (compared lowercased); anything PIL cannot read among them
# is counted as unreadable.
IMAGE_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".tga",
})

_WHITE = (255, 255, 255, 255)


def check_image_size(image_size: int) -> int:
    """``image_size`` if it is a positive int, else ``ValueError`` naming the argument."""
    return check_int("image_size", image_size, 1)


def probe_image(path: Path | BinaryIO) -> tuple[int, int]:
    """(width, height) from the header of the image at ``path`` (a file or an open binary stream),
    after PIL's ``verify()`` (which checks PNG chunk checksums; other formats only get their header
    parsed). Pixels are not decoded. Raises what PIL raises (``OSError`` and others) for a file it cannot read."""
    with Image.open(path) as image:
        size = image.size
        image.verify()
    return size


def _to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in mode RGB, transparency composited over white."""
    if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit grayscale
        image = image.convert("I").point(lambda v: v / 257).convert("L")
    if image.has_transparency_data:
        return Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def load_image(path: Path | BinaryIO, image_size: int) -> torch.Tensor:
    """The image at ``path`` (a file or an open binary stream) as a float32 tensor (3, image_size,
    image_size) in [0, 1]: shorter side resized to ``image_size``, centre square kept. Raises what
    PIL raises for a file it cannot decode (``OSError`` for a truncated one, and others)."""
    with Image.open(path) as image:
        image.draft("RGB", (image_size, image_size))  # JPEG: decode at a reduced scale, still >= image_size
        image = _to_rgb(ImageOps.exif_transpose(image))
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC,
                         box=(left, top, left + side, top + side))
    pixels = torch.from_numpy(np.array(image))  # (S, S, 3) uint8
    return pixels.permute(2, 0, 1).float().div_(255)
