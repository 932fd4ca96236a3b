"""Data: the built-in procedural ``shapes`` dataset (docs/design.md#built-in-data-shapes), the built-in
``emoji`` glyphs (:mod:`.emoji`: Noto Color Emoji with CLDR captions) and user data
(docs/design.md#user-data): a folder of captioned images, a COCO-style captions file, or a CUB-200-2011
tree with the Reed et al. captions.

``ShapesDataset(split, image_size)[i] -> (image (3, S, S) in [0, 1], caption)``; ``attributes``
gives the record behind sample i, ``read_attributes`` reads an image back into one and
``caption_attributes`` parses a caption into one.

Each name below is imported from its module on first use (PEP 562), so importing one module of
this package runs no other: :mod:`dalle_fast.config` reads :mod:`.shapes_spec` without loading
:mod:`.shapes`, which reads the config.
"""
from __future__ import annotations

import importlib
from typing import Any

_MODULES: dict[str, str] = {  # public name -> the module of this package that defines it
    "DEFAULT_HOLDOUT": "shapes_spec", "COLORS": "shapes_spec", "POSITIONS": "shapes_spec", "SHAPES": "shapes_spec",
    "SIZES": "shapes_spec", "Attributes": "shapes_spec", "caption": "shapes_spec",
    "caption_attributes": "shapes_spec", "check_holdout": "shapes_spec",
    "ShapesDataset": "shapes", "attributes": "shapes",
    "read_attributes": "shapes_draw", "render": "shapes_draw",
    "CocoCaptions": "coco", "CubCaptions": "cub", "DataFilters": "filters", "FilterReport": "filters",
    "FolderDataset": "folder",
    "EmojiDataset": "emoji", "EmojiGlyphs": "emoji", "emoji_splits": "emoji",
}

__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    """``name`` from its module, imported now (and kept in this module's namespace)."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})
