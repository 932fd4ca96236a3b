"""Which implementation an op runs: the Triton kernel or the PyTorch reference.

CUDA tensors run the Triton kernels, CPU tensors the reference. The environment variable
``DALLE_KERNELS_BACKEND`` (``auto`` | ``triton`` | ``reference``, default ``auto``) overrides
that; it is read at every call, so tests and users can switch without re-importing. With
``DALLE_KERNELS_BACKEND=triton`` and ``TRITON_INTERPRET=1`` (set before triton is imported)
the Triton kernels run on CPU tensors through Triton's interpreter.
"""
import os

import torch

ENV_VAR = "DALLE_KERNELS_BACKEND"
BACKENDS = ("triton", "reference")


def _requested() -> str:
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice != "auto" and choice not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={choice!r}: expected one of auto, triton, reference")
    return choice


def interpreting() -> bool:
    """True when Triton kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def backend_for(tensor: torch.Tensor) -> str:
    """Name of the implementation (``"triton"`` or ``"reference"``) an op would use for ``tensor``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor: expected a torch.Tensor, got {type(tensor).__name__}")
    choice = _requested()
    if choice == "auto":
        return "triton" if tensor.is_cuda else "reference"
    if choice == "triton" and not tensor.is_cuda and not interpreting():
        raise RuntimeError(
            f"{ENV_VAR}=triton with a tensor on {tensor.device}: Triton kernels need a GPU tensor, "
            "or TRITON_INTERPRET=1 (set before importing triton) to run them on the CPU"
        )
    return choice
