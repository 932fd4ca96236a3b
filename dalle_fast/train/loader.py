"""The training loader: batches in an order that is a pure function of (seed, position), so a
checkpoint can store the position and a resumed run continues with the very same batches."""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


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
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(seed))


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


def train_loader(dataset: Dataset, batch_size: int, seed: int, start: int, num_workers: int,
                 rank: int = 0, size: int = 1) -> DataLoader:
    """Endless batches from ``dataset`` in :class:`IndexStream` order, starting ``start``
    samples into the stream: the ``rank``-th of ``size`` slices (:class:`RankSlice`) of every
    global batch of ``batch_size``, so ``batch_size // size`` samples each. The loader's own
    seeded generator (worker seeds) keeps it off torch's global RNG, whose state belongs to the
    training step."""
    sampler = RankSlice(IndexStream(len(dataset), seed, start), batch_size, rank, size)
    return DataLoader(dataset, batch_size=batch_size // size, sampler=sampler, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available())
