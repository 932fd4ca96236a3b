"""What the sparse-attention kernels visit: block layouts (training) and key lists (decoding).

The kernels cut their sequence positions (in :meth:`DalleMask.kernel_order`) into blocks of
``mask.block``. A (query block, key block) tile is

- *full* when every entry is allowed and the key block lies inside S: no mask arithmetic at all;
- *partial* when some entry is allowed: the mask is computed in-kernel from the indices;
- skipped otherwise: never loaded, never computed.

Query positions past S in the last block do not count (their rows are never stored). The layout
is stored twice, as compressed sparse rows: by query block (forward, dq) and by key block (dk, dv).
Everything here is cached per mask (kind, T, W, k, block) and device.
"""
import functools
from typing import NamedTuple

import torch
import triton

from .mask import DalleMask

SKIP, PARTIAL, FULL = 0, 1, 2
CHUNK_ENTRIES = 1 << 22  # mask entries evaluated at once while building key lists


class BlockList(NamedTuple):
    """Compressed sparse rows: the blocks of row r are ``blocks[offsets[r]:offsets[r + 1]]`` (int32, ascending)."""

    offsets: torch.Tensor
    blocks: torch.Tensor


class BlockLayout(NamedTuple):
    """The tiles the kernels visit, by query block and by key block, split into full and partial."""

    num_blocks: int
    full_by_query: BlockList  # per query block: its full key blocks
    partial_by_query: BlockList
    full_by_key: BlockList  # per key block: the query blocks for which it is full
    partial_by_key: BlockList


class DecodeKeys(NamedTuple):
    """The keys query ``p`` may attend: raster indices ``keys[offsets[p]:offsets[p + 1]]`` (int32, ascending)."""

    offsets: list[int]  # on the host, so slicing for a position never waits for the device
    keys: torch.Tensor


@functools.lru_cache(maxsize=64)
def block_classes(mask: DalleMask) -> torch.Tensor:
    """(num_blocks, num_blocks) int8 on the CPU: SKIP, PARTIAL or FULL per (query block, key block)."""
    s, block = mask.seq_len, mask.block
    n = triton.cdiv(s, block)
    order = mask.kernel_order()
    key_pos = torch.arange(n * block)
    key_inside = key_pos < s
    key_rows = order[key_pos.clamp(max=s - 1)]
    classes = torch.empty(n, n, dtype=torch.int8)
    for q in range(n):
        rows = order[q * block:(q + 1) * block]  # only real queries: positions past S do not count
        allowed = (mask.allows(rows[:, None], key_rows[None, :]) & key_inside).view(len(rows), n, block)
        classes[q] = torch.where(allowed.all(2).all(0), FULL, torch.where(allowed.any(2).any(0), PARTIAL, SKIP))
    return classes


def _block_list(selected: torch.Tensor, device: torch.device) -> BlockList:
    """CSR of a (rows, blocks) bool matrix, as int32 tensors on ``device``."""
    offsets = torch.zeros(selected.shape[0] + 1, dtype=torch.int32)
    torch.cumsum(selected.sum(1), 0, out=offsets[1:])
    blocks = selected.nonzero()[:, 1].to(torch.int32)  # row-major: grouped by row, ascending within one
    return BlockList(offsets.to(device), blocks.to(device))


@functools.lru_cache(maxsize=64)
def block_layout(mask: DalleMask, device: torch.device) -> BlockLayout:
    """The block layout of ``mask`` on ``device`` (cached)."""
    classes = block_classes(mask)
    return BlockLayout(classes.shape[0], _block_list(classes == FULL, device), _block_list(classes == PARTIAL, device),
                       _block_list((classes == FULL).t(), device), _block_list((classes == PARTIAL).t(), device))


@functools.lru_cache(maxsize=64)
def decode_keys(mask: DalleMask, device: torch.device) -> DecodeKeys:
    """For every query position, the raster indices of the keys it may attend (cached)."""
    s = mask.seq_len
    keys = torch.arange(s)
    offsets, chunks = [0], []
    rows_per_chunk = max(1, CHUNK_ENTRIES // s)
    for start in range(0, s, rows_per_chunk):
        rows = torch.arange(start, min(s, start + rows_per_chunk))
        allowed = mask.allows(rows[:, None], keys[None, :])
        for count in allowed.sum(1).tolist():
            offsets.append(offsets[-1] + count)
        chunks.append(allowed.nonzero()[:, 1].to(torch.int32))
    return DecodeKeys(offsets, torch.cat(chunks).to(device))
