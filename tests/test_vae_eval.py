"""dalle_fast.train.vae_eval.validate_vae: attribute agreement over all val images and over the
images of held-out (color, shape) pairs, against counts made here by hand."""
import contextlib

import pytest
import torch

from dalle_fast.data.shapes_draw import render
from dalle_fast.data.shapes_spec import Attributes
from dalle_fast.validation import summary, validate_vae

HOLDOUT = (("red", "triangle"), ("blue", "circle"))


class BlanksOddImages(torch.nn.Module):
    """Stands in for a dVAE: 'reconstructs' every image exactly, except the images at odd
    positions of the val set, which come back blank (no object: an attribute miss)."""

    def __init__(self) -> None:
        super().__init__()
        self.codebook = torch.nn.Parameter(torch.zeros(4, 2))
        self.images: torch.Tensor | None = None
        self.seen = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.images = images
        return torch.zeros(len(images), 2, 2, dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        position = torch.arange(self.seen, self.seen + len(tokens))
        self.seen += len(tokens)
        return torch.where((position % 2 == 1)[:, None, None, None], torch.ones_like(self.images), self.images)


@pytest.mark.parametrize("batch_size", [3, 16])
def test_agreement_over_all_and_over_held_out_pairs(batch_size: int) -> None:
    generator = torch.Generator().manual_seed(batch_size)
    colors, shapes = ("red", "blue", "green"), ("triangle", "circle", "square")
    records = [Attributes(size="large", color=colors[int(torch.randint(3, (1,), generator=generator))],
                          shape=shapes[int(torch.randint(3, (1,), generator=generator))], position="center")
               for _ in range(13)]
    val = [(render(a, 32), "caption") for a in records]
    metrics = validate_vae(BlanksOddImages(), val, records, batch_size, contextlib.nullcontext(), HOLDOUT).metrics
    heldout = [k for k, a in enumerate(records) if (a.color, a.shape) in HOLDOUT]
    assert heldout, "the seed must draw some held-out pairs"
    assert metrics["attribute_agreement"] == pytest.approx(7 / 13)  # the even positions 0, 2, ..., 12
    assert metrics["attribute_agreement_heldout"] == pytest.approx(sum(k % 2 == 0 for k in heldout) / len(heldout))
    assert "held-out pairs" in summary(metrics)


def test_no_held_out_images_no_held_out_key() -> None:
    records = [Attributes(size="small", color="green", shape="square", position="left")] * 3
    val = [(render(a, 32), "caption") for a in records]
    metrics = validate_vae(BlanksOddImages(), val, records, 2, contextlib.nullcontext(), HOLDOUT).metrics
    assert metrics["attribute_agreement"] == pytest.approx(2 / 3) and "attribute_agreement_heldout" not in metrics
