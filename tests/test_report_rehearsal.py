"""``python benchmarks/report.py --rehearse`` (ci/test.sh runs it as is) fails on a planted fault.

Each test runs the rehearsal in a fresh process with one fault planted in the report code it exercises
(the measuring step, the results files, the table, the targets): the exit status must be 1 and the
message must name what went wrong. A rehearsal that passed on such a fault would let that bug reach the
GPU machine, whose lease is short.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Code run before report.main(["--rehearse", ...]) in the child process: each plants one fault.
FAULTS = {
    "a contender that raises": (
        "real = cases.make_step\n"
        "def make_step(run, inputs):\n"
        "    if run.case.op == 'nearest_codebook' and run.contender.name == cases.OURS:\n"
        "        raise RuntimeError('planted launcher bug')\n"
        "    return real(run, inputs)\n"
        "cases.make_step = make_step\n",
        "planted launcher bug"),
    "a results file that is never written": (
        "real = report.save\n"
        "def save(rep, stem, case_list=None):\n"
        "    real(rep, stem, case_list)\n"
        "    stem.with_suffix('.json').unlink()\n"
        "report.save = save\n",
        "results files"),
    "a table that drops an op": (
        "real = report.markdown\n"
        "report.markdown = lambda rep: '\\n'.join(line for line in real(rep).splitlines()\n"
        "                                        if '| codebook_lookup |' not in line)\n",
        "codebook_lookup"),
    "a target that looks up the wrong mode": (
        "real = report.evaluate_targets\n"
        "def evaluate_targets(records, copy_gbps, case_list=None):\n"
        "    return real([dict(r, mode='fwd') if r['op'] == 'gumbel_softmax_codebook' else r for r in records],\n"
        "                copy_gbps, case_list)\n"
        "report.evaluate_targets = evaluate_targets\n",
        "no measurement to check it against"),
}


def rehearse(plant: str, out: Path) -> subprocess.CompletedProcess:
    """The rehearsal in a child process (Triton's interpreter on from the start, as --rehearse would set
    it), after running ``plant``."""
    code = ("import sys\nsys.path.insert(0, 'benchmarks')\nimport cases, report\n" + plant
            + f"\nsys.exit(report.main(['--rehearse', '--out', {str(out)!r}]))\n")
    env = os.environ | {"TRITON_INTERPRET": "1", "DALLE_KERNELS_BACKEND": "triton", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_the_rehearsal_fails_on_a_planted_fault(fault, tmp_path):
    plant, said = FAULTS[fault]
    run = rehearse(plant, tmp_path)
    assert run.returncode == 1, f"the rehearsal passed with {fault}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert "REHEARSAL FAIL" in run.stderr and said in run.stderr, run.stderr[-3000:]
    assert "FAIL (" in run.stdout.splitlines()[-1], run.stdout[-500:]
