"""User data in the layout of CUB-200-2011 (Wah et al. 2011) with the captions of Reed et al.
(2016), the paper's second test set::

    root/CUB_200_2011/images/<class>/<image>.jpg
    root/CUB_200_2011/images.txt               optional: "<id> <class>/<image>.jpg" per line
    root/CUB_200_2011/train_test_split.txt     optional: "<id> <1 = train, 0 = test>" per line
    root/text_c10/<class>/<image>.txt          ten captions per image, one a line

``root`` may also be the ``CUB_200_2011`` folder itself, with ``text_c10`` inside it or next to
it. An image without a caption file counts as ``missing_captions``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .captioned import CaptionedImages
from .filters import DataFilters
from .folder import find_images, read_captions

CUB_FOLDER, IMAGES_FOLDER, CAPTIONS_FOLDER = "CUB_200_2011", "images", "text_c10"
IMAGES_LIST, SPLIT_LIST = "images.txt", "train_test_split.txt"
SPLITS = {"train": "1", "test": "0"}  # split -> its flag in train_test_split.txt


class CubLayout(NamedTuple):
    """Where a CUB tree keeps its parts: ``cub`` (the CUB_200_2011 folder, holding ``images/``)
    and ``captions`` (the text_c10 folder)."""

    cub: Path
    captions: Path


def find_cub(root: str | os.PathLike[str]) -> CubLayout | None:
    """The layout of the CUB tree at ``root`` (see the module doc), or None if it is not one."""
    root = Path(root)
    for cub, captions in ((root / CUB_FOLDER, root / CAPTIONS_FOLDER), (root, root / CAPTIONS_FOLDER),
                          (root, root.parent / CAPTIONS_FOLDER)):
        if (cub / IMAGES_FOLDER).is_dir() and captions.is_dir():
            return CubLayout(cub, captions)
    return None


def _read_table(path: Path) -> dict[str, str]:
    """``{first field: second field}`` of a whitespace-separated two-column file; ``ValueError``
    naming the file and line when a line is malformed."""
    table = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected two fields, got {line!r}")
            table[fields[0]] = fields[1]
    return table


def split_images(layout: CubLayout, split: str) -> list[Path]:
    """The images of the official ``split`` ("train" or "test"), from ``images.txt`` and
    ``train_test_split.txt``, in the order of ``images.txt``."""
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {list(SPLITS)} or None, got {split!r}")
    lists = [layout.cub / IMAGES_LIST, layout.cub / SPLIT_LIST]
    for path in lists:
        if not path.is_file():
            raise ValueError(f"split: {split!r} needs {path}, which is missing")
    names, flags = (_read_table(path) for path in lists)
    unknown = sorted(set(names) - set(flags))
    if unknown:
        raise ValueError(f"{lists[1]}: has no entry for image id {unknown[0]} of {lists[0]}")
    return [layout.cub / IMAGES_FOLDER / name for key, name in names.items() if flags[key] == SPLITS[split]]


class CubCaptions(CaptionedImages):
    """``ds[i] -> (image (3, image_size, image_size) float32 in [0, 1], caption str)`` over the
    CUB images under ``root`` with their Reed et al. captions (see :class:`CaptionedImages` for
    filtering, caption choice and unreadable files). ``split``: None for every image (sorted by
    path), or ``"train"`` / ``"test"`` for the official split of ``train_test_split.txt``."""

    def __init__(self, root: str | os.PathLike[str], image_size: int, filters: DataFilters = DataFilters(),
                 seed: int = 0, split: str | None = None) -> None:
        self.root = Path(root)
        layout = find_cub(self.root)
        if layout is None:
            raise FileNotFoundError(f"root: {self.root} is not a CUB tree (expected {CUB_FOLDER}/{IMAGES_FOLDER}/ "
                                    f"and {CAPTIONS_FOLDER}/)")
        self.layout, self.split = layout, split
        images_dir = layout.cub / IMAGES_FOLDER
        paths = find_images(images_dir) if split is None else split_images(layout, split)
        candidates = ((path, read_captions(layout.captions / path.relative_to(images_dir).with_suffix(".txt")))
                      for path in paths)
        super().__init__(candidates, image_size, filters, seed,
                         source=f"cub {self.root}" + ("" if split is None else f" ({split})"))
