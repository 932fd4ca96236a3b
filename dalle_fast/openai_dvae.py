"""OpenAI's released dVAE (``encoder.pkl``, ``decoder.pkl`` of the ``DALL-E`` package, import name
``dall_e``) as the weights of our :class:`~dalle_fast.dvae.DiscreteVAE` (docs/design.md#the-run-directory).

Our dVAE has OpenAI's architecture (:mod:`dalle_fast.dvae_nets`), so the conversion is a renaming,
tensor for tensor (150 tensors, 97,616,006 parameters at the released width):

==========================================  =============================================
theirs (``Encoder`` / ``Decoder``)          ours (``DiscreteVAE``)
==========================================  =============================================
encoder ``blocks.input.{w,b}``              ``encoder.net.0.{weight,bias}``
encoder ``blocks.group_G.block_I.P``        ``encoder.net.G.(I-1).P``
encoder ``blocks.output.conv``              ``encoder.net.(groups+2)``
decoder ``blocks.input``                    ``decoder.codebook_conv`` (its weight is the codebook)
decoder ``blocks.group_G.block_I.P``        ``decoder.net.(G-1).(I-1).P``
decoder ``blocks.output.conv``              ``decoder.net.(groups+1)``
``...res_path.conv_K``, ``...id_path``      ``...res_path.(2K-1)``, ``...id_path``
==========================================  =============================================

The widths come from the tensors' shapes (their constructors take ``n_hid``,
``n_blk_per_group``, ``vocab_size`` and ``n_init``; the released files are 256, 2, 8192 and 128,
the ``paper`` preset's ``hidden``, ``blocks_per_group``, ``codebook_size`` and ``codebook_dim``).
Their group count is fixed at 4: 256 px images to a 32x32 grid. Their pixel mapping is ours with
eps 0.1 (``map_pixels``: ``(1 - 2 eps) x + eps``; ``unmap_pixels`` its inverse, clamped).

A file is either a whole pickled module, as OpenAI ships them (``torch.save(module)``: loading it
runs code from the file and needs ``dall_e`` importable), or a plain state dict (``torch.save
(module.state_dict())``, read with ``weights_only=True``, or a ``.safetensors`` file). ``dall_e`` is
imported only by unpickling, never by ``import dalle_fast``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch

from .config import Config, VAEConfig, preset
from .dvae import DiscreteVAE
from .errors import UsageError

OPENAI_EPS = 0.1  # dall_e.utils.logit_laplace_eps
OPENAI_GROUPS = 4  # dall_e's Encoder.group_count / Decoder.group_count (a class attribute)
OPENAI_IMAGE_SIZE = 256  # the released dVAE's training resolution; 8 px per token
SOURCE = "openai-dvae"  # the checkpoint meta's "source" of a converted vae
INSTALL = "pip install --no-deps DALL-E==0.1 attrs requests"  # dall_e's real import needs, nothing else
PARTS = ("encoder", "decoder")
_PARAM = {"w": "weight", "b": "bias"}


class OpenAIWeights(NamedTuple):
    """The converted dVAE: ``config`` (the run's, with the widths of the files) and ``weights``
    (our names -> float32 tensors, exactly :class:`DiscreteVAE`'s state dict)."""

    config: Config
    weights: dict[str, torch.Tensor]


def our_name(part: str, name: str, groups: int = OPENAI_GROUPS) -> str | None:
    """Our state-dict name of ``dall_e``'s tensor ``name`` of ``part`` (``"encoder"`` or
    ``"decoder"``), or None for a name of no tensor of ours."""
    m = re.fullmatch(r"blocks\.(input|output\.conv|group_(\d+)\.block_(\d+)\.(id_path|res_path\.conv_(\d+)))\.([wb])",
                     name)
    if m is None:
        return None
    where, group, block, path, conv, param = m.groups()
    if where == "input":
        module = "net.0" if part == "encoder" else "codebook_conv"
    elif where == "output.conv":
        module = f"net.{groups + 2 if part == 'encoder' else groups + 1}"
    else:
        g, i = int(group), int(block)
        if not (1 <= g <= groups and i >= 1) or (conv is not None and not 1 <= int(conv) <= 4):
            return None
        inner = "id_path" if conv is None else f"res_path.{2 * int(conv) - 1}"
        module = f"net.{g if part == 'encoder' else g - 1}.{i - 1}.{inner}"
    return f"{part}.{module}.{_PARAM[param]}"


def read_state_dict(path: str | os.PathLike, part: str, flag: str) -> dict[str, torch.Tensor]:
    """The tensors of the file ``path`` holding ``dall_e``'s ``part``: a pickled module (needs
    ``dall_e``; unpickling runs code from the file), a plain state dict, or a ``.safetensors``
    file. ``UsageError`` naming ``flag`` when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag}: no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return _tensors(load_file(str(path)), path, flag)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a whole pickled module, as OpenAI ships it
        if importlib.util.find_spec("dall_e") is None:
            raise UsageError(f"{flag} {path}: a pickled module of the dall_e package, which is not installed "
                             f"({INSTALL}; or pass a plain state dict)") from None
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - unpickling raises whatever the pickled code raises
            raise UsageError(f"{flag} {path}: cannot unpickle it ({type(e).__name__}: {e})") from None
    except Exception as e:  # noqa: BLE001 - not a torch file at all (zip, pickle or tensor errors)
        raise UsageError(f"{flag} {path}: not a torch file ({type(e).__name__}: {e})") from None
    if isinstance(loaded, torch.nn.Module):
        loaded = loaded.state_dict()
    return _tensors(loaded, path, flag)


def _tensors(loaded: object, path: Path, flag: str) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in loaded.items()):
        raise UsageError(f"{flag} {path}: holds a {type(loaded).__name__}, not a dall_e module or a state dict of "
                         "tensors")
    return dict(loaded)


def _width(tensors: Mapping[str, torch.Tensor], name: str, dim: int, default: int) -> int:
    tensor = tensors.get(name)
    return int(tensor.shape[dim]) if isinstance(tensor, torch.Tensor) and tensor.ndim == 4 else default


def infer_vae(encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor]) -> VAEConfig:
    """The ``paper`` preset's vae section with the widths of these tensors (``n_hid`` from the
    encoder's input conv, ``vocab_size`` from its output conv, ``n_blk_per_group`` from its first
    group, ``n_init`` from the decoder's input conv; the paper's value where a tensor is missing)."""
    vae = preset("paper").vae
    blocks = {m.group(1) for name in encoder if (m := re.match(r"blocks\.group_1\.block_(\d+)\.", name))}
    return dataclasses.replace(
        vae, hidden=_width(encoder, "blocks.input.w", 0, vae.hidden),
        codebook_size=_width(encoder, "blocks.output.conv.w", 0, _width(decoder, "blocks.input.w", 1,
                                                                        vae.codebook_size)),
        blocks_per_group=len(blocks) or vae.blocks_per_group,
        codebook_dim=_width(decoder, "blocks.input.w", 0, vae.codebook_dim))


def convert(encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor], base: Config) -> OpenAIWeights:
    """``dall_e``'s encoder and decoder tensors as our dVAE's, in a copy of ``base`` whose vae
    section is :func:`infer_vae`'s. Missing, unexpected or wrong-shape tensors raise ``UsageError``
    naming each of them (``--encoder``/``--decoder`` and their names in the file)."""
    try:
        vae = infer_vae(encoder, decoder)
        config = dataclasses.replace(base, vae=vae)
    except ValueError as e:
        raise UsageError(f"--encoder/--decoder: their shapes make no dVAE of ours ({e})") from None
    with torch.device("meta"):
        expected = DiscreteVAE(config).state_dict()
    theirs = {"encoder": encoder, "decoder": decoder}
    weights: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    found: set[str] = set()
    for part in PARTS:
        for name, tensor in theirs[part].items():
            ours = our_name(part, name)
            if ours is None or ours not in expected:
                problems.append(f"--{part}: unexpected tensor {name} {tuple(tensor.shape)}")
                continue
            found.add(ours)
            if tensor.shape != expected[ours].shape or not tensor.is_floating_point():
                problems.append(f"--{part}: {name} is {tensor.dtype} {tuple(tensor.shape)}, expected float "
                                f"{tuple(expected[ours].shape)}")
            else:
                weights[ours] = tensor.detach().to(torch.float32).contiguous()
    problems += [f"--{ours.partition('.')[0]}: missing tensor {openai_name(ours)} {tuple(tensor.shape)}"
                 for ours, tensor in expected.items() if ours not in found]
    if problems:
        raise UsageError(f"{len(problems)} tensor(s) do not fit OpenAI's dVAE (n_hid {vae.hidden}, n_blk_per_group "
                         f"{vae.blocks_per_group}, vocab_size {vae.codebook_size}, n_init {vae.codebook_dim}): "
                         + "; ".join(problems))
    return OpenAIWeights(config, weights)


def openai_name(ours: str) -> str:
    """``dall_e``'s name of our dVAE tensor ``ours`` (the inverse of :func:`our_name`)."""
    part, _, rest = ours.partition(".")
    module, _, param = rest.rpartition(".")
    short = {v: k for k, v in _PARAM.items()}[param]
    if module in ("net.0", "codebook_conv"):
        return f"blocks.input.{short}"
    m = re.fullmatch(r"net\.(\d+)\.(\d+)\.(id_path|res_path\.(\d+))", module)
    if m is None:
        return f"blocks.output.conv.{short}"
    group = int(m.group(1)) + (part == "decoder")
    inner = "id_path" if m.group(4) is None else f"res_path.conv_{(int(m.group(4)) + 1) // 2}"
    return f"blocks.group_{group}.block_{int(m.group(2)) + 1}.{inner}.{short}"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the bytes of ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
