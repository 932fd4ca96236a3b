"""Generation (docs/design.md#command-line): ``python -m dalle_fast.generate`` (:func:`main`), or
:class:`TextToImage` from Python::

    pipeline = TextToImage.from_run("runs/demo")
    result = pipeline.generate("a small red circle in the top left", num=32, keep=4)
    result.images  # (4, 3, H, W) in [0, 1], CLIP-best first
"""
from ..text_to_image import GenerationResult, TextToImage
from .cli import main

__all__ = ["GenerationResult", "TextToImage", "main"]
