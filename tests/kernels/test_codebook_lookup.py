"""Triton ``codebook_lookup`` (a gather, D placed at ``dim``) against the F.embedding reference, plain
``codebook[indices]`` indexing, and a float64 scatter-add for the gradient."""
import pytest
import torch
from oracles import scatter_add_float64

import dalle_kernels as dk
from dalle_kernels.ops.codebook_lookup.kernel import codebook_lookup_backward
from dalle_kernels.ops.codebook_lookup.reference import codebook_lookup_reference
from dalle_kernels.testing import assert_close, kernel_dtypes

INDEX_DTYPES = (torch.int32, torch.int64)

# (indices shape, dim, K, D): I == 1 with several D and row tiles, channels-first with H, W not
# powers of two over several inner tiles, dim = 0 and a middle dim, K = 8193 and K = 1, D odd.
CASES = [
    ((37,), -1, 19, 300),
    ((2, 9, 11), 1, 13, 7),
    ((3, 5, 7), 0, 11, 1),
    ((2, 3, 5, 3), 2, 6, 3),
    ((4, 9), -1, 8193, 3),
    ((5, 6), 1, 1, 5),
]


def random_indices(shape, num_codes: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Random codes in [0, K), including both ends of the range."""
    indices = torch.randint(0, num_codes, shape, device=device)
    indices.view(-1)[:2] = torch.tensor([0, num_codes - 1])
    return indices.to(dtype)


def indexing(indices: torch.Tensor, codebook: torch.Tensor, dim: int) -> torch.Tensor:
    """The op written as plain advanced indexing."""
    return codebook[indices.long()].movedim(-1, dim)


@pytest.mark.parametrize("shape, dim, num_codes, size", CASES)
def test_forward_matches_reference_and_indexing(shape, dim, num_codes, size, device):
    for dtype in kernel_dtypes(device):
        codebook = torch.randn(num_codes, size, device=device).to(dtype)
        for index_dtype in INDEX_DTYPES:
            indices = random_indices(shape, num_codes, index_dtype, device)
            out = dk.codebook_lookup(indices, codebook, dim)
            assert out.dtype == dtype and out.is_contiguous()
            assert torch.equal(out, indexing(indices, codebook, dim)), (dtype, index_dtype)
            assert torch.equal(out, codebook_lookup_reference(indices, codebook, dim % (len(shape) + 1)))


def test_design_worked_example(device):
    """docs/design.md#worked-example: hard codes [1, 1, 0, 2] on the 2x2 grid pick e1, e1, e0, e2 (channels-first)."""
    codebook = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]], device=device)
    indices = torch.tensor([[[1, 1], [0, 2]]], device=device)
    out = dk.codebook_lookup(indices, codebook, dim=1)
    assert out.shape == (1, 3, 2, 2)
    expected = torch.stack([codebook[1], codebook[1], codebook[0], codebook[2]], -1).reshape(1, 3, 2, 2)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dim", [-1, 1])
def test_non_contiguous_indices_and_codebook(dim, device):
    num_codes, size = 23, 9
    # Indices whose (O, I) split merges (a transpose) and whose split does not (a strided slice),
    # codebooks stored transposed and sliced.
    layouts = [torch.randint(0, num_codes, (7, 5), device=device).t(),
               torch.randint(0, num_codes, (6, 3, 10), device=device)[:, :, ::2]]
    codebooks = [torch.randn(size, num_codes, device=device).t(),
                 torch.randn(2 * num_codes, size + 4, device=device)[::2, 3:-1]]
    for indices in layouts:
        assert not indices.is_contiguous()
        for codebook in codebooks:
            assert not codebook.is_contiguous()
            out = dk.codebook_lookup(indices, codebook, dim)
            assert torch.equal(out, indexing(indices, codebook, dim % (indices.ndim + 1)))


@pytest.mark.parametrize("shape, dim, num_codes, size", CASES)
def test_backward_sums_repeated_codes(shape, dim, num_codes, size, device):
    # Few distinct codes, so most rows repeat one; some codes stay unused (zero gradient rows).
    used = min(num_codes, 4)
    for dtype in kernel_dtypes(device):
        base = torch.randn(num_codes, size, device=device).to(dtype)
        indices = torch.randint(0, used, shape, device=device, dtype=torch.int32)
        codebook = base.clone().requires_grad_()
        out = dk.codebook_lookup(indices, codebook, dim)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)
        assert codebook.grad.dtype == dtype
        assert_close(codebook.grad, scatter_add_float64(indices, grad_out, num_codes, dim), dtype, "d codebook")

        # The reference in float32 (F.embedding's fp16 backward accumulates in fp16).
        reference = base.float().requires_grad_()
        codebook_lookup_reference(indices, reference, dim % (len(shape) + 1)).backward(grad_out.float())
        assert_close(codebook.grad, reference.grad, dtype, "d codebook vs reference")


def test_backward_channels_first_non_contiguous_grad(device):
    indices = torch.randint(0, 5, (2, 9, 11), device=device)
    codebook = torch.randn(7, 6, device=device, requires_grad=True)
    out = dk.codebook_lookup(indices, codebook, dim=1)
    grad_out = torch.randn(2, 9, 11, 6, device=device).movedim(-1, 1)  # (2, 6, 9, 11), not contiguous
    out.backward(grad_out)
    assert_close(codebook.grad, scatter_add_float64(indices, grad_out, 7, 1), torch.float32, "d codebook")


@pytest.mark.parametrize("outer, size, inner", [(1, 5, 130), (45, 129, 1), (3, 7, 11)])
def test_backward_launcher_contract(outer, size, inner, device):
    """``codebook_lookup_backward``: 1-D codes in row order, grad_out viewable as (O, D, I) -> float32 (K, D)."""
    num_codes = 9
    for index_dtype in INDEX_DTYPES:
        for dtype in kernel_dtypes(device):
            indices = torch.randint(0, num_codes, (outer * inner,), device=device, dtype=index_dtype)
            grad_out = torch.randn(outer, size, inner, device=device).to(dtype)
            grad = codebook_lookup_backward(indices, grad_out, inner, num_codes)
            assert grad.dtype == torch.float32 and grad.shape == (num_codes, size)
            expected = scatter_add_float64(indices, grad_out, num_codes, 1)
            assert_close(grad, expected, torch.float32, "launcher gradient")


def test_backward_launcher_rejects_empty_indices(device):
    with pytest.raises(ValueError, match="indices"):
        codebook_lookup_backward(torch.zeros(0, dtype=torch.int64, device=device),
                                 torch.zeros(0, 4, 0, device=device), 0, 3)


def test_empty_indices(device):
    codebook = torch.randn(4, 3, device=device, requires_grad=True)
    indices = torch.zeros(2, 0, dtype=torch.int64, device=device)
    out = dk.codebook_lookup(indices, codebook, dim=1)
    assert out.shape == (2, 3, 0)
    out.sum().backward()
    assert torch.equal(codebook.grad, torch.zeros_like(codebook))


def test_bad_inputs(device):
    codebook = torch.randn(5, 3, device=device)
    indices = torch.randint(0, 5, (4, 6), device=device)
    bad = [
        (TypeError, "indices", dict(indices=indices.float())),
        (TypeError, "indices", dict(indices=indices.tolist())),
        (ValueError, "indices", dict(indices=torch.where(indices == indices[1, 2], -1, indices))),
        (ValueError, "indices", dict(indices=torch.where(indices == indices[3, 4], 5, indices))),
        (ValueError, "codebook", dict(codebook=codebook[0])),
        (ValueError, "codebook", dict(codebook=codebook[None])),
        (ValueError, "codebook", dict(codebook=codebook[:0])),
        (ValueError, "codebook", dict(codebook=codebook[:, :0])),
        (TypeError, "codebook", dict(codebook=codebook.long())),
        (ValueError, "codebook", dict(codebook=torch.randn(5, 3, device="meta"))),
        (ValueError, "dim", dict(dim=3)),
        (ValueError, "dim", dict(dim=-4)),
        (TypeError, "dim", dict(dim=1.0)),
    ]
    for error, name, override in bad:
        args = dict(indices=indices, codebook=codebook, dim=-1) | override
        with pytest.raises(error, match=name):
            dk.codebook_lookup(**args)
