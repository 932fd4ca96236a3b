"""The splits of the dataset a run's config names (train and val; evaluation reads val too) and
their captions, read without loading images. Tar shards (:mod:`.shards`) give a streamed train
split (a :class:`~.shards.ShardStream`) and an in-memory val split. The built-in emoji data
(:mod:`.emoji`) gives ``Subset``s of one dataset of every glyph, as user data does."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import Dataset, Subset

from ..config import Config
from ..errors import UsageError
from .filters import DataFilters, FilterReport
from .shapes import ShapesDataset
from .shapes_spec import Attributes
from .shards import ShardStream, is_shard_pattern, load_shards

USER_VAL_FRACTION = 0.1  # at most this share of user data is held out for validation
STREAM_CAPTIONS = 100_000  # the captions of a shard stream are those of its first usable samples


class TrainData(NamedTuple):
    """The splits of a run. ``train``: a dataset, or the stream of tar shards. ``val_attributes``:
    the attributes of every val sample (shapes data only, for attribute agreement), else None.
    ``report``: the filter counts (user data only; for shards, of reading the val split)."""

    train: Dataset | ShardStream
    val: Dataset
    val_attributes: list[Attributes] | None
    report: FilterReport | None


def load_data(config: Config, images: str | None = None) -> TrainData:
    """The splits of ``config.data.dataset``: ``"shapes"`` or ``"emoji"`` (built in), a folder of
    captioned images, a COCO-style captions JSON (its images under ``images``) or tar shards (a
    path or brace pattern ending in ``.tar``, :mod:`.shards`). User data and the emoji data hold out
    a seeded random ``min(val_size, 10%)`` of their images as the val split (the emoji data after
    its held-out names, :func:`~.emoji.emoji_splits`); shards every tenth of their first samples,
    up to ``val_size`` usable ones."""
    if config.data.dataset in ("shapes", "emoji") and images is not None:
        raise UsageError("--images: only used with a COCO-style captions JSON as --data")
    if config.data.dataset == "shapes":
        val = ShapesDataset.from_config(config, "val")
        return TrainData(ShapesDataset.from_config(config, "train"), val, [val.attributes(i) for i in range(len(val))],
                         None)
    if config.data.dataset == "emoji":
        from .emoji import emoji_splits  # imported only when used, as the user data modules

        emoji = emoji_splits(config)
        return TrainData(emoji.train, emoji.val, None, emoji.dataset.report)
    if is_shard_pattern(config.data.dataset):
        if images is not None:
            raise UsageError("--images: only used with a COCO-style captions JSON as --data, not tar shards")
        splits = load_shards(config.data.dataset, config.image_size, config.data.val_size, DataFilters(),
                             config.train.seed)
        return TrainData(splits.train, splits.val, None, splits.report)
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
        from .cub import CubCaptions, find_cub
        from .folder import FolderDataset

        kind = CubCaptions if find_cub(path) is not None else FolderDataset  # CUB: captions in text_c10/
        return _build(lambda: kind(path, config.image_size, seed=config.train.seed), path)
    if path.is_file() and path.suffix.lower() == ".json":
        if images is None:
            raise UsageError(f"--images: required with the captions JSON --data {path} (the folder its "
                             "file_name entries are relative to)")
        if not Path(images).is_dir():
            raise UsageError(f"--images: no such folder: {images}")
        from .coco import CocoCaptions

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
    :class:`~dalle_fast.data.ShapesDataset`, a captioned user dataset, or a ``Subset`` of one. A
    shard stream has no end: its first ``limit`` (None: ``STREAM_CAPTIONS``) usable samples' in
    pattern order, read from the shards (images not decoded)."""
    if isinstance(dataset, ShardStream):
        return dataset.first_captions(STREAM_CAPTIONS if limit is None else limit)
    if isinstance(dataset, Subset):
        source, indices = dataset.dataset, list(dataset.indices)
    else:
        source, indices = dataset, range(len(dataset))
    return [tuple(source.captions(i)) for i in indices[:limit]]


def dataset_captions(dataset: Dataset, limit: int | None = None) -> list[str]:
    """Every caption of the first ``limit`` items (all if None) of ``dataset``, in order (see
    :func:`item_captions`)."""
    return [text for captions in item_captions(dataset, limit) for text in captions]
