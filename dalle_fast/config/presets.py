"""The five presets of docs/design.md#presets, and a config moved onto other data.

``preset(name)`` returns the :class:`Config` of one of them:

========  ========  ==========  ========  ========  ===================================================
preset    image px  token grid  codebook  text_len  use
========  ========  ==========  ========  ========  ===================================================
tiny      32        4x4         64        16        tests and CI; each stage trains in about a minute
                                                    on 2 CPU cores
demo      64        8x8         512       32        default of ``python -m dalle_fast.train``; CPU in
                                                    minutes, GPU in seconds
emoji     32        8x8         512       32        the built-in emoji glyphs (``--data emoji``), the
                                                    paper's recipe for real images; 2 CPU cores in
                                                    at most 30 minutes
gpu       256       32x32       8192      256       one GPU, paper-shaped at small width
paper     256       32x32       8192      256       the 12B model (64 layers, 62 heads of 64, d 3968)
========  ========  ==========  ========  ========  ===================================================

Each preset sets only the fields that differ from the section defaults, every one with its reason
beside it; what the runs of a preset measured is in docs/results.md.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .sections import (
    BUILT_IN_DATASETS,
    OPEN_CLIP_PREFIX,
    RUN_RERANKER,
    CLIPConfig,
    Config,
    DataConfig,
    OptimConfig,
    TrainConfig,
    TransformerConfig,
    VAEConfig,
)


def _tiny() -> Config:
    """Tests and CI: each stage trains in about a minute on 2 CPU cores."""
    return Config(
        name="tiny",
        vae=VAEConfig(
            image_size=32, grid_size=4, codebook_size=64,  # the preset table
            hidden=16, blocks_per_group=1, codebook_dim=32,  # CI-sized
            kl_warmup_fraction=0.1,  # 30 of 300 steps (the paper's 5k of 3M would be under one)
            tau_anneal_fraction=0.5,  # 150 of 300 steps
            usage_weight=1.0,  # usage term: without it short runs collapse onto a few codes
            reconstruction="gaussian",  # logit-Laplace never learns color in a short run
            optim=OptimConfig(
                steps=300, batch_size=32,  # CI-sized
                lr=2e-3, lr_min=1e-4,  # a short run
                weight_decay=1e-4,  # the paper's (A.2)
            ),
        ),
        transformer=TransformerConfig(
            text_len=16,  # the preset table
            layers=2, heads=2, head_dim=16, text_vocab=512,  # CI-sized
            conv_kernel=3,  # 11 would span the whole 4x4 grid
            optim=OptimConfig(
                steps=300, batch_size=32, lr=1e-3,  # CI-sized
                warmup_fraction=0.05,  # 15 of 300 steps
                beta2=0.96,  # the paper's (B.2)
            ),
        ),
        clip=CLIPConfig(
            width=32, layers=1, heads=2, embed_dim=32,  # CI-sized
            patch_size=8,  # 4x4 patches of the 32 px images
            candidates=8,  # a few samples to rerank in tests
            optim=OptimConfig(
                steps=600, batch_size=64, lr=1e-3,  # CI-sized
                warmup_fraction=0.05,  # 30 of 600 steps
            ),
        ),
        data=DataConfig(train_size=4_096, val_size=256, test_size=256),  # CI-sized epochs
        train=TrainConfig(eval_every=100, checkpoint_every=100),  # 3 evaluations in 300 steps
    )


def _demo() -> Config:
    """The default of ``python -m dalle_fast.train``: CPU in minutes, GPU in seconds."""
    return Config(
        name="demo",
        vae=VAEConfig(
            image_size=64, grid_size=8, codebook_size=512,  # the preset table
            hidden=16, blocks_per_group=1, codebook_dim=64,  # CPU in minutes
            kl_warmup_fraction=0.045,  # the KL weight rises over 112 of 2500 steps
            tau_anneal_fraction=0.45,  # tau anneals over 1125 of 2500 steps
            usage_weight=1.0,  # usage term: without it short runs collapse onto a few codes
            reconstruction="gaussian",  # logit-Laplace never learns color in a short run (docs/results.md)
            gaussian_sigma=0.05,  # twice the pixel weight of 0.0707 against the KL, as in the augmented runs
            augment_shift=3,  # objects off the token grid's offsets: codes for held-out pairs (vae_augment.py)
            augment_composite=0.5,  # more objects per batch (vae_augment.py)
            decoder_finetune_fraction=0.2,  # the last 500 of 2500 steps fit the decoder to argmax tokens
            decoder_finetune_lr=1e-3,  # 500 steps from 1e-3 beat 250 from 5e-4 (docs/results.md)
            optim=OptimConfig(
                steps=2_500,  # 2000 on augmented images, then 500 decoder-only
                batch_size=32,  # CPU in minutes
                lr=2e-3, lr_min=2e-5,  # a short run
                weight_decay=1e-4,  # the paper's (A.2)
            ),
        ),
        transformer=TransformerConfig(
            text_len=32,  # the preset table
            layers=4, heads=4, head_dim=32, text_vocab=1_024,  # CPU in minutes
            conv_kernel=3,  # 11 would span the whole 8x8 grid
            dropout=0.1,  # 504 distinct train images: memorized without it (docs/results.md)
            optim=OptimConfig(
                steps=2_000, batch_size=32, lr=5e-4,  # CPU in minutes
                warmup_fraction=0.05,  # 100 of 2000 steps
                beta2=0.96,  # the paper's (B.2)
            ),
        ),
        clip=CLIPConfig(
            width=64, layers=2, heads=4, embed_dim=64,  # CPU in minutes
            patch_size=8,  # 8x8 patches of the 64 px images
            candidates=32,  # samples per prompt to rerank on the CPU
            optim=OptimConfig(
                steps=1_600,  # reranks held-out pairs better than 800 steps (docs/results.md)
                batch_size=128, lr=1e-3,  # CPU in minutes
                warmup_fraction=0.05,  # 80 of 1600 steps
            ),
        ),
        train=TrainConfig(log_every=20),  # 80 to 125 log lines per stage
    )


def _emoji() -> Config:
    """The built-in emoji glyphs on 2 CPU cores in at most 30 minutes (docs/results.md#emoji-preset)."""
    return Config(
        name="emoji",
        vae=VAEConfig(
            image_size=32, grid_size=8, codebook_size=512,  # 4 px a token: at 64 px and 8 px the dVAE stalls at 19 dB
            hidden=64, blocks_per_group=1, codebook_dim=64,  # +1 dB over 32 channels; 2048 codes gain nothing
            kl_warmup_fraction=0.045, tau_anneal_fraction=0.45,  # the demo's shares of the run
            usage_weight=1.0,  # kept: 86% of the codes used, 8% without (docs/results.md#emoji-dvae)
            reconstruction="gaussian",  # kept: +3.3 dB over logit-Laplace on emoji
            gaussian_sigma=0.05,  # the demo's
            augment_crop=0.8,  # the paper's random crop (A.2); no flip: names say left and right
            decoder_finetune_fraction=0.2, decoder_finetune_lr=1e-3,  # kept: +0.3 dB on emoji
            optim=OptimConfig(
                steps=1_800, batch_size=32,  # 2 CPU cores: about 12.5 of the 30 minutes
                lr=4e-3, lr_min=2e-5,  # measured: +0.5 dB over the demo's 2e-3 in 1200 steps
                weight_decay=1e-4,  # the paper's (A.2)
                # no EMA: the paper's 0.999 spans 1000 of these 1800 steps, mixing encoders and decoders of
                # different stages of training: 16.2 dB against 21.7 for the weights themselves
            ),
        ),
        transformer=TransformerConfig(
            text_len=32,  # the demo's; keyword captions past 32 ids are cut
            layers=4, heads=4, head_dim=32, text_vocab=1_024,  # the demo's; twice the width costs 2.7x a step
            conv_kernel=3,  # 11 would span the whole 8x8 grid
            sample_temperature=0.4,  # seen names' top-5 37.5% at 1.0, 46.9% at 0.4 (docs/results.md#emoji-preset)
            optim=OptimConfig(
                steps=2_000, batch_size=32,  # 2 CPU cores: about 11 of the 30 minutes
                lr=2e-3,  # memorizes the names 3x faster than the demo's 5e-4 with dropout 0.1
                warmup_fraction=0.05,  # 100 of 2000 steps
                beta2=0.96,  # the paper's (B.2)
                ema_decay=0.99,  # the paper's EMA (B.2): 100 steps, 5% of the run
            ),
        ),
        clip=CLIPConfig(
            width=64, layers=2, heads=4, embed_dim=64,  # the demo's
            patch_size=4,  # 8x8 patches of the 32 px images
            candidates=16,  # samples per prompt to rerank
            optim=OptimConfig(steps=1_200, batch_size=128, lr=1e-3, warmup_fraction=0.05),  # 4 minutes
        ),
        data=DataConfig(dataset="emoji"),
        train=TrainConfig(log_every=20),
    )


def _gpu() -> Config:
    """One GPU: paper-shaped at small width."""
    return Config(
        name="gpu",
        vae=VAEConfig(
            image_size=256, grid_size=32, codebook_size=8_192,  # the paper's shapes
            hidden=64,  # a quarter of the paper's 256: one GPU
            blocks_per_group=2,  # the paper's
            kl_warmup_fraction=0.05,  # 1000 of 20k steps
            tau_anneal_fraction=0.3,  # 6000 of 20k steps
            optim=OptimConfig(
                steps=20_000, batch_size=32, lr=3e-4,  # one GPU
                lr_min=1.25e-6, weight_decay=1e-4,  # the paper's (A.2)
            ),
        ),
        transformer=TransformerConfig(
            text_len=256, text_vocab=16_384, head_dim=64,  # the paper's
            layers=12, heads=8,  # one GPU
            optim=OptimConfig(
                steps=20_000, batch_size=32,  # one GPU
                lr=4.5e-4, weight_decay=4.5e-2, beta2=0.96, grad_clip=4.0,  # the paper's (B.2)
                warmup_fraction=0.02,  # 400 of 20k steps
            ),
        ),
        clip=CLIPConfig(
            width=256, layers=4, heads=4, embed_dim=256,  # one GPU
            patch_size=16,  # 16x16 patches of the 256 px images
            candidates=64,  # samples per prompt to rerank on one GPU
            optim=OptimConfig(
                steps=10_000, batch_size=128, lr=5e-4,  # one GPU
                warmup_fraction=0.05,  # 500 of 10k steps
                weight_decay=0.1,  # CLIP-style decay, half of CLIP's 0.2
            ),
        ),
        data=DataConfig(train_size=1_000_000, val_size=5_000, test_size=5_000),  # GPU-sized epochs
        train=TrainConfig(
            log_every=50, eval_every=2_000, checkpoint_every=2_000,  # a 20k-step stage: 400 lines, 10 evaluations
            num_workers=8,  # parallel data loading on a GPU machine
        ),
    )


def _paper() -> Config:
    """Ramesh et al. 2021, appendices A.2 (dVAE) and B.2 (transformer)."""
    return Config(
        name="paper",
        vae=VAEConfig(
            image_size=256, grid_size=32, codebook_size=8_192,  # A.2
            hidden=256, blocks_per_group=2,  # A.2
            optim=OptimConfig(
                steps=3_000_000, batch_size=512, lr=1e-4, weight_decay=1e-4,  # A.2
                lr_min=1.25e-6,  # A.2's floor (reached there after 1.2M updates; here the cosine spans the run)
            ),
        ),
        transformer=TransformerConfig(
            layers=64, heads=62, head_dim=64,  # the 12B model (B.2)
            text_len=256, text_vocab=16_384,  # B.2
            optim=OptimConfig(
                steps=430_000, batch_size=1_024, lr=4.5e-4,  # B.2
                warmup_fraction=5_000 / 430_000,  # warmup over 5k updates (B.2)
                weight_decay=4.5e-2, beta2=0.96, grad_clip=4.0,  # B.2
                lr_schedule="plateau",  # B.2: halved on each plateau of the training loss, five times
                plateau_window=50,  # windows of 50 logged losses: 5k updates at log_every 100
            ),
        ),
        clip=CLIPConfig(
            width=512, layers=12, heads=8, embed_dim=512,  # CLIP ViT-B/16's text tower and embedding (Radford et al.)
            patch_size=16,  # ViT-B/16's patches
            optim=OptimConfig(
                steps=100_000, batch_size=1_024, lr=5e-4,  # GPU-cluster-sized
                warmup_fraction=0.02,  # CLIP's 2000 warm-up steps, of 100k
                weight_decay=0.2, beta2=0.98, eps=1e-6,  # CLIP's (Radford et al. 2021)
            ),
        ),
        data=DataConfig(train_size=1_000_000, val_size=5_000, test_size=5_000),  # GPU-sized epochs
        train=TrainConfig(
            log_every=100, eval_every=10_000, checkpoint_every=10_000,  # stages of 100k to 3M steps
            num_workers=8,  # parallel data loading on a GPU machine
        ),
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "tiny": _tiny, "demo": _demo, "emoji": _emoji, "gpu": _gpu, "paper": _paper,
}


def preset(name: str) -> Config:
    """The :class:`Config` of preset ``name`` (one of ``PRESETS``: tiny, demo, emoji, gpu, paper)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; the presets are {', '.join(PRESETS)}")
    return PRESETS[name]()


def with_dataset(config: Config, dataset: str) -> Config:
    """``config`` on ``dataset``: ``"shapes"`` or ``"emoji"`` (built in), or a path to user data
    (made absolute). Data other than shapes turns the dVAE's composites off
    (``vae.augment_composite`` is for the shapes data only)."""
    if dataset != "shapes":
        if dataset not in BUILT_IN_DATASETS:
            dataset = str(Path(dataset).expanduser().resolve())
        config = dataclasses.replace(config, vae=dataclasses.replace(config.vae, augment_composite=0.0))
    return dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=dataset))


def with_reranker(config: Config, reranker: str, weights: str | None = None) -> Config:
    """``config`` reranking with ``reranker``: ``"run"`` (the run's own CLIP) or
    ``"open_clip:MODEL"`` with its ``weights`` file (``clip.reranker``, ``clip.reranker_weights``;
    paths made absolute: the weights, and MODEL when it is a model config ``.json``). An invalid
    pair raises ``ValueError`` naming the field."""
    if reranker.startswith(OPEN_CLIP_PREFIX):
        model = reranker.removeprefix(OPEN_CLIP_PREFIX)
        if model.endswith(".json"):
            reranker = OPEN_CLIP_PREFIX + str(Path(model).expanduser().resolve())
        weights = str(Path(weights).expanduser().resolve()) if weights else ""
    elif reranker != RUN_RERANKER:
        raise ValueError(f"CLIPConfig.reranker: must be {RUN_RERANKER!r} or {OPEN_CLIP_PREFIX!r} followed by an "
                         f"open_clip model name, got {reranker!r}")
    return dataclasses.replace(config, clip=dataclasses.replace(config.clip, reranker=reranker,
                                                                 reranker_weights=weights or ""))
