"""Tolerances and comparisons for checking kernels against references (one place, per dtype).

Errors are measured in float64 as ||actual - expected|| / ||expected|| over the whole tensor.
"""
import torch

# Allowed relative L2 error of an output computed from inputs of this dtype (math in float32).
RELATIVE_TOLERANCE = {
    torch.float32: 2e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (0 when both are all zeros)."""
    if actual.shape != expected.shape:
        raise ValueError(f"actual: shape {tuple(actual.shape)} differs from expected {tuple(expected.shape)}")
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    diff, norm = torch.linalg.vector_norm(a - e).item(), torch.linalg.vector_norm(e).item()
    if diff != diff:
        return float("nan")
    return diff / norm if norm > 0 else diff


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = "output",
                 factor: float = 1.0) -> None:
    """Assert the relative error of ``actual`` stays within ``factor`` x the tolerance of ``dtype``."""
    tol = factor * RELATIVE_TOLERANCE[dtype]
    err = relative_error(actual, expected)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e} ({dtype})"


def kernel_dtypes(device: str | torch.device) -> list[torch.dtype]:
    """Input dtypes to test kernels in on ``device``: Triton's CPU interpreter has no bfloat16 arithmetic."""
    on_gpu = torch.device(device).type == "cuda"
    return [torch.float32, torch.float16] + ([torch.bfloat16] if on_gpu else [])
