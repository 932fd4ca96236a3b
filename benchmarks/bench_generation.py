"""Generation: sampling all 64 image tokens of a batch of 4 from DALLE(preset("demo")) (random
weights) with the KV cache (``sparse_attention_decode`` per token) vs recomputing the whole
sequence for every token. Both runs sample the same tokens (seeded, the same draws).

    python -m pytest benchmarks/bench_generation.py          # the two timings, one group
    python benchmarks/bench_generation.py [--repeats 5]      # prints the cached-over-uncached speed-up
"""
from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import pytest
import torch

from dalle_fast.config import preset
from dalle_fast.model import DALLE
from dalle_fast.sampling import sample_image_tokens

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = 4


@functools.cache
def demo_model() -> tuple[DALLE, torch.Tensor]:
    """The demo transformer with random weights, in eval mode, and a batch of random text."""
    torch.manual_seed(0)
    model = DALLE(preset("demo")).to(DEVICE).eval()
    text = torch.randint(0, model.num_text_tokens, (BATCH, model.text_len), device=DEVICE)
    return model, text


def generation(use_cache: bool) -> Callable[[], torch.Tensor]:
    """One sampling of all image tokens of the batch, synchronized on a GPU."""
    model, text = demo_model()

    def run() -> torch.Tensor:
        tokens = sample_image_tokens(model, text, top_k=64, generator=torch.Generator(DEVICE).manual_seed(0),
                                     use_cache=use_cache)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return tokens

    return run


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
def test_generation(benchmark, use_cache: bool) -> None:
    benchmark.group = f"generation: demo preset, batch {BATCH}, 64 image tokens ({DEVICE})"
    tokens = benchmark(generation(use_cache))
    assert tokens.shape == (BATCH, 64)


def speedup(repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of the cached and the uncached generation (after a warm-up each)."""
    times = []
    for use_cache in (True, False):
        run = generation(use_cache)
        run()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
        times.append(min(samples))
    return times[0], times[1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    cached, uncached = speedup(parser.parse_args().repeats)
    print(f"{DEVICE}, torch threads {torch.get_num_threads()}: cached {cached * 1e3:.1f} ms, "
          f"uncached {uncached * 1e3:.1f} ms per generation of batch {BATCH}: {uncached / cached:.2f}x")
