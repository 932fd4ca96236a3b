"""``gumbel_softmax``: argument checks and backend dispatch (kernel in ``kernel.py``, oracle in ``reference.py``)."""
import torch

from ..._checks import (
    FLOAT_DTYPES,
    check_generator,
    check_noise,
    check_nonempty_axis,
    check_tau,
    check_tensor,
    normalize_dim,
)
from ..._gumbel import draw_seed, uniform_noise
from ...backend import backend_for
from .kernel import GumbelSoftmaxFunction
from .reference import gumbel_softmax_reference


def check_gumbel_args(logits, tau, hard, dim, noise, generator) -> tuple[float, int]:
    """Validate the arguments the Gumbel-softmax ops share; returns (tau, non-negative dim)."""
    check_tensor("logits", logits, FLOAT_DTYPES, min_ndim=1)
    tau = check_tau(tau)
    if not isinstance(hard, bool):
        raise TypeError(f"hard: expected a bool, got {type(hard).__name__}")
    dim = normalize_dim(dim, logits.ndim)
    check_nonempty_axis("logits", logits, dim, "category (K)")
    if noise is not None:
        check_noise(noise, logits)
    check_generator(generator)
    return tau, dim


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, dim: int = -1, *,
                   noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-softmax sample y = softmax((logits + g) / tau) along ``dim``, g = -log(-log(u)).

    Same contract as ``torch.nn.functional.gumbel_softmax``. logits: any shape with the K
    categories at ``dim`` (e.g. ``(N, K)`` with ``dim=-1`` or channels-first ``(B, K, H, W)``
    with ``dim=1``, read in place); float16/bfloat16/float32, math in float32. Returns a tensor
    of the same shape and dtype. ``noise``: optional uniform (0, 1) samples shaped like logits;
    without it the noise comes from a seed drawn from ``generator`` (or torch's default RNG).
    ``hard=True``: the exact one-hot of the argmax forward, the soft gradient backward.
    """
    tau, dim = check_gumbel_args(logits, tau, hard, dim, noise, generator)
    seed = draw_seed(generator) if noise is None else 0
    if backend_for(logits) == "triton":
        if not torch.is_grad_enabled():  # no graph will be built: keep the forward from saving for a backward
            logits = logits.detach()
        return GumbelSoftmaxFunction.apply(logits, tau, hard, dim, noise, seed)
    if noise is None:
        noise = uniform_noise(logits.shape, seed, logits.device)
    return gumbel_softmax_reference(logits, tau, hard, dim, noise)
