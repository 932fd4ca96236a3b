"""Metrics of generated images: the Fréchet distance between two sets of features (FID when the
features are Inception's, "CLIP FID" on CLIP image embeddings), the CLIP score of images against
their prompts, the attribute accuracy of shapes images, the reranking curve of the paper
(accuracy of the CLIP-best of the first k samples as k grows), the retrieval rank of a sample's
own real image among a gallery in a fixed pixel space, and Wilson intervals for every share.

Every function here is a pure function of its inputs (no model state is changed, nothing is drawn
from an RNG).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch

from ..checks import check_int
from ..data import Attributes, read_attributes
from ..metrics import check_images

ATTRIBUTE_FIELDS: tuple[str, ...] = ("size", "color", "shape", "position")
ALL = "all"  # the key of "every attribute right" in attribute accuracies
Z_95 = 1.959963984540054  # the standard normal quantile of 0.975: two-sided 95% intervals
RETRIEVAL_SIDE = 16  # retrieval compares images as RETRIEVAL_SIDE x RETRIEVAL_SIDE RGB pixels


def _check_features(name: str, features: torch.Tensor) -> None:
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor, got {getattr(features, 'dtype', type(features).__name__)}")
    if features.ndim != 2 or len(features) < 2 or features.shape[1] < 1:
        raise ValueError(f"{name}: expected shape (N, D) with N >= 2 and D >= 1, got {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name}: holds non-finite values")


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of ``features`` (N, D), N >= 2, in float64 on the CPU."""
    _check_features("features", features)
    x = features.detach().to("cpu", torch.float64)
    centred = x - x.mean(dim=0)
    return x.mean(dim=0), centred.T @ centred / (len(x) - 1)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (float64), by eigh;
    eigenvalues below zero (rounding) are taken as zero."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2): means (D,),
    covariances (D, D) symmetric positive semi-definite, computed in float64:

        ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)),

    with tr((sigma1 sigma2)^(1/2)) = tr((s sigma2 s)^(1/2)), s = sigma1^(1/2): a symmetric
    matrix whose root eigh gives exactly (no complex parts as with a general sqrtm). Clamped
    at 0 against rounding."""
    d = None
    for name, value, ndim in (("mu1", mu1, 1), ("sigma1", sigma1, 2), ("mu2", mu2, 1), ("sigma2", sigma2, 2)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(f"{name}: expected a float tensor, got {getattr(value, 'dtype', type(value).__name__)}")
        d = value.shape[0] if d is None else d
        if value.shape != (d,) * ndim:
            raise ValueError(f"{name}: expected shape {(d,) * ndim} (D = {d} from mu1), got {tuple(value.shape)}")
    mu1, sigma1, mu2, sigma2 = (t.detach().to("cpu", torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    root = _sqrt_psd(sigma1)
    cross = torch.linalg.eigvalsh(root @ sigma2 @ root).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross
    return max(float(distance), 0.0)


def frechet_distance_of_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """:func:`frechet_distance` between Gaussians fitted to features ``a`` (N, D) and ``b`` (M, D)
    (:func:`feature_statistics`), in float64.

    With fewer samples than dimensions (min(N, M) < D, e.g. a few hundred images of 2048
    Inception features) it avoids the D x D roots: with centred samples X (N, D) and Y (M, D), the
    covariances are X^T X / (N-1) and Y^T Y / (M-1), and the nonzero eigenvalues of their product
    are the squared singular values of X Y^T / sqrt((N-1)(M-1)) (AB and BA share them), so
    tr((sigma1 sigma2)^(1/2)) is the sum of those singular values: exact, at the cost of an
    N x M matrix."""
    _check_features("a", a)
    _check_features("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"b: features of size {b.shape[1]}, but a has {a.shape[1]}")
    if min(len(a), len(b)) >= a.shape[1]:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))
    x, y = (t.detach().to("cpu", torch.float64) for t in (a, b))
    mu1, mu2 = x.mean(dim=0), y.mean(dim=0)
    x, y = x - mu1, y - mu2
    n, m = len(x) - 1, len(y) - 1
    cross = torch.linalg.svdvals(x @ y.T).sum() / math.sqrt(n * m)
    distance = (mu1 - mu2).square().sum() + x.square().sum() / n + y.square().sum() / m - 2 * cross
    return max(float(distance), 0.0)


class Embedder(Protocol):
    """What :func:`clip_score` needs of a CLIP: unit embeddings of token ids and of images."""

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def clip_score(model: Embedder, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """CLIP score of image ``n`` against caption ``n``: the cosine similarity of their
    embeddings. ``tokens`` (N, text_len) or (1, text_len) for one caption against every image;
    ``images`` (N, 3, S, S) in [0, 1] -> (N,) float32."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        raise ValueError(f"tokens: expected a (N, text_len) tensor, got {getattr(tokens, 'shape', type(tokens))}")
    check_images("images", images)
    if len(tokens) not in (1, len(images)):
        raise ValueError(f"tokens: {len(tokens)} captions for {len(images)} images; expected 1 or {len(images)}")
    text = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
    image = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
    return (text * image).sum(dim=-1)


def attribute_hits(images: torch.Tensor, attributes: Sequence[Attributes]) -> torch.Tensor:
    """Which attributes of each image the shapes reader (:func:`dalle_fast.data.read_attributes`)
    reads as ``attributes[n]`` says: images (N, 3, S, S) in [0, 1] -> bool (N, 5), columns
    size, color, shape, position and all four. An image with no visible object misses all."""
    check_images("images", images)
    if len(attributes) != len(images):
        raise ValueError(f"attributes: has {len(attributes)} records for {len(images)} images")
    rows = []
    for n, (image, want) in enumerate(zip(images, attributes)):
        if not isinstance(want, Attributes):
            raise TypeError(f"attributes[{n}]: expected a dalle_fast.data.Attributes, got {type(want).__name__}")
        got = read_attributes(image)
        row = [got is not None and getattr(got, name) == getattr(want, name) for name in ATTRIBUTE_FIELDS]
        rows.append(row + [all(row)])
    return torch.tensor(rows, dtype=torch.bool).view(len(images), len(ATTRIBUTE_FIELDS) + 1)


def attribute_accuracy(hits: torch.Tensor) -> dict[str, float]:
    """Share of rows of ``hits`` (N, 5) bool, N >= 1 (see :func:`attribute_hits`) right per
    attribute and on all four: ``{"size", "color", "shape", "position", "all"} -> [0, 1]``."""
    keys = (*ATTRIBUTE_FIELDS, ALL)
    if not isinstance(hits, torch.Tensor) or hits.dtype != torch.bool or hits.ndim != 2 \
            or hits.shape[1] != len(keys) or len(hits) == 0:
        raise ValueError(f"hits: expected a bool tensor (N >= 1, {len(keys)}), got "
                         f"{getattr(hits, 'dtype', type(hits).__name__)} {tuple(getattr(hits, 'shape', ()))}")
    return {key: float(value) for key, value in zip(keys, hits.double().mean(dim=0))}


def accuracy_intervals(hits: torch.Tensor) -> dict[str, list[float]]:
    """The 95% Wilson interval of each share :func:`attribute_accuracy` gives for ``hits``
    (N >= 1, 5) bool: ``{"size", "color", "shape", "position", "all"} -> [low, high]``."""
    attribute_accuracy(hits)  # the same checks
    return {key: list(interval) for key, interval in zip((*ATTRIBUTE_FIELDS, ALL), share_intervals(hits))}


def rerank_counts(samples: int) -> list[int]:
    """The numbers of reranked samples of the curve: 1, 2, 4, ... up to ``samples``, and
    ``samples`` itself when it is not a power of two."""
    check_int("samples", samples, 1)
    counts = [1 << i for i in range(samples.bit_length()) if 1 << i <= samples]
    return counts if counts[-1] == samples else [*counts, samples]


def reranked(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Index of the best-scoring of the first ``k`` samples of each prompt: ``scores`` (P, S) ->
    (P,) int64 (ties: the earliest sample; k = 1 is the first sample, no reranking)."""
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point() or scores.ndim != 2:
        raise ValueError(f"scores: expected a float tensor (P, S), got {getattr(scores, 'shape', type(scores))}")
    check_int("k", k, 1, scores.shape[1])
    return scores[:, :k].argmax(dim=1)


def rerank_curve(correct: torch.Tensor, scores: torch.Tensor, counts: Sequence[int]) -> list[float]:
    """The reranking curve: for each k in ``counts``, the share of prompts whose CLIP-best of
    their first k samples is correct. ``correct`` bool (P, S), ``scores`` float (P, S), P >= 1."""
    if not isinstance(correct, torch.Tensor) or correct.dtype != torch.bool or correct.ndim != 2:
        raise ValueError(f"correct: expected a bool tensor (P, S), got {getattr(correct, 'dtype', type(correct))}")
    if not isinstance(scores, torch.Tensor) or scores.shape != correct.shape or len(scores) == 0:
        raise ValueError(f"scores: expected shape {tuple(correct.shape)} (P >= 1) like correct, got "
                         f"{tuple(getattr(scores, 'shape', ()))}")
    rows = torch.arange(len(correct))
    return [float(correct[rows, reranked(scores, k)].double().mean()) for k in counts]


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial share: ``successes`` out of ``trials`` >= 1 ->
    ``(low, high)`` in [0, 1] (95% for the default ``z``). Unlike the normal approximation it
    stays inside [0, 1] and is not empty at 0 or ``trials`` successes:

        centre = (p + z^2 / 2n) / (1 + z^2 / n),
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2),   p = successes / n."""
    check_int("trials", trials, 1)
    check_int("successes", successes, 0, trials)
    if not (isinstance(z, (int, float)) and z > 0 and math.isfinite(z)):
        raise ValueError(f"z: must be a finite number > 0, got {z!r}")
    n, p = trials, successes / trials
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at 0 (or n) successes the low (high) end is exactly 0 (1); rounding would leave it a hair off
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def share_intervals(hits: torch.Tensor) -> list[tuple[float, float]]:
    """The :func:`wilson_interval` of each column of ``hits`` (N >= 1, C) bool: the share of its
    N rows that are true."""
    if not isinstance(hits, torch.Tensor) or hits.dtype != torch.bool or hits.ndim != 2 or len(hits) == 0:
        raise ValueError(f"hits: expected a bool tensor (N >= 1, C), got "
                         f"{getattr(hits, 'dtype', type(hits).__name__)} {tuple(getattr(hits, 'shape', ()))}")
    return [wilson_interval(int(k), len(hits)) for k in hits.sum(dim=0).tolist()]


def retrieval_features(images: torch.Tensor, side: int = RETRIEVAL_SIDE) -> torch.Tensor:
    """The fixed feature space of retrieval: ``images`` (N, 3, S, S) in [0, 1] area-downsampled
    to ``side`` x ``side`` and flattened -> (N, 3 * side * side) float32. No learned model is
    involved, so the ranks judge our models without trusting them."""
    check_images("images", images)
    check_int("side", side, 1, images.shape[-1])
    small = torch.nn.functional.adaptive_avg_pool2d(images.float(), side)
    return small.flatten(1)


def retrieval_ranks(samples: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of each sample's own real image among the whole ``gallery`` by Euclidean distance
    in the :func:`retrieval_features` space: ``samples`` (N, 3, S, S), ``gallery`` (G, 3, S, S)
    in [0, 1], ``targets`` (N,) int64 indices into the gallery -> (N,) int64, 1 = the nearest
    gallery image is the target. Ties count against the target (every gallery image at the same
    distance or nearer ranks before it), so a blank sample does not retrieve anything."""
    if not isinstance(targets, torch.Tensor) or targets.dtype != torch.int64 or targets.shape != (len(samples),):
        raise ValueError(f"targets: expected an int64 tensor of shape ({len(samples)},), got "
                         f"{getattr(targets, 'dtype', type(targets).__name__)} {tuple(getattr(targets, 'shape', ()))}")
    if samples.shape[1:] != gallery.shape[1:]:
        raise ValueError(f"gallery: images of shape {tuple(gallery.shape[1:])}, but samples are "
                         f"{tuple(samples.shape[1:])}")
    if len(targets) and not (0 <= int(targets.min()) and int(targets.max()) < len(gallery)):
        raise ValueError(f"targets: must be indices in [0, {len(gallery)}), got {targets.min()}..{targets.max()}")
    distances = torch.cdist(retrieval_features(samples).double(), retrieval_features(gallery).double())
    own = distances.gather(1, targets[:, None])
    others = torch.ones_like(distances, dtype=torch.bool).scatter_(1, targets[:, None], False)
    return ((distances <= own) & others).sum(dim=1) + 1


def top_k_hits(ranks: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Whether each rank of ``ranks`` (N,) is within each k of ``ks``: bool (N, len(ks))."""
    return torch.stack([ranks <= k for k in ks], dim=1)
