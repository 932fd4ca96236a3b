"""The built-in ``shapes`` dataset (docs/design.md#built-in-data-shapes): procedural, no download,
and sample ``i`` of a split is the same on every machine, in every process, at every image size.

The attributes of sample ``i`` of ``split`` come from a stable hash (BLAKE2b) of
``(split, i)``, read as a mixed-radix number: (color, shape) pair, size, position, caption
template. The split name is part of the hash, so the splits draw independent streams. The train
split draws its pair from the pairs not held out; val and test from all pairs, so their samples
of held-out pairs (1/8 of them with the default holdout) test zero-shot composition.
"""
from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable

import torch
from torch.utils.data import Dataset

from ..config import SPLITS, Config, DataConfig
from .shapes_draw import render
from .shapes_spec import (
    COLORS,
    DEFAULT_HOLDOUT,
    POSITIONS,
    SHAPES,
    SIZES,
    TEMPLATES,
    Attributes,
    caption,
    check_holdout,
)


def _pairs(split: str, holdout: frozenset[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The (color, shape) pairs ``split`` draws from, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    pairs = tuple((color, shape) for color in COLORS for shape in SHAPES)
    return tuple(p for p in pairs if p not in holdout) if split == "train" else pairs


def _draw(split: str, i: int, pairs: tuple[tuple[str, str], ...]) -> tuple[Attributes, int]:
    """Attributes and caption template index of sample ``i`` of ``split``."""
    digest = hashlib.blake2b(f"dalle_fast.shapes/{split}/{i}".encode(), digest_size=16).digest()
    h = int.from_bytes(digest, "little")  # 128 bits: modulo bias below 2**-100
    h, pair = divmod(h, len(pairs))
    h, size = divmod(h, len(SIZES))
    h, position = divmod(h, len(POSITIONS))
    template = h % len(TEMPLATES)
    color, shape = pairs[pair]
    return Attributes(size=list(SIZES)[size], color=color, shape=shape,
                      position=list(POSITIONS)[position]), template


def attributes(split: str, i: int, holdout: Iterable[tuple[str, str]] = DEFAULT_HOLDOUT) -> Attributes:
    """Attributes of sample ``i`` (any int >= 0) of ``split`` under ``holdout``."""
    i = operator.index(i)
    if i < 0:
        raise IndexError(f"sample index must be >= 0, got {i}")
    return _draw(split, i, _pairs(split, check_holdout(holdout)))[0]


class ShapesDataset(Dataset):
    """``ds[i] -> (image, caption)``: image a float32 tensor (3, image_size, image_size) in [0, 1]
    (white background, one object), caption a lowercase string such as
    ``"a small red circle in the top left"``.

    ``split``: "train", "val" or "test". ``holdout``: (color, shape) pairs kept out of the train
    split. ``size``: number of samples (default: the ``DataConfig`` default for the split);
    sample ``i`` does not depend on it, so a longer dataset extends a shorter one.
    """

    def __init__(self, split: str, image_size: int, holdout: Iterable[tuple[str, str]] = DEFAULT_HOLDOUT,
                 size: int | None = None) -> None:
        self.split = split
        self.holdout = check_holdout(holdout)
        self._pairs = _pairs(split, self.holdout)
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.image_size = image_size
        self.size = DataConfig().split_size(split) if size is None else size
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")

    @classmethod
    def from_config(cls, config: Config, split: str) -> ShapesDataset:
        """The ``split`` of the shapes data as ``config`` sets it up (image size, holdout, length)."""
        if config.data.dataset != "shapes":
            raise ValueError(f"config.data.dataset is {config.data.dataset!r}, not 'shapes'")
        return cls(split, config.image_size, config.data.holdout, config.data.split_size(split))

    def __len__(self) -> int:
        return self.size

    def _sample(self, i: int) -> tuple[Attributes, int]:
        i = operator.index(i)
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.split} split of {self.size} samples")
        return _draw(self.split, i % self.size, self._pairs)

    def attributes(self, i: int) -> Attributes:
        """Attributes of sample ``i`` (what its caption says and its image shows)."""
        return self._sample(i)[0]

    def captions(self, i: int) -> tuple[str]:
        """Every caption of sample ``i``: its one caption, without rendering the image."""
        attrs, template = self._sample(i)
        return (caption(attrs, template),)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        attrs, template = self._sample(i)
        return render(attrs, self.image_size), caption(attrs, template)
