"""Output allocation for every op. With ``DALLE_KERNELS_POISON=1`` new outputs are filled with
NaN (floats) or -1 (integers) first, so a test catches a kernel that leaves elements unwritten."""
import os

import torch

POISON_ENV = "DALLE_KERNELS_POISON"


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty(shape)``, poisoned when ``DALLE_KERNELS_POISON=1``."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if os.environ.get(POISON_ENV) == "1":
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out
