"""``metrics.jsonl``: one JSON object per line, appended as training goes (train records at every
log step, val records at every eval), each with its ``stage`` and ``step``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic import write_atomic

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """The metrics file of the run directory ``run_dir``."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / METRICS_FILE

    def append(self, record: dict[str, Any]) -> None:
        """Add ``record`` (JSON-serializable, with ``stage`` and ``step``) as one line, flushed."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """All records, in order (none if the file does not exist)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def rewind(self, stage: str, step: int) -> None:
        """Drop the records of ``stage`` past ``step`` (written after the checkpoint a run resumes
        from, so the resumed run writes them again), rewriting the file atomically."""
        records = self.records()
        kept = [r for r in records if r["stage"] != stage or r["step"] <= step]
        if len(kept) != len(records):
            text = "".join(json.dumps(r) + "\n" for r in kept)
            write_atomic(self.path, lambda tmp: Path(tmp).write_text(text))
