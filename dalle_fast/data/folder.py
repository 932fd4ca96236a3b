"""User data as a folder (the DALLE-pytorch layout): image files, each with a caption file of the
same stem next to it (``pets/cat.png`` + ``pets/cat.txt``), one caption per line, found
recursively. Hidden files and folders (names starting with ".") are skipped."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .captioned import CaptionedImages, clean_captions
from .filters import DataFilters
from .images import IMAGE_EXTENSIONS


def read_captions(path: Path) -> list[str] | None:
    """Non-blank lines of the caption file ``path`` (UTF-8, invalid bytes replaced), or None if
    it is missing or cannot be read."""
    try:
        return clean_captions(path.read_text(encoding="utf-8-sig", errors="replace").splitlines())
    except OSError:
        return None


def find_images(root: Path) -> Iterator[Path]:
    """Image files under ``root`` (by suffix, see ``IMAGE_EXTENSIONS``), recursively, in sorted
    order, hidden files and folders skipped."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(folder, name)


class FolderDataset(CaptionedImages):
    """``ds[i] -> (image (3, image_size, image_size) float32 in [0, 1], caption str)`` over the
    captioned images under ``root`` (see :class:`CaptionedImages` for filtering, caption choice
    and unreadable files). ``ds.report`` holds the counts; an image without a caption file
    counts as ``missing_captions``."""

    def __init__(self, root: str | os.PathLike[str], image_size: int, filters: DataFilters = DataFilters(),
                 seed: int = 0) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"root: no such folder: {self.root}")
        if not self.root.is_dir():
            raise NotADirectoryError(f"root: not a folder: {self.root}")
        candidates = ((path, read_captions(path.with_suffix(".txt"))) for path in find_images(self.root))
        super().__init__(candidates, image_size, filters, seed, source=f"folder {self.root}")
