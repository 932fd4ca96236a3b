"""Triton kernels of ``sparse_attention`` (flash attention over a DALL-E block layout) and of
``sparse_attention_decode`` (one query against the keys its mask allows).

q, k, v are ``(B, H, S, Dh)`` tensors of any strides; outputs and gradients are contiguous. One
program handles one tile of ``BLOCK`` positions of one (batch, head). The block layout is at the
granularity of the mask block (``mask.block`` positions, ``SPLIT`` tiles): a program reads the key
(or query) blocks its mask block visits and sweeps each tile by tile. Positions are the kernels'
order (:meth:`DalleMask.kernel_order`): raster order, except that ``column`` reads the image part
column-major, through index arithmetic on the pointers (``_raster_rows``), so its query blocks
visit only their own column segments and the text; results are stored at the raster rows, so the
output is in raster order. Tiles come from the cached block layout (``layout.py``): the tiles of
full blocks run without mask arithmetic, those of partial blocks compute the mask from indices
(``_allowed``). Tiles smaller than the mask block keep the tiles in registers (``_launch_settings``).

Forward (per query tile): online softmax in base 2 over the visited key tiles; saves each row's
base-2 log-sum-exp ``lse2 = log2 sum_j 2^(s_j)`` of its scores ``s_j = scale * log2(e) * <q, k_j>``.
Backward: the dq kernel (per query tile) recomputes ``P = 2^(s - lse2)`` and
``dS = P * (dP - delta)`` with ``dP = dO V^T`` and ``delta_i = <dO_i, O_i>`` (which it computes and
stores), then ``dQ = scale * dS K``; the dk/dv kernel (per key tile, over the query tiles that
visit it) forms ``dV = P^T dO`` and ``dK = scale * dS^T Q``.
"""
import math

import torch
import triton
import triton.language as tl

from ..._launch import LaunchSettings, dot_stages, pow2_block, warps_for
from ..._memory import new_output
from .layout import BlockList, block_layout, decode_keys
from .mask import KINDS, DalleMask

LOG2E = math.log2(math.e)
DECODE_BLOCK_N = 64  # keys per step of the decode kernel
MAX_TILE = 64  # most positions (queries or keys) in a tile of the training kernels (see _launch_settings)
TILE_ELEMENTS = 64 * 64  # most BLOCK x BLOCK_D elements of their 16-bit tiles


@triton.jit
def _raster_rows(pos, T, W, COLUMN_MAJOR: tl.constexpr):
    """Raster sequence index held at kernel position ``pos`` (see ``DalleMask.kernel_order``)."""
    if COLUMN_MAJOR:  # image position T + c*W + r holds raster T + r*W + c
        a = pos - T
        pos = tl.where(pos < T, pos, T + (a % W) * W + a // W)
    return pos


@triton.jit
def _wrap(d, W):
    """Distance on a cycle of W for |d| < W (a difference of two grid rows or columns): min(|d|, W - |d|).
    No modulo: it runs on the whole (BLOCK, BLOCK) tile, where an integer modulo costs tens of
    instructions an entry."""
    m = tl.abs(d)
    return tl.minimum(m, W - m)


@triton.jit
def _allowed(i, j, T, W, HALF, KIND: tl.constexpr):
    """May the query at kernel position i attend the key at kernel position j (broadcast)? The rules
    of docs/design.md#attention-masks; KIND indexes ``mask.KINDS``. Image terms are read only where
    both are image positions."""
    ok = j <= i  # causal, in both orders: column-major keeps every column segment in raster order
    if KIND == 1:  # row: a - b <= W
        ok = ok & ((j < T) | (i - j <= W))
    elif KIND == 2:  # column, column-major positions: the same column segment
        ok = ok & ((j < T) | ((i - T) // W == (j - T) // W))
    elif KIND == 3:  # conv: the wrapped k x k neighbourhood, HALF = k // 2
        a = i - T
        b = j - T
        near = (_wrap(a // W - b // W, W) <= HALF) & (_wrap(a % W - b % W, W) <= HALF)
        ok = ok & ((j < T) | near)
    return ok


@triton.jit
def _head(ptr, bh, H, stride_b, stride_h):
    """``ptr`` moved to (batch, head) number ``bh = b * H + h``: divided in int32 (``tl.program_id``'s
    type; a 64-bit division is a subroutine call), offset in int64."""
    return ptr + (bh // H).to(tl.int64) * stride_b + (bh % H).to(tl.int64) * stride_h


@triton.jit
def _block_rows(blk, S, T, W, COLUMN_MAJOR: tl.constexpr, BLOCK: tl.constexpr):
    """Kernel positions of block ``blk``, which of them lie inside S, and the raster rows they hold
    (int64: ``row * stride`` stays exact for any layout)."""
    pos = blk * BLOCK + tl.arange(0, BLOCK)
    return pos, pos < S, _raster_rows(pos, T, W, COLUMN_MAJOR).to(tl.int64)


@triton.jit
def _load_rows(ptr, rows, row_mask, d, Dh, stride_s, stride_d):
    """The (len(rows), BLOCK_D) tile of rows ``rows`` (raster indices) of one (batch, head), 0 outside."""
    return tl.load(ptr + rows[:, None] * stride_s + d[None, :] * stride_d,
                   mask=row_mask[:, None] & (d < Dh)[None, :], other=0.0)


@triton.jit
def _scores(q, k, q_pos, k_pos, S, T, W, HALF, scale_log2, KIND: tl.constexpr, MASKED: tl.constexpr):
    """log2-scaled scores q k^T * scale * log2(e) of a tile; -inf at entries the mask forbids when MASKED."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2
    if MASKED:
        ok = _allowed(q_pos[:, None], k_pos[None, :], T, W, HALF, KIND) & (k_pos < S)[None, :]
        s = tl.where(ok, s, float("-inf"))
    return s


@triton.jit
def _forward_tile(q, q_pos, kb, k_ptr, v_ptr, m, l, acc, S, T, W, HALF, Dh, scale_log2,
                  stride_ks, stride_kd, stride_vs, stride_vd,
                  KIND: tl.constexpr, COLUMN_MAJOR: tl.constexpr, MASKED: tl.constexpr,
                  BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """One online-softmax step over key block ``kb``: returns the updated (m, l, acc)."""
    k_pos, k_inside, k_rows = _block_rows(kb, S, T, W, COLUMN_MAJOR, BLOCK)
    d = tl.arange(0, BLOCK_D)
    k = _load_rows(k_ptr, k_rows, k_inside, d, Dh, stride_ks, stride_kd)
    v = _load_rows(v_ptr, k_rows, k_inside, d, Dh, stride_vs, stride_vd)
    s = _scores(q, k, q_pos, k_pos, S, T, W, HALF, scale_log2, KIND, MASKED)
    # m_new is finite: the first tile a row visits is full, or key block 0, and key 0 (text) is
    # allowed to every row (text_len >= 1), so no row ever subtracts -inf from -inf.
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp2(m - m_new)  # rescales what was summed under the old maximum
    p = tl.exp2(s - m_new[:, None])
    l = l * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    return m_new, l, acc


@triton.jit
def _sparse_attention_forward_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, full_offsets, full_blocks, partial_offsets, partial_blocks,
    scale_log2, S, T, W, HALF, H, Dh,
    stride_qb, stride_qh, stride_qs, stride_qd, stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    KIND: tl.constexpr, COLUMN_MAJOR: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr,
):
    # Program (query tile, batch * head): out rows and lse2 of the tile, over the key blocks of its mask block.
    qt = tl.program_id(0)
    qb = qt // SPLIT
    pid_bh = tl.program_id(1)
    bh = pid_bh.to(tl.int64)
    q_ptr = _head(q_ptr, pid_bh, H, stride_qb, stride_qh)
    k_ptr = _head(k_ptr, pid_bh, H, stride_kb, stride_kh)
    v_ptr = _head(v_ptr, pid_bh, H, stride_vb, stride_vh)
    q_pos, inside, q_rows = _block_rows(qt, S, T, W, COLUMN_MAJOR, BLOCK)
    d = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr, q_rows, inside, d, Dh, stride_qs, stride_qd)
    m = tl.full((BLOCK,), float("-inf"), tl.float32)  # running max of the log2 scores
    l = tl.zeros((BLOCK,), tl.float32)  # running sum of exp2(s - m)
    acc = tl.zeros((BLOCK, BLOCK_D), tl.float32)  # running sum of exp2(s - m) v
    for idx in range(tl.load(full_offsets + qb), tl.load(full_offsets + qb + 1)):
        kb = tl.load(full_blocks + idx) * SPLIT
        for t in range(SPLIT):  # key tiles in order: the first a row visits holds key 0 or is full
            m, l, acc = _forward_tile(q, q_pos, kb + t, k_ptr, v_ptr, m, l, acc, S, T, W, HALF, Dh, scale_log2,
                                      stride_ks, stride_kd, stride_vs, stride_vd, KIND, COLUMN_MAJOR, False,
                                      BLOCK, BLOCK_D)
    for idx in range(tl.load(partial_offsets + qb), tl.load(partial_offsets + qb + 1)):
        kb = tl.load(partial_blocks + idx) * SPLIT
        for t in range(SPLIT):  # a tile the mask forbids whole leaves (m, l, acc) as they were
            m, l, acc = _forward_tile(q, q_pos, kb + t, k_ptr, v_ptr, m, l, acc, S, T, W, HALF, Dh, scale_log2,
                                      stride_ks, stride_kd, stride_vs, stride_vd, KIND, COLUMN_MAJOR, True,
                                      BLOCK, BLOCK_D)
    out_rows = bh * S + q_rows  # out is contiguous (B, H, S, Dh), lse2 (B, H, S)
    tl.store(out_ptr + out_rows[:, None] * Dh + d[None, :], (acc / l[:, None]).to(out_ptr.dtype.element_ty),
             mask=inside[:, None] & (d < Dh)[None, :])
    tl.store(lse_ptr + out_rows, m + tl.log2(l), mask=inside)


@triton.jit
def _probabilities(q, k, q_pos, k_pos, lse2, S, T, W, HALF, scale_log2, KIND: tl.constexpr, MASKED: tl.constexpr):
    """P of a tile, recomputed from the saved base-2 log-sum-exp lse2 of its rows."""
    return tl.exp2(_scores(q, k, q_pos, k_pos, S, T, W, HALF, scale_log2, KIND, MASKED) - lse2[:, None])


@triton.jit
def _dq_tile(q, do, lse2, delta, q_pos, kb, k_ptr, v_ptr, dq, S, T, W, HALF, Dh, scale_log2,
             stride_ks, stride_kd, stride_vs, stride_vd,
             KIND: tl.constexpr, COLUMN_MAJOR: tl.constexpr, MASKED: tl.constexpr,
             BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """dq += dS K over key block ``kb`` (dq unscaled; the caller multiplies by scale)."""
    k_pos, k_inside, k_rows = _block_rows(kb, S, T, W, COLUMN_MAJOR, BLOCK)
    d = tl.arange(0, BLOCK_D)
    k = _load_rows(k_ptr, k_rows, k_inside, d, Dh, stride_ks, stride_kd)
    v = _load_rows(v_ptr, k_rows, k_inside, d, Dh, stride_vs, stride_vd)
    p = _probabilities(q, k, q_pos, k_pos, lse2, S, T, W, HALF, scale_log2, KIND, MASKED)
    dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    ds = p * (dp - delta[:, None])  # softmax backward: dS = P * (dP - delta)
    return tl.dot(ds.to(k.dtype), k, dq, input_precision="ieee")


@triton.jit
def _sparse_attention_dq_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, dout_ptr, lse_ptr, delta_ptr, dq_ptr,
    full_offsets, full_blocks, partial_offsets, partial_blocks, scale, scale_log2, S, T, W, HALF, H, Dh,
    stride_qb, stride_qh, stride_qs, stride_qd, stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd, stride_dob, stride_doh, stride_dos, stride_dod,
    KIND: tl.constexpr, COLUMN_MAJOR: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr,
):
    # Program (query tile, batch * head): dq of the tile, and delta = rowsum(dO * O) for the dk/dv kernel.
    qt = tl.program_id(0)
    qb = qt // SPLIT
    pid_bh = tl.program_id(1)
    bh = pid_bh.to(tl.int64)
    q_ptr = _head(q_ptr, pid_bh, H, stride_qb, stride_qh)
    k_ptr = _head(k_ptr, pid_bh, H, stride_kb, stride_kh)
    v_ptr = _head(v_ptr, pid_bh, H, stride_vb, stride_vh)
    dout_ptr = _head(dout_ptr, pid_bh, H, stride_dob, stride_doh)
    q_pos, inside, q_rows = _block_rows(qt, S, T, W, COLUMN_MAJOR, BLOCK)
    d = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr, q_rows, inside, d, Dh, stride_qs, stride_qd)
    do = _load_rows(dout_ptr, q_rows, inside, d, Dh, stride_dos, stride_dod)
    out_rows = bh * S + q_rows  # out, dq: contiguous (B, H, S, Dh); lse2, delta: (B, H, S)
    o = _load_rows(out_ptr, out_rows, inside, d, Dh, Dh, 1)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(delta_ptr + out_rows, delta, mask=inside)
    # Rows past S: lse2 = +inf, so P = 0 and they add nothing.
    lse2 = tl.load(lse_ptr + out_rows, mask=inside, other=float("inf"))
    dq = tl.zeros((BLOCK, BLOCK_D), tl.float32)
    for idx in range(tl.load(full_offsets + qb), tl.load(full_offsets + qb + 1)):
        kb = tl.load(full_blocks + idx) * SPLIT
        for t in range(SPLIT):
            dq = _dq_tile(q, do, lse2, delta, q_pos, kb + t, k_ptr, v_ptr, dq, S, T, W, HALF, Dh, scale_log2,
                          stride_ks, stride_kd, stride_vs, stride_vd, KIND, COLUMN_MAJOR, False, BLOCK, BLOCK_D)
    for idx in range(tl.load(partial_offsets + qb), tl.load(partial_offsets + qb + 1)):
        kb = tl.load(partial_blocks + idx) * SPLIT
        for t in range(SPLIT):
            dq = _dq_tile(q, do, lse2, delta, q_pos, kb + t, k_ptr, v_ptr, dq, S, T, W, HALF, Dh, scale_log2,
                          stride_ks, stride_kd, stride_vs, stride_vd, KIND, COLUMN_MAJOR, True, BLOCK, BLOCK_D)
    tl.store(dq_ptr + out_rows[:, None] * Dh + d[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=inside[:, None] & (d < Dh)[None, :])


@triton.jit
def _dkdv_tile(k, v, k_pos, qb, q_ptr, dout_ptr, lse_ptr, delta_ptr, bh, dk, dv, S, T, W, HALF, Dh, scale_log2,
               stride_qs, stride_qd, stride_dos, stride_dod,
               KIND: tl.constexpr, COLUMN_MAJOR: tl.constexpr, MASKED: tl.constexpr,
               BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """dv += P^T dO and dk += dS^T Q over query block ``qb`` (dk unscaled)."""
    q_pos, inside, q_rows = _block_rows(qb, S, T, W, COLUMN_MAJOR, BLOCK)
    d = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr, q_rows, inside, d, Dh, stride_qs, stride_qd)
    do = _load_rows(dout_ptr, q_rows, inside, d, Dh, stride_dos, stride_dod)
    lse2 = tl.load(lse_ptr + bh * S + q_rows, mask=inside, other=float("inf"))
    delta = tl.load(delta_ptr + bh * S + q_rows, mask=inside, other=0.0)
    p = _probabilities(q, k, q_pos, k_pos, lse2, S, T, W, HALF, scale_log2, KIND, MASKED)
    dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision="ieee")
    dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    ds = p * (dp - delta[:, None])  # dS = P * (dP - delta)
    dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision="ieee")
    return dk, dv


@triton.jit
def _sparse_attention_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    full_offsets, full_blocks, partial_offsets, partial_blocks, scale, scale_log2, S, T, W, HALF, H, Dh,
    stride_qb, stride_qh, stride_qs, stride_qd, stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd, stride_dob, stride_doh, stride_dos, stride_dod,
    KIND: tl.constexpr, COLUMN_MAJOR: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr,
):
    # Program (key tile, batch * head): dk and dv of the tile, over the query blocks that visit its mask block.
    kt = tl.program_id(0)
    kb = kt // SPLIT
    pid_bh = tl.program_id(1)
    bh = pid_bh.to(tl.int64)
    q_ptr = _head(q_ptr, pid_bh, H, stride_qb, stride_qh)
    k_ptr = _head(k_ptr, pid_bh, H, stride_kb, stride_kh)
    v_ptr = _head(v_ptr, pid_bh, H, stride_vb, stride_vh)
    dout_ptr = _head(dout_ptr, pid_bh, H, stride_dob, stride_doh)
    k_pos, inside, k_rows = _block_rows(kt, S, T, W, COLUMN_MAJOR, BLOCK)
    d = tl.arange(0, BLOCK_D)
    k = _load_rows(k_ptr, k_rows, inside, d, Dh, stride_ks, stride_kd)
    v = _load_rows(v_ptr, k_rows, inside, d, Dh, stride_vs, stride_vd)
    dk = tl.zeros((BLOCK, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK, BLOCK_D), tl.float32)
    for idx in range(tl.load(full_offsets + kb), tl.load(full_offsets + kb + 1)):
        qb = tl.load(full_blocks + idx) * SPLIT
        for t in range(SPLIT):
            dk, dv = _dkdv_tile(k, v, k_pos, qb + t, q_ptr, dout_ptr, lse_ptr, delta_ptr, bh, dk, dv, S, T, W, HALF,
                                Dh, scale_log2, stride_qs, stride_qd, stride_dos, stride_dod,
                                KIND, COLUMN_MAJOR, False, BLOCK, BLOCK_D)
    for idx in range(tl.load(partial_offsets + kb), tl.load(partial_offsets + kb + 1)):
        qb = tl.load(partial_blocks + idx) * SPLIT
        for t in range(SPLIT):
            dk, dv = _dkdv_tile(k, v, k_pos, qb + t, q_ptr, dout_ptr, lse_ptr, delta_ptr, bh, dk, dv, S, T, W, HALF,
                                Dh, scale_log2, stride_qs, stride_qd, stride_dos, stride_dod,
                                KIND, COLUMN_MAJOR, True, BLOCK, BLOCK_D)
    grad_rows = (bh * S + k_rows)[:, None] * Dh + d[None, :]  # dk, dv: contiguous (B, H, S, Dh)
    grad_mask = inside[:, None] & (d < Dh)[None, :]
    tl.store(dk_ptr + grad_rows, (dk * scale).to(dk_ptr.dtype.element_ty), mask=grad_mask)
    tl.store(dv_ptr + grad_rows, dv.to(dv_ptr.dtype.element_ty), mask=grad_mask)


@triton.jit
def _sparse_attention_decode_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, keys_ptr, num_keys, scale_log2, H, Dh,
    stride_qb, stride_qh, stride_qd, stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program (batch * head): one query row against the cache rows listed in keys_ptr, BLOCK_N at a time.
    pid_bh = tl.program_id(0)
    bh = pid_bh.to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    q = tl.load(_head(q_ptr, pid_bh, H, stride_qb, stride_qh) + d * stride_qd, mask=d < Dh, other=0.0).to(tl.float32)
    k_ptr = _head(k_ptr, pid_bh, H, stride_kb, stride_kh)
    v_ptr = _head(v_ptr, pid_bh, H, stride_vb, stride_vh)
    m = tl.full((1,), float("-inf"), tl.float32)  # running max of the log2 scores
    l = tl.zeros((1,), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for start in range(0, num_keys, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        listed = j < num_keys
        rows = tl.load(keys_ptr + j, mask=listed, other=0).to(tl.int64)
        k = _load_rows(k_ptr, rows, listed, d, Dh, stride_ks, stride_kd).to(tl.float32)
        v = _load_rows(v_ptr, rows, listed, d, Dh, stride_vs, stride_vd).to(tl.float32)
        s = tl.where(listed, tl.sum(k * q[None, :], 1) * scale_log2, float("-inf"))
        # Every step holds a listed key (num_keys >= 1, the query's own position), so m stays finite.
        m_new = tl.maximum(m, tl.max(s, 0))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new)
        l = l * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m = m_new
    tl.store(out_ptr + bh * Dh + d, (acc / l).to(out_ptr.dtype.element_ty), mask=d < Dh)


def _head_block(head_dim: int) -> int:
    """BLOCK_D: the head dim padded to a power of two, >= 16 (the smallest tl.dot dim)."""
    return pow2_block(head_dim, 16)


def _launch_settings(mask: DalleMask, head_dim: int, dtype: torch.dtype) -> LaunchSettings:
    """Tiles of the training kernels: ``BLOCK`` positions (queries or keys) by :func:`_head_block`;
    ``SPLIT = mask.block // BLOCK`` tiles make a mask block.

    BLOCK is the mask block up to 64 positions and TILE_ELEMENTS (BLOCK x BLOCK_D): dq and dk/dv
    hold P, dP and dS, three BLOCK x BLOCK float32 tiles, which at 128 x 128 spill even on 8 warps.
    float32 dots run on FMA units with their operands in registers: their tiles are a quarter of
    that, at most 32 positions (32 x 32, 16 x 64). A smaller tile reads each key tile once per
    query tile (at 64, twice the K/V reads of a 128 block) but keeps its tiles in registers. Warps
    from the larger of the score and accumulator tiles; pipelined unless float32."""
    block_d = _head_block(head_dim)
    most, elements = (MAX_TILE // 2, TILE_ELEMENTS // 4) if dtype == torch.float32 else (MAX_TILE, TILE_ELEMENTS)
    tile = min(mask.block, most, max(16, elements // block_d))
    return LaunchSettings({"BLOCK": tile, "BLOCK_D": block_d, "SPLIT": mask.block // tile},
                          num_warps=warps_for(tile * max(tile, block_d), 1024, minimum=4, maximum=8),
                          num_stages=dot_stages(dtype, 2))


def _decode_launch_settings(head_dim: int) -> LaunchSettings:
    """Tiles of the decode kernel: DECODE_BLOCK_N keys by :func:`_head_block`, 4 warps."""
    return LaunchSettings({"BLOCK_N": DECODE_BLOCK_N, "BLOCK_D": _head_block(head_dim)}, num_warps=4)


def _mask_args(mask: DalleMask) -> tuple[int, int, int, int]:
    """(S, T, W, HALF) as the kernels take them."""
    return mask.seq_len, mask.text_len, mask.image_size, mask.conv_kernel // 2


def _layout_args(blocks: BlockList, more: BlockList) -> tuple[torch.Tensor, ...]:
    return blocks.offsets, blocks.blocks, more.offsets, more.blocks


def sparse_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DalleMask,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse2)``: out (B, H, S, Dh) contiguous in q's dtype; lse2 (B, H, S) float32, each row's
    base-2 log-sum-exp of its allowed scores times ``scale * log2(e)`` (natural lse = lse2 / log2(e)).
    q, k, v: (B, H, S, Dh), any strides."""
    batch, heads, _, head_dim = q.shape
    out = new_output(q.shape, q.dtype, q.device)
    lse2 = new_output(q.shape[:3], torch.float32, q.device)
    if batch * heads == 0:
        return out, lse2
    layout = block_layout(mask, q.device)
    s = _launch_settings(mask, head_dim, q.dtype)
    _sparse_attention_forward_kernel[(triton.cdiv(mask.seq_len, s["BLOCK"]), batch * heads)](
        q, k, v, out, lse2, *_layout_args(layout.full_by_query, layout.partial_by_query), scale * LOG2E,
        *_mask_args(mask), heads, head_dim, *q.stride(), *k.stride(), *v.stride(),
        KIND=KINDS.index(mask.kind), COLUMN_MAJOR=mask.column_major, **s.options,
    )
    return out, lse2


def sparse_attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              out: torch.Tensor, lse2: torch.Tensor, mask: DalleMask,
                              scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)``, contiguous, shaped and typed like q, k, v, from the upstream gradient
    ``dout`` (any strides) and what :func:`sparse_attention_forward` returned."""
    batch, heads, _, head_dim = q.shape
    dq, dk, dv = (new_output(t.shape, t.dtype, t.device) for t in (q, k, v))
    if batch * heads == 0:
        return dq, dk, dv
    delta = new_output(lse2.shape, torch.float32, q.device)
    layout = block_layout(mask, q.device)
    s = _launch_settings(mask, head_dim, q.dtype)
    grid = (triton.cdiv(mask.seq_len, s["BLOCK"]), batch * heads)
    shared = (scale, scale * LOG2E, *_mask_args(mask), heads, head_dim, *q.stride(), *k.stride(), *v.stride(),
              *dout.stride())
    constants = dict(KIND=KINDS.index(mask.kind), COLUMN_MAJOR=mask.column_major, **s.options)
    _sparse_attention_dq_kernel[grid](q, k, v, out, dout, lse2, delta, dq,
                                      *_layout_args(layout.full_by_query, layout.partial_by_query), *shared,
                                      **constants)
    _sparse_attention_dkdv_kernel[grid](q, k, v, dout, lse2, delta, dk, dv,
                                        *_layout_args(layout.full_by_key, layout.partial_by_key), *shared,
                                        **constants)
    return dq, dk, dv


def sparse_attention_decode_forward(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                    mask: DalleMask, position: int, scale: float) -> torch.Tensor:
    """(B, H, 1, Dh) contiguous: query row ``position`` (q (B, H, 1, Dh)) against the cache rows
    (k_cache, v_cache (B, H, S_cache, Dh), any strides) that ``mask`` allows it; reads no other row."""
    batch, heads, _, head_dim = q.shape
    out = new_output(q.shape, q.dtype, q.device)
    if batch * heads == 0:
        return out
    listed = decode_keys(mask, q.device)
    start, end = listed.offsets[position], listed.offsets[position + 1]
    _sparse_attention_decode_kernel[(batch * heads,)](
        q, k_cache, v_cache, out, listed.keys[start:], end - start, scale * LOG2E, heads, head_dim,
        q.stride(0), q.stride(1), q.stride(3), *k_cache.stride(), *v_cache.stride(),
        **_decode_launch_settings(head_dim).options,
    )
    return out


class SparseAttentionFunction(torch.autograd.Function):
    """Block-sparse flash attention over a DALL-E mask; saves out and lse2, recomputes P in backward."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DalleMask, scale: float) -> torch.Tensor:
        out, lse2 = sparse_attention_forward(q, k, v, mask, scale)
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(q, k, v, out, lse2)
        ctx.mask, ctx.scale = mask, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, lse2 = ctx.saved_tensors
        grads = sparse_attention_backward(grad_out, q, k, v, out, lse2, ctx.mask, ctx.scale)
        return (*(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)), None, None)
