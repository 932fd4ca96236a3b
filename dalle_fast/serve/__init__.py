"""The web page (docs/design.md#command-line): ``python -m dalle_fast.serve --run runs/NAME``
serves a gradio page where one types a prompt and gets the CLIP-best samples of the run, the same
images as ``python -m dalle_fast.generate`` for the same settings (:mod:`dalle_fast.serve.cli`).

gradio is an optional dependency (``pip install -e ".[serve]"``): importing this package does not
import it; only :mod:`dalle_fast.serve.app` (the page) needs it, and
:mod:`dalle_fast.serve.browser` (a headless Chromium for the browser test and the README
screenshot, :mod:`dalle_fast.serve.screenshot`) needs selenium.
"""
from .cli import main

__all__ = ["main"]
