"""dk.sparse_attention for each DALL-E mask vs SDPA (dense bool mask; causal, flash backend) and
compiled FlexAttention (GPU only), fwd and fwd+bwd; dk.sparse_attention_decode over a whole
generation loop vs SDPA over the full cache. Times the default backend: the reference on a CPU,
the Triton kernels on a GPU."""
import cases
import pytest


@pytest.mark.parametrize("run", cases.runs(cases.sparse_attention_cases()), ids=str)
def test_sparse_attention(run_case, run: cases.Run) -> None:
    run_case(run)


@pytest.mark.parametrize("run", cases.runs(cases.sparse_attention_decode_cases()), ids=str)
def test_sparse_attention_decode(run_case, run: cases.Run) -> None:
    run_case(run)
