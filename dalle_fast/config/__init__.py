"""Configuration: frozen dataclasses, four presets, and a ``config.json`` round trip.

- :mod:`.schema`: the section base class (type checks of the annotated fields) and the round
  trip of a :class:`Config` through JSON and its ``config.json`` file (``CONFIG_FILE``);
- :mod:`.sections`: the sections and what each validates;
- :mod:`.presets`: the presets of docs/design.md#presets (``preset``, ``PRESETS``) and
  ``with_dataset``.

The shapes facts the config checks (``DEFAULT_HOLDOUT``, the holdout check) come from
:mod:`dalle_fast.data.shapes_spec`, which imports nothing of ``dalle_fast``; the emoji ones (the
default font and CLDR paths and held-out names, the form of a held-out name) from
:mod:`.emoji_spec`.
"""
from ..data.shapes_spec import DEFAULT_HOLDOUT
from .presets import PRESETS, preset, with_dataset, with_reranker
from .schema import CONFIG_FILE, SCHEMA
from .sections import (
    BUILT_IN_DATASETS,
    OPEN_CLIP_PREFIX,
    RUN_RERANKER,
    SPLITS,
    CLIPConfig,
    Config,
    DataConfig,
    OptimConfig,
    TrainConfig,
    TransformerConfig,
    VAEConfig,
)

__all__ = [
    "BUILT_IN_DATASETS", "CONFIG_FILE", "DEFAULT_HOLDOUT", "OPEN_CLIP_PREFIX", "PRESETS", "RUN_RERANKER", "SCHEMA",
    "SPLITS", "CLIPConfig", "Config", "DataConfig", "OptimConfig", "TrainConfig", "TransformerConfig", "VAEConfig",
    "preset", "with_dataset", "with_reranker",
]
