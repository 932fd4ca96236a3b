"""dk.gumbel_softmax vs F.gumbel_softmax (and torch.compile of it on a GPU), rows and channels-first,
fwd and fwd+bwd. Times the default backend: the reference on a CPU, the Triton kernel on a GPU."""
import cases
import pytest


@pytest.mark.parametrize("run", cases.runs(cases.gumbel_softmax_cases()), ids=str)
def test_gumbel_softmax(run_case, run: cases.Run) -> None:
    run_case(run)
