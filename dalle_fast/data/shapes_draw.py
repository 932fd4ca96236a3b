"""Pixels of the shapes data, both ways: :func:`render` draws attributes into an image and
:func:`read_attributes` reads an image back into attributes (used by tests and evaluation).

Rendering is analytic and antialiased: each pixel's coverage is the fraction of a
``SUPERSAMPLE`` x ``SUPERSAMPLE`` grid of sample points inside the shape, and the pixel is the
background blended toward the object color by that coverage, rounded to 8 bits. So the result
depends only on (attributes, image size) and is exactly what a PNG of it would hold.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .shapes_spec import BACKGROUND, COLORS, POSITIONS, SIZES, Attributes

SUPERSAMPLE = 4


def coverage(attributes: Attributes, image_size: int) -> np.ndarray:
    """Fraction of each pixel covered by the object: float64 array (image_size, image_size) in
    [0, 1], rows top to bottom."""
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    n = image_size * SUPERSAMPLE
    samples = (np.arange(n) + 0.5) / n  # sample point centres as fractions of the side
    cx, cy = POSITIONS[attributes.position]
    half = SIZES[attributes.size] / 2
    u = samples[None, :] - cx  # (1, n) horizontal offset from the centre
    v = samples[:, None] - cy  # (n, 1) vertical offset, down
    if attributes.shape == "circle":
        inside = u**2 + v**2 <= half**2
    elif attributes.shape == "square":
        inside = (np.abs(u) <= half) & (np.abs(v) <= half)
    elif attributes.shape == "triangle":  # apex at v = -half, base at v = +half, base = height
        inside = (np.abs(v) <= half) & (np.abs(u) <= (v + half) / 2)
    else:  # diamond
        inside = np.abs(u) + np.abs(v) <= half
    return inside.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE).mean(axis=(1, 3))


def render(attributes: Attributes, image_size: int) -> torch.Tensor:
    """The image of ``attributes``: float32 tensor (3, image_size, image_size) in [0, 1],
    multiples of 1/255; background exactly ``BACKGROUND``, fully covered pixels exactly the color."""
    alpha = coverage(attributes, image_size)[None]  # (1, H, W)
    background = np.array(BACKGROUND, dtype=np.float64)[:, None, None]
    color = np.array(COLORS[attributes.color], dtype=np.float64)[:, None, None]
    pixels = np.rint(background + alpha * (color - background)).astype(np.uint8)  # (3, H, W)
    return torch.from_numpy(pixels).float().div_(255)


# Reading. "Ink" is how far a pixel is from the background: for the object color c, a pixel that
# is the background blended toward c by coverage a has ink a * (background - c). The reader picks
# the palette color whose ink direction explains the image best, projects every pixel onto it to
# get a coverage map, and measures that map.
_INK = torch.tensor([[b - c for b, c in zip(BACKGROUND, rgb)] for rgb in COLORS.values()],
                    dtype=torch.float32) / 255  # (colors, 3)
_SOLID = 0.5  # coverage that marks a pixel as surely part of the object
_INK_FLOOR = 0.1  # coverage below this is taken as background (noise in generated images)
_SMALL, _LARGE = SIZES["small"], SIZES["large"]
# Bounding-box fill ratio (object area / extent**2) per shape: square 1, circle pi/4, triangle
# and diamond 1/2. Thresholds halfway.
_SQUARE_FILL = (1 + math.pi / 4) / 2
_CIRCLE_FILL = (math.pi / 4 + 1 / 2) / 2
# Triangle and diamond fill alike, but the triangle's mass along the vertical is skewed toward
# its base: density ~ depth below the apex, third central moment -extent**3 / 135; the diamond is
# symmetric (0). Threshold halfway. Pixel binning adds only symmetric spread, so this holds at
# low resolution, and it does not depend on locating the bounding box.
_TRIANGLE_SKEW = -1 / 270


def read_attributes(image: torch.Tensor) -> Attributes | None:
    """Read a shapes image back into its attributes; ``None`` when no object is visible.

    ``image``: float tensor (3, H, W) in [0, 1], square, on any device. Color: the palette color
    whose blend line from the background best fits the non-background pixels. Size: the larger
    bounding-box extent, against the midpoint of the two sizes. Position: the bounding-box
    centre, snapped to the 3x3 grid. Shape: area over the size's nominal extent squared
    (square ~1, circle ~pi/4, triangle and diamond ~1/2), then triangle vs diamond by the skew of
    the mass along the vertical (a triangle's mass is heavier toward its base).
    """
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        raise TypeError(f"image must be a float tensor, got {type(image).__name__} "
                        f"{getattr(image, 'dtype', '')}")
    if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
        raise ValueError(f"image must have shape (3, S, S), got {tuple(image.shape)}")
    side = image.shape[-1]
    ink = 1 - image.detach().to("cpu", torch.float32).clamp(0, 1).reshape(3, side * side)  # (3, H*W)
    # Coverage of every pixel by every palette color, and how far the pixels are off that color's
    # blend line: sum over pixels of |ink - alpha * ink_c|^2, expanded.
    dot, norm = _INK @ ink, (_INK**2).sum(1, keepdim=True)  # (colors, H*W), (colors, 1)
    alpha = (dot / norm).clamp_(0, 1)
    misfit = (alpha * (alpha * norm - 2 * dot)).sum(1)  # (colors,), up to the same sum(|ink|^2)
    color = int(misfit.argmin())
    cover = alpha[color].reshape(side, side)
    # Keep the window around the solidly covered pixels (one pixel wider, for thin antialiased
    # tips): stray pixels elsewhere are noise, not object.
    solid = (cover >= _SOLID).nonzero()  # (n, 2) row, column
    if len(solid) == 0:
        return None
    (top, left), (bottom, right) = (solid.amin(0) - 1).clamp(min=0).tolist(), (solid.amax(0) + 2).tolist()
    kept = torch.zeros_like(cover)
    kept[top:bottom, left:right] = cover[top:bottom, left:right]
    cover = torch.where(kept >= _INK_FLOOR, kept, 0)
    area = float(cover.sum())
    # Extents and bounding-box centre from the most-covered pixel of each column / row, so that
    # antialiased edges count by their coverage.
    centres = torch.arange(side, dtype=torch.float32) + 0.5
    columns, rows = cover.amax(0), cover.amax(1)  # (W,), (H,)
    width, height = float(columns.sum()), float(rows.sum())
    box_x, box_y = float(columns @ centres) / width, float(rows @ centres) / height
    size = "large" if max(width, height) / side > (_SMALL + _LARGE) / 2 else "small"
    extent = SIZES[size] * side
    fill = area / extent**2
    if fill > _SQUARE_FILL:
        shape = "square"
    elif fill > _CIRCLE_FILL:
        shape = "circle"
    else:
        row_mass = cover.sum(1)  # (H,)
        offset = centres - float(row_mass @ centres) / area  # of each row from the centroid, down
        skew = float(row_mass @ offset**3) / area
        shape = "triangle" if skew / extent**3 < _TRIANGLE_SKEW else "diamond"
    position = min(POSITIONS, key=lambda name: (POSITIONS[name][0] * side - box_x) ** 2
                   + (POSITIONS[name][1] * side - box_y) ** 2)
    return Attributes(size=size, color=list(COLORS)[color], shape=shape, position=position)

