"""Training (docs/design.md#command-line): ``python -m dalle_fast.train`` (:func:`main`), or :func:`train`
with a :class:`~dalle_fast.config.Config` from Python."""
from .cli import main, train

__all__ = ["main", "train"]
