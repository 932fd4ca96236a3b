"""Captioned images from user data, after the paper's filters: the part :class:`FolderDataset`
and :class:`CocoCaptions` share. They only list candidates, (image path, its captions); this
class checks and filters them, counts what it drops in a :class:`FilterReport` and serves items.

One item per kept image. Its caption is drawn from the image's kept captions by a stable hash
of (seed, epoch, index): the same in every process and on every machine, different from epoch
to epoch once :meth:`CaptionedImages.set_epoch` is called (as with ``DistributedSampler``).
"""
from __future__ import annotations

import hashlib
import operator
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .filters import DataFilters, FilterReport
from .images import check_image_size, load_image, probe_image


@dataclass(frozen=True)
class ImageRecord:
    """A kept image: its path, (width, height) from its header and its kept captions."""

    path: Path
    size: tuple[int, int]
    captions: tuple[str, ...]


def clean_captions(lines: Iterable[str]) -> list[str]:
    """Captions with runs of whitespace collapsed to one space; blank ones dropped."""
    return [caption for caption in (" ".join(line.split()) for line in lines) if caption]


def screen(report: FilterReport, captions: Sequence[str] | None,
           probe: Callable[[], tuple[int, int]]) -> tuple[tuple[int, int], tuple[str, ...]] | None:
    """The paper's filters (``report.filters``) on one candidate image with ``captions`` (None or
    empty: it has none), counted in ``report``: ((width, height), the kept captions), or None when
    it is dropped. ``probe()`` gives the image's (width, height) from its header and raises for an
    image it cannot read; it is called only for an image with captions."""
    filters = report.filters
    report.images_found += 1
    if not captions:
        report.missing_captions += 1
        return None
    try:
        size = probe()
    except Exception:  # noqa: BLE001 - PIL raises many kinds of errors on bad files
        report.unreadable += 1
        return None
    if not filters.keeps_aspect(*size):
        report.bad_aspect += 1
        return None
    kept = []
    for caption in captions:
        report.captions_checked += 1
        reason = filters.caption_rejection(caption)
        if reason is None:
            kept.append(caption)
        else:
            setattr(report, reason, getattr(report, reason) + 1)
    if not kept:
        report.no_caption_left += 1
        return None
    report.images_kept += 1
    report.captions_kept += len(kept)
    return size, tuple(kept)


def drawn_caption(captions: Sequence[str], seed: int, epoch: int, item: int | str) -> str:
    """The one of ``captions`` that ``item`` (an index, or any stable name) gets in ``epoch``: drawn
    by a stable hash of (seed, epoch, item), the same in every process and on every machine."""
    key = f"dalle_fast.captions/{seed}/{epoch}/{item}".encode()
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return captions[h % len(captions)]


class CaptionedImages(Dataset):
    """``ds[i] -> (image, caption)``: image a float32 tensor (3, image_size, image_size) in [0, 1]
    (shorter side resized, centre square), caption one of the image's kept captions.

    ``candidates``: (image path, captions) pairs, captions ``None`` or empty when the image has
    none. Each image's header is validated here (PIL open + verify); unreadable images, images
    without captions and what ``filters`` drop are counted in ``self.report``. An image that
    fails to load later is skipped: ``ds[i]`` returns the next loadable item (wrapping around),
    the failure is counted in ``report.broken_at_load`` and warned about once per process.
    Raises ``ValueError`` (with the report) when no image is left.
    """

    def __init__(self, candidates: Iterable[tuple[Path, Sequence[str] | None]], image_size: int,
                 filters: DataFilters, seed: int, source: str) -> None:
        self.image_size = check_image_size(image_size)
        if not isinstance(filters, DataFilters):
            raise ValueError(f"filters must be a DataFilters, got {type(filters).__name__}")
        self.seed = operator.index(seed)
        self.epoch = 0
        self.report = FilterReport(source=source, filters=filters)
        self.records = tuple(r for r in (self._check(path, captions) for path, captions in candidates) if r)
        self._broken: set[int] = set()
        if not self.records:
            raise ValueError(f"no usable images: {self.report}")

    def _check(self, path: Path, captions: Sequence[str] | None) -> ImageRecord | None:
        """The record of a candidate, or None (counted in the report) if it is dropped."""
        screened = screen(self.report, captions, lambda: probe_image(path))
        return None if screened is None else ImageRecord(path, *screened)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Draw captions for ``epoch`` (items' images do not change)."""
        self.epoch = operator.index(epoch)

    def captions(self, i: int) -> tuple[str, ...]:
        """Every kept caption of item ``i`` (the one it gets is drawn from these each epoch)."""
        return self.records[i].captions

    def caption(self, i: int) -> str:
        """The caption item ``i`` gets in the current epoch."""
        return drawn_caption(self.records[i].captions, self.seed, self.epoch, i % len(self))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        i = operator.index(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        i %= n
        for j in chain(range(i, n), range(i)):
            if j in self._broken:
                continue
            try:
                image = load_image(self.records[j].path, self.image_size)
            except Exception as error:  # noqa: BLE001 - a bad file must not stop training
                self._broken.add(j)
                self.report.broken_at_load += 1
                warnings.warn(f"skipping unreadable image {self.records[j].path}: {error!r}", stacklevel=2)
                continue
            return image, self.caption(j)
        raise RuntimeError(f"every image failed to load: {self.report}")
