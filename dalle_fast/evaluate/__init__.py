"""Evaluation of a trained run (``python -m dalle_fast.evaluate --run DIR``): dVAE and transformer
quality on the eval split, CLIP score and FID of sampled images, and on the shapes data the
attribute accuracy of samples with and without CLIP reranking (held-in and held-out pairs) and
the reranking curve. The metric functions are in :mod:`.metrics`; :mod:`.report` documents the
files written and the report's keys."""
from .cli import main
from .pipeline import EvalOptions, evaluate
from .report import write_report

__all__ = ["EvalOptions", "evaluate", "main", "write_report"]
