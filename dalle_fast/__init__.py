"""dalle_fast: DALL-E (Ramesh et al. 2021) as a thin PyTorch model over ``dalle_kernels``.

The stages (data, dVAE, transformer, CLIP, training, generation, evaluation) land here one
issue at a time; this release holds the kernel package and its tests.
"""
__version__ = "0.1.0"
