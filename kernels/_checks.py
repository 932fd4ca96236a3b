"""Argument validation shared by every op: each error names the offending argument."""
import math
from numbers import Real

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_tensor(name: str, value, dtypes: tuple, *, min_ndim: int = 0, ndim: int | None = None) -> None:
    """Raise TypeError unless ``value`` is a tensor of one of ``dtypes``; ValueError on a bad rank."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: dtype {str(value.dtype).replace('torch.', '')} is not supported ({allowed})")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(value.shape)}")
    if value.ndim < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimension(s), got shape {tuple(value.shape)}")


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise ValueError unless all named tensors live on one device."""
    (first, ref), *rest = tensors.items()
    for name, value in rest:
        if value.device != ref.device:
            raise ValueError(f"{name}: on {value.device}, but {first} is on {ref.device}")


def check_int(name: str, value, minimum: int | None = None) -> int:
    """``value`` itself: TypeError unless it is an int (a bool is not), ValueError when below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return value


def normalize_dim(dim, ndim: int, name: str = "dim") -> int:
    """``dim`` as a non-negative axis of a tensor with ``ndim`` dimensions."""
    check_int(name, dim)
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}: {dim} is out of range for a tensor with {ndim} dimension(s)")
    return dim % ndim


def check_nonempty_axis(name: str, value: torch.Tensor, dim: int, what: str) -> None:
    """Raise ValueError when axis ``dim`` of ``value`` (which holds ``what``) has size 0."""
    if value.shape[dim] == 0:
        raise ValueError(f"{name}: the {what} axis (dim {dim}) has size 0, shape {tuple(value.shape)}")


def check_tau(tau) -> float:
    """The temperature as a float; it must be a finite real number > 0."""
    if isinstance(tau, torch.Tensor):
        if tau.numel() != 1:
            raise ValueError(f"tau: expected a scalar, got a tensor of shape {tuple(tau.shape)}")
        tau = tau.item()
    if isinstance(tau, bool) or not isinstance(tau, Real):
        raise TypeError(f"tau: expected a real number, got {type(tau).__name__}")
    tau = float(tau)
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau: must be finite and > 0, got {tau}")
    return tau


def check_noise(noise, logits: torch.Tensor) -> None:
    """``noise`` (uniform samples in (0, 1)) must be a float tensor shaped and placed like ``logits``."""
    check_tensor("noise", noise, FLOAT_DTYPES)
    if noise.shape != logits.shape:
        raise ValueError(f"noise: shape {tuple(noise.shape)} does not match logits {tuple(logits.shape)}")
    check_same_device(logits=logits, noise=noise)


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")


def check_codebook(codebook) -> None:
    """``codebook`` must be a (K, D) float tensor with K > 0 and D > 0."""
    check_tensor("codebook", codebook, FLOAT_DTYPES, ndim=2)
    if codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ValueError(f"codebook: K and D must be > 0, got shape {tuple(codebook.shape)}")
