"""dk.nearest_codebook vs torch.cdist + argmin, fwd and fwd+bwd (through the squared distance).
Times the default backend: the reference on a CPU, the Triton kernel on a GPU."""
import cases
import pytest


@pytest.mark.parametrize("run", cases.runs(cases.nearest_codebook_cases()), ids=str)
def test_nearest_codebook(run_case, run: cases.Run) -> None:
    run_case(run)
