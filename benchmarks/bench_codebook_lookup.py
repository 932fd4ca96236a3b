"""dk.codebook_lookup vs F.embedding and codebook[indices] (each moved to channels-first), fwd and
fwd+bwd. Times the default backend: the reference on a CPU, the Triton kernel on a GPU."""
import cases
import pytest


@pytest.mark.parametrize("run", cases.runs(cases.codebook_lookup_cases()), ids=str)
def test_codebook_lookup(run_case, run: cases.Run) -> None:
    run_case(run)
