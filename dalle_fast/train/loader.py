"""The training loader: batches in an order that is a pure function of (seed, position), so a
checkpoint can store the position (the samples consumed) and a resumed run continues with the very
same batches: indexed data in :class:`IndexStream` order, tar shards by :class:`ShardLoader`."""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from ..data.captioned import drawn_caption
from ..data.order import epoch_permutation
from ..data.shards import ShardStream
from ..errors import UsageError


class IndexStream(Sampler[int]):
    """An endless stream of indices into a dataset of ``size`` items: epoch ``e`` is a permutation
    of ``range(size)`` drawn from a generator seeded with ``(seed, e)``; iteration starts at
    position ``start`` of the stream (``start // size`` epochs and ``start % size`` items in)."""

    def __init__(self, size: int, seed: int, start: int = 0) -> None:
        if size < 1:
            raise ValueError(f"size: must be >= 1, got {size}")
        if start < 0:
            raise ValueError(f"start: must be >= 0, got {start}")
        self.size, self.seed, self.start = size, seed, start

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.size)
        while True:
            yield from self.permutation(epoch)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch ``epoch``: (size,) int64."""
        return epoch_permutation(self.size, self.seed, epoch)


class RankSlice(Sampler[int]):
    """This process's part of the global batches of ``stream``: the stream cut into batches of
    ``batch_size`` indices, of each only the ``rank``-th of ``size`` equal slices. With
    ``size`` 1, the stream itself."""

    def __init__(self, stream: Iterable[int], batch_size: int, rank: int, size: int) -> None:
        if not 0 <= rank < size:
            raise ValueError(f"rank: must be in [0, {size}), got {rank}")
        if batch_size < 1 or batch_size % size:
            raise ValueError(f"batch_size: must be a positive multiple of size {size}, got {batch_size}")
        self.stream, self.batch_size, self.rank, self.size = stream, batch_size, rank, size

    def __iter__(self) -> Iterator[int]:
        local = self.batch_size // self.size
        indices = iter(self.stream)
        while batch := list(itertools.islice(indices, self.batch_size)):
            yield from batch[self.rank * local:(self.rank + 1) * local]


def train_loader(dataset: Dataset | ShardStream, batch_size: int, seed: int, start: int, num_workers: int,
                 rank: int = 0, size: int = 1) -> DataLoader | ShardLoader:
    """Endless batches from ``dataset`` in :class:`IndexStream` order, starting ``start``
    samples into the stream: the ``rank``-th of ``size`` slices (:class:`RankSlice`) of every
    global batch of ``batch_size``, so ``batch_size // size`` samples each. The loader's own
    seeded generator (worker seeds) keeps it off torch's global RNG, whose state belongs to the
    training step. Tar shards (a :class:`~dalle_fast.data.shards.ShardStream`) are read by a
    :class:`ShardLoader` from the same position."""
    if isinstance(dataset, ShardStream):
        return ShardLoader(dataset, batch_size, seed, start, num_workers, rank, size)
    sampler = RankSlice(IndexStream(len(dataset), seed, start), batch_size, rank, size)
    return DataLoader(dataset, batch_size=batch_size // size, sampler=sampler, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available())


class ShardLoader:
    """Endless batches ``(images (batch_size // size, 3, S, S), captions)`` of a tar shard
    ``stream`` for process ``rank`` of ``size``, starting ``start`` samples into the run's stream
    of global batches of ``batch_size``.

    Each of the process's ``max(1, num_workers)`` data loader workers is a reader: global batch
    ``b`` of rank ``r`` comes from reader slot ``r * workers + b % workers`` of the ``size *
    workers`` readers of :meth:`~dalle_fast.data.shards.ShardStream.reader_samples` (torch's
    ``DataLoader`` takes one batch from each worker in turn), which share out each epoch's shards,
    so no sample is read twice in an epoch. Captions are drawn by (seed, the reader's epoch, the
    sample). The position is the number of samples consumed, as for indexed data: from ``start``
    every reader knows how many of its samples it had delivered and reads past them again (exact
    resume; a shard it read whole is not read again in a later epoch of that skip), so resuming
    costs about one pass over what each reader had read, at most one over the set.

    Iterating keeps ``stream.report`` at the counts of what this process's readers have delivered.
    """

    def __init__(self, stream: ShardStream, batch_size: int, seed: int, start: int, num_workers: int,
                 rank: int = 0, size: int = 1) -> None:
        if not 0 <= rank < size:
            raise ValueError(f"rank: must be in [0, {size}), got {rank}")
        if batch_size < 1 or batch_size % size:
            raise ValueError(f"batch_size: must be a positive multiple of size {size}, got {batch_size}")
        if start < 0 or start % batch_size:
            raise ValueError(f"start: must be a multiple of batch_size {batch_size} and >= 0, got {start}")
        self.stream, self.local_batch, self.seed, self.num_workers = stream, batch_size // size, seed, num_workers
        self.workers = max(1, num_workers)
        self.first, self.readers, self.batches_done = rank * self.workers, size * self.workers, start // batch_size
        if len(stream) < self.readers:
            raise UsageError(f"--data {stream.pattern}: {len(stream)} shards for {size} processes x {self.workers} "
                             "data loader workers (train.num_workers): each reader needs a shard of its own; "
                             "use more shards or fewer workers")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        readers = _Readers(self.stream, self.local_batch, self.seed, self.first, self.readers, self.workers,
                           self.batches_done)
        loader = DataLoader(readers, batch_size=None, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(self.seed), pin_memory=torch.cuda.is_available())
        delivered: dict[int, dict[str, int]] = {}  # reader -> its counts so far
        for images, captions, reader, counts in loader:
            delivered[reader] = counts
            report = self.stream.new_report()
            for reader_counts in delivered.values():
                report.add(reader_counts)
            self.stream.report = report
            yield images, captions


class _Readers(IterableDataset):
    """One process's readers as a data loader's dataset: data loader worker ``k`` (0 without
    workers) is the reader of global batches ``batches_done + k``, ``batches_done + k + workers``,
    ...: reader ``(batches_done + k) % workers`` of the process, slot ``first`` + that of
    ``readers``. Yields ``(images, captions, reader, its report counts)`` per batch."""

    def __init__(self, stream: ShardStream, batch_size: int, seed: int, first: int, readers: int, workers: int,
                 batches_done: int) -> None:
        self.stream, self.batch_size, self.seed, self.first = stream, batch_size, seed, first
        self.readers, self.workers, self.batches_done = readers, workers, batches_done

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str], int, dict[str, int]]]:
        info = get_worker_info()
        reader = ((info.id if info is not None else 0) + self.batches_done) % self.workers
        delivered = max(0, (self.batches_done - reader + self.workers - 1) // self.workers)  # its earlier batches
        report = self.stream.new_report()
        samples = self.stream.reader_samples(self.first + reader, self.readers, self.seed, report,
                                             skip=delivered * self.batch_size)
        while True:
            batch = list(itertools.islice(samples, self.batch_size))
            captions = [drawn_caption(s.captions, self.seed, epoch, s.name) for epoch, s in batch]
            yield torch.stack([s.pixels for _, s in batch]), captions, reader, report.counts()
