"""Triton ``gumbel_softmax_codebook`` against the PyTorch reference and a float64 computation of the
formula (``oracles.py``), forward and backward, on odd sizes and strided layouts."""
import pytest
import torch
from oracles import gradients, gumbel_softmax_codebook_float64, record_allocations

import dalle_kernels as dk
from dalle_kernels.ops.gumbel_softmax_codebook import kernel as codebook_kernel
from dalle_kernels.ops.gumbel_softmax_codebook.reference import gumbel_softmax_codebook_reference
from dalle_kernels.testing import assert_close, kernel_dtypes


def check_against_oracles(logits, codebook, tau, hard, dim, noise, dtype, backward, grad_factor=1.0):
    """dk vs the reference and vs float64 (forward, and dlogits and dcodebook for a random upstream
    gradient, a non-contiguous one, when ``backward``)."""
    impls = {
        "triton": lambda x, c: dk.gumbel_softmax_codebook(x, c, tau, hard, dim, noise=noise),
        "reference": lambda x, c: gumbel_softmax_codebook_reference(x, c, tau, hard, dim % x.ndim, noise),
        "float64": lambda x, c: gumbel_softmax_codebook_float64(x, c, tau, hard, dim, noise),
    }
    if not backward:
        results = {name: (fn(logits, codebook),) for name, fn in impls.items()}
    else:
        out_shape = impls["float64"](logits, codebook).shape
        grad_out = torch.randn(out_shape[::-1], device=logits.device).permute(*reversed(range(len(out_shape))))
        results = {name: gradients(fn, (logits, codebook), grad_out) for name, fn in impls.items()}
    out = results["triton"][0]
    assert out.dtype == torch.promote_types(logits.dtype, codebook.dtype)
    assert out.is_contiguous()
    for oracle in ("reference", "float64"):
        for name, actual, expected, factor in zip(("output", "dlogits", "dcodebook"), results["triton"],
                                                  results[oracle], (1.0, grad_factor, grad_factor)):
            assert actual.shape == expected.shape, name
            assert_close(actual, expected, dtype, f"{name} vs {oracle}", factor)
    return results["triton"]


# ---------------------------------------------------------------- docs/design.md#worked-example

WORKED_CODEBOOK = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]
WORKED_LOGITS = [[1.0, 2.0, 0.5], [0.5, 1.5, 1.0], [2.5, 0.5, 1.5], [1.2, 0.8, 2.0]]  # (1,1) (1,2) (2,1) (2,2)


def worked_grid(rows: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """(4, K) rows of the 2x2 grid as (4, K) or channels-first (1, K, 2, 2)."""
    return rows.t().reshape(1, -1, 2, 2) if channels_first else rows


def worked_rows(grid: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """The inverse of :func:`worked_grid`: (4, C) rows, one per grid position."""
    return grid.reshape(grid.shape[1], 4).t() if channels_first else grid


@pytest.mark.parametrize("channels_first", [False, True])
def test_design_worked_example(device, channels_first):
    dim = 1 if channels_first else -1
    logits = worked_grid(torch.tensor(WORKED_LOGITS, device=device), channels_first)
    codebook = torch.tensor(WORKED_CODEBOOK, device=device)
    zero_gumbel = torch.full_like(logits, torch.e ** -1)  # g = -log(-log(exp(-1))) = 0

    def rows(codes, tau=1.0, hard=False, noise=zero_gumbel):
        out = dk.gumbel_softmax_codebook(logits, codes, tau, hard, dim, noise=noise)
        return worked_rows(out, channels_first).cpu()

    def near(actual, expected):
        torch.testing.assert_close(actual, torch.tensor(expected), atol=1e-4, rtol=0)

    identity = torch.eye(3, device=device)  # contracting with it returns the probabilities themselves
    near(rows(identity)[:2], [[0.2312, 0.6285, 0.1402], [0.1863, 0.5065, 0.3072]])
    near(rows(codebook)[:2], [[0.3727, 0.4727, 0.5727], [0.4363, 0.5363, 0.6363]])

    g = torch.tensor([0.48, 0.79, 0.23], device=device)
    u = worked_rows(zero_gumbel, channels_first).clone()
    u[0] = torch.exp(-torch.exp(-g))
    noise = worked_grid(u, channels_first).contiguous()
    near(rows(identity, tau=0.5, noise=noise)[0], [0.0669, 0.9182, 0.0149])
    near(rows(codebook, tau=0.5, noise=noise)[0], [0.3844, 0.4844, 0.5844])

    expected_hard = codebook[[1, 1, 0, 2]].cpu()  # argmax per position [1, 1, 0, 2]
    assert torch.equal(rows(codebook, hard=True), expected_hard)


# ---------------------------------------------------------------- forward and backward vs oracles

# (logits shape, dim, D): K = shape[dim]; odd K and D, several K blocks with masked tails, a D
# larger than one 128-column tile, a single row, a middle dim and channels-first (B, K, H, W).
FORWARD_CASES = [
    ((6, 3), -1, 7),
    ((3, 1000), -1, 33),
    ((1, 8193), 1, 7),
    ((3, 41, 20), 1, 200),
    ((2, 24, 5, 3), 1, 33),
]


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("shape, dim, D", FORWARD_CASES)
def test_forward_matches_reference_and_float64(device, shape, dim, D, hard):
    logits = 2 * torch.randn(shape, device=device)
    codebook = torch.randn(shape[dim], D, device=device)
    noise = torch.rand(shape, device=device)
    check_against_oracles(logits, codebook, 0.7, hard, dim, noise, torch.float32, backward=False)


# Backward: channels-first over two row blocks (so the dcodebook reduction runs in two row
# splits), and K over three blocks with D over two tiles.
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("shape, dim, D", [((3, 24, 5, 3), 1, 33), ((7, 70), -1, 130)])
def test_backward_matches_reference_and_float64(device, shape, dim, D, hard):
    logits = 2 * torch.randn(shape, device=device)
    codebook = torch.randn(shape[dim], D, device=device)
    noise = torch.rand(shape, device=device)
    check_against_oracles(logits, codebook, 0.6, hard, dim, noise, torch.float32, backward=True)


def test_backward_large_k(device):
    # 33 rows: two row blocks, which the dcodebook reduction loops over in a single split.
    logits = torch.randn(33, 8193, device=device)
    codebook = torch.randn(8193, 5, device=device)
    check_against_oracles(logits, codebook, 1.3, False, -1, torch.rand(logits.shape, device=device),
                          torch.float32, backward=True)


@pytest.mark.parametrize("hard", [False, True])
def test_non_contiguous_inputs(device, hard):
    # logits: every other column of a transposed tensor, so neither K nor the rows are contiguous;
    # noise transposed, codebook transposed (K-major).
    logits = torch.randn(2 * 37, 11, device=device).t()[:, ::2]
    noise = torch.rand(37, 11, device=device).t()
    codebook = torch.randn(9, 37, device=device).t()
    assert not (logits.is_contiguous() or noise.is_contiguous() or codebook.is_contiguous())
    check_against_oracles(logits, codebook, 0.8, hard, 1, noise, torch.float32, backward=True)


@pytest.mark.parametrize("hard", [False, True])
def test_16_bit(device, hard):
    for dtype in kernel_dtypes(device)[1:]:
        logits = torch.randn(2, 45, 3, 5, device=device).to(dtype)
        codebook = torch.randn(45, 19, device=device).to(dtype)
        noise = torch.rand(logits.shape, device=device).to(dtype).clamp_(0.01, 0.99)
        check_against_oracles(logits, codebook, 0.9, hard, 1, noise, dtype, backward=True, grad_factor=2.0)


def test_mixed_dtypes_promote_and_use_16_bit_products(device):
    # float16 logits with a float32 codebook: a float32 output, products rounded like autocast's.
    logits = torch.randn(40, 21, device=device).half()
    codebook = torch.randn(21, 17, device=device)
    noise = torch.rand(logits.shape, device=device)
    out, _, _ = check_against_oracles(logits, codebook, 1.0, False, -1, noise, torch.float16, backward=True)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("needs", ["logits", "codebook"])
def test_gradient_of_one_input_only(device, needs, hard):
    logits = torch.randn(2, 30, 4, device=device, requires_grad=needs == "logits")
    codebook = torch.randn(30, 6, device=device, requires_grad=needs == "codebook")
    noise = torch.rand(logits.shape, device=device)
    grad_out = torch.randn(2, 6, 4, device=device)
    leaf = logits if needs == "logits" else codebook
    (actual,) = torch.autograd.grad(dk.gumbel_softmax_codebook(logits, codebook, 0.5, hard, 1, noise=noise),
                                    leaf, grad_out)
    expected_out = gumbel_softmax_codebook_float64(logits, codebook, 0.5, hard, 1, noise)
    (expected,) = torch.autograd.grad(expected_out, leaf, grad_out.double())
    assert_close(actual, expected, torch.float32, f"d{needs}")


def test_hard_ties_go_to_the_lowest_index(device):
    # Zero noise and two equal maxima per row: in one block of categories, or in two different ones.
    logits = torch.randn(4, 70, device=device) - 10
    maxima = [(3, 7), (5, 40), (0, 69), (33, 34)]
    for row, (first, second) in enumerate(maxima):
        logits[row, [first, second]] = 1.0
    codebook = torch.randn(70, 6, device=device)
    out = dk.gumbel_softmax_codebook(logits, codebook, 0.5, True, noise=torch.full_like(logits, torch.e ** -1))
    assert torch.equal(out, codebook[[first for first, _ in maxima]])


# ---------------------------------------------------------------- noise drawn inside the kernel


@pytest.mark.parametrize("hard", [False, True])
def test_same_seed_same_sample(device, hard):
    logits = torch.randn(2, 13, 3, 5, device=device)
    codebook = torch.randn(13, 6, device=device)
    samples = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        samples.append(dk.gumbel_softmax_codebook(logits, codebook, 0.5, hard, 1))
    assert torch.equal(samples[0], samples[1])
    assert not torch.equal(samples[0], samples[2])
    generated = [dk.gumbel_softmax_codebook(logits, codebook, 0.5, hard, 1, generator=torch.Generator().manual_seed(7))
                 for _ in range(2)]
    assert torch.equal(*generated)


@pytest.mark.parametrize("hard, tau", [(False, 0.7), (True, 0.7), (False, 1 / 16)])
def test_equals_gumbel_softmax_contracted_with_codebook(device, hard, tau):
    # Same seed -> the same Philox noise in both ops, in forward and in the backward's recomputation.
    # tau = 1/16 (the dVAE's final temperature) makes exp(z) overflow float32 for large noise.
    logits = torch.randn(3, 70, 4, 4, device=device)
    codebook = torch.randn(70, 9, device=device)
    grad_out = torch.randn(3, 9, 4, 4, device=device)

    def fused(x, c):
        torch.manual_seed(1234)
        return dk.gumbel_softmax_codebook(x, c, tau, hard, 1)

    def unfused(x, c):
        torch.manual_seed(1234)
        return torch.tensordot(dk.gumbel_softmax(x, tau, hard, 1).movedim(1, -1), c, dims=1).movedim(-1, 1)

    for name, actual, expected in zip(("output", "dlogits", "dcodebook"),
                                      gradients(fused, (logits, codebook), grad_out),
                                      gradients(unfused, (logits, codebook), grad_out)):
        assert_close(actual, expected, torch.float32, name)


def test_hard_samples_follow_the_softmax(device):
    # Without noise, argmax_k (logits + g) / tau is distributed as softmax(logits), for any tau.
    # With the identity codebook every output row is the one-hot of its sample: chi-square test.
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], device=device)
    rows = 4000
    logits = probs.log().view(1, 4, 1).expand(1, 4, rows)  # channels-first, stride 0 along the rows
    out = dk.gumbel_softmax_codebook(logits, torch.eye(4, device=device), 0.3, True, 1)
    assert torch.all(out.sum(1) == 1) and torch.all((out == 0) | (out == 1))
    counts = out.sum((0, 2)).double().cpu()
    expected = rows * probs.double().cpu()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    p_value = torch.special.gammaincc(torch.tensor(1.5, dtype=torch.float64), chi2 / 2)  # 3 degrees of freedom
    assert p_value > 1e-6, f"counts {counts.tolist()} vs expected {expected.tolist()}: p = {p_value:.2e}"


# ---------------------------------------------------------------- special values, memory, errors


@pytest.mark.parametrize("hard", [False, True])
def test_nan_propagates_to_its_row_only(device, hard):
    logits = torch.randn(5, 40, device=device, requires_grad=True)
    codebook = torch.randn(40, 6, device=device)
    noise = torch.rand(logits.shape, device=device)
    with torch.no_grad():
        logits[2, 37] = float("nan")
    out = dk.gumbel_softmax_codebook(logits, codebook, 1.0, hard, noise=noise)
    (dlogits,) = torch.autograd.grad(out, logits, torch.randn_like(out))
    assert torch.isnan(out[2]).all() and torch.isnan(dlogits[2]).all()
    finite = [0, 1, 3, 4]
    expected = gumbel_softmax_codebook_reference(logits[finite], codebook, 1.0, hard, 1, noise[finite])
    assert_close(out[finite], expected, torch.float32)
    assert torch.isfinite(dlogits[finite]).all()


@pytest.mark.parametrize("hard", [False, True])
def test_masked_categories(device, hard):
    # -inf logits (whole blocks of categories, first ones included) get probability 0, not NaN.
    logits = torch.randn(3, 100, device=device)
    logits[:, :40] = float("-inf")
    logits[1, 60:] = float("-inf")
    codebook = torch.randn(100, 8, device=device)
    noise = torch.rand(logits.shape, device=device)
    out, dlogits, dcodebook = check_against_oracles(logits, codebook, 0.5, hard, -1, noise, torch.float32,
                                                    backward=True)
    assert torch.isfinite(out).all() and torch.isfinite(dcodebook).all()
    assert torch.all(dlogits[logits == float("-inf")] == 0)


@pytest.mark.parametrize("hard", [False, True])
def test_empty_input(device, hard):
    logits = torch.randn(0, 5, device=device, requires_grad=True)
    codebook = torch.randn(5, 3, device=device, requires_grad=True)
    out = dk.gumbel_softmax_codebook(logits, codebook, 1.0, hard)
    assert out.shape == (0, 3)
    dlogits, dcodebook = torch.autograd.grad(out, (logits, codebook), torch.randn_like(out))
    assert dlogits.shape == (0, 5) and torch.equal(dcodebook, torch.zeros(5, 3, device=device))


def test_never_allocates_the_soft_one_hot(device, monkeypatch):
    # No allocation has the N * K elements of the soft one-hot, except dlogits in the backward.
    allocated = record_allocations(monkeypatch, codebook_kernel)
    logits = torch.randn(40, 300, device=device, requires_grad=True)
    codebook = torch.randn(300, 4, device=device, requires_grad=True)
    for hard in (False, True):
        allocated.clear()
        out = dk.gumbel_softmax_codebook(logits, codebook, 1.0, hard, noise=torch.rand(logits.shape, device=device))
        assert max(allocated) < logits.numel() // 2
        allocated.clear()
        out.backward(torch.randn_like(out))
        largest, *others = sorted(allocated, reverse=True)
        assert largest == logits.numel() and max(others) < logits.numel() // 2


def test_bad_inputs(device):
    logits = torch.randn(4, 6, device=device)
    codebook = torch.randn(6, 3, device=device)
    op = dk.gumbel_softmax_codebook
    with pytest.raises(ValueError, match="codebook"):
        op(logits, codebook[0])  # rank 1
    with pytest.raises(ValueError, match="codebook"):
        op(logits, codebook[None])  # rank 3
    with pytest.raises(ValueError, match="codebook"):
        op(logits, codebook[:5])  # K mismatch
    with pytest.raises(ValueError, match="codebook"):
        op(logits, codebook[:, :0])  # D = 0
    with pytest.raises(ValueError, match="codebook"):
        op(logits, codebook.to("meta"))  # device mix
    with pytest.raises(TypeError, match="codebook"):
        op(logits, codebook.long())
    with pytest.raises(TypeError, match="codebook"):
        op(logits, codebook.tolist())
    with pytest.raises(TypeError, match="logits"):
        op(logits.int(), codebook)
    with pytest.raises(ValueError, match="logits"):
        op(logits[:, :0], codebook[:0])  # K = 0
    with pytest.raises(ValueError, match="tau"):
        op(logits, codebook, tau=0.0)
    with pytest.raises(ValueError, match="tau"):
        op(logits, codebook, tau=float("nan"))
    with pytest.raises(TypeError, match="hard"):
        op(logits, codebook, hard=1)
    with pytest.raises(ValueError, match="dim"):
        op(logits, codebook, dim=2)
    with pytest.raises(ValueError, match="noise"):
        op(logits, codebook, noise=torch.rand(4, 5, device=device))
    with pytest.raises(TypeError, match="generator"):
        op(logits, codebook, generator=1)
