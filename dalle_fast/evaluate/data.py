"""What an evaluation reads: the split of the data it evaluates on and the prompts it samples.

- Built-in ``shapes`` data: the ``val`` or ``test`` split as the run's config sets it up, with the
  attributes of every item (the ground truth of attribute accuracy).
- User data (a folder, a COCO-style captions JSON with its images, or a CUB tree): ``val`` is the
  held-out share of the data that training drew (:func:`dalle_fast.data.splits.load_data`, the same
  seed, so the same images); ``test`` is every image of the data given, except on a CUB tree
  with ``train_test_split.txt``, where it is the official test split. Point ``--data`` at data the
  run did not train on (COCO val2014 captions, CUB test) for a test set proper.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

from torch.utils.data import Dataset

from ..config import Config
from ..data import Attributes, ShapesDataset
from ..data.cub import SPLIT_LIST, CubCaptions, find_cub
from ..data.splits import item_captions, load_data
from ..run import UsageError

EVAL_SPLITS = ("val", "test")


class EvalData(NamedTuple):
    """The evaluation split: ``dataset`` (items ``(image, caption)``), ``captions[i]`` the
    captions of item i, ``attributes[i]`` its attributes (shapes data only, else None) and
    ``description`` (what it is, for the report)."""

    dataset: Dataset
    captions: list[tuple[str, ...]]
    attributes: list[Attributes] | None
    description: str


class Prompts(NamedTuple):
    """The evaluation's prompts: eval items ``indices``, their ``captions`` (each item's first),
    and whether each shows a held-out (color, shape) pair (``heldout``; None off the shapes data)."""

    indices: list[int]
    captions: list[str]
    heldout: list[bool] | None


def eval_data(config: Config, split: str, images: str | None = None) -> EvalData:
    """The ``split`` ("val" or "test") of ``config.data.dataset`` (see the module doc);
    ``images``: the image folder of a COCO-style captions JSON. Bad data raises ``UsageError``."""
    if split not in EVAL_SPLITS:
        raise UsageError(f"--split: must be one of {list(EVAL_SPLITS)}, got {split!r}")
    if config.data.dataset == "shapes":
        if images is not None:
            raise UsageError("--images: only used with a COCO-style captions JSON as --data")
        shapes = ShapesDataset.from_config(config, split)
        return EvalData(shapes, item_captions(shapes), [shapes.attributes(i) for i in range(len(shapes))],
                        f"shapes {split} split, {len(shapes)} items")
    path = Path(config.data.dataset)
    layout = find_cub(path) if path.is_dir() else None
    if split == "test" and layout is not None and (layout.cub / SPLIT_LIST).is_file():
        try:
            dataset: Dataset = CubCaptions(path, config.image_size, seed=config.train.seed, split="test")
        except ValueError as e:
            raise UsageError(f"--data {path}: {e}") from None
        report = dataset.report
    else:
        data = load_data(config, images)
        dataset, report = (data.val if split == "val" else data.val.dataset), data.report
    return EvalData(dataset, item_captions(dataset), None, f"{split}: {len(dataset)} images of {report}")


def choose_prompts(data: EvalData, count: int, holdout: tuple[tuple[str, str], ...]) -> Prompts:
    """``count`` prompts among the eval items (each item's first caption). Shapes data: the first
    ``ceil(count / 2)`` items of held-out (color, shape) pairs and the first items of held-in
    pairs for the rest, so both halves are measured alike (fewer when the split runs out).
    User data: the first ``count`` items."""
    if count < 1:
        raise UsageError(f"--num-prompts: must be >= 1, got {count}")
    if data.attributes is None:
        indices, heldout = list(range(min(count, len(data.captions)))), None
    else:
        held = [(a.color, a.shape) in holdout for a in data.attributes]
        out = [i for i, h in enumerate(held) if h][:math.ceil(count / 2)]
        indices = sorted(out + [i for i, h in enumerate(held) if not h][:count - len(out)])
        heldout = [held[i] for i in indices]
    return Prompts(indices, [data.captions[i][0] for i in indices], heldout)
