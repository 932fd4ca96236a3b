"""dalle_kernels: Triton kernels of DALL-E, each beside a plain PyTorch reference.

CUDA tensors run the Triton kernels, CPU tensors the reference; ``DALLE_KERNELS_BACKEND``
overrides that (see :mod:`dalle_kernels.backend`). Each op lives in ``dalle_kernels.ops.<name>``
with ``kernel.py`` (Triton) and ``reference.py`` (PyTorch) side by side.
"""
from .backend import backend_for
from .ops.codebook_lookup import codebook_lookup
from .ops.fused_linear_cross_entropy import fused_linear_cross_entropy
from .ops.gumbel_softmax import gumbel_softmax
from .ops.gumbel_softmax_codebook import gumbel_softmax_codebook
from .ops.nearest_codebook import nearest_codebook
from .ops.sparse_attention import dalle_mask, sparse_attention, sparse_attention_decode

__all__ = ["backend_for", "gumbel_softmax", "gumbel_softmax_codebook", "codebook_lookup", "nearest_codebook",
           "dalle_mask", "sparse_attention", "sparse_attention_decode", "fused_linear_cross_entropy"]
__version__ = "0.1.0"
