"""DALL-E masks written out entry by entry from DESIGN section 3, independently of
``dalle_kernels`` (plain Python loops and divmod, not the vectorized tensor formula), for the tests."""
import functools

import torch


def _cycle_distance(d: int, w: int) -> int:
    d %= w  # Python's modulo is never negative
    return min(d, w - d)


def may_attend(kind: str, text_len: int, image_size: int, conv_kernel: int, i: int, j: int) -> bool:
    """Whether query i may attend key j (raster sequence indices)."""
    if j > i:
        return False
    if j < text_len:
        return True
    a, b = i - text_len, j - text_len
    (ra, ca), (rb, cb) = divmod(a, image_size), divmod(b, image_size)
    if kind == "full":
        return True
    if kind == "row":
        return a - b <= image_size
    if kind == "column":
        return ca == cb
    assert kind == "conv", kind
    half = conv_kernel // 2
    return _cycle_distance(ra - rb, image_size) <= half and _cycle_distance(ca - cb, image_size) <= half


@functools.cache
def _loop_mask(kind: str, text_len: int, image_size: int, conv_kernel: int) -> torch.Tensor:
    s = text_len + image_size**2
    return torch.tensor([[may_attend(kind, text_len, image_size, conv_kernel, i, j) for j in range(s)]
                         for i in range(s)])


def loop_mask(kind: str, text_len: int, image_size: int, conv_kernel: int = 11) -> torch.Tensor:
    """The (S, S) bool mask, True where query (row) i may attend key (column) j (a fresh copy)."""
    return _loop_mask(kind, text_len, image_size, conv_kernel).clone()


def column_major_order(text_len: int, image_size: int) -> list[int]:
    """Raster indices in the order the column kernels read them: the text, then column after column."""
    return list(range(text_len)) + [text_len + r * image_size + c for c in range(image_size)
                                    for r in range(image_size)]
