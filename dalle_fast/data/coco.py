"""User data as a COCO-style captions file (``captions_train2017.json`` and the like)::

    {"images": [{"id": 1, "file_name": "000001.jpg", ...}, ...],
     "annotations": [{"image_id": 1, "caption": "A cat on a sofa.", ...}, ...]}

``file_name`` is relative to ``images_dir``. Images appear in the order of ``"images"``, with
their captions in the order of ``"annotations"``; annotations of ids not in ``"images"`` are
ignored. A listed image without a file counts as unreadable.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .captioned import CaptionedImages, clean_captions
from .filters import DataFilters


def _field(entry: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``entry[key]``, checked to be of type ``kind``; ``ValueError`` naming ``where`` if not."""
    if not isinstance(entry, dict) or not isinstance(entry.get(key), kind):
        kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{where}: expected an object with a {key!r} of type {kinds}, got {entry!r:.200}")
    return entry[key]


def read_coco_captions(path: Path) -> list[tuple[str, list[str]]]:
    """(file_name, captions) of each image listed in the COCO-style captions file ``path``.
    Raises ``ValueError`` naming the file and the entry when the structure is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"captions_json {path}: not valid JSON: {e}") from e
    images = _field(data, "images", list, f"captions_json {path}")
    annotations = _field(data, "annotations", list, f"captions_json {path}")
    captions: dict[Any, list[str]] = {}
    for k, image in enumerate(images):
        image_id = _field(image, "id", (int, str), f"captions_json {path}: images[{k}]")
        _field(image, "file_name", str, f"captions_json {path}: images[{k}]")
        captions[image_id] = []
    for k, annotation in enumerate(annotations):
        image_id = _field(annotation, "image_id", (int, str), f"captions_json {path}: annotations[{k}]")
        caption = _field(annotation, "caption", str, f"captions_json {path}: annotations[{k}]")
        if image_id in captions:
            captions[image_id].append(caption)
    return [(image["file_name"], clean_captions(captions[image["id"]])) for image in images]


class CocoCaptions(CaptionedImages):
    """``ds[i] -> (image (3, image_size, image_size) float32 in [0, 1], caption str)`` over the
    images of a COCO-style captions file (see :class:`CaptionedImages` for filtering, caption
    choice and unreadable files). ``ds.report`` holds the counts; an image without annotations
    counts as ``missing_captions``."""

    def __init__(self, captions_json: str | os.PathLike[str], images_dir: str | os.PathLike[str],
                 image_size: int, filters: DataFilters = DataFilters(), seed: int = 0) -> None:
        self.captions_json, self.images_dir = Path(captions_json), Path(images_dir)
        if not self.captions_json.is_file():
            raise FileNotFoundError(f"captions_json: no such file: {self.captions_json}")
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images_dir: no such folder: {self.images_dir}")
        candidates = ((self.images_dir / name, captions) for name, captions in read_coco_captions(self.captions_json))
        super().__init__(candidates, image_size, filters, seed, source=f"coco {self.captions_json}")
