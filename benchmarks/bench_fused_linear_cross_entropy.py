"""dk.fused_linear_cross_entropy vs matmul + F.cross_entropy (the (N, V) logits materialized) in the
transformer's loss step (text rows / 8 + 7 image rows / 8), fwd and fwd+bwd. Times the default
backend: the reference on a CPU, the chunked Triton path on a GPU."""
import cases
import pytest


@pytest.mark.parametrize("run", cases.runs(cases.fused_linear_cross_entropy_cases()), ids=str)
def test_fused_linear_cross_entropy(run_case, run: cases.Run) -> None:
    run_case(run)
