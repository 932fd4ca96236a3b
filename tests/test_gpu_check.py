"""benchmarks/gpu_check.sh keeps what it measured when the lease runs out mid-check.

The script runs with a stand-in for python (PYTHON) whose report's headline part writes a results file
and whose rest part hangs, under a budget of a few seconds: the headline results, the log and the step
table must be in OUT, the hanging step marked as timed out, the steps after it as skipped, and the exit
status non-zero.
"""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
echo "fake python $*" >> "$CALLS"
case "$*" in
  *"report.py --part headline"*) echo '{"measurements": []}' > "${@: -1}/h200-headline.json";;
  *"report.py --part rest"*) sleep 60;;
esac
"""


def test_a_check_cut_short_keeps_the_headline_results_and_says_what_was_cut(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out, calls = tmp_path / "out", tmp_path / "calls"
    env = os.environ | {"PYTHON": str(fake), "OUT": str(out), "CALLS": str(calls), "GPU_CHECK_BUDGET": "12"}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0, run.stdout
    assert (out / "h200-headline.json").exists()
    steps = {line.split("|")[1].strip(): line.split("|")[2].strip()
             for line in (out / "gpu_check.md").read_text().splitlines()[4:]}
    assert steps["install"] == "0" and steps["report-headline"] == "0", steps
    assert steps["report-rest"] == "124 (timed out)", steps
    assert steps["train-throughput"] == "skipped" and steps["kernel-tests"] == "skipped", steps
    said = calls.read_text()
    assert said.index("--part headline") < said.index("--part rest")  # the headline first
    assert "train_throughput.py" not in said and "-m pytest" not in said
    assert "== report-rest: exit 124" in (out / "gpu_check.log").read_text()
