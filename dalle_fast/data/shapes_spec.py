"""Vocabulary of the built-in ``shapes`` data (docs/design.md#built-in-data-shapes), its held-out
(color, shape) pairs, and its captions, both ways.

One object on a white canvas, described by four attributes: size, color, shape, position.
Geometry is given as fractions of the canvas side so it holds at any image size. This module
imports nothing of ``dalle_fast``: the config validates its holdout here.
"""
from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

BACKGROUND: tuple[int, int, int] = (255, 255, 255)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 130, 30),
    "yellow": (235, 200, 30),
    "green": (40, 170, 60),
    "cyan": (30, 190, 200),
    "blue": (40, 80, 220),
    "purple": (140, 60, 180),
    "pink": (240, 110, 180),
}

# circle; square (axis-aligned); triangle (isosceles, apex up, base = height); diamond (a square
# rotated 45 degrees). Each spans its size along both axes.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

# (color, shape) pairs never shown in the shapes train split (they do appear in val and test): the
# zero-shot composition probe. One per shape, four different colors, so every color and every
# shape is still seen in training with other partners.
DEFAULT_HOLDOUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "square"),
    ("blue", "circle"),
    ("yellow", "diamond"),
)

# Extent of the object (its bounding box side) as a fraction of the canvas side.
SIZES: dict[str, float] = {"small": 0.25, "large": 0.4}

# Centre of the object's bounding box as (x, y) fractions of the side, y down; 3x3 grid row-major.
_ROWS = {"top": 0.25, "": 0.5, "bottom": 0.75}
_COLUMNS = {"left": 0.25, "": 0.5, "right": 0.75}
POSITIONS: dict[str, tuple[float, float]] = {
    (f"{row} {col}".strip() or "center"): (x, y) for row, y in _ROWS.items() for col, x in _COLUMNS.items()
}

# How a caption says where the object is.
_PLACES = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}
TEMPLATES: tuple[str, ...] = (
    "a {size} {color} {shape} {place}",
    "{size} {color} {shape} {place}",
    "there is a {size} {color} {shape} {place}",
    "a picture of a {size} {color} {shape} {place}",
)


def check_holdout(holdout: Iterable[tuple[str, str]]) -> frozenset[tuple[str, str]]:
    """Validate held-out (color, shape) pairs: known names, and every color and every shape
    still seen in training with some partner. Raises ``ValueError`` naming the offending entry."""
    pairs = frozenset((color, shape) for color, shape in holdout)
    for color, shape in sorted(pairs):
        if color not in COLORS:
            raise ValueError(f"holdout: unknown color {color!r} in {(color, shape)}; colors are {list(COLORS)}")
        if shape not in SHAPES:
            raise ValueError(f"holdout: unknown shape {shape!r} in {(color, shape)}; shapes are {list(SHAPES)}")
    for color in COLORS:
        if all((color, shape) in pairs for shape in SHAPES):
            raise ValueError(f"holdout: holds out every shape of color {color!r}; it could never be learned")
    for shape in SHAPES:
        if all((color, shape) in pairs for color in COLORS):
            raise ValueError(f"holdout: holds out every color of shape {shape!r}; it could never be learned")
    return pairs


@dataclass(frozen=True)
class Attributes:
    """What one shapes image shows. Every field takes a value of its vocabulary
    (``SIZES``, ``COLORS``, ``SHAPES``, ``POSITIONS``); anything else raises ``ValueError``."""

    size: str
    color: str
    shape: str
    position: str

    def __post_init__(self) -> None:
        vocabularies = {"size": SIZES, "color": COLORS, "shape": SHAPES, "position": POSITIONS}
        for name, vocabulary in vocabularies.items():
            value = getattr(self, name)
            if value not in vocabulary:
                raise ValueError(f"{name} must be one of {list(vocabulary)}, got {value!r}")


def caption(attributes: Attributes, template: int = 0) -> str:
    """The lowercase caption of ``attributes`` in ``TEMPLATES[template]``, e.g.
    ``"a small red circle in the top left"``."""
    return TEMPLATES[template].format(size=attributes.size, color=attributes.color,
                                      shape=attributes.shape, place=_PLACES[attributes.position])


def caption_attributes(text: str) -> Attributes:
    """Parse a caption back into its attributes (inverse of :func:`caption` for every template).

    Reads words, case-insensitively: exactly one size, one color and one shape word; the position
    from a row word (top/bottom) and/or a column word (left/right), else ``center``. Raises
    ``ValueError`` naming the attribute that is missing or ambiguous.
    """
    words = set(re.findall(r"[a-z]+", text.lower()))

    def one(name: str, vocabulary: Collection[str], required: bool = True) -> str:
        found = sorted(words.intersection(vocabulary))
        if len(found) > 1 or (required and not found):
            raise ValueError(f"caption {text!r} names {len(found)} {name} words {found}; expected one")
        return found[0] if found else ""

    row, col = one("row", ("top", "bottom"), False), one("column", ("left", "right"), False)
    position = f"{row} {col}".strip()
    if not position and "center" not in words:
        raise ValueError(f"caption {text!r} names no position")
    return Attributes(size=one("size", SIZES), color=one("color", COLORS), shape=one("shape", SHAPES),
                      position=position or "center")
