"""One request for images, as ``python -m dalle_fast.generate`` and the page of
``python -m dalle_fast.serve`` both take it (:class:`GenerationRequest`): its settings are the
generate command's flags, checked with the same messages (naming the flag) and run through
:meth:`TextToImage.generate` the same way, so the same settings give the same images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checks import check_int
from .data.images import load_image
from .errors import UsageError
from .sampling import check_sampling, default_temperature, default_top_k
from .text_to_image import GenerationResult, TextToImage

# The seeds torch.Generator.manual_seed takes.
SEED_RANGE = (-(2**63), 2**64 - 1)


@dataclass(frozen=True)
class GenerationRequest:
    """The settings of one request, each the value of the generate flag of that name
    (``temperature`` None: the run's ``transformer.sample_temperature``; ``top_k`` None: a quarter
    of the codebook; ``prime`` and ``prime_rows`` go together: the priming image's path and how
    many of its token rows every sample keeps)."""

    prompt: str
    num: int = 16
    keep: int = 4
    temperature: float | None = None
    top_k: int | None = None
    seed: int = 0
    prime: Path | None = None
    prime_rows: int | None = None
    batch_size: int = 64

    def check(self) -> None:
        """``UsageError`` naming the flag for a setting that is wrong whatever the run."""
        if not isinstance(self.prompt, str):
            raise UsageError(f"--prompt: expected text, got {self.prompt!r}")
        for flag, value, low, high in (("--num", self.num, 1, None), ("--keep", self.keep, 1, None),
                                       ("--batch-size", self.batch_size, 1, None),
                                       ("--seed", self.seed, *SEED_RANGE)):
            try:
                check_int(flag, value, low, high)
            except ValueError as e:
                raise UsageError(str(e)) from None
        try:
            check_sampling(1.0 if self.temperature is None else self.temperature, self.top_k)
        except ValueError as e:
            raise UsageError(f"--{str(e).replace('_', '-')}") from None
        if self.keep > self.num:
            raise UsageError(f"--keep {self.keep}: cannot keep more images than --num {self.num}")
        if (self.prime is None) != (self.prime_rows is None):
            raise UsageError("--prime and --prime-rows go together: the image and how many of its token rows to keep")
        if self.prime is not None and not Path(self.prime).is_file():
            raise UsageError(f"--prime: no such image file: {self.prime}")

    def prime_image(self, pipeline: TextToImage) -> torch.Tensor | None:
        """The --prime image (3, S, S) in [0, 1] at the run's image size S, after checking
        --prime-rows against its token grid; None without one."""
        if self.prime is None:
            return None
        grid = pipeline.config.grid_size
        if isinstance(self.prime_rows, bool) or not isinstance(self.prime_rows, int) \
                or not 1 <= self.prime_rows <= grid:
            raise UsageError(f"--prime-rows {self.prime_rows}: must lie in [1, {grid}] (the run's images are "
                             f"{grid} token rows high)")
        try:
            return load_image(Path(self.prime), pipeline.image_size)
        except Exception as e:  # noqa: BLE001 - PIL raises OSError and others for files it cannot decode
            raise UsageError(f"--prime {self.prime}: cannot read it as an image ({e})") from None

    def temperature_for(self, pipeline: TextToImage) -> float:
        """--temperature, or by default the run's ``transformer.sample_temperature``."""
        return default_temperature(pipeline.config) if self.temperature is None else self.temperature

    def top_k_for(self, pipeline: TextToImage) -> int:
        """--top-k, or by default a quarter of the run's codebook."""
        return default_top_k(pipeline.config) if self.top_k is None else self.top_k

    def run(self, pipeline: TextToImage, *, progress: bool = False) -> GenerationResult:
        """Check the request and sample, decode and rerank its images with ``pipeline``
        (``progress``: a tqdm bar of the tokens sampled, per batch)."""
        self.check()
        return pipeline.generate(self.prompt, self.num, self.keep, temperature=self.temperature_for(pipeline),
                                 top_k=self.top_k_for(pipeline), seed=self.seed, prime_image=self.prime_image(pipeline),
                                 prime_rows=self.prime_rows or 0, batch_size=self.batch_size, progress=progress)
