"""Triton ``sparse_attention`` and ``sparse_attention_decode`` against the PyTorch reference, a float64
dense attention over the entry-by-entry mask of docs/design.md#attention-masks (``oracles.py``) and
PyTorch's FlexAttention with that mask, forward and all three gradients, for every kind.

Block size 16 (the interpreter's smallest tl.dot); shapes with S not a multiple of it, W not a
power of two, odd text_len, several blocks, B and H > 1. FlexAttention is compared in float32; on a
CPU it has no backward (``flex_attention`` refuses inputs that require grad there), so its
gradients are compared on a GPU only, its forward everywhere.
"""
import warnings

import pytest
import torch
from oracles import KINDS, attention_float64, gradients, loop_mask
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import dalle_kernels as dk
from dalle_kernels.ops.sparse_attention import DalleMask
from dalle_kernels.ops.sparse_attention import kernel as attention_kernel
from dalle_kernels.ops.sparse_attention import reference as attention_reference
from dalle_kernels.ops.sparse_attention.layout import BlockLayout, BlockList, block_layout
from dalle_kernels.ops.sparse_attention.reference import sparse_attention_reference
from dalle_kernels.testing import assert_close, kernel_dtypes

BLOCK = 16
# (text_len, image_size, conv_kernel, head_dim, batch, heads): S = 34 (3 blocks, the last of 2
# rows), 49 (4 blocks, W even) and 52 (4 blocks, k > W: the conv neighbourhood covers the grid);
# head dims 16, 24 and 48 (not powers of two: padded, masked).
SHAPES = [(9, 5, 3, 16, 2, 3), (13, 6, 5, 24, 2, 2), (3, 7, 11, 48, 3, 1)]


def make_mask(kind: str, shape: tuple) -> DalleMask:
    text_len, image_size, conv_kernel = shape[:3]
    return dk.dalle_mask(kind, text_len, image_size, conv_kernel, block=BLOCK)


def random_qkv(shape: tuple, device: str, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    text_len, image_size, _, head_dim, batch, heads = shape
    s = text_len + image_size**2
    return [torch.randn(batch, heads, s, head_dim, device=device).to(dtype) for _ in range(3)]


def flex_reference(q, k, v, dense: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """FlexAttention (eager) with a mask_mod reading the entry-by-entry mask."""
    dense = dense.to(q.device)
    s = dense.shape[0]
    block_mask = create_block_mask(lambda b, h, q_idx, kv_idx: dense[q_idx, kv_idx], None, None, s, s,
                                   device=q.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": eager is the point
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale)


def check_against_oracles(q, k, v, mask, dense, dtype, grad_factor=1.0, scale=None):
    """dk.sparse_attention vs the reference, float64 and FlexAttention: output, dq, dk and dv for a
    random, non-contiguous upstream gradient. FlexAttention, there to confirm the mask's meaning,
    runs in float32 only (float64 checks the precision), and its gradients on a GPU only."""
    grad_out = torch.randn(q.shape[::-1], device=q.device).permute(3, 2, 1, 0)
    impls = {
        "triton": lambda *t: dk.sparse_attention(*t, mask, scale),
        "reference": lambda *t: sparse_attention_reference(*t, mask, q.shape[-1] ** -0.5 if scale is None else scale),
        "float64": lambda *t: attention_float64(*t, dense, scale),
    }
    results = {name: gradients(fn, (q, k, v), grad_out) for name, fn in impls.items()}
    if q.dtype == torch.float32:
        if q.is_cuda:
            results["flex"] = gradients(lambda *t: flex_reference(*t, dense, scale), (q, k, v), grad_out)
        else:
            results["flex"] = (flex_reference(q, k, v, dense, scale),)
    out = results["triton"][0]
    assert out.dtype == q.dtype and out.is_contiguous() and out.shape == q.shape
    for oracle, expected in results.items():
        for name, actual, want, factor in zip(("output", "dq", "dk", "dv"), results["triton"], expected,
                                              (1.0, grad_factor, grad_factor, grad_factor)):
            assert actual.shape == want.shape, name
            assert_close(actual, want, dtype, f"{name} vs {oracle}", factor)
    return results["triton"]


# ---------------------------------------------------------------- training: forward and backward


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-W{}-k{}-Dh{}-B{}-H{}".format(*s))
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference_float64_and_flex(device, kind, shape):
    mask = make_mask(kind, shape)
    check_against_oracles(*random_qkv(shape, device), mask, loop_mask(kind, *shape[:3]), torch.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_16_bit(device, kind):
    shape = SHAPES[1]
    for dtype in kernel_dtypes(device)[1:]:
        check_against_oracles(*random_qkv(shape, device, dtype), make_mask(kind, shape),
                              loop_mask(kind, *shape[:3]), dtype, grad_factor=2.0)


@pytest.mark.parametrize("block", [64, 128])
@pytest.mark.parametrize("kind", KINDS)
def test_tiles_smaller_than_the_mask_block(device, kind, block):
    # float32 at head dim 48 runs 16 x 64 tiles: SPLIT = 4 or 8 of them a mask block, the layout's
    # full and partial blocks swept tile by tile; S = 153 (2 or 3 mask blocks) ends inside a tile.
    shape = (9, 12, 5, 48, 1, 2)
    mask = dk.dalle_mask(kind, *shape[:3], block=block)
    settings = attention_kernel._launch_settings(mask, shape[3], torch.float32)
    assert (settings["BLOCK"], settings["SPLIT"]) == (16, block // 16)
    check_against_oracles(*random_qkv(shape, device), mask, loop_mask(kind, *shape[:3]), torch.float32)


@pytest.mark.parametrize("kind", ["column", "conv"])
def test_non_contiguous_inputs(device, kind):
    # (B, S, H, 2 * Dh) projections viewed as (B, H, S, Dh): strided along S, H and Dh (every other element).
    text_len, image_size, conv_kernel, head_dim, batch, heads = shape = SHAPES[0]
    s = text_len + image_size**2
    q, k, v = (torch.randn(batch, s, heads, 2 * head_dim, device=device)[..., ::2].transpose(1, 2)
               for _ in range(3))
    assert not q.is_contiguous() and q.stride(3) == 2
    check_against_oracles(q, k, v, make_mask(kind, shape), loop_mask(kind, *shape[:3]), torch.float32)


@pytest.mark.parametrize("head_dim", [1, 80, 128])
def test_head_dims(device, head_dim):
    # The ends of the supported range, and a head dim padded from 80 to a 128-wide tile.
    shape = (5, 5, 3, head_dim, 1, 2)
    check_against_oracles(*random_qkv(shape, device), make_mask("conv", shape), loop_mask("conv", *shape[:3]),
                          torch.float32)


def test_custom_scale(device):
    shape = SHAPES[0]
    check_against_oracles(*random_qkv(shape, device), make_mask("row", shape), loop_mask("row", *shape[:3]),
                          torch.float32, scale=0.31)


def test_gradient_of_one_input_only(device):
    shape = SHAPES[0]
    mask, dense = make_mask("conv", shape), loop_mask("conv", *shape[:3])
    q, k, v = random_qkv(shape, device)
    v.requires_grad_()
    grad_out = torch.randn_like(q)
    (actual,) = torch.autograd.grad(dk.sparse_attention(q, k, v, mask), v, grad_out)
    (expected,) = torch.autograd.grad(attention_float64(q, k, v, dense), v, grad_out.double())
    assert_close(actual, expected, torch.float32, "dv")


def test_without_autograd(device):
    shape = SHAPES[0]
    q, k, v = (t.requires_grad_() for t in random_qkv(shape, device))
    with torch.no_grad():
        out = dk.sparse_attention(q, k, v, make_mask("column", shape))
    assert out.grad_fn is None
    assert_close(out, attention_float64(q, k, v, loop_mask("column", *shape[:3])), torch.float32)


def test_kernels_visit_only_the_layout(device, monkeypatch):
    # Drop one full tile (the first key block for the last query block) from the layout: the
    # result is attention without those entries, forward and backward. So the kernels compute
    # the tiles of the layout, and nothing outside it.
    shape = SHAPES[0]
    mask = make_mask("full", shape)
    true_layout = block_layout(mask, torch.device(device))
    last, dropped = true_layout.num_blocks - 1, 0

    def without_tile(blocks: BlockList, row: int, col: int) -> BlockList:
        offsets, listed = blocks.offsets.tolist(), blocks.blocks.tolist()
        start, end = offsets[row], offsets[row + 1]
        listed.pop(start + listed[start:end].index(col))
        offsets[row + 1:] = [o - 1 for o in offsets[row + 1:]]
        return BlockList(torch.tensor(offsets, dtype=torch.int32, device=device),
                         torch.tensor(listed, dtype=torch.int32, device=device))

    broken = BlockLayout(true_layout.num_blocks, without_tile(true_layout.full_by_query, last, dropped),
                         true_layout.partial_by_query, without_tile(true_layout.full_by_key, dropped, last),
                         true_layout.partial_by_key)
    monkeypatch.setattr(attention_kernel, "block_layout", lambda *_: broken)
    dense = loop_mask("full", *shape[:3])
    dense[last * BLOCK:, dropped * BLOCK:(dropped + 1) * BLOCK] = False
    q, k, v = random_qkv(shape, device)
    grad_out = torch.randn_like(q)
    actual = gradients(lambda *t: dk.sparse_attention(*t, mask), (q, k, v), grad_out)
    expected = gradients(lambda *t: attention_float64(*t, dense), (q, k, v), grad_out)
    for name, a, e in zip(("output", "dq", "dk", "dv"), actual, expected):
        assert_close(a, e, torch.float32, f"{name} without the tile")


def test_reference_in_chunks_at_the_paper_shape(monkeypatch):
    # The CPU path at S = 1280, in query chunks (a small chunk size forces several) and
    # checkpointed under autograd: equal to float64 dense attention, forward and backward.
    monkeypatch.setattr(attention_reference, "CHUNK_ENTRIES", 1 << 18)
    mask = dk.dalle_mask("conv", 256, 32)
    q, k, v = (torch.randn(1, 2, mask.seq_len, 16) for _ in range(3))
    grad_out = torch.randn_like(q)
    actual = gradients(lambda *t: sparse_attention_reference(*t, mask, 0.25), (q, k, v), grad_out)
    expected = gradients(lambda *t: attention_float64(*t, loop_mask("conv", 256, 32), 0.25), (q, k, v), grad_out)
    for name, a, e in zip(("output", "dq", "dk", "dv"), actual, expected):
        assert_close(a, e, torch.float32, name)


def test_empty_batch(device):
    shape = SHAPES[0]
    q, k, v = (t[:0].requires_grad_() for t in random_qkv(shape, device))
    out = dk.sparse_attention(q, k, v, make_mask("row", shape))
    assert out.shape == q.shape
    dq, dk_, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert dq.shape == dk_.shape == dv.shape == q.shape


# ---------------------------------------------------------------- cached decoding


@pytest.mark.parametrize("kind", KINDS)
def test_decode_equals_the_row_of_sparse_attention(device, kind):
    # Text positions, the first image position, one in the middle and the last. Every cache row the
    # position may not attend (later rows included) holds NaN: reading any of them would show.
    shape = SHAPES[1]
    text_len, image_size = shape[:2]
    mask = make_mask(kind, shape)
    dense = loop_mask(kind, *shape[:3])
    s = mask.seq_len
    for dtype in kernel_dtypes(device):
        q, k, v = random_qkv(shape, device, dtype)
        rows = dk.sparse_attention(q, k, v, mask)
        for position in (0, text_len // 2, text_len - 1, text_len, text_len + image_size + 2, s - 1):
            forbidden = torch.cat([~dense[position], torch.ones(3, dtype=torch.bool)]).to(device)
            k_cache, v_cache = (torch.cat([t, torch.zeros_like(t[:, :, :3])], 2) for t in (k, v))
            k_cache[:, :, forbidden] = float("nan")
            v_cache[:, :, forbidden] = float("nan")
            out = dk.sparse_attention_decode(q[:, :, position:position + 1], k_cache, v_cache, mask, position)
            assert out.shape == (q.shape[0], q.shape[1], 1, q.shape[3]) and out.dtype == dtype
            name = f"{kind} position {position} ({dtype})"
            assert_close(out, rows[:, :, position:position + 1], dtype, f"{name} vs sparse_attention")
            expected = attention_float64(q[:, :, position:position + 1], k, v, dense[position:position + 1])
            assert_close(out, expected, dtype, f"{name} vs float64")


def test_decode_reads_a_strided_cache_and_scale(device):
    # A preallocated (B, S_cache, H, Dh) cache viewed as (B, H, S_cache, Dh); a custom scale.
    shape = SHAPES[2]
    mask = make_mask("column", shape)
    q, k, v = random_qkv(shape, device)
    caches = [torch.randn(q.shape[0], mask.seq_len + 5, q.shape[1], q.shape[3], device=device) for _ in range(2)]
    for cache, t in zip(caches, (k, v)):
        cache[:, :mask.seq_len] = t.transpose(1, 2)
    k_cache, v_cache = (cache.transpose(1, 2) for cache in caches)
    position = mask.seq_len - 4
    out = dk.sparse_attention_decode(q[:, :, position:position + 1], k_cache, v_cache, mask, position, scale=0.2)
    expected = attention_float64(q[:, :, position:position + 1], k, v,
                                 loop_mask("column", *shape[:3])[position:position + 1], 0.2)
    assert_close(out, expected, torch.float32)


def test_decode_carries_no_gradient(device):
    shape = SHAPES[0]
    q, k, v = (t.requires_grad_() for t in random_qkv(shape, device))
    out = dk.sparse_attention_decode(q[:, :, 5:6], k, v, make_mask("row", shape), 5)
    assert out.grad_fn is None and not out.requires_grad


# ---------------------------------------------------------------- errors


def test_bad_inputs(device):
    shape = SHAPES[0]
    mask = make_mask("row", shape)
    q, k, v = random_qkv(shape, device)
    op = dk.sparse_attention
    with pytest.raises(TypeError, match="mask"):
        op(q, k, v, mask.dense())
    with pytest.raises(ValueError, match="q"):
        op(q[0], k, v, mask)  # rank 3
    with pytest.raises(ValueError, match="k"):
        op(q, k[0], v, mask)
    with pytest.raises(ValueError, match="q: sequence length"):
        op(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], mask)  # S does not match the mask
    with pytest.raises(ValueError, match="v: sequence length"):
        op(q, k, v[:, :, :-1], mask)
    with pytest.raises(ValueError, match="k"):
        op(q, k[..., :-1], v, mask)  # Dh mismatch
    with pytest.raises(ValueError, match="v"):
        op(q, k, v[:, :1], mask)  # heads mismatch
    with pytest.raises(TypeError, match="k"):
        op(q, k.double(), v, mask)
    with pytest.raises(TypeError, match="v"):
        op(q, k, v.half(), mask)
    with pytest.raises(TypeError, match="q"):
        op(q.long(), k, v, mask)
    with pytest.raises(ValueError, match="k"):
        op(q, k.to("meta"), v, mask)
    with pytest.raises(ValueError, match="head dim"):
        big = torch.zeros(*q.shape[:3], 129, device=device)
        op(big, big, big, mask)
    with pytest.raises(ValueError, match="scale"):
        op(q, k, v, mask, scale=float("inf"))
    with pytest.raises(TypeError, match="scale"):
        op(q, k, v, mask, scale="0.1")

    decode = dk.sparse_attention_decode
    one = q[:, :, :1]
    with pytest.raises(ValueError, match="q"):
        decode(q[:, :, :2], k, v, mask, 1)  # two queries
    with pytest.raises(ValueError, match="position"):
        decode(one, k, v, mask, mask.seq_len)
    with pytest.raises(ValueError, match="position"):
        decode(one, k[:, :, :4], v[:, :, :4], mask, 4)  # past the cache
    with pytest.raises(ValueError, match="position"):
        decode(one, k, v, mask, -1)
    with pytest.raises(TypeError, match="position"):
        decode(one, k, v, mask, True)
    with pytest.raises(ValueError, match="k_cache"):
        decode(one, k[..., :-1], v, mask, 3)
    with pytest.raises(ValueError, match="v_cache"):
        decode(one, k, v[:, :, :-1], mask, 3)
    with pytest.raises(TypeError, match="mask"):
        decode(one, k, v, "row", 3)
