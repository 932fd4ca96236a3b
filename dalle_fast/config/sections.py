"""The sections of a run's configuration and what each checks: frozen dataclasses, one per stage
(:class:`VAEConfig`, :class:`TransformerConfig`, :class:`CLIPConfig`) with its :class:`OptimConfig`,
the data (:class:`DataConfig`), the shared training settings (:class:`TrainConfig`), and the whole
:class:`Config`.

Every section validates itself in ``__post_init__`` and raises ``ValueError`` naming the field
(``VAEConfig.grid_size: ...``); :meth:`Config.load` also names the key path in the file
(``vae.optim.lr``). Sections are frozen: derive variants with :func:`dataclasses.replace`.
Schedule lengths are fractions of the stage's ``optim.steps``, so shortening a run keeps them
consistent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..data.shapes_spec import DEFAULT_HOLDOUT, check_holdout
from .emoji_spec import DEFAULT_CLDR as EMOJI_CLDR
from .emoji_spec import DEFAULT_FONT as EMOJI_FONT
from .emoji_spec import DEFAULT_HOLDOUT as EMOJI_HOLDOUT
from .emoji_spec import check_holdout as check_emoji_holdout
from .schema import ConfigFile, Section

SPLITS = ("train", "val", "test")
BUILT_IN_DATASETS = ("shapes", "emoji")  # the data.dataset values that name built-in data, not a path
RUN_RERANKER = "run"  # CLIPConfig.reranker of a run reranking with its own CLIP (the clip stage)
OPEN_CLIP_PREFIX = "open_clip:"  # ... and the prefix of a pretrained open_clip model


@dataclass(frozen=True)
class OptimConfig(Section):
    """AdamW with linear warmup then cosine decay from ``lr`` to ``lr_min`` over ``steps`` updates,
    or (``lr_schedule = "plateau"``) ``lr`` held and halved on each plateau of the training loss
    (``plateau_*``; :class:`dalle_fast.schedules.PlateauHalving`)."""

    steps: int
    batch_size: int
    lr: float
    lr_min: float = 0.0
    warmup_fraction: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 0.0  # max global gradient norm; 0 disables clipping
    ema_decay: float = 0.0  # decay of an exponential moving average of the weights; 0 disables it
    accumulation: int = 1  # micro-batches per step: batch_size = micro-batch x accumulation x processes
    lr_schedule: Literal["cosine", "plateau"] = "cosine"  # after the warmup: cosine to lr_min, or halve on plateaus
    plateau_window: int = 10  # logged training losses averaged per window ("plateau")
    plateau_threshold: float = 0.01  # a window must beat the best window mean by this share, else lr halves
    plateau_halvings: int = 5  # at most this many halvings (the paper's five: lr ends 32x lower)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("steps", self.steps >= 1, ">= 1")
        self._require("batch_size", self.batch_size >= 1, ">= 1")
        self._require("accumulation", self.accumulation >= 1, ">= 1")
        self.micro_batch(1)
        self._require("lr", self.lr > 0, "> 0")
        self._require("lr_min", 0 <= self.lr_min <= self.lr, "in [0, lr]")
        self._require("warmup_fraction", 0 <= self.warmup_fraction <= 1, "in [0, 1]")
        self._require("weight_decay", self.weight_decay >= 0, ">= 0")
        self._require("beta1", 0 <= self.beta1 < 1, "in [0, 1)")
        self._require("beta2", 0 <= self.beta2 < 1, "in [0, 1)")
        self._require("eps", self.eps > 0, "> 0")
        self._require("grad_clip", self.grad_clip >= 0, ">= 0 (0 disables clipping)")
        self._require("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1) (0 disables the EMA)")
        self._require("plateau_window", self.plateau_window >= 1, ">= 1")
        self._require("plateau_threshold", 0 <= self.plateau_threshold < 1, "in [0, 1)")
        self._require("plateau_halvings", self.plateau_halvings >= 0, ">= 0")

    def micro_batch(self, processes: int) -> int:
        """Samples per forward of each of ``processes`` processes:
        ``batch_size // (accumulation * processes)``; ``ValueError`` naming both fields unless it divides."""
        if processes < 1:
            raise ValueError(f"processes: must be >= 1, got {processes!r}")
        share = self.accumulation * processes
        if self.batch_size % share:
            self._fail("batch_size", f"must be a multiple of accumulation x processes = {self.accumulation} x "
                                     f"{processes} = {share} (the global batch is micro-batch x accumulation x "
                                     f"processes), got batch_size {self.batch_size}; change optim.batch_size or "
                                     "optim.accumulation")
        return self.batch_size // share


@dataclass(frozen=True)
class DataConfig(Section):
    """Which data to train on. ``dataset`` is ``"shapes"`` or ``"emoji"`` (built in) or a path to
    user data.

    ``holdout``: (color, shape) pairs kept out of the shapes train split (checked against the
    shapes vocabulary when ``dataset`` is ``"shapes"``). ``*_size``: samples per split (the
    shapes data is procedural, so these are epoch lengths, not limits of the data; the emoji and
    user data hold out ``min(val_size, 10%)`` of their images for validation).

    The ``emoji`` data (:mod:`dalle_fast.data.emoji`): ``emoji_font`` is the Noto Color Emoji font
    file, ``emoji_cldr`` the CLDR ``common`` folder (with ``annotations/en.xml`` and
    ``annotationsDerived/en.xml``), both where Debian installs them by default; ``emoji_holdout``
    the CLDR names kept out of its train and val splits (zero-shot probes, of the forms
    :mod:`.emoji_spec` says; whether they exist is checked when the data loads).
    """

    dataset: str = "shapes"
    holdout: tuple[tuple[str, str], ...] = DEFAULT_HOLDOUT
    train_size: int = 50_000
    val_size: int = 1_000
    test_size: int = 1_000
    emoji_font: str = EMOJI_FONT
    emoji_cldr: str = EMOJI_CLDR
    emoji_holdout: tuple[str, ...] = EMOJI_HOLDOUT

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("dataset", bool(self.dataset), "a dataset name or path")
        pairs = self.holdout
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in pairs
        ):
            self._fail("holdout", f"must be a list of [color, shape] pairs, got {pairs!r}")
        holdout = tuple(tuple(p) for p in pairs)  # JSON gives lists; keep tuples for equality
        self._require("holdout", len(set(holdout)) == len(holdout), "free of duplicate pairs")
        object.__setattr__(self, "holdout", holdout)
        if self.dataset == "shapes":
            try:
                check_holdout(holdout)
            except ValueError as e:
                self._fail("holdout", str(e).removeprefix("holdout: "))
        for split in SPLITS:
            self._require(f"{split}_size", self.split_size(split) >= 1, ">= 1")
        names = self.emoji_holdout
        if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)) \
                or not all(isinstance(n, str) for n in names):
            self._fail("emoji_holdout", f"must be a list of emoji names, got {names!r}")
        object.__setattr__(self, "emoji_holdout", tuple(names))  # JSON gives a list
        if self.dataset == "emoji":
            try:
                check_emoji_holdout(self.emoji_holdout)
            except ValueError as e:
                self._fail("emoji_holdout", str(e))
            self._require("emoji_font", bool(self.emoji_font), "the path of the Noto Color Emoji font file")
            self._require("emoji_cldr", bool(self.emoji_cldr), "the path of the CLDR common folder")

    def split_size(self, split: str) -> int:
        """Number of samples of ``split`` (one of ``SPLITS``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return getattr(self, f"{split}_size")


@dataclass(frozen=True)
class VAEConfig(Section):
    """The discrete VAE (OpenAI dVAE structure) and its objective.

    Images of ``image_size`` px are encoded to a ``grid_size`` x ``grid_size`` grid of tokens out of
    ``codebook_size`` codes; the encoder has ``num_groups`` groups of ``blocks_per_group`` bottleneck
    residual blocks with a 2x max-pool between groups, group g being ``hidden * 2**g`` channels
    wide. The decoder's first 1x1 conv maps a code to ``codebook_dim`` channels: its weight is the
    ``(codebook_size, codebook_dim)`` codebook. The Gumbel-softmax temperature follows a cosine
    from ``tau_start`` to ``tau_end`` over the first ``tau_anneal_fraction`` of training, the KL
    weight a cosine from 0 to ``kl_weight`` (the paper's beta, weighting the KL summed over the
    latents against the likelihood summed over the pixels) over ``kl_warmup_fraction``.

    ``usage_weight`` is not in the paper (0 there): it weights the KL of the batch's mean code
    distribution to the uniform prior. The per-position KL does not stop every position from
    preferring the same few codes, and in short runs the encoder's softmax tends to saturate on
    them, after which no gradient brings it back; this term keeps the codebook in use.

    ``reconstruction``: the likelihood of the mapped pixels. ``"logit_laplace"`` is the paper's
    (the decoder predicts a location and a scale per pixel-channel); ``"gaussian"`` has a fixed
    standard deviation ``gaussian_sigma`` around the decoded pixel, i.e. a scaled squared error.
    The CPU presets (tiny, demo, emoji) use the Gaussian: in their few thousand updates the
    logit-Laplace decoder spends its capacity sharpening the white background (its learned scale
    weights those pixels most) and the codes never learn color (docs/results.md#demo-dvae).

    ``augment_crop`` and ``augment_flip`` are the paper's (A.2): each training image is cut to a
    random square of side a share in [``augment_crop``, 1] of its own and resized back, and half
    of them are mirrored; the real-data presets use them.
    ``augment_shift``, ``augment_composite`` and ``decoder_finetune_fraction`` are not in the
    paper (0 there). Training images are translated as a batch by up to ``augment_shift`` px, and
    each is, with probability ``augment_composite``, min-blended with another image of the batch
    (two objects on white; the shapes data only, which :class:`Config` checks);
    :mod:`dalle_fast.train.vae_augment` says why. The last
    ``decoder_finetune_fraction`` of the steps then train the decoder alone, the encoder frozen,
    on the argmax tokens of un-augmented images, its learning rate a fresh cosine from
    ``decoder_finetune_lr`` to ``optim.lr_min``: after training the decoder only ever sees argmax
    tokens, and this fits it to them, sharpening what codes shared by shifted objects left
    blurred. The demo uses all three (see ``presets._demo``).
    """

    image_size: int
    grid_size: int
    codebook_size: int
    hidden: int
    blocks_per_group: int
    optim: OptimConfig
    codebook_dim: int = 128
    kl_weight: float = 6.6
    kl_warmup_fraction: float = 5_000 / 3_000_000
    tau_start: float = 1.0
    tau_end: float = 1 / 16
    tau_anneal_fraction: float = 150_000 / 3_000_000
    logit_laplace_eps: float = 0.1
    usage_weight: float = 0.0
    reconstruction: Literal["logit_laplace", "gaussian"] = "logit_laplace"
    gaussian_sigma: float = 0.0707
    augment_crop: float = 1.0  # the smallest random square crop, as a share of the side (A.2); 1: no crop
    augment_flip: bool = False  # mirror half the training images left to right (A.2)
    augment_shift: int = 0
    augment_composite: float = 0.0
    decoder_finetune_fraction: float = 0.0
    decoder_finetune_lr: float = 5e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("image_size", self.image_size >= 1, ">= 1")
        self._require("grid_size", self.grid_size >= 1, ">= 1")
        ratio, rest = divmod(self.image_size, self.grid_size)
        if rest or ratio & (ratio - 1):
            self._fail("grid_size", f"image_size {self.image_size} must be grid_size {self.grid_size} times "
                                    "a power of two (the encoder halves the resolution between groups)")
        self._require("codebook_size", self.codebook_size >= 2, ">= 2")
        self._require("hidden", self.hidden >= 4 and self.hidden % 4 == 0,
                      "a positive multiple of 4 (bottleneck blocks are hidden/4 wide)")
        self._require("blocks_per_group", self.blocks_per_group >= 1, ">= 1")
        self._require("codebook_dim", self.codebook_dim >= 1, ">= 1")
        self._require("kl_weight", self.kl_weight >= 0, ">= 0")
        self._require("kl_warmup_fraction", 0 <= self.kl_warmup_fraction <= 1, "in [0, 1]")
        self._require("tau_start", self.tau_start > 0, "> 0")
        self._require("tau_end", 0 < self.tau_end <= self.tau_start, "in (0, tau_start]")
        self._require("tau_anneal_fraction", 0 <= self.tau_anneal_fraction <= 1, "in [0, 1]")
        self._require("logit_laplace_eps", 0 <= self.logit_laplace_eps < 0.5, "in [0, 0.5)")
        self._require("usage_weight", self.usage_weight >= 0, ">= 0")
        self._require("gaussian_sigma", self.gaussian_sigma > 0, "> 0")
        self._require("augment_crop", 0 < self.augment_crop <= 1, "in (0, 1] (1: no crop)")
        self._require("augment_shift", 0 <= self.augment_shift < self.image_size, "in [0, image_size)")
        self._require("augment_composite", 0 <= self.augment_composite <= 1, "in [0, 1]")
        self._require("decoder_finetune_fraction", 0 <= self.decoder_finetune_fraction < 1, "in [0, 1)")
        self._require("decoder_finetune_lr", self.decoder_finetune_lr > 0, "> 0")

    @property
    def downsample(self) -> int:
        """Pixels per token along a side: ``image_size // grid_size``."""
        return self.image_size // self.grid_size

    @property
    def num_groups(self) -> int:
        """Encoder groups: one per resolution, ``log2(downsample) + 1``."""
        return self.downsample.bit_length()


@dataclass(frozen=True)
class TransformerConfig(Section):
    """The decoder-only transformer over ``text_len`` text tokens then the image tokens.

    ``attention``: ``"sparse"`` follows the paper's row/column/conv layer schedule
    (docs/design.md#attention-masks, conv neighbourhood ``conv_kernel``), ``"full"`` makes every
    layer dense causal.
    ``text_vocab`` is the BPE vocabulary size, not counting the ``text_len`` per-position padding
    tokens; ``bpe_dropout`` applies to tokenization while the transformer trains.
    ``dropout``: on the embeddings and every residual branch while training. The demo preset
    uses 0.1: its train split holds only 504 distinct images (8 colors x 4 shapes x 2 sizes x 9
    positions, less the held-out pairs), which the transformer otherwise memorizes
    (docs/results.md#demo-transformer).
    ``token_copies``, ``augment_crop``: the paper crops the transformer's images at random too
    (B.2), so that its tokens are not one fixed encoding per image. The token cache holds
    ``token_copies`` encodings of every train image: the image itself, then random square crops
    (side a share in [``augment_crop``, 1], resized back), each from a generator seeded by the
    run's seed, the copy and the image, so the cache is the same on every rebuild. The train split
    the transformer reads is the copies one after another: an epoch sees every copy once.
    ``cross_entropy``: how the loss scores the output head: ``"fused"`` through
    ``dalle_kernels.fused_linear_cross_entropy`` (on a GPU the (tokens, vocabulary) logits never
    exist at once), ``"plain"`` as ``F.linear`` then ``F.cross_entropy`` (for comparison).
    ``sample_temperature``: the sampling temperature that generate, evaluate, the page and the
    training sample grids use unless told otherwise (``--temperature``); 0 is greedy.
    """

    layers: int
    heads: int
    head_dim: int
    text_len: int
    text_vocab: int
    optim: OptimConfig
    mlp_ratio: int = 4
    conv_kernel: int = 11
    attention: Literal["sparse", "full"] = "sparse"
    dropout: float = 0.0
    bpe_dropout: float = 0.1
    cross_entropy: Literal["fused", "plain"] = "fused"
    augment_crop: float = 1.0  # the smallest random square crop of the token cache's copies (B.2); 1: no crop
    token_copies: int = 1  # encodings per train image in the token cache: the image, then random crops
    sample_temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("layers", "heads", "head_dim", "text_len", "text_vocab", "mlp_ratio", "token_copies"):
            self._require(name, getattr(self, name) >= 1, ">= 1")
        self._require("augment_crop", 0 < self.augment_crop <= 1, "in (0, 1] (1: no crop)")
        if self.token_copies > 1 and self.augment_crop == 1:
            self._fail("token_copies", f"{self.token_copies} copies of each image would be identical without a "
                                       "crop: set augment_crop below 1, or token_copies 1")
        self._require("conv_kernel", self.conv_kernel >= 1 and self.conv_kernel % 2 == 1, "odd and >= 1")
        self._require("dropout", 0 <= self.dropout < 1, "in [0, 1)")
        self._require("bpe_dropout", 0 <= self.bpe_dropout < 1, "in [0, 1)")
        self._require("sample_temperature", self.sample_temperature >= 0, ">= 0 (0: greedy)")

    @property
    def d_model(self) -> int:
        """Model width: ``heads * head_dim``."""
        return self.heads * self.head_dim


@dataclass(frozen=True)
class CLIPConfig(Section):
    """The small contrastive text/image model used to rerank samples: a text transformer and a
    ViT over ``patch_size`` patches, each ``layers`` deep and ``width`` wide, projected to a joint
    ``embed_dim`` space. ``candidates``: images sampled per prompt before reranking (paper: 512).

    Training images are degraded so that CLIP reads generated (dVAE-decoded, softer and noisier)
    images as it reads clean ones: each is blurred (2x average-pooled, then upsampled) with
    probability ``augment_blur`` and gets Gaussian pixel noise of a standard deviation drawn
    uniformly from [0, ``augment_noise``].

    ``reranker``: what scores samples for reranking. ``"run"`` is this CLIP, trained by the run's
    clip stage; ``"open_clip:MODEL"`` is a pretrained CLIP of the ``open_clip`` package (MODEL an
    open_clip model name, or the path of an open_clip model config ``.json``) with its weights in
    the file ``reranker_weights``; such a run has no clip stage to train
    (:mod:`dalle_fast.rerankers`)."""

    width: int
    layers: int
    heads: int
    embed_dim: int
    patch_size: int
    optim: OptimConfig
    candidates: int = 512
    augment_blur: float = 0.5
    augment_noise: float = 0.1
    reranker: str = RUN_RERANKER
    reranker_weights: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        open_clip = self.reranker.startswith(OPEN_CLIP_PREFIX)
        self._require("reranker", self.reranker == RUN_RERANKER or (open_clip and self.reranker != OPEN_CLIP_PREFIX),
                      f"{RUN_RERANKER!r} or {OPEN_CLIP_PREFIX!r} followed by an open_clip model name")
        self._require("reranker_weights", bool(self.reranker_weights) == open_clip,
                      f"the weights file of an {OPEN_CLIP_PREFIX} reranker, and empty for {RUN_RERANKER!r}")
        for name in ("width", "layers", "heads", "embed_dim", "patch_size", "candidates"):
            self._require(name, getattr(self, name) >= 1, ">= 1")
        self._require("width", self.width % self.heads == 0, f"a multiple of heads ({self.heads})")
        self._require("augment_blur", 0 <= self.augment_blur <= 1, "in [0, 1]")
        self._require("augment_noise", self.augment_noise >= 0, ">= 0")


@dataclass(frozen=True)
class TrainConfig(Section):
    """Settings shared by all training stages. ``precision``: ``"auto"`` is bf16 autocast on a GPU
    and fp32 on the CPU. ``*_every`` count optimizer steps. ``parallel``: how the processes of one
    torchrun share a model: ``"ddp"`` replicates it, ``"fsdp"`` shards it (FSDP2, one unit per
    transformer block and per dVAE group). ``activation_checkpointing``: each block's activations
    are recomputed in the backward instead of kept (less memory, one more forward)."""

    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    log_every: int = 10
    eval_every: int = 500
    checkpoint_every: int = 500
    num_workers: int = 0
    parallel: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("log_every", "eval_every", "checkpoint_every"):
            self._require(name, getattr(self, name) >= 1, ">= 1")
        self._require("num_workers", self.num_workers >= 0, ">= 0")


@dataclass(frozen=True)
class Config(ConfigFile):
    """The whole configuration of a run; ``name`` records the preset it came from. Its JSON round
    trip (``to_dict``/``from_dict``, ``save``/``load``) is that of :class:`~.schema.ConfigFile`."""

    name: str
    vae: VAEConfig
    transformer: TransformerConfig
    clip: CLIPConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % self.clip.patch_size:
            self._fail("clip", f"patch_size {self.clip.patch_size} must divide the image size {self.image_size}")
        if self.vae.augment_composite and self.data.dataset != "shapes":
            self._fail("vae", f"augment_composite {self.vae.augment_composite} min-blends images of objects on "
                              f"white and is for the shapes data only, but data.dataset is {self.data.dataset!r}")

    @property
    def image_size(self) -> int:
        """Side of the (square) images in px, for every stage: ``vae.image_size``."""
        return self.vae.image_size

    @property
    def grid_size(self) -> int:
        """Side of the image-token grid: ``vae.grid_size``."""
        return self.vae.grid_size

    @property
    def image_vocab(self) -> int:
        """Number of image codes: ``vae.codebook_size``."""
        return self.vae.codebook_size

    @property
    def image_seq_len(self) -> int:
        """Image tokens per sample: ``grid_size ** 2``."""
        return self.grid_size ** 2

    @property
    def seq_len(self) -> int:
        """Transformer sequence length: ``transformer.text_len + image_seq_len``."""
        return self.transformer.text_len + self.image_seq_len
