"""Backend dispatch: DALLE_KERNELS_BACKEND, dk.backend_for, and every op honouring it."""
import pytest
import torch

import dalle_kernels as dk
from dalle_kernels.backend import ENV_VAR
from dalle_kernels.ops import sparse_attention as sparse_attention_op


def test_auto_picks_reference_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert dk.backend_for(torch.zeros(2)) == "reference"
    monkeypatch.setenv(ENV_VAR, "auto")
    assert dk.backend_for(torch.zeros(2)) == "reference"


@pytest.mark.parametrize("value, expected", [("reference", "reference"), ("triton", "triton"), (" Triton ", "triton")])
def test_env_var_overrides(monkeypatch, value, expected):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(ENV_VAR, value)
    assert dk.backend_for(torch.zeros(2)) == expected


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        dk.backend_for(torch.zeros(2))


def test_unknown_backend_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=ENV_VAR):
        dk.backend_for(torch.zeros(2))


def test_backend_for_needs_a_tensor():
    with pytest.raises(TypeError, match="tensor"):
        dk.backend_for([1.0])


def _ops():
    """Each public op on small CPU inputs, returning a differentiable output."""
    logits = torch.randn(5, 7, requires_grad=True)
    codebook = torch.randn(7, 3, requires_grad=True)
    mask = dk.dalle_mask("row", 3, 2, block=16)
    q = torch.randn(1, 2, mask.seq_len, 16, requires_grad=True)
    return {
        "gumbel_softmax": lambda: dk.gumbel_softmax(logits),
        "gumbel_softmax_codebook": lambda: dk.gumbel_softmax_codebook(logits, codebook),
        "codebook_lookup": lambda: dk.codebook_lookup(torch.tensor([0, 6, 2]), codebook),
        "nearest_codebook": lambda: dk.nearest_codebook(torch.randn(4, 3), codebook)[1],
        "sparse_attention": lambda: dk.sparse_attention(q, q, q, mask),
        "fused_linear_cross_entropy":
            lambda: dk.fused_linear_cross_entropy(logits, codebook.t(), torch.tensor([0, 2, 1, 2, 0])),
    }


@pytest.mark.parametrize("op", sorted(_ops()))
def test_every_op_dispatches_on_the_backend(monkeypatch, op):
    """The Triton path goes through the op's autograd Function, the reference path does not."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(ENV_VAR, "reference")
    assert "Function" not in type(_ops()[op]().grad_fn).__name__
    monkeypatch.setenv(ENV_VAR, "triton")
    assert "Function" in type(_ops()[op]().grad_fn).__name__


def test_sparse_attention_decode_dispatches_on_the_backend(monkeypatch):
    """Decoding carries no gradient, so the dispatch is seen through the launcher the Triton path calls."""
    calls = []

    def launcher(q, *args):
        calls.append(q)
        return torch.zeros_like(q)

    monkeypatch.setattr(sparse_attention_op, "sparse_attention_decode_forward", launcher)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    mask = dk.dalle_mask("column", 3, 2, block=16)
    q, cache = torch.randn(1, 2, 1, 16), torch.randn(1, 2, mask.seq_len, 16)
    monkeypatch.setenv(ENV_VAR, "reference")
    assert not torch.equal(dk.sparse_attention_decode(q, cache, cache, mask, 4), torch.zeros_like(q)) and not calls
    monkeypatch.setenv(ENV_VAR, "triton")
    dk.sparse_attention_decode(q, cache, cache, mask, 4)
    assert len(calls) == 1
