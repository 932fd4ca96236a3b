"""DALL-E attention masks (Ramesh et al. 2021, appendix B; docs/design.md#attention-masks).

The sequence holds T text positions, then the N = W*W image positions in raster order (W, the
image-token grid side). Query i may attend key j only if j <= i; text keys are always allowed to
later queries. For two image positions a = i - T and b = j - T, with (ra, ca) = divmod(a, W) and
(rb, cb) = divmod(b, W):

- ``full``: allowed;
- ``row``: a - b <= W (the previous W + 1 image tokens, itself included);
- ``column``: (a - b) % W == 0 (the same column, all earlier rows);
- ``conv``: wrap(ra - rb) <= k // 2 and wrap(ca - cb) <= k // 2, wrap(d) = min(|d| mod W, W - |d| mod W):
  a k x k neighbourhood that wraps around both image edges, as in the paper.

:meth:`DalleMask.allows` is the one PyTorch statement of these rules: ``dense()``, the block
layout (``layout.py``) and the reference are all built from it. The Triton kernels restate it in
``kernel.py`` (``_allowed``).
"""
from dataclasses import dataclass

import torch

from ..._checks import check_int

KINDS = ("full", "row", "column", "conv")
DEFAULT_BLOCK = 64  # query and key block size of the kernels on a GPU
BLOCK_SIZES = (16, 32, 64, 128)  # tl.dot needs dims >= 16; larger tiles do not fit a GPU's registers


@dataclass(frozen=True)
class DalleMask:
    """One DALL-E attention pattern (see the module docstring); build it with :func:`dalle_mask`.

    ``block`` is the kernels' tile size (queries and keys); it changes which blocks are visited,
    never the mask. Masks are hashable: layouts are cached per mask.
    """

    kind: str
    text_len: int
    image_size: int
    conv_kernel: int = 11
    block: int = DEFAULT_BLOCK

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str):
            raise TypeError(f"kind: expected a str, got {type(self.kind).__name__}")
        if self.kind not in KINDS:
            raise ValueError(f"kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        check_int("text_len", self.text_len, 1)
        check_int("image_size", self.image_size, 1)
        check_int("conv_kernel", self.conv_kernel, 1)
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel: must be odd, got {self.conv_kernel}")
        check_int("block", self.block, 1)
        if self.block not in BLOCK_SIZES:
            raise ValueError(f"block: must be one of {BLOCK_SIZES}, got {self.block}")

    @property
    def seq_len(self) -> int:
        """S = text_len + image_size**2."""
        return self.text_len + self.image_size**2

    @property
    def column_major(self) -> bool:
        """True when the kernels read the image part in column-major order (the ``column`` kind)."""
        return self.kind == "column"

    def allows(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """May query i attend key j? Integer tensors of raster sequence indices, broadcast together."""
        t, w = self.text_len, self.image_size
        causal = j <= i
        if self.kind == "full":
            return causal
        a, b = i - t, j - t  # image positions (negative for text)
        if self.kind == "row":
            image = a - b <= w
        elif self.kind == "column":
            image = torch.remainder(a - b, w) == 0
        else:
            half = self.conv_kernel // 2
            image = ((_wrap(torch.div(a, w, rounding_mode="floor") - torch.div(b, w, rounding_mode="floor"), w) <= half)
                     & (_wrap(torch.remainder(a, w) - torch.remainder(b, w), w) <= half))
        return causal & ((j < t) | image)

    def dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The (S, S) bool mask, True where query (row) i may attend key (column) j."""
        index = torch.arange(self.seq_len, device=device)
        return self.allows(index[:, None], index[None, :])

    def kernel_order(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(S,) int64: the raster sequence index the kernels hold at each of their positions.

        The identity, except for ``column``: its image part is read in column-major order
        (position T + c*W + r holds raster index T + r*W + c), so each column's causal segment
        is contiguous and column attention is block-sparse.
        """
        order = torch.arange(self.seq_len, device=device)
        if self.column_major:
            t, w = self.text_len, self.image_size
            order[t:] = t + order[t:].sub(t).view(w, w).t().reshape(-1)
        return order


def _wrap(d: torch.Tensor, w: int) -> torch.Tensor:
    """Distance on a cycle of w positions: min(|d| mod w, w - |d| mod w)."""
    m = torch.remainder(d.abs(), w)
    return torch.minimum(m, w - m)


def dalle_mask(kind: str, text_len: int, image_size: int, conv_kernel: int = 11, *,
               block: int = DEFAULT_BLOCK) -> DalleMask:
    """The DALL-E attention pattern ``kind`` (``full``, ``row``, ``column`` or ``conv``) over
    ``text_len`` text tokens and an ``image_size`` x ``image_size`` grid of image tokens.

    ``conv_kernel`` (odd; used by ``conv``): the neighbourhood side k; a k with k // 2 >= W // 2
    covers the whole grid. ``block`` (16, 32, 64 or 128): the kernels' tile size. ``.dense()``
    gives the (S, S) bool tensor, S = text_len + image_size**2. Bad arguments raise
    TypeError / ValueError naming the argument.
    """
    return DalleMask(kind, text_len, image_size, conv_kernel, block)
