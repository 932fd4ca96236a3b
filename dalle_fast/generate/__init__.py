"""Generation (DESIGN section 8): ``python -m dalle_fast.generate`` (:func:`main`), or
:class:`TextToImage` from Python::

    pipeline = TextToImage.from_run("runs/demo")
    result = pipeline.generate("a small red circle in the top left", num=32, keep=4)
    result.images  # (4, 3, H, W) in [0, 1], CLIP-best first
"""
from .cli import main
from .text_to_image import GenerationResult, TextToImage

__all__ = ["GenerationResult", "TextToImage", "main"]
