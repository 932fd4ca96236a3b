"""Inception-v3 features for FID (Heusel et al. 2017), read from a local ``pt_inception`` weights
file: the port of TensorFlow's FID Inception graph that pytorch-fid distributes as
``pt_inception-2015-12-05-6726825d.pth`` (a ``torch.save``-d state dict). Nothing is downloaded:
the user points ``--inception-weights`` at the file.

The network is written here from the published architecture (Szegedy et al. 2016) with the
changes of the FID graph: average pools that do not count padding, and a max pool in the last
block's pool branch. Features are the 2048 channels after global average pooling (``pool3``),
of images resized bilinearly to 299 x 299 and mapped from [0, 1] to [-1, 1]. The state dict keys
follow the usual Inception-v3 names (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.
running_mean``, ..., ``fc.weight``); the classifier ``fc`` (1008 classes) is read but unused.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError

INPUT_SIZE = 299
FEATURES = 2048
CLASSES = 1008  # the TensorFlow graph's classifier (1000 ImageNet classes + 8 unused)


class Conv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _row(cin: int, cout: int, k: int) -> Conv:
    """A (1, k) convolution keeping the size."""
    return Conv(cin, cout, (1, k), padding=(0, k // 2))


def _column(cin: int, cout: int, k: int) -> Conv:
    """A (k, 1) convolution keeping the size."""
    return Conv(cin, cout, (k, 1), padding=(k // 2, 0))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 average pool, stride 1, that averages only the pixels inside the image (as TF's)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pool branches -> 224 + ``pool`` channels."""

    def __init__(self, cin: int, pool: int) -> None:
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], dim=1)


class BlockB(nn.Module):
    """Grid reduction 35 -> 17: strided 3x3, strided double 3x3 and max pool -> 480 + cin channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], dim=1)


class BlockC(nn.Module):
    """17x17 block with factorized 7x7 convolutions of ``c7`` channels -> 768 channels."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = Conv(cin, c7, 1), _row(c7, c7, 7), _column(c7, 192, 7)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = Conv(cin, c7, 1), _column(c7, c7, 7)
        self.branch7x7dbl_3, self.branch7x7dbl_4 = _row(c7, c7, 7), _column(c7, c7, 7)
        self.branch7x7dbl_5 = _row(c7, 192, 7)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for k in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{k}")(double)
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), double,
                          self.branch_pool(_avg_pool(x))], dim=1)


class BlockD(nn.Module):
    """Grid reduction 17 -> 8: 3x3 and 7x7-then-3x3 strided branches and max pool -> 512 + cin."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = Conv(cin, 192, 1), _row(192, 192, 7)
        self.branch7x7x3_3, self.branch7x7x3_4 = _column(192, 192, 7), Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], dim=1)


class BlockE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches -> 2048 channels. ``max_pool``: the FID graph's
    last block pools by max instead of average."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1, self.branch3x3_2a, self.branch3x3_2b = Conv(cin, 384, 1), _row(384, 384, 3), \
            _column(384, 384, 3)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = _row(384, 384, 3), _column(384, 384, 3)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(single), self.branch3x3_2b(single),
                          self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
                          self.branch_pool(pooled)], dim=1)


class FIDInception(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> pool3 features (B, 2048) float32."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False) * 2 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3)).float()


def load_inception(path: str | os.PathLike) -> FIDInception:
    """The FID Inception with the weights of the ``pt_inception`` file ``path``, in eval mode on
    the CPU. A missing file, one that is not a state dict, or one whose tensors do not fit the
    network raises ``UsageError`` naming ``--inception-weights``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--inception-weights: no such file: {path} (point it at a local pt_inception "
                         "weights file, e.g. pt_inception-2015-12-05-6726825d.pth; nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds of errors on a bad file
        raise UsageError(f"--inception-weights {path}: cannot read it as a torch state dict: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise UsageError(f"--inception-weights {path}: expected a state dict of tensors, got {type(state).__name__}")
    model = FIDInception()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and not k.startswith("AuxLogits.")]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(t.shape)})" for k, t in expected.items()
             if k in state and state[k].shape != t.shape]
    problems = _listed("missing", missing) + _listed("unexpected", unexpected) + _listed("wrong shape", wrong)
    if problems:
        raise UsageError(f"--inception-weights {path}: not FID Inception-v3 weights: {'; '.join(problems)}")
    model.load_state_dict({k: state.get(k, t) for k, t in expected.items()})
    return model.eval()


def _listed(what: str, keys: Sequence[str]) -> list[str]:
    """``["<n> <what> keys: first, second, ..."]`` (up to 3 named), or ``[]``."""
    if not keys:
        return []
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return [f"{len(keys)} {what} keys: {', '.join(keys[:3])}{more}"]


@torch.no_grad()
def inception_features(model: FIDInception, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """pool3 features of ``images`` (N, 3, H, W) in [0, 1], in batches on the model's device:
    (N, 2048) float32 on the CPU."""
    device = next(model.parameters()).device
    return torch.cat([model(chunk.to(device)).cpu() for chunk in images.split(batch_size)])
