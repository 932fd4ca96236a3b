"""The data of a training run: the train and val splits of the dataset a config names, and a
train loader whose order is a pure function of (seed, position), so a checkpoint can store the
position and a resumed run continues with the very same batches."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..config import Config
from ..data import Attributes, ShapesDataset
from ..data.filters import FilterReport
from .errors import UsageError

USER_VAL_FRACTION = 0.1  # at most this share of user data is held out for validation


class TrainData(NamedTuple):
    """The splits of a run. ``val_attributes``: the attributes of every val sample (shapes data
    only, for attribute agreement), else None. ``report``: the filter counts (user data only)."""

    train: Dataset
    val: Dataset
    val_attributes: list[Attributes] | None
    report: FilterReport | None


def load_data(config: Config, images: str | None = None) -> TrainData:
    """The splits of ``config.data.dataset``: ``"shapes"`` (built in), a folder of captioned
    images, or a COCO-style captions JSON (its images under ``images``). User data holds out a
    seeded random ``min(val_size, 10%)`` of its images as the val split."""
    if config.data.dataset == "shapes":
        if images is not None:
            raise UsageError("--images: only used with a COCO-style captions JSON as --data")
        val = ShapesDataset.from_config(config, "val")
        return TrainData(ShapesDataset.from_config(config, "train"), val, [val.attributes(i) for i in range(len(val))],
                         None)
    dataset = _user_dataset(Path(config.data.dataset), images, config)
    if len(dataset) < 2:
        raise UsageError(f"--data {config.data.dataset}: needs at least 2 usable images, found {len(dataset)} "
                         f"({dataset.report})")
    val_size = max(1, min(config.data.val_size, int(len(dataset) * USER_VAL_FRACTION)))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.train.seed)).tolist()
    return TrainData(Subset(dataset, order[val_size:]), Subset(dataset, sorted(order[:val_size])), None,
                     dataset.report)


def _user_dataset(path: Path, images: str | None, config: Config) -> Dataset:
    """CubCaptions for a CUB tree, FolderDataset for another folder, CocoCaptions for a JSON file
    (imported only when used)."""
    if path.is_dir():
        if images is not None:
            raise UsageError("--images: only used with a COCO-style captions JSON as --data, not a folder")
        from ..data.cub import CubCaptions, find_cub
        from ..data.folder import FolderDataset

        kind = CubCaptions if find_cub(path) is not None else FolderDataset  # CUB: captions in text_c10/
        return _build(lambda: kind(path, config.image_size, seed=config.train.seed), path)
    if path.is_file() and path.suffix.lower() == ".json":
        if images is None:
            raise UsageError(f"--images: required with the captions JSON --data {path} (the folder its "
                             "file_name entries are relative to)")
        if not Path(images).is_dir():
            raise UsageError(f"--images: no such folder: {images}")
        from ..data.coco import CocoCaptions

        return _build(lambda: CocoCaptions(path, images, config.image_size, seed=config.train.seed), path)
    what = "no such file or folder" if not path.exists() else "neither a folder nor a .json captions file"
    raise UsageError(f"--data: {what}: {path}")


def _build(make: Callable[[], Dataset], path: Path) -> Dataset:
    """``make()``, its ``ValueError`` (no usable image, a malformed captions file) as a ``UsageError``."""
    try:
        return make()
    except ValueError as e:
        raise UsageError(f"--data {path}: {e}") from None


def item_captions(dataset: Dataset, limit: int | None = None) -> list[tuple[str, ...]]:
    """The captions of each of the first ``limit`` items (all if None) of ``dataset``, read
    through the datasets' ``captions(i)`` accessor without loading an image; ``dataset`` is a
    :class:`~dalle_fast.data.ShapesDataset`, a captioned user dataset, or a ``Subset`` of one."""
    if isinstance(dataset, Subset):
        source, indices = dataset.dataset, list(dataset.indices)
    else:
        source, indices = dataset, range(len(dataset))
    return [tuple(source.captions(i)) for i in indices[:limit]]


def dataset_captions(dataset: Dataset, limit: int | None = None) -> list[str]:
    """Every caption of the first ``limit`` items (all if None) of ``dataset``, in order (see
    :func:`item_captions`)."""
    return [text for captions in item_captions(dataset, limit) for text in captions]


class IndexStream(Sampler[int]):
    """An endless stream of indices into a dataset of ``size`` items: epoch ``e`` is a permutation
    of ``range(size)`` drawn from a generator seeded with ``(seed, e)``; iteration starts at
    position ``start`` of the stream (``start // size`` epochs and ``start % size`` items in)."""

    def __init__(self, size: int, seed: int, start: int = 0) -> None:
        if size < 1:
            raise ValueError(f"size: must be >= 1, got {size}")
        if start < 0:
            raise ValueError(f"start: must be >= 0, got {start}")
        self.size, self.seed, self.start = size, seed, start

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.size)
        while True:
            yield from self.permutation(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch ``epoch``: (size,) int64."""
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(seed))


class RankSlice(Sampler[int]):
    """This process's part of the global batches of ``stream``: the stream cut into batches of
    ``batch_size`` indices, of each only the ``rank``-th of ``size`` equal slices. With
    ``size`` 1, the stream itself."""

    def __init__(self, stream: Iterable[int], batch_size: int, rank: int, size: int) -> None:
        if not 0 <= rank < size:
            raise ValueError(f"rank: must be in [0, {size}), got {rank}")
        if batch_size < 1 or batch_size % size:
            raise ValueError(f"batch_size: must be a positive multiple of size {size}, got {batch_size}")
        self.stream, self.batch_size, self.rank, self.size = stream, batch_size, rank, size

    def __iter__(self) -> Iterator[int]:
        local = self.batch_size // self.size
        indices = iter(self.stream)
        while batch := list(itertools.islice(indices, self.batch_size)):
            yield from batch[self.rank * local:(self.rank + 1) * local]


def train_loader(dataset: Dataset, batch_size: int, seed: int, start: int, num_workers: int,
                 rank: int = 0, size: int = 1) -> DataLoader:
    """Endless batches from ``dataset`` in :class:`IndexStream` order, starting ``start``
    samples into the stream: the ``rank``-th of ``size`` slices (:class:`RankSlice`) of every
    global batch of ``batch_size``, so ``batch_size // size`` samples each. The loader's own
    seeded generator (worker seeds) keeps it off torch's global RNG, whose state belongs to the
    training step."""
    sampler = RankSlice(IndexStream(len(dataset), seed, start), batch_size, rank, size)
    return DataLoader(dataset, batch_size=batch_size // size, sampler=sampler, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available())
