"""User data as WebDataset tar shards (docs/design.md#user-data), the layout img2dataset writes:
``--data 'shards/{00000..00099}.tar'`` (brace ranges and lists, local paths) or one ``.tar``. A
sample is the run of consecutive tar members that share a key (``000042.jpg``, ``000042.txt``,
``000042.json``): an image (``jpg``/``jpeg``/``png``/``webp``) with a caption in ``txt`` (one a
line, like a folder's caption file) or in ``json`` (its ``"caption"`` string; ``txt`` wins when both
are there). The tar members are read by the ``webdataset`` package (``pip install -e ".[shards]"``),
imported only here and only when shards are read.

Nothing is listed or probed up front: the pattern is brace-expanded to the shard paths, and each
shard is opened when a reader gets to it and read start to end.

- **The val split** comes from the start of the set: the samples are numbered in pattern order
  (first shard first, every sample counted, usable or not), every ``VAL_EVERY``-th (0, 10, 20, ...)
  is a val candidate, and the first ``val_size`` usable candidates are the val split. Reading stops
  there, so only the first shards are read (a tenth of the set at most is held out). Every candidate
  is left out of training (:attr:`ShardStream.held_out`), so the splits are disjoint. The val
  images are kept in memory as their encoded bytes (:class:`ShardSamples`).
- **The train split** (:class:`ShardStream`) is every other sample, streamed by readers (processes
  x data loader workers, :mod:`dalle_fast.train.loader`): in epoch ``e`` reader ``k`` of ``n`` reads
  every ``n``-th shard of a seeded permutation of the shards, from the ``k``-th, so the readers of
  an epoch share its shards out and no sample is read twice in an epoch.
- **The paper's filters** apply on the fly (:func:`~.captioned.screen`, the check the folder and COCO
  datasets use), counted in a :class:`ShardReport`: a sample without an image member or whose image
  header does not read counts as ``unreadable``, one without a caption (no ``txt``, a ``json``
  without a ``"caption"`` string, only blank lines) as ``missing_captions``, an image whose header
  reads but whose pixels do not decode as ``broken_at_load``; none of them stops a run. A shard
  that ends mid-member (truncated) or is no tar keeps the samples before the cut, drops the one
  being read and counts in ``truncated_shards``; one that cannot be opened in ``missing_shards``.
"""
from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import count
from types import ModuleType
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from ..errors import UsageError
from .captioned import clean_captions, drawn_caption, screen
from .filters import DataFilters, FilterReport
from .images import check_image_size, load_image, probe_image
from .order import epoch_permutation

SHARD_SUFFIX = ".tar"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")  # member extensions taken as the sample's image, in this order
VAL_EVERY = 10  # every 10th sample of the first shards is a val candidate
INSTALL = 'pip install -e ".[shards]"'


def is_shard_pattern(dataset: str) -> bool:
    """Whether ``--data dataset`` names tar shards: a path or brace pattern ending in ``.tar``."""
    return dataset.lower().endswith(SHARD_SUFFIX)


def _tariterators() -> ModuleType:
    """webdataset's tar reading module; ``UsageError`` saying how to install it when it is missing."""
    try:
        from webdataset import tariterators
    except ImportError:
        raise UsageError(f"--data: tar shards need the webdataset package: {INSTALL}") from None
    return tariterators


def expand_shards(pattern: str) -> list[str]:
    """The shard paths of ``pattern`` (brace ranges ``{000..099}`` and lists ``{a,b}`` expanded, in
    order, repeats dropped), without touching the files."""
    _tariterators()
    from braceexpand import braceexpand  # a requirement of webdataset

    return list(dict.fromkeys(braceexpand(pattern)))


@dataclass
class ShardReport(FilterReport):
    """A :class:`FilterReport` of samples read from tar shards (each sample one candidate image),
    with the shards: ``shards_read`` (opened: each time a reader starts one), ``truncated_shards``
    (ended mid-member or not a tar: the rest skipped) and ``missing_shards`` (could not be opened)."""

    shards_read: int = 0
    truncated_shards: int = 0
    missing_shards: int = 0

    def add(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` (as :meth:`counts` gives them) to this report's."""
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)

    def __str__(self) -> str:
        return (f"{super().__str__()}; {self.shards_read} shards read "
                f"({self.truncated_shards} truncated, {self.missing_shards} missing)")


class RawSample(NamedTuple):
    """One sample of a shard as read: its ``index`` among the shard's samples, its ``key`` and its
    ``files`` (member extension, lowercased -> bytes)."""

    index: int
    key: str
    files: dict[str, bytes]


def read_shard(path: str, report: ShardReport) -> Iterator[RawSample]:
    """The samples of the tar shard at ``path``, in order, counted in ``report`` (see the module
    doc: ``shards_read``, ``truncated_shards``, ``missing_shards``). Members without an extension
    are ignored."""
    tariterators = _tariterators()
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below, also when the caller stops early
    except OSError:
        report.missing_shards += 1
        return
    report.shards_read += 1
    with stream:
        index, key, files = -1, None, {}
        try:
            for member in tariterators.tar_file_iterator(stream):
                prefix, extension = tariterators.base_plus_ext(member["fname"])
                if prefix is None:
                    continue
                if prefix != key:
                    if key is not None:
                        yield RawSample(index, key, files)
                    index, key, files = index + 1, prefix, {}
                files[extension.lower()] = member["data"]
        except (tarfile.TarError, OSError, EOFError):
            report.truncated_shards += 1
            return
        if key is not None:
            yield RawSample(index, key, files)


def sample_captions(files: Mapping[str, bytes]) -> list[str] | None:
    """The captions of a sample: the lines of its ``txt`` member, else the ``"caption"`` of its
    ``json`` member; None when it has neither (or the JSON holds no caption string)."""
    if "txt" in files:
        return clean_captions(files["txt"].decode("utf-8-sig", errors="replace").splitlines())
    if "json" in files:
        try:
            caption = json.loads(files["json"]).get("caption")
        except (ValueError, AttributeError):  # not JSON, or not an object
            return None
        return clean_captions([caption]) if isinstance(caption, str) else None
    return None


def _probe(image: bytes | None) -> tuple[int, int]:
    """(width, height) of the encoded ``image``; raises when there is none or it does not read."""
    if image is None:
        raise FileNotFoundError("the sample has no image member")
    return probe_image(io.BytesIO(image))


class Sample(NamedTuple):
    """A usable sample: its ``shard`` (index into the shard paths) and ``index`` in it, its encoded
    ``image``, its ``pixels`` ((3, S, S) float32 in [0, 1]; None when not decoded) and its kept
    ``captions``."""

    shard: int
    index: int
    image: bytes
    pixels: torch.Tensor | None
    captions: tuple[str, ...]

    @property
    def name(self) -> str:
        """``"shard/index"``: what identifies the sample in the set (the key its captions are drawn by)."""
        return f"{self.shard}/{self.index}"


def check_sample(shard: int, raw: RawSample, report: ShardReport, image_size: int,
                 decode: bool = True) -> Sample | None:
    """``raw`` (a sample of shard ``shard``) through the paper's filters, counted in ``report``, and
    with ``decode`` its image decoded to (3, image_size, image_size); None when it is dropped."""
    image = next((raw.files[key] for key in IMAGE_KEYS if key in raw.files), None)
    screened = screen(report, sample_captions(raw.files), lambda: _probe(image))
    if screened is None:
        return None
    pixels = None
    if decode:
        try:
            pixels = load_image(io.BytesIO(image), image_size)
        except Exception:  # noqa: BLE001 - a bad image must not stop training
            report.broken_at_load += 1  # of the images kept, as for a folder's images
            return None
    return Sample(shard, raw.index, image, pixels, screened[1])


class ShardSamples(Dataset):
    """Samples read from shards and kept in memory (their encoded images): ``ds[i] -> (image
    (3, S, S) float32 in [0, 1], caption)``, the caption drawn from the sample's kept captions as
    :class:`~.captioned.CaptionedImages` draws them (epoch 0, ``seed``); ``ds.captions(i)`` gives
    them all."""

    def __init__(self, samples: list[Sample], image_size: int, seed: int) -> None:
        self.samples, self.image_size, self.seed = samples, check_image_size(image_size), seed

    def __len__(self) -> int:
        return len(self.samples)

    def captions(self, i: int) -> tuple[str, ...]:
        """Every kept caption of item ``i``."""
        return self.samples[i].captions

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        sample = self.samples[i]
        return load_image(io.BytesIO(sample.image), self.image_size), drawn_caption(sample.captions, self.seed, 0, i)


class ShardStream:
    """The train split of a shard set: every sample of ``paths`` but those ``held_out`` (shard
    index -> sample indices: the val candidates), through ``filters``, images decoded to
    ``image_size``. Read by readers (:meth:`reader_samples`); ``report`` holds the counts of what
    this process's training readers have delivered so far (the train loader keeps it current).

    ``len()`` is the number of shards: what the data order depends on (how many samples they hold
    is unknown until they are read).
    """

    def __init__(self, pattern: str, paths: list[str], image_size: int, filters: DataFilters,
                 held_out: Mapping[int, frozenset[int]]) -> None:
        self.pattern, self.paths, self.filters = pattern, list(paths), filters
        self.image_size = check_image_size(image_size)
        self.held_out = dict(held_out)
        self.report = self.new_report()

    def __len__(self) -> int:
        return len(self.paths)

    def new_report(self) -> ShardReport:
        """An empty report of this stream's samples."""
        return ShardReport(f"train shards {self.pattern}", self.filters)

    def shard_samples(self, shard: int, report: ShardReport, decode: bool = True) -> Iterator[Sample]:
        """The usable train samples of shard ``shard`` (an index into ``paths``), in order, counted
        in ``report``; with ``decode`` False the pixels are not decoded."""
        held = self.held_out.get(shard, frozenset())
        for raw in read_shard(self.paths[shard], report):
            if raw.index not in held:
                sample = check_sample(shard, raw, report, self.image_size, decode)
                if sample is not None:
                    yield sample

    def reader_shards(self, reader: int, readers: int, seed: int, epoch: int) -> list[int]:
        """The shards reader ``reader`` of ``readers`` reads in ``epoch``, in order: every
        ``readers``-th of the epoch's permutation of the shards (seeded by ``seed``), from the
        ``reader``-th. The readers of an epoch share its shards out: none is read twice."""
        if not 0 <= reader < readers <= len(self.paths):
            raise ValueError(f"reader {reader} of {readers}: needs 0 <= reader < readers <= {len(self.paths)} shards")
        return epoch_permutation(len(self.paths), seed, epoch)[reader::readers].tolist()

    def reader_samples(self, reader: int, readers: int, seed: int, report: ShardReport,
                       skip: int = 0) -> Iterator[tuple[int, Sample]]:
        """Endless ``(epoch, sample)`` of reader ``reader`` of ``readers``: the usable samples of its
        shards of epoch 0 (:meth:`reader_shards`), then of epoch 1, ..., counted in ``report``. The
        first ``skip`` are read (and decoded, so that every decision is the one training made) but
        not yielded; a shard read whole while skipping is not read again in a later epoch of the
        skip (its count and report are reused). Raises ``RuntimeError`` when a whole epoch of the
        reader's shards has no usable sample."""
        known: dict[int, tuple[int, dict[str, int]]] = {}  # shard -> (usable samples, its report counts)
        for epoch in count():
            found = False
            for shard in self.reader_shards(reader, readers, seed, epoch):
                if shard in known and known[shard][0] <= skip:
                    usable, counts = known[shard]
                    skip -= usable
                    report.add(counts)
                    found |= usable > 0
                    continue
                before, usable = report.counts(), 0
                for sample in self.shard_samples(shard, report):
                    usable += 1
                    found = True
                    if skip:
                        skip -= 1
                    else:
                        yield epoch, sample
                if skip:  # read whole while skipping
                    known[shard] = (usable, {k: v - before[k] for k, v in report.counts().items()})
            if not found:
                raise RuntimeError(f"{self.pattern}: reader {reader} of {readers} found no usable train sample in "
                                   f"its shards of epoch {epoch}: {report}")

    def first_captions(self, limit: int) -> list[tuple[str, ...]]:
        """The kept captions of the first ``limit`` usable train samples in pattern order (fewer if
        the split has fewer), images not decoded."""
        report, captions = self.new_report(), []
        for shard in range(len(self.paths)):
            for sample in self.shard_samples(shard, report, decode=False):
                captions.append(sample.captions)
                if len(captions) == limit:
                    return captions
        return captions


class ShardSplits(NamedTuple):
    """A shard set's ``train`` stream, its ``val`` samples and the ``report`` of reading them."""

    train: ShardStream
    val: ShardSamples
    report: ShardReport


def load_shards(pattern: str, image_size: int, val_size: int, filters: DataFilters = DataFilters(),
                seed: int = 0) -> ShardSplits:
    """The splits of the shards of ``pattern`` (see the module doc), reading only as far as the
    val split needs; ``seed`` draws the val captions. ``UsageError`` when webdataset is missing or
    no val sample is usable."""
    paths = expand_shards(pattern)
    report = ShardReport(f"shards {pattern} ({len(paths)} shards; val split from the first)", filters)
    samples: list[Sample] = []
    held: dict[int, set[int]] = {}
    number = count()
    for shard, path in enumerate(paths):
        if len(samples) == val_size:
            break
        for raw in read_shard(path, report):
            if next(number) % VAL_EVERY:
                continue
            held.setdefault(shard, set()).add(raw.index)
            sample = check_sample(shard, raw, report, image_size)
            if sample is not None:
                samples.append(sample)
            if len(samples) == val_size:
                break
    if not samples:
        raise UsageError(f"--data {pattern}: no usable sample for the val split ({report})")
    frozen = {shard: frozenset(indices) for shard, indices in held.items()}
    return ShardSplits(ShardStream(pattern, paths, image_size, filters, frozen),
                       ShardSamples(samples, image_size, seed), report)
