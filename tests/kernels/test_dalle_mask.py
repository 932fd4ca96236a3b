"""``dalle_mask``: the dense mask against docs/design.md#attention-masks written out entry by entry,
hand-checked entries, the block layout the kernels iterate (full / partial / skipped tiles, in the
kernels' order), the key lists of cached decoding, caching, and bad arguments. Pure PyTorch: no
kernel runs."""
import pytest
import torch
from oracles import KINDS, column_major_order, loop_mask

import dalle_kernels as dk
from dalle_kernels.ops.sparse_attention.layout import FULL, PARTIAL, SKIP, block_classes, block_layout, decode_keys

# (text_len, image_size, conv_kernel): a single image token; odd and even W, none a power of two
# but one; k < W, k = W, and k > W (the neighbourhood wraps onto itself and covers the grid);
# and the paper's shape.
SHAPES = [(1, 1, 1), (3, 4, 3), (5, 5, 5), (7, 6, 11), (2, 7, 3), (256, 32, 11)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_dense_matches_the_entry_by_entry_formula(kind, shape):
    mask = dk.dalle_mask(kind, *shape)
    dense = mask.dense()
    assert dense.dtype == torch.bool and dense.shape == (mask.seq_len, mask.seq_len)
    assert torch.equal(dense, loop_mask(kind, *shape))


def test_hand_checked_entries():
    t, w = 256, 32
    s = t + w * w

    def image(r: int, c: int) -> int:
        return t + r * w + c

    row, column, conv, full = (dk.dalle_mask(kind, t, w).dense() for kind in ("row", "column", "conv", "full"))
    # full is causal attention; text queries see only earlier text in every kind.
    assert torch.equal(full, torch.ones(s, s, dtype=torch.bool).tril())
    for dense in (row, column, conv):
        assert torch.equal(dense[:t], full[:t]) and dense[t:, :t].all()
    # row: the previous W + 1 image tokens, itself included.
    assert row[image(5, 7), t:].sum() == w + 1
    assert row[image(5, 7), image(4, 7)] and not row[image(5, 7), image(4, 6)]  # a - b = W, W + 1
    assert row[image(0, 3), t:].sum() == 4  # the first image row sees only its own row so far
    # column: the same column in every earlier row, and itself.
    assert column[image(5, 7), t:].sum() == 6
    assert column[image(5, 7), image(0, 7)] and not column[image(5, 7), image(5, 6)]
    # conv (k = 11): an 11 x 11 neighbourhood wrapping around both edges, cut by causality.
    last = image(31, 31)
    assert conv[last, image(0, 0)] and conv[last, image(0, 26)]  # row distance 1 and column distance 5, wrapped
    assert not conv[last, image(0, 25)]  # column distance 6
    assert not conv[last, image(25, 31)]  # row distance 6
    assert conv[last, t:].sum() == 11 * 11  # its whole wrapped neighbourhood comes before it
    assert conv[image(0, 0), t:].sum() == 1


def test_kernel_order_reads_columns_one_after_another():
    for kind in KINDS:
        mask = dk.dalle_mask(kind, 3, 5)
        order = mask.kernel_order().tolist()
        assert order == (column_major_order(3, 5) if kind == "column" else list(range(mask.seq_len)))


def expected_classes(kind: str, shape: tuple[int, int, int], block: int) -> torch.Tensor:
    """SKIP / PARTIAL / FULL per tile of the independent mask in the kernels' order, loop by loop."""
    text_len, image_size, _ = shape
    s = text_len + image_size**2
    order = column_major_order(text_len, image_size) if kind == "column" else list(range(s))
    dense = loop_mask(kind, *shape)[order][:, order]
    n = -(-s // block)
    classes = torch.empty(n, n, dtype=torch.int8)
    for q in range(n):
        for k in range(n):
            tile = dense[q * block:(q + 1) * block, k * block:(k + 1) * block]  # real queries and keys only
            inside = (k + 1) * block <= s
            classes[q, k] = FULL if inside and tile.all() else PARTIAL if tile.any() else SKIP
    return classes


@pytest.mark.parametrize("block", [16, 64])
@pytest.mark.parametrize("shape", [(3, 4, 3), (7, 6, 11), (13, 9, 5), (256, 32, 11)], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_layout_covers_exactly_the_allowed_entries(kind, shape, block):
    mask = dk.dalle_mask(kind, *shape, block=block)
    expected = expected_classes(kind, shape, block)
    assert torch.equal(block_classes(mask), expected)
    layout = block_layout(mask, torch.device("cpu"))
    assert layout.num_blocks == expected.shape[0]
    for cls, by_query, by_key in ((FULL, layout.full_by_query, layout.full_by_key),
                                  (PARTIAL, layout.partial_by_query, layout.partial_by_key)):
        for blocks, selected in ((by_query, expected == cls), (by_key, (expected == cls).t())):
            assert blocks.offsets.dtype == blocks.blocks.dtype == torch.int32
            for row in range(layout.num_blocks):
                listed = blocks.blocks[blocks.offsets[row]:blocks.offsets[row + 1]].tolist()
                assert listed == selected[row].nonzero().flatten().tolist()


def causal_tiles(n: int) -> int:
    return n * (n + 1) // 2


def test_column_attention_is_block_sparse_at_the_paper_shape():
    # In raster order every causal tile of a column mask holds allowed entries: dense causal.
    text_len, w, block = 256, 32, 64
    n = (text_len + w * w) // block
    assert loop_mask("column", text_len, w).view(n, block, n, block).any(3).any(1).sum() == causal_tiles(n)
    # Column-major order: every image query block (two columns of 32 rows) visits the four full
    # text blocks and one partial block, its own columns.
    classes = block_classes(dk.dalle_mask("column", text_len, w, block=block))
    text_blocks = text_len // block
    for q in range(text_blocks, n):
        assert classes[q, :text_blocks].eq(FULL).all()
        assert classes[q, text_blocks:].eq(PARTIAL).sum() == 1 and classes[q, q] == PARTIAL
    assert classes.ne(SKIP).sum() == causal_tiles(text_blocks) + (n - text_blocks) * (text_blocks + 1)


@pytest.mark.parametrize("kind, most_partial", [("row", 2), ("conv", 7)])
def test_row_and_conv_layouts_are_block_sparse_at_the_paper_shape(kind, most_partial):
    # Image query blocks: the four text blocks full; image key blocks partial, only near the
    # diagonal (row: the previous W + 1 tokens; conv: 5 rows up, and the first rows by wrapping).
    classes = block_classes(dk.dalle_mask(kind, 256, 32, block=64))
    image_rows = classes[4:]
    assert image_rows[:, :4].eq(FULL).all()
    assert image_rows[:, 4:].eq(FULL).sum() == 0
    assert image_rows[:, 4:].eq(PARTIAL).sum(1).max() == most_partial


@pytest.mark.parametrize("shape", [(3, 4, 3), (7, 6, 11), (5, 5, 3)], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_decode_keys_are_the_allowed_keys(kind, shape):
    mask = dk.dalle_mask(kind, *shape)
    dense = loop_mask(kind, *shape)
    listed = decode_keys(mask, torch.device("cpu"))
    assert listed.keys.dtype == torch.int32 and len(listed.offsets) == mask.seq_len + 1
    for position in range(mask.seq_len):
        keys = listed.keys[listed.offsets[position]:listed.offsets[position + 1]].tolist()
        assert keys == dense[position].nonzero().flatten().tolist()


def test_layouts_are_cached_per_mask():
    cpu = torch.device("cpu")
    first = block_layout(dk.dalle_mask("conv", 9, 5, 3, block=16), cpu)
    assert block_layout(dk.dalle_mask("conv", 9, 5, 3, block=16), cpu) is first
    assert block_layout(dk.dalle_mask("conv", 9, 5, 5, block=16), cpu) is not first
    assert block_layout(dk.dalle_mask("conv", 9, 5, 3, block=32), cpu) is not first
    assert decode_keys(dk.dalle_mask("row", 9, 5), cpu) is decode_keys(dk.dalle_mask("row", 9, 5), cpu)


def test_mask_fields():
    mask = dk.dalle_mask("conv", 16, 4, 3, block=32)
    assert (mask.kind, mask.text_len, mask.image_size, mask.conv_kernel, mask.block) == ("conv", 16, 4, 3, 32)
    assert mask.seq_len == 32
    assert dk.dalle_mask("row", 16, 4).conv_kernel == 11 and dk.dalle_mask("row", 16, 4).block == 64
    same = dk.dalle_mask("conv", 16, 4, 3, block=32)
    assert mask == same and len({mask, same}) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        dk.dalle_mask("diagonal", 4, 3)
    with pytest.raises(TypeError, match="kind"):
        dk.dalle_mask(1, 4, 3)
    for name, args in (("text_len", (0, 3)), ("text_len", (-2, 3)), ("image_size", (4, 0))):
        with pytest.raises(ValueError, match=name):
            dk.dalle_mask("row", *args)
    for name, args in (("text_len", (4.0, 3)), ("text_len", (True, 3)), ("image_size", (4, "3"))):
        with pytest.raises(TypeError, match=name):
            dk.dalle_mask("row", *args)
    for bad in (0, 4, -3):
        with pytest.raises(ValueError, match="conv_kernel"):
            dk.dalle_mask("conv", 4, 3, bad)
    with pytest.raises(TypeError, match="conv_kernel"):
        dk.dalle_mask("conv", 4, 3, 3.0)
    for bad in (8, 48, 256):
        with pytest.raises(ValueError, match="block"):
            dk.dalle_mask("row", 4, 3, block=bad)
