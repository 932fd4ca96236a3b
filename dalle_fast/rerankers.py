"""What scores a sample against its prompt, for reranking (Ramesh et al. 2021, section 2.5), for the
CLIP score of the evaluation and for its CLIP-feature FID: a :class:`Reranker`.

- :class:`RunCLIP`: the run's own small CLIP (its clip stage) over the run's caption tokenizer;
- :class:`OpenCLIP`: a pretrained CLIP of the ``open_clip`` package (``open-clip-torch``, an
  optional extra), with that model's own tokenizer and image preprocessing, done here on tensors:
  the [0, 1] images are resized to the model's input size as its eval transform does (its
  ``resize_mode`` and ``interpolation``, antialiased), then normalized with its mean and std.

Both give unit embeddings (``encode_text``, ``encode_image``) and ``score``, their cosine.
``open_clip`` is imported only by :func:`load_open_clip`, never by ``import dalle_fast``.
"""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .clip import CLIP
from .errors import UsageError
from .metrics import check_images
from .tokenizer import CaptionTokenizer

SCORE_BATCH = 64  # images per forward when scoring
OPEN_CLIP_INSTALL = 'pip install "open-clip-torch" "torch==<your torch version>"'  # keeps torch as it is
_TORCHVISION_OPS: list[Any] = []  # the stand-in torchvision op schemas, kept alive (see _torchvision_without_ops)


class Reranker:
    """Unit embeddings of prompts and images, and their cosine as the score. Subclasses give
    :meth:`encode_text` and :meth:`encode_image`; ``name`` says which model it is."""

    name: str

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Reranker:
        """Move the model to ``device``; returns ``self``."""
        raise NotImplementedError

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts (N strings) -> unit embeddings (N, E) float32 on :attr:`device`."""
        raise NotImplementedError

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, S, S) in [0, 1] -> unit embeddings (N, E) float32 on :attr:`device`."""
        raise NotImplementedError

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = SCORE_BATCH) -> torch.Tensor:
        """:meth:`encode_image` of ``images`` in batches: (N, E) float32 on the CPU (the CLIP features of FID)."""
        check_images("images", images)
        return torch.cat([self.encode_image(chunk.to(self.device)).float().cpu() for chunk in images.split(batch_size)])

    @torch.no_grad()
    def score(self, prompts: str | Sequence[str], images: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (N,) float32 on the CPU of image ``n`` and prompt ``n`` (a single
        prompt: against every image); images (N, 3, S, S) in [0, 1]. Higher = better match."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        check_images("images", images)
        if len(prompts) not in (1, len(images)):
            raise ValueError(f"prompts: {len(prompts)} prompts for {len(images)} images; expected 1 or {len(images)}")
        one = self.encode_text(prompts) if len(prompts) == 1 else None
        scores = []
        for start in range(0, len(images), SCORE_BATCH):
            chunk = images[start:start + SCORE_BATCH].to(self.device)
            text = one if one is not None else self.encode_text(prompts[start:start + SCORE_BATCH])
            scores.append((text * self.encode_image(chunk)).sum(dim=-1).float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)


class RunCLIP(Reranker):
    """The run's CLIP (:class:`~dalle_fast.clip.CLIP`, frozen, eval mode) on prompts tokenized
    by the run's ``tokenizer``."""

    name = "run"

    def __init__(self, clip: CLIP, tokenizer: CaptionTokenizer) -> None:
        self.clip, self.tokenizer = clip.eval().requires_grad_(False), tokenizer

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def to(self, device: torch.device | str) -> RunCLIP:
        self.clip.to(device)
        return self

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.clip.encode_text(self.tokenizer.encode(list(prompts)).to(self.device))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)


class OpenCLIP(Reranker):
    """An ``open_clip`` model (frozen, eval mode), its ``tokenizer`` (prompts -> (N, context)
    ids) and its ``preprocess`` config (``open_clip.get_model_preprocess_cfg``: ``size``, ``mean``,
    ``std``, ``interpolation``, ``resize_mode``, ``fill_color``)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                 preprocess: Mapping[str, Any], name: str) -> None:
        self.model, self.tokenizer, self.name = model.eval().requires_grad_(False), tokenizer, name
        self.preprocess = dict(preprocess)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> OpenCLIP:
        self.model.to(device)
        return self

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """The model's input for ``images``: :func:`open_clip_pixels` with its preprocess config."""
        return open_clip_pixels(images, self.preprocess)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(self.pixels(images)).float(), dim=-1)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[-2]), int(size[-1]))


def _resize(images: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"  # 'random' trains
    smooth = mode != "nearest"
    resized = F.interpolate(images, size=size, mode=mode, antialias=smooth, align_corners=False if smooth else None)
    return resized.clamp(0, 1)  # as PIL, whose bicubic overshoot is clipped to the pixel range


def open_clip_pixels(images: torch.Tensor, preprocess: Mapping[str, Any]) -> torch.Tensor:
    """Square images (N, 3, S, S) in [0, 1] as open_clip's eval transform prepares an image for
    the model (``resize_mode`` ``shortest``: resize the short side to the input size and crop
    the centre; ``squash``: resize to it; ``longest``: resize the long side to it and pad with
    ``fill_color``), antialiased ``interpolation``, then ``(x - mean) / std`` per channel: the
    model input (N, 3, h, w) float32. On square images the three modes differ only for a
    non-square input size."""
    check_images("images", images)
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images: expected square images, got {tuple(images.shape[-2:])}")
    h, w = _pair(preprocess.get("size", 224))
    mode, interpolation = preprocess.get("resize_mode", "shortest"), preprocess.get("interpolation", "bicubic")
    x = images.float()
    if mode == "squash":
        x = _resize(x, (h, w), interpolation)
    elif mode == "longest":
        side = min(h, w)
        x = _resize(x, (side, side), interpolation)
        top, left = (h - side) // 2, (w - side) // 2
        x = F.pad(x, (left, w - side - left, top, h - side - top), value=preprocess.get("fill_color", 0) / 255)
    elif mode == "shortest":
        side = max(h, w)
        x = _resize(x, (side, side), interpolation)
        top, left = int(round((side - h) / 2)), int(round((side - w) / 2))  # torchvision's CenterCrop
        x = x[..., top:top + h, left:left + w]
    else:
        raise ValueError(f"preprocess: unknown resize_mode {mode!r} (expected shortest, squash or longest)")
    mean = torch.tensor(preprocess.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=x.dtype, device=x.device)
    std = torch.tensor(preprocess.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=x.dtype, device=x.device)
    return (x - mean[:, None, None]) / std[:, None, None]


def _torchvision_without_ops() -> None:
    """Let ``torchvision``'s Python code import when its compiled ops cannot load.

    open_clip imports torchvision (for transforms we do not use). The torchvision wheels on PyPI
    for Linux x86-64 are CUDA builds: their ``_C`` extension links ``libtorch_cuda.so``, so next to
    a CPU-only torch (``torch==2.13.0+cpu``) it cannot load. torchvision supports running without
    its ops (detection ops such as nms then raise), but two of its registrations (``nms``,
    ``qnms`` in ``torchvision/_meta_registrations.py``) are not guarded and fail the import. Here,
    only when the extension does not load, those two op schemas are declared so the import
    succeeds; their kernels stay absent. Nothing is done when torchvision is already imported,
    missing, or its ops load."""
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    libraries = [p for folder in spec.submodule_search_locations for p in Path(folder).glob("_C*.so")]
    try:
        for library in libraries:
            torch.ops.load_library(str(library))
        return
    except OSError:
        pass
    if not _TORCHVISION_OPS:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_OPS.append(lib)


def import_open_clip(flag: str = "--clip") -> Any:
    """The ``open_clip`` module; ``UsageError`` naming ``flag`` when it is not installed."""
    if importlib.util.find_spec("open_clip") is None:
        raise UsageError(f"{flag}: open_clip is not installed ({OPEN_CLIP_INSTALL}, or pip install "
                         "'dalle_fast[open_clip]')")
    _torchvision_without_ops()
    import open_clip
    return open_clip


def load_open_clip(model: str, weights: str, device: torch.device | str = "cpu", *, flag: str = "--clip",
                   weights_flag: str = "--clip-weights") -> OpenCLIP:
    """The open_clip ``model`` (a model name of ``open_clip.list_models()``, or the path of a
    model config ``.json``, registered under its file stem) with the weights of the local file
    ``weights`` (nothing is downloaded), on ``device``. Problems raise ``UsageError`` naming
    ``flag`` (the model) or ``weights_flag`` (the file)."""
    open_clip = import_open_clip(flag)
    name = model
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise UsageError(f"{flag}: no such open_clip model config file: {path}")
        open_clip.add_model_config(path)
        name = path.stem
    if name not in open_clip.list_models():
        raise UsageError(f"{flag}: open_clip has no model {name!r} (open_clip.list_models() names them, e.g. "
                         "ViT-B-32), nor is it a model config .json file")
    if not weights or not Path(weights).is_file():
        raise UsageError(f"{weights_flag}: no such weights file: {weights!r} (an open_clip checkpoint of {name}, "
                         ".pt/.bin/.safetensors; nothing is downloaded)")
    try:
        loaded = open_clip.create_model(name, pretrained=str(weights), device="cpu")
    except Exception as e:  # noqa: BLE001 - torch.load and load_state_dict raise many kinds
        raise UsageError(f"{weights_flag} {weights}: cannot load it into open_clip's {name} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    tokenizer = open_clip.get_tokenizer(name)
    reranker = OpenCLIP(loaded, tokenizer, open_clip.get_model_preprocess_cfg(loaded), f"open_clip:{name}")
    return reranker.to(device)
