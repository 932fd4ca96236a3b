"""The paper's data filters (Ramesh et al. 2021, appendix C) and the counts of what they drop.

:class:`DataFilters` says which filters are on (all are, by default); each flag is named after
the :class:`FilterReport` count it produces. Captions are dropped when they are mostly a date
(``date_like``, see :mod:`.dates`), do not look English (``non_english``, see :mod:`.english`)
or have fewer than ``min_words`` whitespace-separated words (``too_short``), checked in that
order so each dropped caption is counted once under its most specific reason (a Chinese
caption, written without spaces, counts as non-English, not as too short). Images are dropped
when the long side exceeds ``max_aspect`` times the short side (``bad_aspect``: the paper keeps
aspect ratios in [1/2, 2]).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..checks import check_int
from .dates import is_date_like
from .english import looks_english


@dataclass(frozen=True)
class DataFilters:
    """Which filters apply. ``DataFilters.off()`` keeps every readable image and caption."""

    date_like: bool = True
    non_english: bool = True
    too_short: bool = True
    min_words: int = 3
    bad_aspect: bool = True
    max_aspect: float = 2.0

    def __post_init__(self) -> None:
        for name in ("date_like", "non_english", "too_short", "bad_aspect"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DataFilters.{name}: must be a bool, got {getattr(self, name)!r}")
        check_int("DataFilters.min_words", self.min_words, 1)
        if isinstance(self.max_aspect, bool) or not isinstance(self.max_aspect, (int, float)) \
                or not 1 <= self.max_aspect < float("inf"):
            raise ValueError(f"DataFilters.max_aspect: must be a finite number >= 1, got {self.max_aspect!r}")
        object.__setattr__(self, "max_aspect", float(self.max_aspect))

    @classmethod
    def off(cls) -> DataFilters:
        """All filters off."""
        return cls(date_like=False, non_english=False, too_short=False, bad_aspect=False)

    def caption_rejection(self, caption: str) -> str | None:
        """Name of the first filter that drops ``caption`` (a :class:`FilterReport` field), or None."""
        if self.date_like and is_date_like(caption):
            return "date_like"
        if self.non_english and not looks_english(caption):
            return "non_english"
        if self.too_short and len(caption.split()) < self.min_words:
            return "too_short"
        return None

    def keeps_aspect(self, width: int, height: int) -> bool:
        """True unless the bad_aspect filter drops a ``width`` x ``height`` image."""
        return not self.bad_aspect or max(width, height) <= self.max_aspect * min(width, height)


@dataclass
class FilterReport:
    """What a dataset builder found, kept and dropped, for printing at the start of training.

    Every candidate image is counted once: ``images_found == images_kept + missing_captions +
    unreadable + bad_aspect + no_caption_left``. Captions are checked only for images that pass
    the image checks: ``captions_checked == captions_kept + too_short + date_like + non_english``.
    ``broken_at_load`` counts kept images that failed to load later (each skipped in favour of
    the next image); it grows during training, per process.
    """

    source: str
    filters: DataFilters
    images_found: int = 0
    images_kept: int = 0
    missing_captions: int = 0  # no caption file (or annotation), or only blank lines
    unreadable: int = 0  # missing file, or a header PIL cannot open or verify
    bad_aspect: int = 0
    no_caption_left: int = 0  # every caption of the image was dropped
    captions_checked: int = 0
    captions_kept: int = 0
    date_like: int = 0
    non_english: int = 0
    too_short: int = 0
    broken_at_load: int = 0

    def counts(self) -> dict[str, int]:
        """The counts by field name (for metrics logs)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("source", "filters")}

    def __str__(self) -> str:
        def dropped(names: tuple[str, ...]) -> str:
            return ", ".join(f"{getattr(self, n)} {n}" + ("" if getattr(self.filters, n, True) else " (off)")
                             for n in names)

        return (f"{self.source}: kept {self.images_kept}/{self.images_found} images "
                f"(dropped {dropped(('missing_captions', 'unreadable', 'bad_aspect', 'no_caption_left'))}), "
                f"{self.captions_kept}/{self.captions_checked} captions "
                f"(dropped {dropped(('date_like', 'non_english', 'too_short'))}); "
                f"{self.broken_at_load} broken at load")
