"""Evaluation metrics (dalle_fast.evaluate.metrics) against closed forms and constructed cases:
the Fréchet distance of known Gaussians, the CLIP score with a fake CLIP of known embeddings,
attribute accuracy on rendered ground truth and on wrong images, the reranking curve on a
constructed score table; Wilson intervals against the score test they invert; retrieval ranks
against a brute-force count; the PIL charts; the FID Inception network's shape and weight file checks."""
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from dalle_fast.data import Attributes, ShapesDataset, render
from dalle_fast.evaluate.inception import FEATURES, FIDInception, inception_features, load_inception
from dalle_fast.evaluate.metrics import (
    Z_95,
    accuracy_intervals,
    attribute_accuracy,
    attribute_hits,
    clip_score,
    feature_statistics,
    frechet_distance,
    frechet_distance_of_features,
    rerank_counts,
    rerank_curve,
    reranked,
    retrieval_features,
    retrieval_ranks,
    share_intervals,
    top_k_hits,
    wilson_interval,
)
from dalle_fast.evaluate.plot import bar_chart, line_chart
from dalle_fast.run import UsageError


def random_spd(d: int) -> torch.Tensor:
    a = torch.randn(d, d, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form() -> None:
    d = 7
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    v1, v2 = torch.rand(d, dtype=torch.float64) + 0.1, torch.rand(d, dtype=torch.float64) + 0.1
    want = float((mu1 - mu2).square().sum() + (v1.sqrt() - v2.sqrt()).square().sum())
    got = frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2))
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_frechet_distance_hand_computed() -> None:
    # 2-D: means (0, 0) and (3, 4) -> 25; covariances diag(4, 9) and diag(1, 1):
    # tr = 13 + 2, 2 tr(sqrt(diag(4, 9))) = 2 (2 + 3) = 10 -> 25 + 15 - 10 = 30.
    got = frechet_distance(torch.zeros(2), torch.diag(torch.tensor([4.0, 9.0])), torch.tensor([3.0, 4.0]), torch.eye(2))
    assert got == pytest.approx(30.0, abs=1e-12)


def test_frechet_distance_identical_is_zero_and_symmetric() -> None:
    d = 9
    mu, sigma = torch.randn(d, dtype=torch.float64), random_spd(d)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    mu2, sigma2 = torch.randn(d, dtype=torch.float64), random_spd(d)
    forward, backward = frechet_distance(mu, sigma, mu2, sigma2), frechet_distance(mu2, sigma2, mu, sigma)
    assert forward == pytest.approx(backward, rel=1e-9)
    # full covariances: tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1 S2), which are real and positive
    cross = torch.linalg.eigvals(sigma @ sigma2).real.clamp(min=0).sqrt().sum()
    want = float((mu - mu2).square().sum() + sigma.trace() + sigma2.trace() - 2 * cross)
    assert forward == pytest.approx(want, rel=1e-8)


def test_frechet_distance_singular_covariance_and_float32_inputs() -> None:
    # rank-1 covariances (fewer samples than dimensions): still finite, >= 0, 0 for equal inputs
    v = torch.randn(5, 1)
    sigma = (v @ v.T).float()
    assert frechet_distance(torch.zeros(5), sigma, torch.zeros(5), sigma) == pytest.approx(0.0, abs=1e-5)
    w = torch.randn(5, 1)
    got = frechet_distance(torch.zeros(5), sigma, torch.zeros(5), (w @ w.T).float())
    # rank 1 each: sqrt of S1 S2 has trace |v . w| |v| |w| / (|v| |w|) = |v . w|
    want = float(v.square().sum() + w.square().sum() - 2 * (v * w).sum().abs())
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_feature_statistics_and_distance_of_features() -> None:
    x = torch.randn(50, 4, dtype=torch.float64)
    mu, sigma = feature_statistics(x)
    assert torch.allclose(mu, x.mean(0)) and torch.allclose(sigma, torch.cov(x.T))
    assert frechet_distance_of_features(x, x) == pytest.approx(0.0, abs=1e-9)
    shifted = x + torch.tensor([1.0, 0.0, 2.0, 0.0], dtype=torch.float64)
    assert frechet_distance_of_features(x, shifted) == pytest.approx(5.0, rel=1e-8)  # only the mean moves


@pytest.mark.parametrize("n, m, d", [(5, 9, 30), (12, 7, 12), (40, 60, 6)])
def test_distance_of_few_samples_equals_the_covariance_form(n: int, m: int, d: int) -> None:
    # fewer samples than dimensions takes the N x M singular-value route; it must equal the
    # D x D route on the fitted statistics. That route takes square roots of eigenvalues that are
    # zero up to rounding (rank N - 1 < D), ~1e-8 each: up to 1.3e-8 relative over 900 seeds
    a = torch.randn(n, d, dtype=torch.float64) * torch.rand(d, dtype=torch.float64)
    b = torch.randn(m, d, dtype=torch.float64) + 0.5
    want = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert frechet_distance_of_features(a, b) == pytest.approx(want, rel=1e-6)
    assert frechet_distance_of_features(b, a) == pytest.approx(want, rel=1e-6)
    assert frechet_distance_of_features(a, a.clone()) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("call, error, match", [
    (lambda: frechet_distance(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3)), ValueError, "sigma1"),
    (lambda: frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(3)), ValueError, "mu2"),
    (lambda: frechet_distance(torch.zeros(3, dtype=torch.long), torch.eye(3), torch.zeros(3), torch.eye(3)),
     TypeError, "mu1"),
    (lambda: frechet_distance_of_features(torch.randn(5, 3), torch.randn(5, 4)), ValueError, "b: features of size"),
    (lambda: frechet_distance_of_features(torch.randn(1, 3), torch.randn(5, 3)), ValueError, "a: expected shape"),
    (lambda: feature_statistics(torch.tensor([[0.0, float("nan")], [1.0, 2.0]])), ValueError, "non-finite"),
])
def test_frechet_bad_inputs(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


class FakeCLIP:
    """Known embeddings: caption id t -> row t of ``text``; an image -> row (its mean pixel * 10)
    of ``image`` (not unit length: clip_score normalizes)."""

    def __init__(self, text: torch.Tensor, image: torch.Tensor) -> None:
        self.text, self.image = text, image

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text[tokens[:, 0]]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image[(images.mean(dim=(1, 2, 3)) * 10).round().long()]


def test_clip_score_on_known_embeddings() -> None:
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    image = torch.tensor([[3.0, 4.0], [0.0, -1.0], [1.0, 1.0]])
    clip = FakeCLIP(text, image)
    images = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.1, 0.2)])  # -> image rows 0, 1, 2
    tokens = torch.tensor([[0, 5], [1, 5], [1, 5]])
    got = clip_score(clip, tokens, images)
    assert torch.allclose(got, torch.tensor([0.6, -1.0, 1 / math.sqrt(2)]), atol=1e-6)
    one = clip_score(clip, tokens[:1], images)  # one caption against every image
    assert torch.allclose(one, torch.tensor([0.6, 0.0, 1 / math.sqrt(2)]), atol=1e-6)
    with pytest.raises(ValueError, match="tokens: 2 captions for 3 images"):
        clip_score(clip, tokens[:2], images)
    with pytest.raises(ValueError, match="images"):
        clip_score(clip, tokens, images[:, :1])


def test_attribute_accuracy_is_full_on_rendered_ground_truth() -> None:
    val = ShapesDataset("val", 32, size=40)
    records = [val.attributes(i) for i in range(len(val))]
    images = torch.stack([render(a, 32) for a in records])
    hits = attribute_hits(images, records)
    assert hits.shape == (40, 5) and bool(hits.all())
    assert attribute_accuracy(hits) == {"size": 1.0, "color": 1.0, "shape": 1.0, "position": 1.0, "all": 1.0}


def test_attribute_accuracy_on_wrong_images() -> None:
    want = [Attributes("small", "red", "circle", "top left"), Attributes("large", "blue", "square", "center"),
            Attributes("small", "green", "triangle", "bottom"), Attributes("large", "pink", "diamond", "right")]
    shown = [Attributes("small", "red", "circle", "top left"),  # right
             Attributes("large", "cyan", "square", "center"),  # wrong color
             Attributes("small", "green", "triangle", "top"),  # wrong position
             Attributes("large", "pink", "diamond", "right")]  # shown blank below: misses everything
    images = torch.stack([render(a, 32) for a in shown])
    images[3] = 1.0
    acc = attribute_accuracy(attribute_hits(images, want))
    assert acc == {"size": 0.5 + 0.25, "color": 0.5, "shape": 0.75, "position": 0.5, "all": 0.25}
    with pytest.raises(ValueError, match="attributes: has 3 records for 4 images"):
        attribute_hits(images, want[:3])
    with pytest.raises(TypeError, match=r"attributes\[1\]"):
        attribute_hits(images[:2], [want[0], "a red circle"])
    with pytest.raises(ValueError, match="hits"):
        attribute_accuracy(torch.zeros(0, 5, dtype=torch.bool))


def test_rerank_counts() -> None:
    assert rerank_counts(1) == [1]
    assert rerank_counts(8) == [1, 2, 4, 8]
    assert rerank_counts(12) == [1, 2, 4, 8, 12]
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="samples"):
            rerank_counts(bad)


def test_rerank_curve_on_a_constructed_table() -> None:
    # 3 prompts x 4 samples. Prompt 0: its first sample is right. Prompt 1: only sample 1 is
    # right and CLIP ranks it best. Prompt 2: sample 3 is right and best, samples 0-2 wrong.
    correct = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    scores = torch.tensor([[0.5, 0.9, 0.1, 0.2], [0.1, 0.8, 0.3, 0.3], [0.2, 0.1, 0.3, 0.9]])
    # k = 1: prompt 0 only; k = 2: prompt 0 picks sample 1 (wrong), prompt 1 right; k = 4: 1 and 2.
    assert rerank_curve(correct, scores, [1, 2, 4]) == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert reranked(scores, 3).tolist() == [1, 1, 2]
    ties = torch.zeros(2, 3)
    assert reranked(ties, 3).tolist() == [0, 0]  # ties: the earliest sample
    with pytest.raises(ValueError, match="k: must be an int in"):
        reranked(scores, 5)
    with pytest.raises(ValueError, match="scores: expected shape"):
        rerank_curve(correct, scores[:, :2], [1])
    with pytest.raises(ValueError, match="correct"):
        rerank_curve(correct.float(), scores, [1])


def test_charts_are_pngs_with_the_series_colors(tmp_path: Path) -> None:
    line_chart(tmp_path / "l.png", "curve", "k", "%", ["1", "2", "4"], {"a": [0.0, 0.5, 1.0], "b": [0.2, 0.2, 0.3]})
    bar_chart(tmp_path / "b.png", "bars", "x", "%", ["size", "all"], {"first": [1.0, 0.25]})
    for name, colors in (("l.png", [(31, 119, 180), (255, 127, 14)]), ("b.png", [(31, 119, 180)])):
        image = Image.open(tmp_path / name)
        assert image.format == "PNG" and image.size == (640, 400)
        present = {c for _, c in image.convert("RGB").getcolors(1 << 20)}
        assert all(c in present for c in colors)
    with pytest.raises(ValueError, match=r"series\['a'\]: has 2 values for 3 labels"):
        line_chart(tmp_path / "x.png", "t", "x", "y", ["1", "2", "3"], {"a": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"values must be shares in \[0, 1\]"):
        bar_chart(tmp_path / "x.png", "t", "x", "y", ["1"], {"a": [1.5]})
    assert not (tmp_path / "x.png").exists()


def test_fid_inception_features_and_weight_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FIDInception().eval()
    # torchvision's Inception-v3 has 27,161,264 parameters; less its aux head (3,326,696), plus 8 more
    # classes of 2,049 weights each (the FID graph's 1008-way classifier):
    assert sum(p.numel() for p in model.parameters()) == 27_161_264 - 3_326_696 + 8 * 2_049
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception.pth"
    torch.save(state, path)
    loaded = load_inception(path)
    images = torch.rand(2, 3, 24, 24)
    features = inception_features(loaded, images, batch_size=1)
    assert features.shape == (2, FEATURES) and torch.isfinite(features).all() and (features >= 0).all()
    with torch.no_grad():
        assert torch.allclose(features, model(images), atol=1e-5)
    with pytest.raises(UsageError, match="--inception-weights: no such file"):
        load_inception(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UsageError, match="cannot read it as a torch state dict"):
        load_inception(tmp_path / "junk.pth")
    del state["Mixed_7c.branch_pool.conv.weight"]
    state["fc.weight"] = torch.zeros(1000, FEATURES)
    torch.save(state, path)
    with pytest.raises(UsageError, match=r"1 missing keys: Mixed_7c.branch_pool.conv.weight; 1 wrong shape"):
        load_inception(path)


def test_wilson_interval_inverts_the_score_test() -> None:
    # The Wilson interval is the set of p with |phat - p| <= z sqrt(p (1 - p) / n): at each end
    # (inside (0, 1)) the bound holds with equality, and a little beyond it fails.
    for successes, trials in [(0, 10), (5, 10), (10, 10), (31, 64), (1, 1), (63, 64), (17, 128)]:
        low, high = wilson_interval(successes, trials)
        phat = successes / trials
        assert 0 <= low <= phat <= high <= 1

        def score(p: float, phat: float = phat, trials: int = trials) -> float:
            return abs(phat - p) - Z_95 * math.sqrt(p * (1 - p) / trials)
        for end in (low, high):
            if 0 < end < 1:
                assert score(end) == pytest.approx(0, abs=1e-12)
        assert low == 0 or score(low - 1e-6) > 0
        assert high == pytest.approx(1) or score(high + 1e-6) > 0
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook example
    wide, narrow = wilson_interval(8, 16), wilson_interval(32, 64)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_wilson_interval_bad_inputs() -> None:
    for args, match in [((3, 0), "trials"), ((4, 3), "successes"), ((-1, 3), "successes"), ((1.5, 3), "successes")]:
        with pytest.raises((ValueError, TypeError), match=match):
            wilson_interval(*args)
    with pytest.raises(ValueError, match="z"):
        wilson_interval(1, 3, z=0)


def test_accuracy_intervals_follow_the_hit_counts() -> None:
    hits = torch.zeros(20, 5, dtype=torch.bool)
    hits[:7, 0], hits[:, 1], hits[:13, 2] = True, True, True
    intervals = accuracy_intervals(hits)
    assert list(intervals) == ["size", "color", "shape", "position", "all"]
    assert intervals["size"] == pytest.approx(list(wilson_interval(7, 20)))
    assert intervals["color"] == pytest.approx(list(wilson_interval(20, 20)))
    assert intervals["position"] == pytest.approx(list(wilson_interval(0, 20)))
    assert share_intervals(hits[:, :3]) == [tuple(intervals[k]) for k in ("size", "color", "shape")]
    with pytest.raises(ValueError, match="hits"):
        share_intervals(torch.zeros(0, 2, dtype=torch.bool))


def test_retrieval_features_are_area_means() -> None:
    images = torch.rand(3, 3, 32, 32)
    features = retrieval_features(images)
    expected = images.view(3, 3, 16, 2, 16, 2).mean(dim=(3, 5)).flatten(1)
    assert features.shape == (3, 3 * 16 * 16) and torch.allclose(features, expected, atol=1e-6)
    with pytest.raises(ValueError, match="side"):
        retrieval_features(torch.rand(1, 3, 8, 8))  # smaller than the 16 x 16 space


def test_retrieval_ranks_against_a_brute_force_count() -> None:
    g = torch.Generator().manual_seed(0)
    gallery = torch.rand(40, 3, 32, 32, generator=g)
    gallery[7] = gallery[3]  # two identical real images: a tie counts against the target
    targets = torch.tensor([0, 3, 7, 12, 39, 5])
    samples = gallery[targets].clone()
    samples[:3] += 0.01 * torch.randn(3, 3, 32, 32, generator=g)
    samples[3] = gallery[20]  # the sample shows another image
    samples[4] = 0.5 * (gallery[39] + gallery[1])  # halfway between two
    samples = samples.clamp(0, 1)
    ranks = retrieval_ranks(samples, gallery, targets)
    f, fg = retrieval_features(samples).double(), retrieval_features(gallery).double()
    for n, t in enumerate(targets.tolist()):
        d = [float((f[n] - fg[j]).norm()) for j in range(len(gallery))]
        assert ranks[n] == 1 + sum(1 for j in range(len(gallery)) if j != t and d[j] <= d[t])
    assert ranks[0] == 1 and ranks[1] == 2 and ranks[2] == 2 and ranks[3] > 1 and ranks[5] == 1
    assert top_k_hits(ranks).tolist() == [[r <= 1, r <= 5] for r in ranks.tolist()]


def test_retrieval_bad_inputs() -> None:
    gallery, samples = torch.rand(4, 3, 16, 16), torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="targets"):
        retrieval_ranks(samples, gallery, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="targets"):
        retrieval_ranks(samples, gallery, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="gallery"):
        retrieval_ranks(samples, torch.rand(4, 3, 32, 32), torch.tensor([0, 1]))
