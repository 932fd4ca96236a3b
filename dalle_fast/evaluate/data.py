"""What an evaluation reads: the split of the data it evaluates on and the prompts it samples.

- Built-in ``shapes`` data: the ``val`` or ``test`` split as the run's config sets it up, with the
  attributes of every item (the ground truth of attribute accuracy).
- Built-in ``emoji`` data: the ``val`` split of glyphs (``test``: every glyph, training's
  included). Its prompts are not drawn from the split but from the names of the train glyphs
  (seen names: can the model draw what it was shown?) and the held-out names
  (``data.emoji_holdout``, zero-shot probes), and retrieval ranks each sample's own glyph among
  every glyph of the set (:class:`PromptPool`).
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

from torch.utils.data import Dataset, Subset

from ..config import Config
from ..data import Attributes, ShapesDataset
from ..data.cub import SPLIT_LIST, CubCaptions, find_cub
from ..data.emoji import emoji_splits
from ..data.splits import item_captions, load_data
from ..run import UsageError

EVAL_SPLITS = ("val", "test")


class PromptPool(NamedTuple):
    """The items prompts are chosen among: ``dataset`` (items ``(image, caption)``),
    ``captions[i]`` the captions of item i, ``heldout[i]`` whether it is a held-out composition
    (a held-out (color, shape) pair or emoji name; None: no groups), ``attributes[i]`` its
    attributes (shapes data only, else None). ``gallery``: every real image of the data, that
    retrieval ranks a sample's own among (None: no retrieval), ``gallery_index[i]`` item i's
    index in it."""

    dataset: Dataset
    captions: list[tuple[str, ...]]
    heldout: list[bool] | None
    attributes: list[Attributes] | None = None
    gallery: Dataset | None = None
    gallery_index: list[int] | None = None


class EvalData(NamedTuple):
    """The evaluation split: ``dataset`` (items ``(image, caption)``), ``captions[i]`` the
    captions of item i, ``attributes[i]`` its attributes (shapes data only, else None),
    ``description`` (what it is, for the report) and ``pool``, where the prompts come from (the
    split itself but on the emoji data)."""

    dataset: Dataset
    captions: list[tuple[str, ...]]
    attributes: list[Attributes] | None
    description: str
    pool: PromptPool


class Prompts(NamedTuple):
    """The evaluation's prompts: items ``indices`` of the :class:`PromptPool`, their ``captions``
    (each item's first), and whether each is a held-out composition (``heldout``; None on user
    data)."""

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
        attributes, captions = [shapes.attributes(i) for i in range(len(shapes))], item_captions(shapes)
        pool = PromptPool(shapes, captions, [(a.color, a.shape) in config.data.holdout for a in attributes],
                          attributes)
        return EvalData(shapes, captions, attributes, f"shapes {split} split, {len(shapes)} items", pool)
    if config.data.dataset == "emoji":
        if images is not None:
            raise UsageError("--images: only used with a COCO-style captions JSON as --data")
        emoji = emoji_splits(config)
        measured = emoji.val if split == "val" else emoji.dataset
        named = [*emoji.train.indices, *emoji.holdout.indices]
        prompted = Subset(emoji.dataset, named)
        pool = PromptPool(prompted, item_captions(prompted), [False] * len(emoji.train) + [True] * len(emoji.holdout),
                          gallery=emoji.dataset, gallery_index=named)
        return EvalData(measured, item_captions(measured), None,
                        f"emoji {split}: {len(measured)} glyphs; prompts from {len(emoji.train)} seen and "
                        f"{len(emoji.holdout)} held-out names, retrieval among all {len(emoji.dataset)} glyphs", pool)
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
    captions = item_captions(dataset)
    return EvalData(dataset, captions, None, f"{split}: {len(dataset)} images of {report}",
                    PromptPool(dataset, captions, None))


def choose_prompts(pool: PromptPool, count: int) -> Prompts:
    """``count`` prompts among the ``pool``'s items (each item's first caption). With groups
    (shapes, emoji): the first ``ceil(count / 2)`` held-out items and the first held-in items for
    the rest, so both halves are measured alike (fewer when the pool runs out); on the emoji data
    the held-in items are spread evenly over the seen names. User data: the first ``count``."""
    if count < 1:
        raise UsageError(f"--num-prompts: must be >= 1, got {count}")
    if pool.heldout is None:
        indices, heldout = list(range(min(count, len(pool.captions)))), None
    else:
        out = [i for i, h in enumerate(pool.heldout) if h][:math.ceil(count / 2)]
        held_in = [i for i, h in enumerate(pool.heldout) if not h]
        wanted = min(count - len(out), len(held_in))
        if pool.gallery is not None:  # every k-th seen name, not the first few of the CLDR order
            held_in = [held_in[k * len(held_in) // wanted] for k in range(wanted)] if wanted else []
        indices = sorted(out + held_in[:wanted])
        heldout = [pool.heldout[i] for i in indices]
    return Prompts(indices, [pool.captions[i][0] for i in indices], heldout)
