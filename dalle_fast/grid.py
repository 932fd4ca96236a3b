"""Image grids: rows of images tiled into one PNG (e.g. originals above their reconstructions), and the
grid of generated images under their prompt that ``generate`` writes and ``serve`` offers for download."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .atomic import write_atomic

PADDING = 2  # white pixels between and around the tiles
COLUMNS = 8  # images per row of a prompt grid


def image_grid(rows: Sequence[torch.Tensor]) -> Image.Image:
    """Tile ``rows`` (each (N, 3, H, W) floats in [0, 1], all the same shape) into an RGB image of
    ``N * W + (N + 1) * PADDING`` x ``R * H + (R + 1) * PADDING`` px, row r of tiles being ``rows[r]``."""
    if not rows or any(not isinstance(r, torch.Tensor) for r in rows):
        raise TypeError("rows: expected a non-empty sequence of tensors")
    shape = rows[0].shape
    if len(shape) != 4 or shape[1] != 3 or any(r.shape != shape for r in rows):
        raise ValueError(f"rows: expected tensors of one shape (N, 3, H, W), got {[tuple(r.shape) for r in rows]}")
    n, _, h, w = shape
    canvas = torch.ones(3, len(rows) * (h + PADDING) + PADDING, n * (w + PADDING) + PADDING)
    for r, images in enumerate(rows):
        for c, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
            top, left = PADDING + r * (h + PADDING), PADDING + c * (w + PADDING)
            canvas[:, top:top + h, left:left + w] = image
    pixels = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def save_grid(rows: Sequence[torch.Tensor], path: str | os.PathLike) -> None:
    """Write :func:`image_grid` of ``rows`` to ``path`` as a PNG, atomically."""
    grid = image_grid(rows)
    write_atomic(path, lambda tmp: grid.save(tmp, format="PNG"))


def prompt_grid(images: torch.Tensor, prompt: str, columns: int = COLUMNS) -> Image.Image:
    """``images`` (K, 3, H, W) in [0, 1] tiled ``columns`` to a row (:func:`image_grid`, the last row
    padded with white tiles) under a white band with ``prompt`` written in PIL's default font; the
    picture is widened to the prompt when it is wider than the tiles."""
    columns = min(columns, len(images))
    blank = torch.ones(-len(images) % columns, *images.shape[1:])
    tiles = torch.cat([images, blank])
    grid = image_grid(list(tiles.split(columns)))
    font = ImageFont.load_default()
    _, _, right, bottom = ImageDraw.Draw(grid).textbbox((0, 0), prompt, font=font)
    band = bottom + 2 * PADDING
    picture = Image.new("RGB", (max(grid.width, right + 2 * PADDING), grid.height + band), "white")
    ImageDraw.Draw(picture).text((PADDING, PADDING), prompt, fill="black", font=font)
    picture.paste(grid, (0, band))
    return picture
