"""The dalle stage's token cache: the images of the train and val splits encoded once by the
run's frozen dVAE, so the transformer trains on image tokens without running the dVAE.

``dalle_tokens.safetensors`` in the run directory holds one (N, grid_size**2) tensor per split
(int16 when the codebook fits, else int32; raster order) and, in its metadata, the key of what
it was computed from: a SHA-256 of the dVAE weights used (the EMA's when kept), the dVAE and data
config, and the split sizes. A resumed run reuses a file whose key matches; a retrained dVAE (or
other data) changes the key, and the cache is built again. The file is written atomically.
Under torchrun rank 0 builds it while the other processes wait, then every process reads it.

With ``transformer.token_copies`` K > 1 the train tensor holds K encodings of every image, one
copy after another: the images themselves, then K - 1 random square crops of each
(``transformer.augment_crop``; paper B.2), copy k of image i cropped by a generator seeded with
(run seed, k, i), so a rebuild gives the same cache. The transformer's train split is then the K
copies in a row (:func:`token_data`), each with its image's captions.

Tar shards (a :class:`~dalle_fast.data.shards.ShardStream` train split) are streamed through the
dVAE once, epoch 0 of ``max(1, train.num_workers)`` readers (one per data loader worker), into the
same cache: the tokens of every usable train sample in the order read, with their kept captions
(``train_captions``, JSON as UTF-8 bytes), so the transformer then trains on them as on any
indexed data (exact resume by position). The key adds the size and modification time of every
shard; the filter counts of the pass are printed and logged as a ``data`` record of the dalle stage
in ``metrics.jsonl``. The cache holds every image of the set as ``grid_size**2`` tokens (2 KiB an
image at 32x32 int16): the paper's 250M images would need 500 GB.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from tqdm import tqdm

from ..atomic import write_atomic
from ..config import Config
from ..data.shards import ShardReport, ShardStream
from ..data.splits import TrainData, item_captions
from ..device import barrier, is_main
from ..dvae import DiscreteVAE
from ..errors import UsageError
from ..eval_mode import eval_mode
from ..image_tokens import encode_split
from .log import MetricsLog
from .vae_augment import random_crop

CACHE_FILE = "dalle_tokens.safetensors"
CROP_STREAM = 0xC20F  # tells the token cache's crop seeds apart from other streams of a seed
FORMAT = "dalle_fast.tokens/1"
SPLITS = ("train", "val")
STREAM_CAPTIONS = "train_captions"  # the kept captions of a streamed train split's samples


class TokenCache(NamedTuple):
    """The cached tokens of each split ((N, grid_size**2) int16/int32), the cache key, and how
    the cache was obtained: ``built`` (False: read from the run directory) in ``seconds``.
    ``train_captions``: the kept captions of each train item of a streamed train split (else
    None: the dataset has them)."""

    train: torch.Tensor
    val: torch.Tensor
    key: str
    built: bool
    seconds: float
    train_captions: list[tuple[str, ...]] | None = None


class CaptionedTokens(Dataset):
    """The items of one split as the transformer sees them: ``ds[i] -> (tokens, i)``, tokens the
    (grid_size**2,) int64 image tokens of item ``i``; its captions are ``ds.captions[i]`` (a
    tuple of one or more strings), read by the trainer, which picks and tokenizes one."""

    def __init__(self, tokens: torch.Tensor, captions: list[tuple[str, ...]]) -> None:
        if tokens.ndim != 2 or len(tokens) != len(captions):
            raise ValueError(f"tokens: expected shape ({len(captions)}, N) to match the captions, "
                             f"got {tuple(tokens.shape)}")
        self.tokens, self.captions = tokens, captions

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.tokens[i].long(), i


def token_data(data: TrainData, cache: TokenCache) -> TrainData:
    """``data`` with its splits replaced by their :class:`CaptionedTokens` from ``cache`` (a
    train tensor of K copies of every image gives K copies of the captions, in the same order)."""
    train = cache.train_captions if cache.train_captions is not None else item_captions(data.train)
    copies, rest = divmod(len(cache.train), len(train))
    if rest:
        raise ValueError(f"cache: {len(cache.train)} train token rows are not a whole number of copies of "
                         f"{len(train)} images")
    return data._replace(train=CaptionedTokens(cache.train, train * copies),
                         val=CaptionedTokens(cache.val, item_captions(data.val)))


class CroppedCopy(Dataset):
    """Copy ``copy`` (>= 1) of ``dataset``'s items ``(image, caption)``: each image a random square
    crop (:func:`~.vae_augment.random_crop`, smallest side share ``min_scale``) drawn from a
    generator seeded with ``(seed, copy, index)``, the same on every call."""

    def __init__(self, dataset: Dataset, min_scale: float, seed: int, copy: int) -> None:
        self.dataset, self.min_scale, self.seed, self.copy = dataset, min_scale, seed, copy

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, object]:
        image, caption = self.dataset[i]
        state = np.random.SeedSequence([CROP_STREAM, self.seed, self.copy, i]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return random_crop(image[None], self.min_scale, generator)[0], caption


def encode_train_copies(config: Config, vae: DiscreteVAE, dataset: Dataset, batch_size: int,
                        precision: contextlib.AbstractContextManager) -> torch.Tensor:
    """The ``transformer.token_copies`` encodings of every image of the indexed train ``dataset``,
    copy after copy: (copies * N, grid_size**2) (see the module doc)."""
    transformer, workers = config.transformer, config.train.num_workers
    copies = [encode_split(vae, dataset, batch_size, precision, workers, "dalle tokens (train)")]
    for copy in range(1, transformer.token_copies):
        cropped = CroppedCopy(dataset, transformer.augment_crop, config.train.seed, copy)
        copies.append(encode_split(vae, cropped, batch_size, precision, workers,
                                   f"dalle tokens (train, crop {copy} of {transformer.token_copies - 1})"))
    return torch.cat(copies)


def token_cache(config: Config, run_dir: Path, data: TrainData, vae: DiscreteVAE, batch_size: int,
                precision: contextlib.AbstractContextManager) -> TokenCache:
    """The tokens of ``data``'s train and val images under ``vae`` (frozen, on the device it is
    on): read from ``run_dir`` when its cache has the same key, else encoded in batches of
    ``batch_size`` under ``precision`` (rank 0, with a progress bar) and saved there."""
    key = cache_key(config, data, vae)
    started = time.perf_counter()
    cached = read_cache(run_dir, key)
    built = cached is None
    if built and is_main():
        workers = config.train.num_workers
        cached = {"val": encode_split(vae, data.val, batch_size, precision, workers, "dalle tokens (val)")}
        if isinstance(data.train, ShardStream):
            if config.transformer.token_copies > 1:
                raise UsageError(f"transformer.token_copies {config.transformer.token_copies}: augmented copies of "
                                 "tar shards are not supported (the cache streams each shard once); set it to 1")
            cached["train"], captions, report = encode_stream(vae, data.train, config.train.seed, batch_size,
                                                              precision, workers)
            cached[STREAM_CAPTIONS] = torch.frombuffer(bytearray(json.dumps(captions).encode()), dtype=torch.uint8)
            tqdm.write(f"dalle tokens: {report}")
            MetricsLog(run_dir).append({"stage": "dalle", "split": "data", "step": 0, **report.counts()})
        else:
            cached["train"] = encode_train_copies(config, vae, data.train, batch_size, precision)
        write_cache(run_dir, cached, key)
    barrier()
    if cached is None:  # another process built it
        cached = read_cache(run_dir, key)
        if cached is None:
            raise RuntimeError(f"{run_dir / CACHE_FILE}: rank 0 built the token cache, but it does not match here")
    captions = cached.get(STREAM_CAPTIONS)
    if captions is not None:
        captions = [tuple(item) for item in json.loads(captions.numpy().tobytes())]
    return TokenCache(cached["train"], cached["val"], key, built, time.perf_counter() - started, captions)


def cache_key(config: Config, data: TrainData, vae: DiscreteVAE) -> str:
    """SHA-256 (hex) of the dVAE's weights (names, dtypes, shapes, values), the dVAE and data
    config and the split sizes (of a streamed train split, the number of shards and their sizes and
    modification times): what the cached tokens depend on."""
    digest = hashlib.sha256()
    settings = config.to_dict()
    about = {"format": FORMAT, "vae": settings["vae"], "data": settings["data"],
             "sizes": [len(getattr(data, split)) for split in SPLITS]}
    if isinstance(data.train, ShardStream):
        about["shards"] = [_file_stamp(path) for path in data.train.paths]
    if config.transformer.token_copies > 1:  # (a key without copies is the key of older caches)
        about["copies"] = [config.transformer.token_copies, config.transformer.augment_crop, config.train.seed]
    digest.update(json.dumps(about, sort_keys=True).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_cache(run_dir: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The tensors of ``run_dir``'s cache (the splits', the stream's captions) if it exists and was
    computed for ``key``, else None."""
    path = run_dir / CACHE_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("key") != key:
            return None
        return {name: f.get_tensor(name) for name in f.keys()}


def write_cache(run_dir: Path, tokens: dict[str, torch.Tensor], key: str) -> None:
    """Save the split tensors ``tokens`` with ``key`` as ``run_dir``'s cache, atomically."""
    write_atomic(run_dir / CACHE_FILE, lambda tmp: save_file(tokens, tmp, {"format": FORMAT, "key": key}))


def _file_stamp(path: str) -> tuple[int, int] | None:
    """(size, modification time in ns) of the file at ``path``; None when it is missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


@torch.no_grad()
def encode_stream(vae: DiscreteVAE, stream: ShardStream, seed: int, batch_size: int,
                  precision: contextlib.AbstractContextManager, num_workers: int
                  ) -> tuple[torch.Tensor, list[tuple[str, ...]], ShardReport]:
    """Epoch 0 of the train ``stream`` through the frozen ``vae`` (eval mode, under ``precision``):
    the tokens (N, grid_size**2) of every usable train sample (int16 when the codebook has at most
    2**15 codes, else int32), each sample's kept captions and the report of reading them. Read by
    ``max(1, num_workers)`` readers (at most one per shard), one per data loader worker, in batches
    of ``batch_size``; a progress bar counts the images (rank 0)."""
    device = next(vae.parameters()).device
    dtype = torch.int16 if vae.codebook.shape[0] <= 2**15 else torch.int32
    workers = min(max(1, num_workers), len(stream))
    loader = DataLoader(_EpochReaders(stream, seed, batch_size, workers), batch_size=None,
                        num_workers=min(num_workers, workers), generator=torch.Generator())
    tokens, captions, counts = [], [], {}
    with eval_mode(vae), tqdm(desc="dalle tokens (train shards)", unit="image", dynamic_ncols=True,
                              disable=not is_main()) as progress:
        for images, kept, reader, reader_counts in loader:
            if kept:
                with precision:
                    tokens.append(vae.encode(images.to(device, non_blocking=True)).flatten(1).to("cpu", dtype))
            captions += kept
            counts[reader] = reader_counts
            progress.update(len(images))
    report = stream.new_report()
    for reader_counts in counts.values():
        report.add(reader_counts)
    if not tokens:
        raise RuntimeError(f"no usable train sample: {report}")
    return torch.cat(tokens), captions, report


class _EpochReaders(IterableDataset):
    """Epoch 0 of a train stream's ``readers`` readers, one per data loader worker (reader 0
    without workers): batches ``(images, captions of each, reader, its counts so far)``, the last
    full one of a reader short, then an empty one with the reader's final counts."""

    def __init__(self, stream: ShardStream, seed: int, batch_size: int, readers: int) -> None:
        self.stream, self.seed, self.batch_size, self.readers = stream, seed, batch_size, readers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[tuple[str, ...]], int, dict[str, int]]]:
        info = get_worker_info()
        reader = info.id if info is not None else 0
        report = self.stream.new_report()
        samples = (sample for shard in self.stream.reader_shards(reader, self.readers, self.seed, 0)
                   for sample in self.stream.shard_samples(shard, report))
        while batch := list(itertools.islice(samples, self.batch_size)):
            yield torch.stack([s.pixels for s in batch]), [s.captions for s in batch], reader, report.counts()
        yield torch.empty(0, 3, self.stream.image_size, self.stream.image_size), [], reader, report.counts()
