"""Small PNG charts drawn with PIL alone: a line chart (the reranking curve) and a grouped bar
chart (accuracy per attribute). Values are shares in [0, 1], drawn on a 0-100 % axis; x positions
are categories, evenly spaced (the curve's 1, 2, 4, ... samples sit on a log2 axis that way)."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from ..atomic import write_atomic

WIDTH, HEIGHT = 640, 400
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 60, 150, 40, 50
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
GRID, AXIS, TEXT, WHITE = (225, 225, 225), (60, 60, 60), (20, 20, 20), (255, 255, 255)
Y_TICKS = 5  # gridlines at 0, 20, ..., 100 %


def _check_series(series: Mapping[str, Sequence[float]], length: int, what: str) -> None:
    if not series or len(series) > len(PALETTE):
        raise ValueError(f"series: expected 1 to {len(PALETTE)} named series, got {len(series)}")
    for name, values in series.items():
        if len(values) != length:
            raise ValueError(f"series[{name!r}]: has {len(values)} values for {length} {what}")
        if not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values):
            raise ValueError(f"series[{name!r}]: values must be shares in [0, 1], got {list(values)}")


class _Canvas:
    """A white chart with a titled 0-100 % y axis, the x axis labelled by ``labels`` at evenly
    spaced slots, and a legend on the right."""

    def __init__(self, title: str, x_title: str, y_title: str, labels: Sequence[str]) -> None:
        self.image = Image.new("RGB", (WIDTH, HEIGHT), WHITE)
        self.draw = ImageDraw.Draw(self.image)
        self.font = ImageFont.load_default()
        self.left, self.right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
        self.slot = (self.right - self.left) / len(labels)
        self._text((WIDTH - MARGIN_RIGHT + MARGIN_LEFT) / 2, MARGIN_TOP / 2, title)
        self._text((self.left + self.right) / 2, HEIGHT - MARGIN_BOTTOM / 3, x_title)
        self._text(MARGIN_LEFT / 3, MARGIN_TOP / 2 + 4, y_title)
        for k in range(Y_TICKS + 1):
            y = self.y(k / Y_TICKS)
            self.draw.line((self.left, y, self.right, y), fill=GRID if k else AXIS)
            self._text(self.left - 18, y, f"{100 * k // Y_TICKS}")
        self.draw.line((self.left, self.top, self.left, self.bottom), fill=AXIS)
        for i, label in enumerate(labels):
            self._text(self.x(i), self.bottom + 12, label)

    def x(self, i: float) -> float:
        """Centre of slot ``i``."""
        return self.left + (i + 0.5) * self.slot

    def y(self, share: float) -> float:
        return self.bottom - share * (self.bottom - self.top)

    def _text(self, x: float, y: float, text: str) -> None:
        self.draw.text((x, y), text, fill=TEXT, font=self.font, anchor="mm")

    def legend(self, names: Sequence[str]) -> None:
        for k, name in enumerate(names):
            y = self.top + 10 + 18 * k
            self.draw.rectangle((self.right + 12, y - 5, self.right + 22, y + 5), fill=PALETTE[k])
            self.draw.text((self.right + 28, y), name, fill=TEXT, font=self.font, anchor="lm")

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(path, lambda tmp: self.image.save(tmp, format="PNG"))


def line_chart(path: str | os.PathLike, title: str, x_title: str, y_title: str, labels: Sequence[str],
               series: Mapping[str, Sequence[float]]) -> None:
    """Write a PNG line chart to ``path`` (atomically): one polyline with dots per named series
    of ``len(labels)`` shares in [0, 1] (at most 6 series)."""
    _check_series(series, len(labels), "labels")
    canvas = _Canvas(title, x_title, y_title, labels)
    for k, values in enumerate(series.values()):
        points = [(canvas.x(i), canvas.y(v)) for i, v in enumerate(values)]
        if len(points) > 1:
            canvas.draw.line(points, fill=PALETTE[k], width=2)
        for x, y in points:
            canvas.draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=PALETTE[k])
    canvas.legend(list(series))
    canvas.save(path)


def bar_chart(path: str | os.PathLike, title: str, x_title: str, y_title: str, labels: Sequence[str],
              series: Mapping[str, Sequence[float]]) -> None:
    """Write a PNG grouped bar chart to ``path`` (atomically): one group per label, one bar per
    named series of ``len(labels)`` shares in [0, 1] (at most 6 series)."""
    _check_series(series, len(labels), "labels")
    canvas = _Canvas(title, x_title, y_title, labels)
    width = 0.8 * canvas.slot / len(series)
    for k, values in enumerate(series.values()):
        for i, v in enumerate(values):
            left = canvas.x(i) - 0.4 * canvas.slot + k * width
            canvas.draw.rectangle((left + 1, canvas.y(v), left + width - 1, canvas.y(0)), fill=PALETTE[k])
    canvas.legend(list(series))
    canvas.save(path)
