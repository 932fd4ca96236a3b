"""pytest-benchmark plumbing shared by the ``bench_*.py`` suites.

The suites time the DEFAULT backend (see ``cases.py``); this conftest refuses to time Triton's CPU
interpreter and, after a timed run, prints the achieved GB/s (and TFLOP/s) of every benchmark.
"""
import cases
import pytest
import torch

from dalle_kernels.backend import backend_for, interpreting

THROUGHPUT = pytest.StashKey[list]()


def pytest_configure(config: pytest.Config) -> None:
    on_interpreter = interpreting() and backend_for(torch.empty(0, device=cases.DEVICE)) == "triton"
    if on_interpreter and not config.getoption("benchmark_disable"):
        raise pytest.UsageError("DALLE_KERNELS_BACKEND=triton with TRITON_INTERPRET=1 times Triton's CPU interpreter, "
                                "which says nothing about a GPU: unset them "
                                "(or pass --benchmark-disable for a smoke run)")
    config.stash[THROUGHPUT] = []


@pytest.fixture
def run_case(benchmark, request):
    """``run_case(run)`` benchmarks one ``cases.Run`` in the pytest-benchmark group of its case and mode."""
    def run_case(run: cases.Run) -> None:
        step = cases.make_step(run, cases.make_inputs(run.case, run.backward))
        benchmark.group = f"{run.case.op} {run.case.describe()} {run.mode}"
        benchmark.extra_info.update(bytes=run.bytes, flops=run.flops, dtype=str(cases.DTYPE))

        def timed() -> None:
            step()
            if cases.ON_GPU:
                torch.cuda.synchronize()  # pytest-benchmark reads a host clock

        benchmark(timed)
        if benchmark.stats is not None:  # None under --benchmark-disable
            request.config.stash[THROUGHPUT].append((benchmark.group, run.contender.name, run.bytes, run.flops,
                                                     benchmark.stats.stats.median))
    return run_case


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    rows = config.stash.get(THROUGHPUT, [])
    if not rows:
        return
    terminalreporter.section(f"achieved throughput (median; {cases.DEVICE}, {cases.DTYPE})")
    for group, contender, moved, flops, seconds in sorted(rows, key=lambda row: row[:2]):
        rate = f"{moved / seconds / 1e9:9.2f} GB/s"
        if flops is not None:
            rate += f" {flops / seconds / 1e12:8.3f} TFLOP/s"
        terminalreporter.write_line(f"{group:<70} {contender:<22} {seconds * 1e3:10.3f} ms {rate}")
