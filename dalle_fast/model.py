"""The DALL-E transformer (Ramesh et al. 2021; docs/design.md#transformer and
docs/design.md#attention-masks): a decoder-only sparse transformer over the text tokens followed
by the image tokens of one sample.

Sequence: positions 0..S-1 hold the input tokens ``[text_0 .. text_{T-1}, image_0 .. image_{N-1}]``
with ``T = transformer.text_len``, ``N = grid_size**2`` (raster order) and ``S = T + N =
config.seq_len``, so layer l's ``dk.dalle_mask(kind, T, grid_size, conv_kernel)`` applies to
exactly these positions. The output at position i predicts token i + 1:

- text: positions 0..T-2 predict text_1..text_{T-1} (text_0 is not predicted), over the
  ``num_text_tokens = text_vocab + text_len`` text ids (BPE ids, then one padding id per position);
- image: positions T-1..S-2 predict image_0..image_{N-1}, over the ``image_vocab`` codes;
- the output at S-1 is unused.

Loss: ``(1/8) * text CE + (7/8) * image CE`` (means over the predicted positions, in nats),
through ``dalle_kernels.fused_linear_cross_entropy`` (``transformer.cross_entropy == "fused"``,
the default) or the plain logits + ``F.cross_entropy`` (``"plain"``).

Embeddings: text ids + a text position embedding (T rows); image codes + a row and a column
embedding (``grid_size`` rows each). Pre-LN blocks ``x + proj(attn(LN x))``, ``x + MLP(LN x)``
(GELU, ``mlp_ratio``), residual dropout, a final LN. The output head is one linear map to the
``num_text_tokens + image_vocab`` ids whose weight is tied to the two token embeddings (as GPT-2
ties its head): text positions use only its text rows, image positions only its image rows, so a
text position can never predict an image code nor the reverse. Tying is what puts the ``paper``
preset at 12B parameters (an untied head would add 99M, 2.4% over).

Attention of layer l (L layers): ``conv`` for the last, ``column`` when l % 4 == 1, ``row``
otherwise; every layer ``full`` when ``transformer.attention == "full"``. It runs through
``dalle_kernels.sparse_attention`` (Triton on a GPU, the PyTorch reference on the CPU).

Cached decoding (:meth:`DALLE.new_cache`, :meth:`DALLE.prefill`, :meth:`DALLE.decode`) keeps every
layer's keys and values and feeds one image token at a time through
``dalle_kernels.sparse_attention_decode``; :mod:`dalle_fast.sampling` drives it.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import dalle_kernels as dk

from .config import Config
from .units import Unit

TEXT_WEIGHT, IMAGE_WEIGHT = 1 / 8, 7 / 8
Mask = Any  # a dk.dalle_mask(...)
INIT_STD = 0.02


class DALLEOutput(NamedTuple):
    """``loss``: ``TEXT_WEIGHT * text_loss + IMAGE_WEIGHT * image_loss``; ``text_loss``: mean CE
    over the predicted text positions; ``image_loss``: mean CE over the image tokens. Scalars, nats."""

    loss: torch.Tensor
    text_loss: torch.Tensor
    image_loss: torch.Tensor


def head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       targets: torch.Tensor, fused: bool) -> torch.Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T + bias`` against ``targets``:
    hidden (B, P, d), weight (V, d) (a row slice of a tied embedding), bias (V,), targets (B, P)
    ids in [0, V) -> scalar (0 when P is 0). ``fused``: through ``dk.fused_linear_cross_entropy``
    (the Triton kernel on a GPU never holds the (B*P, V) logits); else ``F.linear`` then
    ``F.cross_entropy`` on float32 logits. Both give float32 under autocast."""
    if targets.numel() == 0:
        return hidden.sum() * 0
    hidden, targets = hidden.flatten(0, 1), targets.flatten()
    if fused:
        return dk.fused_linear_cross_entropy(hidden, weight, targets, bias=bias)
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets)


def layer_kinds(layers: int, attention: str) -> list[str]:
    """The mask kind of each layer (docs/design.md#attention-masks): all ``"full"`` for ``attention == "full"``;
    else ``"conv"`` last, ``"column"`` when l % 4 == 1, ``"row"`` otherwise."""
    if attention == "full":
        return ["full"] * layers
    return ["conv" if l == layers - 1 else "column" if l % 4 == 1 else "row" for l in range(layers)]


def check_ids(name: str, ids: object, length: int | None, vocab: int) -> torch.Tensor:
    """``ids`` as a long tensor; it must be an integer tensor (B, length) (any length when None)
    with values in [0, vocab), else ``TypeError`` / ``ValueError`` naming ``name``."""
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.ndim != 2 or length not in (None, ids.shape[1]):
        raise ValueError(f"{name}: expected shape (B, {'P' if length is None else length}), got {tuple(ids.shape)}")
    if ids.numel() and not (ids.min() >= 0 and ids.max() < vocab):
        raise ValueError(f"{name}: ids must lie in [0, {vocab}), "
                         f"got the range [{ids.min().item()}, {ids.max().item()}]")
    return ids.long()


class Block(Unit):
    """Pre-LN transformer block over (B, n, d) activations, attention restricted by a mask; a
    :class:`~dalle_fast.units.Unit` (training may recompute and shard it on its own)."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: Mask) -> torch.Tensor:
        """x (B, S, d), S = mask.seq_len -> (B, S, d)."""
        return self.run(self._attend, x, mask)

    def _attend(self, x: torch.Tensor, mask: Mask) -> torch.Tensor:
        q, k, v = self._heads(x)
        return self._finish(x, dk.sparse_attention(q, k, v, mask))

    def cached(self, x: torch.Tensor, mask: Mask, cache: torch.Tensor, start: int) -> torch.Tensor:
        """x (B, n, d): the tokens at sequence positions start..start+n-1; cache (2, B, H, S, Dh)
        holds the keys and values of positions < start and receives these. One token (n = 1)
        attends through ``sparse_attention_decode``; a prefix (start = 0) through SDPA with the
        mask's top-left n x n corner. -> (B, n, d)."""
        n = x.shape[1]
        q, k, v = (t.to(cache.dtype) for t in self._heads(x))
        cache[0, :, :, start:start + n] = k
        cache[1, :, :, start:start + n] = v
        if n == 1:
            return self._finish(x, dk.sparse_attention_decode(q, cache[0], cache[1], mask, start))
        if start != 0:
            raise ValueError(f"start: several tokens are fed only as a prefix (start 0), got start {start}")
        index = torch.arange(n, device=x.device)
        allowed = mask.allows(index[:, None], index[None, :])
        return self._finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of LN(x), each (B, H, n, Dh) (strided views of one projection)."""
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The residual updates after attention: attended (B, H, n, Dh) -> (B, n, d)."""
        b, _, n, _ = attended.shape
        x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(b, n, -1)))
        return x + self.drop(self.mlp(self.norm2(x)))


class DALLE(nn.Module):
    """``DALLE(config)``: the transformer of ``config.transformer`` over ``config.seq_len`` tokens
    (see the module docstring for the sequence, the loss and the head)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        if not isinstance(config, Config):
            raise TypeError(f"config: expected a dalle_fast.config.Config, got {type(config).__name__}")
        t = config.transformer
        self.config = config
        self.text_len, self.grid_size, self.image_vocab = t.text_len, config.grid_size, config.image_vocab
        self.num_text_tokens = t.text_vocab + t.text_len
        d = t.d_model
        self.text_embedding = nn.Embedding(self.num_text_tokens, d)
        self.image_embedding = nn.Embedding(self.image_vocab, d)
        self.text_position = nn.Parameter(torch.empty(self.text_len, d))
        self.image_row = nn.Parameter(torch.empty(self.grid_size, d))
        self.image_column = nn.Parameter(torch.empty(self.grid_size, d))
        self.embedding_drop = nn.Dropout(t.dropout)
        self.blocks = nn.ModuleList(Block(d, t.heads, t.mlp_ratio, t.dropout) for _ in range(t.layers))
        self.norm = nn.LayerNorm(d)
        self.head_bias = nn.Parameter(torch.zeros(self.num_text_tokens + self.image_vocab))
        self._masks = tuple(dk.dalle_mask(kind, t.text_len, config.grid_size, t.conv_kernel)
                            for kind in layer_kinds(t.layers, t.attention))
        self._init_weights(t.layers)

    def _init_weights(self, layers: int) -> None:
        """GPT-2: weights N(0, 0.02), biases 0, residual projections N(0, 0.02 / sqrt(2 * layers))."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=INIT_STD)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for linear in (block.proj, block.mlp[2]):
                nn.init.normal_(linear.weight, std=INIT_STD / math.sqrt(2 * layers))
        for table in (self.text_position, self.image_row, self.image_column):
            nn.init.normal_(table, std=INIT_STD)

    @property
    def layer_masks(self) -> list[Mask]:
        """The ``dk.dalle_mask`` of each layer, in order."""
        return list(self._masks)

    @property
    def image_seq_len(self) -> int:
        """N = grid_size**2 image tokens per sample."""
        return self.grid_size**2

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> DALLEOutput:
        """Losses of text (B, T) and image (B, N) token ids (see the module docstring)."""
        text, image = self._check_inputs(text, image)
        hidden = self._hidden(text, image)
        t, fused = self.text_len, self.config.transformer.cross_entropy == "fused"
        text_loss = head_cross_entropy(hidden[:, :t - 1], *self._text_head(), text[:, 1:], fused)
        image_loss = head_cross_entropy(hidden[:, t - 1:-1], *self._image_head(), image, fused)
        return DALLEOutput(TEXT_WEIGHT * text_loss + IMAGE_WEIGHT * image_loss, text_loss, image_loss)

    def logits(self, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text logits (B, T-1, num_text_tokens) predicting text_1..text_{T-1} and image logits
        (B, N, image_vocab) predicting image_0..image_{N-1}, of text (B, T) and image (B, N) ids."""
        hidden = self._hidden(*self._check_inputs(text, image))
        return F.linear(hidden[:, :self.text_len - 1], *self._text_head()), self._image_logits(hidden)

    def image_logits(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The image half of :meth:`logits` alone: (B, N, image_vocab)."""
        return self._image_logits(self._hidden(*self._check_inputs(text, image)))

    def _image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden[:, self.text_len - 1:-1], *self._image_head())

    def new_cache(self, batch: int) -> torch.Tensor:
        """An empty key/value cache for ``batch`` sequences: (layers, 2, B, H, S, Dh) zeros on the
        parameters' device, in the autocast dtype when autocast is on there, else the parameters' dtype."""
        t, weight = self.config.transformer, self.text_position
        device = weight.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        return weight.new_zeros(t.layers, 2, batch, t.heads, self.config.seq_len, t.head_dim, dtype=dtype)

    @torch.no_grad()
    def prefill(self, text: torch.Tensor, prime: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        """Feed text (B, T) and the first P image tokens prime (B, P) (P may be 0) into an empty
        ``cache``; returns the image logits (B, image_vocab) for image token P (P < N). Inference
        only (no gradient), as :meth:`decode`."""
        text = check_ids("text", text, self.text_len, self.num_text_tokens)
        x = torch.cat([self._embed_text(text), self._embed_image(prime, 0)], dim=1)
        return self._run_cached(x, cache, 0)

    @torch.no_grad()
    def decode(self, token: torch.Tensor, index: int, cache: torch.Tensor) -> torch.Tensor:
        """Feed image token ``index`` (token (B,) ids) after image tokens 0..index-1 are in
        ``cache``; returns the image logits (B, image_vocab) for image token index + 1."""
        return self._run_cached(self._embed_image(token[:, None], index), cache, self.text_len + index)

    def _run_cached(self, x: torch.Tensor, cache: torch.Tensor, start: int) -> torch.Tensor:
        """Embedded tokens x (B, n, d) at positions start..start+n-1 through every layer with
        the cache; the image logits (B, image_vocab) of the last position."""
        for block, mask, layer_cache in zip(self.blocks, self._masks, cache):
            x = block.cached(x, mask, layer_cache, start)
        return F.linear(self.norm(x[:, -1]), *self._image_head())

    def _check_inputs(self, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = check_ids("text", text, self.text_len, self.num_text_tokens)
        image = check_ids("image", image, self.image_seq_len, self.image_vocab)
        if len(text) != len(image):
            raise ValueError(f"image: batch of {len(image)} does not match the {len(text)} texts")
        return text, image

    def _hidden(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Final-LN outputs (B, S, d) of the whole sequence."""
        x = torch.cat([self._embed_text(text), self._embed_image(image, 0)], dim=1)
        for block, mask in zip(self.blocks, self._masks):
            x = block(x, mask)
        return self.norm(x)

    def _embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """text (B, T) -> (B, T, d): token + position embeddings."""
        return self.embedding_drop(self.text_embedding(text) + self.text_position)

    def _embed_image(self, image: torch.Tensor, start: int) -> torch.Tensor:
        """image (B, n) ids of raster positions start..start+n-1 -> (B, n, d): code + row + column embeddings."""
        index = torch.arange(start, start + image.shape[1], device=image.device)
        rows, columns = index // self.grid_size, index % self.grid_size
        return self.embedding_drop(self.image_embedding(image) + self.image_row[rows] + self.image_column[columns])

    def _text_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (num_text_tokens, d) and bias of the head's text rows."""
        return self.text_embedding.weight, self.head_bias[:self.num_text_tokens]

    def _image_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (image_vocab, d) and bias of the head's image rows."""
        return self.image_embedding.weight, self.head_bias[self.num_text_tokens:]
