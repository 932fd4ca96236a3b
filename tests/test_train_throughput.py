"""``python benchmarks/train_throughput.py --rehearse``: the training throughput benchmark that
benchmarks/gpu_check.sh runs on a GPU, rehearsed on the CPU at the tiny preset through the same
code, so that a bug in it shows here rather than on the GPU's short lease:

- it measures every stage, claims no time or peak memory, and activation checkpointing keeps less
  for the backward than without in each stage (measured, by counting what autograd saves);
- planted faults make it exit 1 naming them: checkpointing that does nothing, a stage that fails
  (the other stages are still measured);
- without CUDA and without ``--rehearse`` it exits 1 saying how to rehearse.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from stage_runs import one_thread  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("dalle", "vae", "clip")


@pytest.fixture(scope="module")
def throughput() -> ModuleType:
    """benchmarks/train_throughput.py as a module (not ``benchmark``: pytest-benchmark's fixture)."""
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rehearse(throughput: ModuleType, out: Path) -> tuple[int, dict]:
    status = throughput.main(["--rehearse", "--out", str(out)])
    return status, json.loads((out / "throughput-rehearsal-cpu.json").read_text())


def test_the_rehearsal_measures_every_stage_and_checkpointing_keeps_less(throughput: ModuleType, tmp_path: Path,
                                                                         capsys) -> None:
    status, report = rehearse(throughput, tmp_path)
    assert status == 0, capsys.readouterr().err
    assert "rehearsal: 3 stages, 0 problem(s): PASS" in capsys.readouterr().out
    assert report["preset"] == "tiny" and list(report["stages"]) == list(STAGES)
    table = (tmp_path / "throughput-rehearsal-cpu.md").read_text()
    for stage, record in report["stages"].items():
        assert record["micro_batch"] == throughput.REHEARSAL_MICRO_BATCH and record["units"] >= 2
        off, on = record["runs"]["off"], record["runs"]["on"]
        for run in (off, on):
            assert run["steps_per_second"] is None and run["peak_memory_bytes"] is None  # no times on a CPU
        assert 0 < on["kept_for_backward_bytes"] < 0.7 * off["kept_for_backward_bytes"], stage
        assert table.count(f"| {stage} |") == 2


def test_checkpointing_that_does_nothing_fails_the_rehearsal(throughput: ModuleType, tmp_path: Path, capsys,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throughput, "set_checkpointing", lambda model, enabled: len(throughput.units(model)))
    status, _ = rehearse(throughput, tmp_path)
    assert status == 1
    err = capsys.readouterr().err
    for stage in STAGES:
        assert f"REHEARSAL FAIL {stage}: activation checkpointing keeps no less for the backward" in err


def test_a_stage_that_fails_fails_the_rehearsal_and_the_others_are_measured(throughput: ModuleType, tmp_path: Path,
                                                                            capsys,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    build = throughput.build_stage

    def failing(stage, *args):
        if stage == "vae":
            raise RuntimeError("planted fault")
        return build(stage, *args)

    monkeypatch.setattr(throughput, "build_stage", failing)
    status, report = rehearse(throughput, tmp_path)
    assert status == 1
    assert "REHEARSAL FAIL vae: RuntimeError: planted fault" in capsys.readouterr().err
    assert report["stages"]["vae"] == {"error": "RuntimeError: planted fault"}
    assert set(report["stages"]["clip"]["runs"]) == {"off", "on"}  # measured after the failure


def test_without_cuda_it_says_how_to_rehearse(throughput: ModuleType, tmp_path: Path, capsys,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throughput.torch.cuda, "is_available", lambda: False)
    assert throughput.main(["--out", str(tmp_path)]) == 1
    assert "python benchmarks/train_throughput.py --rehearse" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
