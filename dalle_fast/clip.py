"""CLIP (Radford et al. 2021), small: a text transformer and a ViT image encoder trained with a
symmetric contrastive loss to map matching captions and images to nearby unit vectors. DALL-E
uses it to rerank the images sampled for one prompt (docs/design.md#clip-reranker).

Text: ids of :class:`dalle_fast.tokenizer.CaptionTokenizer` (``vocab_size`` BPE ids, then one
padding id per position), a learned position embedding, pre-LN causal blocks, the output at the
last real (non-padding) token. Image: ``patch_size`` patches of the [0, 1] image (mapped to
[-1, 1]), a class token, learned position embeddings, pre-LN blocks, the class token's output.
Both are projected to ``embed_dim`` and L2-normalized; the similarity logits are scaled by a
learned temperature ``exp(logit_scale)`` (initially 1/0.07, capped at 100).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .units import Unit

MAX_LOGIT_SCALE = 100.0
INIT_LOGIT_SCALE = 1 / 0.07


class CLIPOutput(NamedTuple):
    """``loss``: symmetric InfoNCE (mean of the text->image and image->text cross-entropies),
    scalar. ``text_to_image`` / ``image_to_text``: in-batch top-1 retrieval accuracy (does each
    caption's best image, and each image's best caption, have the same index), scalars.
    ``logits``: (B, B) scaled similarities, row = caption, column = image."""

    loss: torch.Tensor
    text_to_image: torch.Tensor
    image_to_text: torch.Tensor
    logits: torch.Tensor


def contrastive(text: torch.Tensor, image: torch.Tensor, scale: torch.Tensor) -> CLIPOutput:
    """The :class:`CLIPOutput` of B matching pairs of unit embeddings ``text`` and ``image``
    (B, E) with logits ``scale * text @ image.T``, in float32 even under autocast (bf16 would
    round scaled similarities by up to ~0.4)."""
    with torch.autocast(text.device.type, enabled=False):
        logits = scale.float() * text.float() @ image.float().T  # (B, B)
    labels = torch.arange(len(logits), device=logits.device)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    with torch.no_grad():
        text_to_image = (logits.argmax(dim=1) == labels).float().mean()
        image_to_text = (logits.argmax(dim=0) == labels).float().mean()
    return CLIPOutput(loss, text_to_image, image_to_text, logits)


class Block(Unit):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``; (B, S, width) -> same.
    A :class:`~dalle_fast.units.Unit` (training may recompute and shard it on its own)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        return self.run(self._attend, x, causal)

    def _attend(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, s, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, heads, S, head_dim)
        x = x + self.out(attended.transpose(1, 2).reshape(b, s, width))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Token ids (B, text_len) -> unit vectors (B, embed_dim); ids >= ``vocab_size`` are padding."""

    def __init__(self, vocab_size: int, text_len: int, width: int, layers: int, heads: int, embed_dim: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size + text_len, width)
        self.position = nn.Parameter(torch.randn(text_len, width) * 0.01)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.projection = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.position
        for block in self.blocks:
            x = block(x, causal=True)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        last = torch.where(tokens < self.vocab_size, positions, 0).amax(dim=1)  # last real token (0 if none)
        pooled = self.norm(x[torch.arange(len(x), device=x.device), last])
        return F.normalize(self.projection(pooled).float(), dim=-1)


class ImageEncoder(nn.Module):
    """Images (B, 3, S, S) in [0, 1] -> unit vectors (B, embed_dim), a ViT over ``patch`` px patches."""

    def __init__(self, image_size: int, patch: int, width: int, layers: int, heads: int, embed_dim: int) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(width) * 0.02)
        self.position = nn.Parameter(torch.randn((image_size // patch) ** 2 + 1, width) * 0.01)
        self.norm_in = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.projection = nn.Linear(width, embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patches(images * 2 - 1).flatten(2).transpose(1, 2)  # (B, patches, width)
        x = torch.cat([self.cls.expand(len(patches), 1, -1), patches], dim=1) + self.position
        x = self.norm_in(x)
        for block in self.blocks:
            x = block(x, causal=False)
        return F.normalize(self.projection(self.norm(x[:, 0])).float(), dim=-1)


class CLIP(nn.Module):
    """``CLIP(config)``: towers sized by ``config.clip``; text ids as ``config.transformer``
    (``text_vocab``, ``text_len``) defines them; images of ``config.image_size`` px."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        if not isinstance(config, Config):
            raise TypeError(f"config: expected a dalle_fast.config.Config, got {type(config).__name__}")
        clip, text = config.clip, config.transformer
        self.vocab_size, self.text_len, self.image_size = text.text_vocab, text.text_len, config.image_size
        self.text = TextEncoder(text.text_vocab, text.text_len, clip.width, clip.layers, clip.heads, clip.embed_dim)
        self.image = ImageEncoder(config.image_size, clip.patch_size, clip.width, clip.layers, clip.heads,
                                  clip.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(INIT_LOGIT_SCALE)))

    @property
    def num_text_tokens(self) -> int:
        """Rows of the text embedding: ``vocab_size + text_len``."""
        return self.vocab_size + self.text_len

    def scale(self) -> torch.Tensor:
        """The logit scale ``exp(logit_scale)``, capped at ``MAX_LOGIT_SCALE``: scalar."""
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, text_len) -> L2-normalized embeddings (B, embed_dim) float32."""
        return self.text(self._check_tokens(tokens))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, image_size, image_size) in [0, 1] -> L2-normalized embeddings (B, embed_dim) float32."""
        return self.image(self._check_images(images))

    def forward(self, tokens: torch.Tensor, images: torch.Tensor) -> CLIPOutput:
        """Contrastive loss and in-batch accuracies of B matching (caption, image) pairs:
        tokens (B, text_len), images (B, 3, S, S)."""
        if len(tokens) != len(images) or len(tokens) == 0:
            raise ValueError(f"tokens: batch of {len(tokens)} captions for {len(images)} images; "
                             "expected the same, non-zero number")
        return contrastive(self.encode_text(tokens), self.encode_image(images), self.scale())

    def score(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of caption ``b`` and image ``b`` (higher = better match): tokens
        (B, text_len), or (1, text_len) for one caption against every image; images (B, 3, S, S)
        -> (B,) float32."""
        text, image = self.encode_text(tokens), self.encode_image(images)
        if len(text) not in (1, len(image)):
            raise ValueError(f"tokens: {len(text)} captions for {len(image)} images; expected 1 or {len(image)}")
        return (text * image).sum(dim=-1)

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex() \
                or tokens.dtype == torch.bool:
            got = getattr(tokens, "dtype", type(tokens).__name__)
            raise TypeError(f"tokens: expected an integer tensor, got {got}")
        if tokens.ndim != 2 or tokens.shape[1] != self.text_len:
            raise ValueError(f"tokens: expected shape (B, {self.text_len}), got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.num_text_tokens):
            raise ValueError(f"tokens: ids must lie in [0, {self.num_text_tokens}), got the range "
                             f"[{tokens.min().item()}, {tokens.max().item()}]")
        return tokens.long()

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError(f"images: expected a float tensor, got {getattr(images, 'dtype', type(images).__name__)}")
        size = self.image_size
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"images: expected shape (B, 3, {size}, {size}), got {tuple(images.shape)}")
        return images
