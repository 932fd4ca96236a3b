"""dk.gumbel_softmax_codebook vs gumbel_softmax + matmul (the soft one-hot materialized), fwd and
fwd+bwd. Times the default backend: the reference on a CPU, the Triton kernel on a GPU."""
import cases
import pytest


@pytest.mark.parametrize("run", cases.runs(cases.gumbel_softmax_codebook_cases()), ids=str)
def test_gumbel_softmax_codebook(run_case, run: cases.Run) -> None:
    run_case(run)
