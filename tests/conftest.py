"""Test-wide setup. Without a GPU, Triton kernels run through Triton's interpreter, which must be
switched on before triton is first imported, so it happens here, before any test module loads."""
import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(autouse=True)
def fresh_seed() -> int:
    """Every test draws fresh random inputs; the seed is printed so a failure can be replayed
    (set DALLE_TEST_SEED to replay one)."""
    seed = int(os.environ.get("DALLE_TEST_SEED", random.randrange(2**31)))
    print(f"DALLE_TEST_SEED={seed}")
    torch.manual_seed(seed)
    return seed
