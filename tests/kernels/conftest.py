"""Kernel tests run the Triton backend (natively on a GPU, interpreted on a CPU) and poison every
new output with NaN so an element a kernel forgets to write cannot pass."""
import pytest

from dalle_kernels._memory import POISON_ENV
from dalle_kernels.backend import ENV_VAR


@pytest.fixture(autouse=True)
def _triton_backend_with_poisoned_outputs(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "triton")
    monkeypatch.setenv(POISON_ENV, "1")
