"""Launch settings of every Triton kernel: tile sizes, warps and pipeline stages, and the rules
the ops compute them with.

Each op's ``_launch_settings`` returns a :class:`LaunchSettings`; a launcher reads tile sizes from
it for its grid (``settings["BLOCK_R"]``) and passes it whole to the kernel
(``kernel[grid](..., **settings.options)``).
"""
from dataclasses import dataclass

import torch
import triton


@dataclass(frozen=True)
class LaunchSettings:
    """Tile sizes and launch options of a kernel launch.

    ``blocks`` maps the kernel's block-size constexprs (``"BLOCK_R"``, ``"BLOCK_D"``, ...) to their
    values; ``num_stages`` None leaves Triton's default.
    """

    blocks: dict[str, int]
    num_warps: int
    num_stages: int | None = None

    def __getitem__(self, name: str) -> int:
        """The size of block ``name``."""
        return self.blocks[name]

    @property
    def options(self) -> dict[str, int]:
        """Keyword arguments of the launch: the block sizes, ``num_warps`` and, if set, ``num_stages``."""
        stages = {} if self.num_stages is None else {"num_stages": self.num_stages}
        return {**self.blocks, "num_warps": self.num_warps, **stages}


def pow2_block(size: int, minimum: int = 1, maximum: int | None = None) -> int:
    """The tile size along an axis of ``size`` elements: the next power of two, within [minimum, maximum]."""
    block = max(triton.next_power_of_2(size), minimum)
    return block if maximum is None else min(block, maximum)


def warps_for(elements: int, per_warp: int, minimum: int = 1, maximum: int = 16) -> int:
    """Warps for a tile of ``elements``: one per ``per_warp`` elements, within [minimum, maximum]."""
    return min(max(elements // per_warp, minimum), maximum)


def dot_stages(dtype: torch.dtype, stages: int) -> int:
    """Software-pipeline stages of a kernel whose tl.dot operands are ``dtype``: float32 dots run on
    FMA units, where pipelining (num_stages > 1) only adds register pressure, so 1; else ``stages``."""
    return 1 if dtype == torch.float32 else stages
