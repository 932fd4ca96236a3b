"""dk.gumbel_softmax on the Triton backend vs the PyTorch reference and an independent float64
computation of y = softmax((logits - log(-log(u))) / tau), forward and backward."""
import math

import pytest
import torch
from oracles import gumbel_scores_float64, gumbel_softmax_float64, gumbel_softmax_grad_float64

import dalle_kernels as dk
from dalle_kernels.ops.gumbel_softmax.kernel import launch_settings
from dalle_kernels.ops.gumbel_softmax.reference import gumbel_softmax_reference
from dalle_kernels.testing import assert_close, kernel_dtypes


def uniform(shape, device) -> torch.Tensor:
    return torch.rand(shape, device=device).clamp_(min=1e-12)


def takes_two_passes(shape, dim: int) -> bool:
    """Whether the kernel walks this problem's categories in more than one chunk."""
    dim %= len(shape)
    inner, rows = math.prod(shape[dim + 1:]), math.prod(shape) // shape[dim]
    return shape[dim] > launch_settings(rows, shape[dim], inner)["BLOCK_K"]


def check_soft_forward(logits: torch.Tensor, noise: torch.Tensor, tau: float, dim: int) -> torch.Tensor:
    y = dk.gumbel_softmax(logits, tau, dim=dim, noise=noise)
    assert y.shape == logits.shape and y.dtype == logits.dtype and y.is_contiguous()
    # The reference rounds in the same dtype, so its error adds to the kernel's (a 65536-wide row
    # gave 2.003e-5 against float32's 2e-5): twice the tolerance there; float64 holds the kernel to one.
    assert_close(y, gumbel_softmax_reference(logits, tau, False, dim, noise), logits.dtype, "y vs reference", 2.0)
    assert_close(y, gumbel_softmax_float64(logits, noise, tau, dim), logits.dtype, "y vs float64")
    return y


def cancellation_factor(y: torch.Tensor, dy: torch.Tensor, tau: float, grad: torch.Tensor) -> float:
    """How much larger the terms y * dy / tau are than the gradient they sum to (at least 1).

    In a row where one y is ~1 the gradient cancels to ~0 while the backward works from y as
    stored in the logits' dtype (as torch.softmax's does), so its error is bounded relative to the
    terms, not to the gradient: tolerances are scaled by this factor.
    """
    terms = torch.linalg.vector_norm(y.double() * dy.double() / tau).item()
    return max(1.0, terms / torch.linalg.vector_norm(grad).item())


def check_backward(logits: torch.Tensor, noise: torch.Tensor, tau: float, hard: bool, dim: int,
                   dy: torch.Tensor) -> torch.Tensor:
    """Compare the logits gradient with reference autograd and the float64 formula; return it."""
    x = logits.detach().requires_grad_()
    dk.gumbel_softmax(x, tau, hard, dim, noise=noise).backward(dy)
    x_ref = logits.detach().requires_grad_()
    gumbel_softmax_reference(x_ref, tau, hard, dim, noise).backward(dy)
    assert x.grad.shape == logits.shape and x.grad.dtype == logits.dtype
    y = gumbel_softmax_float64(logits, noise, tau, dim)
    expected = gumbel_softmax_grad_float64(y, dy, tau, dim)
    factor = cancellation_factor(y, dy, tau, expected)
    assert_close(x.grad, x_ref.grad, logits.dtype, "dlogits vs reference", factor)
    assert_close(x.grad, expected, logits.dtype, "dlogits vs float64", factor)
    return x.grad


@pytest.mark.parametrize("rows", [1, 37])
@pytest.mark.parametrize("K", [3, 1000, 8193])
def test_rows_forward_backward(device, rows, K):
    for dtype in kernel_dtypes(device):
        logits = (2 * torch.randn(rows, K, device=device)).to(dtype)
        noise = uniform((rows, K), device)
        tau = 0.5 + torch.rand(()).item()
        check_soft_forward(logits, noise, tau, -1)
        dy = torch.randn(rows, K, device=device).to(dtype)
        for hard in (False, True):
            check_backward(logits, noise, tau, hard, -1, dy)


@pytest.mark.parametrize("shape, dim", [
    ((3, 7, 5, 9), 1),  # channels-first, one chunk of categories
    ((2, 40, 9, 15), 1),  # channels-first, several chunks
    ((4, 13, 6), 1),  # middle dim
    ((2, 3, 11, 5), -2),
    ((6, 5, 3), 0),  # first dim
])
def test_any_dim(device, shape, dim):
    for dtype in kernel_dtypes(device):
        logits = (2 * torch.randn(shape, device=device)).to(dtype)
        noise = uniform(shape, device)
        check_soft_forward(logits, noise, 0.8, dim)
        dy = torch.randn(shape, device=device).to(dtype)
        for hard in (False, True):
            check_backward(logits, noise, 0.8, hard, dim, dy)


def test_backward_of_nearly_one_hot_rows_is_accurate(device):
    """One y ~ 0.98 per row, the others ~4e-3: the gradient (~2e-2) is not far above the rounding of
    the big y in 16 bits, yet it must come out to the dtype's tolerance, unscaled."""
    shape = (64, 5)
    logits = 0.3 * torch.randn(shape, device=device)
    logits[torch.arange(64, device=device), torch.randint(0, 5, (64,), device=device)] += 5.5
    noise = torch.full(shape, math.exp(-1.0), device=device)  # g = 0
    dy = torch.randn(shape, device=device)
    for dtype in kernel_dtypes(device):
        x = logits.to(dtype).detach().requires_grad_()
        dk.gumbel_softmax(x, 1.0, noise=noise).backward(dy.to(dtype))
        y = gumbel_softmax_float64(x.detach(), noise, 1.0, -1)
        assert_close(x.grad, gumbel_softmax_grad_float64(y, dy.to(dtype), 1.0, -1), dtype, "dlogits vs float64")


def test_channels_first_shapes_cover_both_paths():
    assert not takes_two_passes((3, 7, 5, 9), 1)
    assert takes_two_passes((2, 40, 9, 15), 1)
    assert takes_two_passes((37, 8193), -1) and not takes_two_passes((37, 1000), -1)


def test_16bit_noise(device):
    logits = torch.randn(13, 21, device=device)
    noise = torch.rand(13, 21, device=device, dtype=torch.float16).clamp_(min=2**-24)
    check_soft_forward(logits, noise, 0.9, -1)


@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_non_contiguous_logits_noise_and_grad(device, layout):
    rows, K = 29, 45
    if layout == "transposed":
        logits = torch.randn(K, rows, device=device).t()
        noise = uniform((K, rows), device).t()
        dy = torch.randn(K, rows, device=device).t()
    else:
        logits = torch.randn(2 * rows, K + 3, device=device)[::2, 1:-2]
        noise = uniform((rows, 3 * K), device)[:, ::3]
        dy = torch.randn(rows, 2 * K, device=device)[:, K:]
    assert not (logits.is_contiguous() or noise.is_contiguous() or dy.is_contiguous())
    before = logits.clone()
    check_soft_forward(logits, noise, 1.3, -1)
    for hard in (False, True):
        check_backward(logits, noise, 1.3, hard, -1, dy)
    assert torch.equal(logits, before)


def test_channels_first_with_non_contiguous_noise_and_grad(device):
    shape = (2, 40, 9, 15)
    logits = torch.randn(shape, device=device)
    noise = uniform((2, 9, 15, 40), device).permute(0, 3, 1, 2)  # channels-last memory
    dy = torch.randn((2, 9, 15, 40), device=device).permute(0, 3, 1, 2)
    check_soft_forward(logits, noise, 0.9, 1)
    check_backward(logits, noise, 0.9, False, 1, dy)


@pytest.mark.parametrize("shape, dim", [((37, 1000), -1), ((3, 8193), -1), ((2, 40, 9, 15), 1)])
def test_hard_is_exact_one_hot_of_float64_argmax(device, shape, dim):
    for dtype in kernel_dtypes(device):
        logits = torch.randn(shape, device=device).to(dtype)
        noise = uniform(shape, device)
        y = dk.gumbel_softmax(logits, 0.7, True, dim, noise=noise)
        assert y.dtype == dtype
        assert bool(((y == 0) | (y == 1)).all())
        assert torch.equal(y.sum(dim), torch.ones_like(y.sum(dim)))
        z = gumbel_scores_float64(logits, noise, 0.7)
        assert torch.equal(y.argmax(dim), z.argmax(dim))
        assert torch.equal(y, gumbel_softmax_reference(logits, 0.7, True, dim, noise))


def test_hard_ties_go_to_the_lowest_index(device):
    K = 8200  # two chunks: the tie spans them
    logits = torch.zeros(3, K, device=device)
    logits[1, [9, 8195]] = 1.0
    logits[2, [8194, 8199]] = 1.0
    noise = torch.full((3, K), math.exp(-1.0), device=device)  # g = 0 everywhere
    y = dk.gumbel_softmax(logits, 1.0, True, noise=noise)
    assert y.argmax(-1).tolist() == [0, 9, 8194] and torch.equal(y.sum(-1), torch.ones(3, device=device))


def test_straight_through_gradient_equals_soft_gradient(device):
    for shape, dim in [((11, 300), -1), ((2, 40, 9, 15), 1)]:
        logits, noise, dy = torch.randn(shape, device=device), uniform(shape, device), torch.randn(shape, device=device)
        grads = []
        for hard in (False, True):
            x = logits.clone().requires_grad_()
            dk.gumbel_softmax(x, 0.6, hard, dim, noise=noise).backward(dy)
            grads.append(x.grad)
        assert torch.equal(grads[0], grads[1])


def test_worked_example(device):
    """docs/design.md#worked-example: logits of a 2x2 grid, channels-first (1, 3, 2, 2)."""
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.5, 1.5, 1.0], [2.5, 0.5, 1.5], [1.2, 0.8, 2.0]], device=device)
    logits = logits.t().reshape(1, 3, 2, 2)
    zero_noise = torch.full_like(logits, math.exp(-1.0))
    y = dk.gumbel_softmax(logits, 1.0, dim=1, noise=zero_noise)
    expected = torch.tensor([[0.2312, 0.6285, 0.1402], [0.1863, 0.5065, 0.3072]], device=device)
    torch.testing.assert_close(y[0, :, 0, :].t(), expected, atol=1e-4, rtol=0)
    hard = dk.gumbel_softmax(logits, 1.0, True, dim=1, noise=zero_noise)
    assert hard.argmax(1).flatten().tolist() == [1, 1, 0, 2]
    g = torch.tensor([0.48, 0.79, 0.23], device=device)
    noise = torch.exp(-torch.exp(-g))
    y = dk.gumbel_softmax(logits[0, :, 0, 0], 0.5, noise=noise)
    torch.testing.assert_close(y, torch.tensor([0.0669, 0.9182, 0.0149], device=device), atol=1e-4, rtol=0)


def chi_square_bound(dof: int, z: float = 5.0) -> float:
    """Upper quantile of chi-square(dof) at normal score z (Wilson-Hilferty; z = 5: p ~ 3e-7)."""
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + z * math.sqrt(c)) ** 3


@pytest.mark.parametrize("K, dim", [(6, -1), (40, 1)])
def test_sampled_argmax_frequencies_follow_softmax(device, K, dim):
    """Gumbel-max: argmax(logits + g) ~ softmax(logits), for any tau. Kernel noise (no `noise`)."""
    samples = 4000
    probs_logits = 0.6 * torch.randn(K, device=device)
    if dim == -1:  # one row per sample, one chunk of categories
        logits = probs_logits.expand(samples, K)
    else:  # (1, K, samples) with dim=1: several chunks of categories
        logits = probs_logits[None, :, None].expand(1, K, samples)
    assert takes_two_passes(tuple(logits.shape), dim) == (dim == 1)
    y = dk.gumbel_softmax(logits, 0.3 + torch.rand(()).item(), True, dim)
    counts = torch.bincount(y.argmax(dim).flatten(), minlength=K).double()
    expected = samples * torch.softmax(probs_logits.double(), 0)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < chi_square_bound(K - 1), f"chi-square {chi2:.1f} over {K - 1} degrees of freedom"


def test_seed_and_generator_make_samples_repeatable(device, fresh_seed):
    logits = torch.randn(19, 33, device=device)
    torch.manual_seed(fresh_seed)
    first = dk.gumbel_softmax(logits)
    torch.manual_seed(fresh_seed)
    assert torch.equal(dk.gumbel_softmax(logits), first)
    torch.manual_seed(fresh_seed + 1)
    assert not torch.equal(dk.gumbel_softmax(logits), first)

    def with_generator(seed: int) -> torch.Tensor:
        return dk.gumbel_softmax(logits, generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(fresh_seed + 2)  # the global RNG must not matter with a generator
    assert torch.equal(with_generator(fresh_seed), first)
    assert torch.equal(with_generator(fresh_seed + 1), with_generator(fresh_seed + 1))
    assert not torch.equal(with_generator(fresh_seed + 1), first)


def test_kernel_noise_is_numbered_by_row_and_category(device, fresh_seed):
    """Noise of element (row r, category k) depends on r * K + k only, not on the memory layout:
    channels-first with dim=1, its channels-last copy with dim=-1 and a strided view agree (hard
    samples exactly; soft ones up to rounding, as the layouts split K into different chunks)."""
    first = torch.randn(2, 40, 9, 15, device=device)
    last = first.permute(0, 2, 3, 1).contiguous()
    for hard in (False, True):
        outputs = []
        for logits, dim in [(first, 1), (last, -1), (last.permute(0, 3, 1, 2), 1)]:
            torch.manual_seed(fresh_seed)
            outputs.append(dk.gumbel_softmax(logits, 0.7, hard, dim))
        assert torch.equal(outputs[2], outputs[0])
        if hard:
            assert torch.equal(outputs[1].permute(0, 3, 1, 2), outputs[0])
        else:
            assert_close(outputs[1].permute(0, 3, 1, 2), outputs[0], torch.float32)


@pytest.mark.parametrize("shape, dim", [((4, 50), -1), ((3, 8193), -1), ((2, 40, 9, 15), 1)])
def test_nan_propagates_to_the_whole_row(device, shape, dim):
    K = shape[dim]
    rows = torch.randn(math.prod(shape) // K, K, device=device)
    rows[0, 0] = rows[-1, K - 1] = float("nan")  # one NaN in the first chunk, one in the last
    logits = rows.reshape(*[n for d, n in enumerate(shape) if d != dim % len(shape)], K).movedim(-1, dim)
    noise = uniform(shape, device)
    has_nan = logits.isnan().any(dim, keepdim=True).expand(shape)
    assert not bool(has_nan.all())
    for hard in (False, True):
        y = dk.gumbel_softmax(logits, 0.9, hard, dim, noise=noise)
        assert bool(y[has_nan].isnan().all())
        assert bool(y[~has_nan].isfinite().all())
        ref = gumbel_softmax_reference(logits, 0.9, hard, dim, noise)
        assert_close(y[~has_nan], ref[~has_nan], torch.float32)


@pytest.mark.parametrize("shape, dim, two_passes", [((3, 50), -1, False), ((3, 20000), -1, True),
                                                     ((2, 40, 9, 15), 1, True)])
def test_masked_categories_get_zero_probability(device, shape, dim, two_passes):
    """-inf logits (a whole first chunk of categories included) give y = 0 and a zero gradient, never NaN."""
    K = shape[dim]
    logits = torch.randn(shape, device=device)
    masked = torch.zeros(K, dtype=torch.bool, device=device)
    masked[: max(K // 2, 33)] = True  # in the two-pass cases this spans the whole first chunk
    view = [1] * len(shape)
    view[dim] = K
    logits = logits.masked_fill(masked.reshape(view), float("-inf"))
    noise = uniform(shape, device)
    assert takes_two_passes(shape, dim) == two_passes
    for hard in (False, True):
        x = logits.detach().requires_grad_()
        y = dk.gumbel_softmax(x, 0.7, hard, dim, noise=noise)
        assert bool(y.isfinite().all())
        assert bool((y.masked_select(masked.reshape(view).expand(shape)) == 0).all())
        assert_close(y, gumbel_softmax_reference(logits, 0.7, hard, dim, noise), torch.float32)
        y.backward(torch.randn(shape, device=device))
        assert bool((x.grad.masked_select(masked.reshape(view).expand(shape)) == 0).all())


def test_large_k_few_rows(device):
    logits, noise = 4 * torch.randn(2, 65536, device=device), uniform((2, 65536), device)
    check_soft_forward(logits, noise, 1.0, -1)
    hard = dk.gumbel_softmax(logits, 1.0, True, noise=noise)
    z = gumbel_scores_float64(logits, noise)
    assert torch.equal(hard.argmax(-1), z.argmax(-1)) and torch.equal(hard.sum(-1), torch.ones(2, device=device))
    check_backward(logits, noise, 1.0, False, -1, torch.randn(2, 65536, device=device))


def test_temperature_extremes(device):
    shape = (23, 70)
    logits, noise = torch.randn(shape, device=device), uniform(shape, device)
    # At tau = 1e-3 the float32 rounding of logits + g (~1e-7 relative) is amplified 1000x in z, so
    # rows with a near tie differ from float64 by ~1e-4: the error bound scales with 1 / tau.
    cold = dk.gumbel_softmax(logits, 1e-3, noise=noise)
    assert_close(cold, gumbel_softmax_reference(logits, 1e-3, False, -1, noise), torch.float32, "cold", 1e3)
    assert_close(cold, gumbel_softmax_float64(logits, noise, 1e-3, -1), torch.float32, "cold", 1e3)
    hard = dk.gumbel_softmax(logits, 1e-3, True, noise=noise)
    top2 = gumbel_scores_float64(logits, noise).topk(2, -1).values
    clear = top2[:, 0] - top2[:, 1] > 0.05  # z gap > 50: one-hot up to exp(-50)
    assert bool(clear.any())
    assert (cold[clear] - hard[clear]).abs().max().item() < 1e-6
    hot = check_soft_forward(logits, noise, 1e5, -1)  # |z| < 1e-3: y within 0.1% of 1 / K
    torch.testing.assert_close(hot, torch.full_like(hot, 1 / 70), atol=0, rtol=1e-3)


@pytest.mark.parametrize("shape, dim", [((0, 5), -1), ((3, 4, 0), 1)])
def test_empty_input(device, shape, dim):
    logits = torch.randn(shape, device=device, requires_grad=True)
    y = dk.gumbel_softmax(logits, 1.0, True, dim)
    assert y.shape == logits.shape
    y.sum().backward()
    assert logits.grad.shape == logits.shape


def test_bad_inputs_name_the_argument(device):
    logits = torch.randn(4, 5, device=device)
    cases = [
        (TypeError, "logits", dict(logits=[[1.0, 2.0]])),
        (TypeError, "logits", dict(logits=torch.ones(4, 5, dtype=torch.int64, device=device))),
        (ValueError, "logits", dict(logits=torch.tensor(1.0, device=device))),
        (ValueError, "logits", dict(logits=torch.randn(4, 0, device=device))),
        (ValueError, "tau", dict(tau=0.0)),
        (ValueError, "tau", dict(tau=-1.0)),
        (ValueError, "tau", dict(tau=float("nan"))),
        (ValueError, "tau", dict(tau=float("inf"))),
        (TypeError, "tau", dict(tau="1.0")),
        (TypeError, "tau", dict(tau=None)),
        (TypeError, "hard", dict(hard=1)),
        (ValueError, "dim", dict(dim=2)),
        (ValueError, "dim", dict(dim=-3)),
        (TypeError, "dim", dict(dim=1.0)),
        (ValueError, "noise", dict(noise=torch.rand(5, 4, device=device))),
        (TypeError, "noise", dict(noise=torch.ones(4, 5, dtype=torch.int32, device=device))),
        (TypeError, "noise", dict(noise=[[0.5] * 5] * 4)),
        (ValueError, "noise", dict(noise=torch.rand(4, 5, device="meta"))),
        (TypeError, "generator", dict(generator=123)),
    ]
    for error, name, override in cases:
        kwargs = dict(logits=logits, tau=1.0, hard=False, dim=-1, noise=None, generator=None) | override
        with pytest.raises(error, match=name):
            dk.gumbel_softmax(**kwargs)
