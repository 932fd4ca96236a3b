"""The dalle stage's token cache: the images of the train and val splits encoded once by the
run's frozen dVAE, so the transformer trains on image tokens without running the dVAE.

``dalle_tokens.safetensors`` in the run directory holds one (N, grid_size**2) tensor per split
(int16 when the codebook fits, else int32; raster order) and, in its metadata, the key of what
it was computed from: a SHA-256 of the dVAE weights used (the EMA's when kept), the dVAE and data
config, and the split sizes. A resumed run reuses a file whose key matches; a retrained dVAE (or
other data) changes the key, and the cache is built again. The file is written atomically.
Under torchrun rank 0 builds it while the other processes wait, then every process reads it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from ..atomic import write_atomic
from ..config import Config
from ..data.splits import TrainData, item_captions
from ..device import barrier, is_main
from ..dvae import DiscreteVAE
from ..image_tokens import encode_split

CACHE_FILE = "dalle_tokens.safetensors"
FORMAT = "dalle_fast.tokens/1"
SPLITS = ("train", "val")


class TokenCache(NamedTuple):
    """The cached tokens of each split ((N, grid_size**2) int16/int32), the cache key, and how
    the cache was obtained: ``built`` (False: read from the run directory) in ``seconds``."""

    train: torch.Tensor
    val: torch.Tensor
    key: str
    built: bool
    seconds: float


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
    """``data`` with its splits replaced by their :class:`CaptionedTokens` from ``cache``."""
    return data._replace(train=CaptionedTokens(cache.train, item_captions(data.train)),
                         val=CaptionedTokens(cache.val, item_captions(data.val)))


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
        cached = {split: encode_split(vae, getattr(data, split), batch_size, precision, config.train.num_workers,
                                      f"dalle tokens ({split})") for split in SPLITS}
        write_cache(run_dir, cached, key)
    barrier()
    if cached is None:  # another process built it
        cached = read_cache(run_dir, key)
        if cached is None:
            raise RuntimeError(f"{run_dir / CACHE_FILE}: rank 0 built the token cache, but it does not match here")
    return TokenCache(cached["train"], cached["val"], key, built, time.perf_counter() - started)


def cache_key(config: Config, data: TrainData, vae: DiscreteVAE) -> str:
    """SHA-256 (hex) of the dVAE's weights (names, dtypes, shapes, values), the dVAE and data
    config and the split sizes: what the cached tokens depend on."""
    digest = hashlib.sha256()
    settings = config.to_dict()
    about = {"format": FORMAT, "vae": settings["vae"], "data": settings["data"],
             "sizes": [len(getattr(data, split)) for split in SPLITS]}
    digest.update(json.dumps(about, sort_keys=True).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_cache(run_dir: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The split tensors of ``run_dir``'s cache if it exists and was computed for ``key``, else None."""
    path = run_dir / CACHE_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("key") != key:
            return None
        return {split: f.get_tensor(split) for split in SPLITS}


def write_cache(run_dir: Path, tokens: dict[str, torch.Tensor], key: str) -> None:
    """Save the split tensors ``tokens`` with ``key`` as ``run_dir``'s cache, atomically."""
    write_atomic(run_dir / CACHE_FILE, lambda tmp: save_file(tokens, tmp, {"format": FORMAT, "key": key}))
