"""Triton ``nearest_codebook`` (fused squared distance + argmin) against the reference and float64
distances computed directly as sum((x - c)^2), forward and gradients of ``sq_dist``."""
import pytest
import torch
from oracles import scatter_add_float64

import dalle_kernels as dk
from dalle_kernels.ops.nearest_codebook.reference import nearest_codebook_reference
from dalle_kernels.testing import assert_close, kernel_dtypes

# float32 rounding allowance of the expanded formula ||x||^2 - 2 x.c + ||c||^2, relative to the
# scale ||x||^2 + max ||c||^2 of a row (the formula cancels down to the small true distance).
DISTANCE_ROUNDING = 1e-5

# (x shape, dim, K): K = 1, 3, 1000, 8193 (several K tiles, masked tails); D = 1, 3, 64, 300
# (one or several D chunks); N = 1, a 1-D x (0-d outputs), channels-first (B, D, H, W).
CASES = [
    ((37, 3), -1, 3),
    ((70, 64), -1, 1),
    ((1, 64), -1, 1000),
    ((64,), 0, 3),
    ((2, 1, 5, 7), 1, 1000),
    ((2, 300, 2, 3), 1, 131),
    ((45, 3), -1, 8193),
    ((4, 64, 3), 1, 1000),
    ((32768 + 17, 5), -1, 131),  # enough rows for the large-tile launch
]


def float64_distances(x: torch.Tensor, codebook: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) squared distances sum((x - c)^2) in float64, and the per-row rounding allowance (N,)."""
    rows = x.detach().double().movedim(dim, -1).reshape(-1, x.shape[dim])
    codes = codebook.detach().double()
    dist = ((rows[:, None, :] - codes[None]) ** 2).sum(-1)
    scale = (rows * rows).sum(1) + (codes * codes).sum(1).max()
    return dist, DISTANCE_ROUNDING * scale


def check_nearest(x: torch.Tensor, codebook: torch.Tensor, dim: int) -> None:
    """Indices and sq_dist of the op against float64 distances and the reference."""
    indices, sq_dist = dk.nearest_codebook(x, codebook, dim)
    out_shape = x.shape[:dim % x.ndim] + x.shape[dim % x.ndim + 1:]
    assert indices.dtype == torch.int64 and sq_dist.dtype == torch.float32
    assert indices.shape == out_shape and sq_dist.shape == out_shape

    dist, allowance = float64_distances(x, codebook, dim)
    best = dist.min(1).values
    chosen = dist.gather(1, indices.reshape(-1, 1)).squeeze(1)
    assert bool((chosen - best <= allowance).all()), "a chosen code is not (nearly) the nearest"
    assert bool(((sq_dist.reshape(-1).double() - best).abs() <= allowance).all()), "sq_dist"
    assert bool((sq_dist >= 0).all())

    # Where the best code wins by more than rounding, it is the only right answer.
    runner_up = dist.topk(2, largest=False).values[:, 1] if dist.shape[1] > 1 else torch.full_like(best, float("inf"))
    clear = runner_up - best > 2 * allowance
    ref_indices, _ = nearest_codebook_reference(x, codebook, dim % x.ndim)
    assert torch.equal(indices.reshape(-1)[clear], dist.argmin(1)[clear])
    assert torch.equal(indices.reshape(-1)[clear], ref_indices.reshape(-1)[clear])


@pytest.mark.parametrize("shape, dim, num_codes", CASES)
def test_forward(shape, dim, num_codes, device):
    for dtype in kernel_dtypes(device):
        x = torch.randn(shape, device=device).to(dtype)
        codebook = torch.randn(num_codes, shape[dim], device=device).to(dtype)
        check_nearest(x, codebook, dim)


def test_codes_near_inputs_are_found(device):
    """Inputs close to known codes (the VQ situation): the index is exactly that code's."""
    codebook = torch.randn(300, 16, device=device)
    expected = torch.randint(0, 300, (2, 5, 7), device=device)
    x = (codebook[expected] + 0.01 * torch.randn(2, 5, 7, 16, device=device)).movedim(-1, 1)  # (2, 16, 5, 7)
    indices, sq_dist = dk.nearest_codebook(x, codebook, dim=1)
    assert torch.equal(indices, expected)
    exact = ((x.double() - codebook.double()[expected].movedim(-1, 1)) ** 2).sum(1)
    allowance = DISTANCE_ROUNDING * ((x.double() ** 2).sum(1) + (codebook.double() ** 2).sum(1).max())
    assert bool(((sq_dist - exact).abs() <= allowance).all())


def test_exact_ties_pick_lowest_index(device):
    num_codes, size = 8193, 5
    # Multiples of 1/8 (codes) and 1/64 (noise): every product and sum of the distance formula is
    # exact in float32, so duplicate codes tie whatever order a dot (numpy's GEMM in the
    # interpreter) adds in, and the test sees only the kernel's own tie-breaking.
    codebook = torch.randint(-64, 65, (num_codes, size), device=device) / 8
    # Duplicate groups: inside one 64-code tile, across tiles, and with the last (tail) code.
    groups = [[5, 9, 40], [10, 70, 130, 8000], [3, 8192]]
    for group in groups:
        codebook[group[1:]] = codebook[group[0]].clone()
    picks = [group[-1] for group in groups]
    x = codebook[picks] + torch.randint(-2, 3, (len(picks), size), device=device) / 64
    x = torch.cat([x, codebook[picks]])  # noisy copies and exact copies (distance 0)
    indices, sq_dist = dk.nearest_codebook(x, codebook)
    lowest = torch.tensor([group[0] for group in groups] * 2, device=device)
    assert torch.equal(indices, lowest)
    assert bool((sq_dist[len(picks):] <= DISTANCE_ROUNDING * 2 * (x[len(picks):] ** 2).sum(1)).all())


def test_non_contiguous_x_and_codebook(device):
    size, num_codes = 24, 77
    codebook = torch.randn(size, num_codes, device=device).t()
    layouts = [
        (torch.randn(size, 33, device=device).t(), -1),  # D strided
        (torch.randn(2, 6, 5, size, device=device).permute(0, 3, 1, 2), 1),  # channels-last storage
        (torch.randn(2, size, 6, 10, device=device)[:, :, :, :7], 1),  # inner axes do not merge
        (torch.randn(40, 2 * size, device=device)[::3, ::2], 1),
    ]
    for x, dim in layouts:
        assert not x.is_contiguous() and not codebook.is_contiguous()
        check_nearest(x, codebook, dim)


def test_mixed_dtypes(device):
    """x and codebook of different float dtypes meet in the promoted dtype."""
    dtypes = kernel_dtypes(device)
    for x_dtype in dtypes:
        for codebook_dtype in dtypes:
            if x_dtype != codebook_dtype:
                x = torch.randn(3, 20, 7, device=device).to(x_dtype)
                check_nearest(x, torch.randn(45, 20, device=device).to(codebook_dtype), 1)


@pytest.mark.parametrize("shape, dim, num_codes", [((37, 3), -1, 3), ((2, 300, 2, 3), 1, 131),
                                                    ((3, 64, 5), 1, 1000), ((64,), 0, 3)])
def test_gradients(shape, dim, num_codes, device):
    for dtype in kernel_dtypes(device):
        x0 = torch.randn(shape, device=device).to(dtype)
        # Few distinct codes used many times, so the codebook gradient sums duplicates.
        c0 = torch.randn(num_codes, shape[dim], device=device).to(dtype)
        x, codebook = x0.clone().requires_grad_(), c0.clone().requires_grad_()
        indices, sq_dist = dk.nearest_codebook(x, codebook, dim)
        grad = torch.randn_like(sq_dist)
        sq_dist.backward(grad)
        assert x.grad.dtype == dtype and codebook.grad.dtype == dtype

        x_ref, c_ref = x0.clone().requires_grad_(), c0.clone().requires_grad_()
        ref_indices, ref_sq_dist = nearest_codebook_reference(x_ref, c_ref, dim % len(shape))
        assert torch.equal(indices, ref_indices)  # random data: no near-ties at these sizes
        ref_sq_dist.backward(grad)
        assert_close(x.grad, x_ref.grad, dtype, "dx vs reference")
        assert_close(codebook.grad, c_ref.grad, dtype, "dcodebook vs reference")

        # float64 formula: d/dx = 2 g (x - c), d/dc = scatter-add of -2 g (x - c), c = codebook[index].
        rows = x0.double().movedim(dim, -1)
        diff = rows - c0.double()[indices]
        grad_rows = 2 * grad.double().unsqueeze(-1) * diff
        assert_close(x.grad, grad_rows.movedim(-1, dim), dtype, "dx vs float64")
        assert_close(codebook.grad, scatter_add_float64(indices, -grad_rows, num_codes, -1), dtype,
                     "dcodebook vs float64")


def test_nan_propagates(device):
    x = torch.randn(5, 8, device=device)
    codebook = torch.randn(100, 8, device=device)
    x[2, 3] = float("nan")
    indices, sq_dist = dk.nearest_codebook(x, codebook)
    ref_indices, _ = nearest_codebook_reference(x, codebook, 1)
    assert torch.isnan(sq_dist[2]) and not torch.isnan(sq_dist[[0, 1, 3, 4]]).any()
    assert torch.equal(indices, ref_indices)
    codebook[71, 0] = float("nan")  # a NaN code ranks first, as in torch.argmin: every row NaN
    indices, sq_dist = dk.nearest_codebook(x, codebook)
    assert torch.isnan(sq_dist).all() and torch.equal(indices, nearest_codebook_reference(x, codebook, 1)[0])


def test_empty_x(device):
    x = torch.randn(0, 3, 6, device=device, requires_grad=True)
    codebook = torch.randn(4, 3, device=device, requires_grad=True)
    indices, sq_dist = dk.nearest_codebook(x, codebook, dim=1)
    assert indices.shape == (0, 6) and sq_dist.shape == (0, 6)
    sq_dist.sum().backward()
    assert torch.equal(codebook.grad, torch.zeros_like(codebook)) and x.grad.shape == x.shape


def test_bad_inputs(device):
    x = torch.randn(4, 6, device=device)
    codebook = torch.randn(5, 6, device=device)
    bad = [
        (TypeError, "x", dict(x=x.long())),
        (TypeError, "x", dict(x=x.tolist())),
        (ValueError, "x", dict(x=x[0, 0])),
        (ValueError, "x", dict(x=x[:, :5])),
        (ValueError, "x", dict(x=x, dim=0)),
        (ValueError, "codebook", dict(codebook=codebook[0])),
        (ValueError, "codebook", dict(codebook=codebook[None])),
        (ValueError, "codebook", dict(codebook=codebook[:0])),
        (ValueError, "codebook", dict(codebook=codebook[:, :0], x=x[:, :0])),
        (TypeError, "codebook", dict(codebook=codebook.int())),
        (ValueError, "codebook", dict(codebook=torch.randn(5, 6, device="meta"))),
        (ValueError, "dim", dict(dim=2)),
        (ValueError, "dim", dict(dim=-3)),
        (TypeError, "dim", dict(dim=None)),
    ]
    for error, name, override in bad:
        args = dict(x=x, codebook=codebook, dim=-1) | override
        with pytest.raises(error, match=name):
            dk.nearest_codebook(**args)
