"""dVAE metrics: PSNR of known errors, codebook usage of constructed token sets, and attribute
agreement on rendered shapes images (right and wrongly colored)."""
import dataclasses
import math

import pytest
import torch

from dalle_fast.data import COLORS, ShapesDataset, render
from dalle_fast.metrics import attribute_agreement, codebook_usage, psnr


def test_psnr_of_known_mean_squared_errors():
    target = torch.rand(3, 3, 8, 8) * 0.6 + 0.2
    signs = torch.randint(0, 2, target.shape) * 2 - 1  # every pixel off by exactly +-delta
    delta = torch.tensor([0.1, 0.01, 0.2]).view(3, 1, 1, 1)  # MSE 1e-2, 1e-4, 4e-2
    expected = torch.tensor([20.0, 40.0, -10 * math.log10(0.04)])
    torch.testing.assert_close(psnr(target + signs * delta, target), expected, rtol=0, atol=1e-4)


def test_psnr_of_identical_images_is_inf():
    x = torch.rand(2, 3, 4, 4)
    y = x.clone()
    y[1, 0, 0, 0] += 0.5
    values = psnr(x, y)
    assert values[0] == math.inf and math.isfinite(values[1])


@pytest.mark.parametrize("a, b, error, match", [
    (torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 5), ValueError, "reconstruction: shape"),
    (torch.rand(2, 4, 4), torch.rand(2, 4, 4), ValueError, "reconstruction: expected shape"),
    (torch.rand(2, 3, 4, 4), torch.zeros(2, 3, 4, 4, dtype=torch.uint8), TypeError, "target"),
])
def test_psnr_bad_inputs(a, b, error, match):
    with pytest.raises(error, match=match):
        psnr(a, b)


def test_codebook_usage_of_constructed_token_sets():
    k = 16
    uniform = torch.arange(k).repeat(5).view(5, 4, 4)
    assert codebook_usage(uniform, k) == pytest.approx((1.0, k))
    assert codebook_usage(torch.full((3, 4, 4), 11), k) == pytest.approx((1 / k, 1.0))
    assert codebook_usage(torch.arange(8).repeat(2), k) == pytest.approx((0.5, 8.0))
    # counts 1, 1, 2 over codes 0, 1, 5: p = 1/4, 1/4, 1/2, entropy 1.5 bits
    assert codebook_usage(torch.tensor([5, 0, 5, 1], dtype=torch.int32), k) == pytest.approx((3 / k, 2**1.5))


@pytest.mark.parametrize("tokens, num_codes, error, match", [
    (torch.tensor([0, 16]), 16, ValueError, r"tokens: values must lie in \[0, 16\)"),
    (torch.tensor([-1, 2]), 16, ValueError, "tokens: values"),
    (torch.tensor([0.0, 1.0]), 16, TypeError, "tokens: expected an integer tensor"),
    (torch.zeros(0, dtype=torch.long), 16, ValueError, "tokens: is empty"),
    (torch.tensor([0, 1]), 0, ValueError, "num_codes"),
])
def test_codebook_usage_bad_inputs(tokens, num_codes, error, match):
    with pytest.raises(error, match=match):
        codebook_usage(tokens, num_codes)


def shapes_batch(n: int, image_size: int = 64):
    ds = ShapesDataset("val", image_size, size=n)
    return torch.stack([ds[i][0] for i in range(n)]), [ds.attributes(i) for i in range(n)]


def test_attribute_agreement_is_one_on_ground_truth_images():
    images, records = shapes_batch(12)
    assert attribute_agreement(images, records) == 1.0


def test_attribute_agreement_counts_wrongly_colored_images():
    images, records = shapes_batch(8)
    colors = list(COLORS)
    for i in range(0, 8, 2):  # paint every other object in the next palette color
        wrong = colors[(colors.index(records[i].color) + 1) % len(colors)]
        images[i] = render(dataclasses.replace(records[i], color=wrong), images.shape[-1])
    assert attribute_agreement(images, records) == 0.5


def test_attribute_agreement_counts_a_blank_image_as_a_miss():
    images, records = shapes_batch(2)
    images[0] = 1.0  # white: nothing to read
    assert attribute_agreement(images, records) == 0.5


def test_attribute_agreement_bad_inputs():
    images, records = shapes_batch(2)
    with pytest.raises(ValueError, match="attributes: has 1 records for 2 images"):
        attribute_agreement(images, records[:1])
    with pytest.raises(TypeError, match=r"attributes\[1\]"):
        attribute_agreement(images, [records[0], "a small red circle"])
    with pytest.raises(ValueError, match="images: expected shape"):
        attribute_agreement(images[:, :1], records)
