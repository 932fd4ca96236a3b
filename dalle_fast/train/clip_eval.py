"""Validation of CLIP: retrieval within val batches and, on the shapes data, attribute
discrimination, the skill reranking needs (does CLIP prefer an image's own caption to one that
gets a single attribute wrong?)."""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Collection, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..clip import CLIP, contrastive
from ..data import COLORS, POSITIONS, SHAPES, SIZES, Attributes, caption
from ..eval_mode import eval_mode
from ..tokenizer import CaptionTokenizer

# The axes of the grid of every shapes caption, in the order of Attributes' fields.
AXES: dict[str, tuple[str, ...]] = {"size": tuple(SIZES), "color": tuple(COLORS), "shape": SHAPES,
                                    "position": tuple(POSITIONS)}


@torch.no_grad()
def validate_clip(model: CLIP, tokenizer: CaptionTokenizer, val: Dataset, attributes: list[Attributes] | None,
                  holdout: Collection[tuple[str, str]], batch_size: int,
                  precision: contextlib.AbstractContextManager) -> dict[str, float]:
    """Val metrics of ``model`` in eval mode under the ``precision`` context: ``loss``,
    ``text_to_image`` and ``image_to_text`` (in-batch retrieval accuracy, batches of
    ``batch_size`` in order, averaged over samples) and, when ``attributes[i]`` describes
    ``val[i]`` (shapes data), the :func:`attribute_discrimination` metrics. Draws nothing from
    torch's global RNG."""
    device = next(model.parameters()).device
    loader = DataLoader(val, batch_size=batch_size, generator=torch.Generator())  # generator: see docstring
    with eval_mode(model):
        sums = {"loss": 0.0, "text_to_image": 0.0, "image_to_text": 0.0}
        embeddings = []
        for images, captions in loader:
            with precision:
                text = model.encode_text(tokenizer.encode(captions).to(device))
                image = model.encode_image(images.to(device))
                output = contrastive(text, image, model.scale())
            for name in sums:
                sums[name] += float(getattr(output, name)) * len(images)
            embeddings.append(image.float())
        metrics = {name: total / len(val) for name, total in sums.items()}
        if attributes is not None:
            with precision:
                metrics.update(attribute_discrimination(model, tokenizer, torch.cat(embeddings), attributes, holdout,
                                                        batch_size))
    return metrics


@torch.no_grad()
def attribute_discrimination(model: CLIP, tokenizer: CaptionTokenizer, image_embeddings: torch.Tensor,
                             attributes: Sequence[Attributes], holdout: Collection[tuple[str, str]],
                             batch_size: int) -> dict[str, float]:
    """How well CLIP tells shapes captions apart, for images with unit embeddings
    ``image_embeddings`` (N, E) showing ``attributes[n]``. Every caption is written in the first
    template (``"a {size} {color} {shape} {place}"``), so captions differ only in attributes.

    - ``discrimination_<attribute>`` for size, color, shape, position: the share of images whose
      own caption scores strictly above every caption with only that attribute changed;
    - ``attributes_all``: the share whose own caption scores above all other captions of the
      grid (every combination of the four attributes);
    - ``attributes_all_heldout``: the same over the images of held-out (color, shape) pairs, when
      there are any.
    """
    if len(attributes) != len(image_embeddings):
        raise ValueError(f"attributes: {len(attributes)} records for {len(image_embeddings)} images")
    grid = [Attributes(*values) for values in itertools.product(*AXES.values())]
    tokens = tokenizer.encode([caption(a) for a in grid]).to(image_embeddings.device)
    text = torch.cat([model.encode_text(chunk).float() for chunk in tokens.split(batch_size)])
    sims = (image_embeddings.float() @ text.T).view(len(attributes), *(len(v) for v in AXES.values()))
    # index of each image's value along every axis: (N, 4)
    index = torch.tensor([[AXES[name].index(getattr(a, name)) for name in AXES] for a in attributes],
                         device=sims.device)
    n = torch.arange(len(attributes), device=sims.device)
    own = sims[(n, *index.T)]  # (N,)
    metrics = {}
    for axis, name in enumerate(AXES):
        at = [index[:, k] for k in range(len(AXES))]
        at[axis] = slice(None)
        line = sims[(n, *at)]  # (N, len(AXES[name])): the image's scores along this axis, advanced dims first
        others = line.scatter(1, index[:, axis:axis + 1], float("-inf")).amax(dim=1)
        metrics[f"discrimination_{name}"] = float((own > others).float().mean())
    flat = sims.flatten(1)
    best = (flat >= own[:, None]).sum(dim=1) == 1  # only its own caption reaches its score
    metrics["attributes_all"] = float(best.float().mean())
    heldout = torch.tensor([(a.color, a.shape) in holdout for a in attributes], device=sims.device)
    if heldout.any():
        metrics["attributes_all_heldout"] = float(best[heldout].float().mean())
    return metrics
