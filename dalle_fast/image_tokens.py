"""A dataset's images as dVAE tokens: what the transformer trains on and what evaluation scores it
on."""
from __future__ import annotations

import contextlib

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .device import is_main
from .dvae import DiscreteVAE
from .eval_mode import eval_mode


@torch.no_grad()
def encode_split(vae: DiscreteVAE, dataset: Dataset, batch_size: int, precision: contextlib.AbstractContextManager,
                 num_workers: int, desc: str) -> torch.Tensor:
    """The tokens of every image of ``dataset`` (items ``(image, caption)``) in order: (N,
    grid_size**2), int16 when the codebook has at most 2**15 codes, else int32, encoded in eval
    mode under ``precision`` with a progress bar named ``desc`` (rank 0 only). Draws nothing from
    torch's global RNG."""
    device = next(vae.parameters()).device
    dtype = torch.int16 if vae.codebook.shape[0] <= 2**15 else torch.int32
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator())
    tokens = []
    with eval_mode(vae), tqdm(total=len(dataset), desc=desc, unit="image", dynamic_ncols=True,
                              disable=not is_main()) as progress:
        for images, _ in loader:
            with precision:
                tokens.append(vae.encode(images.to(device, non_blocking=True)).flatten(1).to("cpu", dtype))
            progress.update(len(images))
    return torch.cat(tokens)
