"""row_view: (outer, size, inner) strided views of N-d tensors, copying only when dims cannot merge."""
import pytest
import torch

from dalle_kernels._strided import row_view


def _as_3d(view):
    return torch.as_strided(view.tensor, (view.outer, view.size, view.inner),
                            (view.stride_outer, view.stride_size, view.stride_inner))


CASES = {
    "contiguous, last dim": (lambda: torch.randn(3, 4, 5), 2, False),
    "channels-first": (lambda: torch.randn(2, 6, 3, 5), 1, False),
    "first dim": (lambda: torch.randn(6, 3, 5), 0, False),
    "transposed 2-d": (lambda: torch.randn(7, 4).t(), 1, False),
    "sliced rows": (lambda: torch.randn(9, 8)[::2], 1, False),
    "size-1 dims": (lambda: torch.randn(1, 5, 1, 3)[:, :, :, ::2], 1, False),
    "permuted outer dims": (lambda: torch.randn(3, 4, 5).permute(1, 0, 2), 2, True),
    "channels-last memory": (lambda: torch.randn(2, 6, 3, 5).to(memory_format=torch.channels_last), 1, False),
    "permuted inner dims": (lambda: torch.randn(2, 3, 4, 5).permute(0, 1, 3, 2), 1, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_row_view_addresses_the_same_elements(case):
    make, dim, copies = CASES[case]
    x = make()
    view = row_view(x, dim)
    expected = x.contiguous().reshape(view.outer, view.size, view.inner)
    assert torch.equal(_as_3d(view), expected)
    assert (view.tensor.data_ptr() != x.data_ptr()) == copies
