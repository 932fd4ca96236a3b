"""What the page of ``python -m dalle_fast.serve`` does, without gradio: turn the form's values
into a :class:`~dalle_fast.generation_request.GenerationRequest` (:func:`form_request`) and run it
on the served run (:class:`Studio`), the way ``python -m dalle_fast.generate`` runs its flags, so
the same settings give the same images, scores and grid PNG.
"""
from __future__ import annotations

import math
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import torch

from ..atomic import write_atomic
from ..config import CONFIG_FILE
from ..errors import UsageError
from ..generation_request import GenerationRequest
from ..grid import prompt_grid
from ..text_to_image import TextToImage
from ..tokenizer import tokenizer_path

KEEP_DOWNLOADS = 8  # grid PNGs of the latest requests kept on disk (gradio copies each to its own cache)


def _whole(flag: str, value: object) -> int | None:
    """A number field's value as an int (None stays None: the field is empty), or ``UsageError``
    naming ``flag`` for a number with a fractional part or anything else."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value == int(value):
        return int(value)
    raise UsageError(f"{flag}: must be a whole number, got {value!r}")


def _given(flag: str, value: object) -> object:
    """``value``, or ``UsageError`` naming ``flag`` when the field was left empty (None)."""
    if value is None:
        raise UsageError(f"{flag}: the field is empty; it needs a value")
    return value


def form_request(prompt: object, num: object, keep: object, temperature: object, top_k: object, seed: object,
                 prime: object, prime_rows: object, batch_size: int) -> GenerationRequest:
    """The request of the form's values, as gradio passes them (an empty field is None; the
    priming image is a file path or None). An empty Top-k is the command's default; the token
    rows count only with a priming image. ``UsageError`` naming the flag for an unusable value;
    :meth:`GenerationRequest.check` says the rest."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError("--prompt: type a caption to draw, e.g. \"a small red circle in the top left\"")
    if isinstance(temperature, bool) or not isinstance(_given("--temperature", temperature), Real):
        raise UsageError(f"--temperature: must be a number, got {temperature!r}")
    request = GenerationRequest(
        prompt, _given("--num", _whole("--num", num)), _given("--keep", _whole("--keep", keep)),
        float(temperature), _whole("--top-k", top_k), _given("--seed", _whole("--seed", seed)),
        None if prime is None else Path(str(prime)),
        None if prime is None else _given("--prime-rows", _whole("--prime-rows", prime_rows)), batch_size)
    request.check()
    return request


def command_line(run_dir: Path, request: GenerationRequest, temperature: float, top_k: int) -> str:
    """The ``python -m dalle_fast.generate`` command that gives the same images as ``request``
    sampled at ``temperature`` among ``top_k`` codes (``IMAGE`` stands for the uploaded priming image)."""
    words = ["python", "-m", "dalle_fast.generate", "--run", str(run_dir), "--prompt", request.prompt,
             "--num", str(request.num), "--keep", str(request.keep), "--temperature", f"{temperature:g}",
             "--top-k", str(top_k), "--seed", str(request.seed)]
    primed = [] if request.prime is None else ["--prime", "IMAGE", "--prime-rows", str(request.prime_rows)]
    return shlex.join(words + primed)


@dataclass(frozen=True)
class Generated:
    """What one request gives the page: the kept ``images`` (keep, 3, H, W) in [0, 1] best first,
    their CLIP ``scores`` (keep,) (NaN without a reranker), the ``grid_png`` that
    ``python -m dalle_fast.generate`` writes for the same settings, and a ``summary`` line."""

    images: torch.Tensor
    scores: torch.Tensor
    grid_png: Path
    summary: str


class Studio:
    """The run in ``run_dir`` served: :meth:`generate` runs a request (one at a time: the page
    queues them) in batches of ``batch_size`` on ``device`` (default: the GPU if there is one),
    reranked by the ``clip``/``clip_weights`` reranker (as generate's ``--clip`` flags; default:
    the run's config). The run is opened at once (``UsageError`` when it cannot be) and
    again whenever its config, tokenizer or a checkpoint pointer changes, so the page samples
    with the newest checkpoints; a run that cannot be opened any more fails the request, not the
    server. Grid PNGs go to a temporary folder that :meth:`close` removes."""

    def __init__(self, run_dir: str | Path, *, batch_size: int = 64, device: str | torch.device | None = None,
                 clip: str | None = None, clip_weights: str | None = None) -> None:
        self.run_dir, self.batch_size, self.device = Path(run_dir), batch_size, device
        self.clip, self.clip_weights = clip, clip_weights
        self._pipeline: TextToImage | None = None
        self._stamp: tuple = ()
        self._downloads = Path(tempfile.mkdtemp(prefix="dalle_fast_serve_"))
        self._requests = 0
        try:
            self.pipeline()
        except BaseException:
            self.close()
            raise

    def _files_stamp(self) -> tuple:
        """(name, mtime, size) of the run's files whose change means other weights or settings."""
        files = [self.run_dir / CONFIG_FILE, tokenizer_path(self.run_dir), *sorted(self.run_dir.glob("*-latest.json"))]
        stamp = []
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                continue
            stamp.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(stamp)

    def pipeline(self) -> TextToImage:
        """The run's :class:`TextToImage`, opened again when its files changed since; ``UsageError``
        (naming ``--run``) when the run cannot be opened now."""
        stamp = self._files_stamp()
        if self._pipeline is None or stamp != self._stamp:
            self._pipeline = None
            self._pipeline = TextToImage.from_run(self.run_dir, self.device, clip=self.clip,
                                                  clip_weights=self.clip_weights)
            self._stamp = stamp
        return self._pipeline

    def form_request(self, *values: object) -> GenerationRequest:
        """:func:`form_request` of the form's values (prompt, num, keep, temperature, top_k, seed,
        prime, prime_rows) in this studio's batch size."""
        return form_request(*values, batch_size=self.batch_size)

    def generate(self, request: GenerationRequest, *, progress: bool = False) -> Generated:
        """Run ``request`` (``progress``: tqdm bars of the tokens sampled, which the page shows);
        ``UsageError`` for a setting the run cannot take or a run that cannot be opened now."""
        start = time.perf_counter()
        pipeline = self.pipeline()
        result = request.run(pipeline, progress=progress)
        grid_png = self._write_grid(result.images, request)
        kept = "the CLIP-best" if pipeline.reranker is not None else \
            "without a CLIP to rerank with (the run has no clip stage), the first"
        same = command_line(self.run_dir, request, request.temperature_for(pipeline), request.top_k_for(pipeline))
        summary = (f"Kept {kept} {request.keep} of {request.num} samples in {time.perf_counter() - start:.1f} s; "
                   f"the same images as `{same}`")
        return Generated(result.images, result.scores, grid_png, summary)

    def _write_grid(self, images: torch.Tensor, request: GenerationRequest) -> Path:
        """The grid PNG of ``images`` (K, 3, H, W) under the prompt, as generate writes it, in a
        folder of its own; the folders of older requests beyond :data:`KEEP_DOWNLOADS` are removed."""
        self._requests += 1
        folder = self._downloads / f"{self._requests:06d}"
        folder.mkdir()
        path = folder / f"grid-seed{request.seed}.png"
        picture = prompt_grid(images, request.prompt)
        write_atomic(path, lambda tmp: picture.save(tmp, format="PNG"))
        for old in sorted(self._downloads.iterdir())[:-KEEP_DOWNLOADS]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def close(self) -> None:
        """Remove the folder of grid PNGs."""
        shutil.rmtree(self._downloads, ignore_errors=True)
