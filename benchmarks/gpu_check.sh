#!/usr/bin/env bash
# The GPU check: install the repo, run the kernel tests natively on the GPU, then the benchmark
# report (benchmarks/report.py -> benchmarks/results/<gpu>-<date>.json and .md). Needs no network.
# Run from anywhere on a CUDA machine:  bash benchmarks/gpu_check.sh
# Each step has a timeout; the whole check stays under 8 minutes: the report gets what is left of
# BUDGET seconds, and as it saves after every measurement a report cut short keeps what it measured
# (unmeasured targets read MISS). With OUT set, the logs and the new results files are written /
# copied there (5 files). Exits non-zero if any step failed.
set -uo pipefail  # no -e: a failing test step must not cost the benchmark report
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # native kernels only
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOGS=${OUT:-$(mktemp -d)}
mkdir -p "$LOGS"
status=0
BUDGET=465  # seconds for all steps; 8 minutes less a margin for the start and the copies

step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to $LOGS/NAME.log, remember a failure
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (timeout ${limit}s)"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - start))s"
  [ "$rc" -eq 0 ] || status=1
}

step install 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
nvidia-smi || echo "nvidia-smi: not available"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__, \
'|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
step kernel-tests 200 env DALLE_KERNELS_BACKEND=triton "$PY" -m pytest -q tests/kernels -x
marker=$(mktemp)
step report $((BUDGET - SECONDS > 30 ? BUDGET - SECONDS : 30)) "$PY" benchmarks/report.py
if [ -n "${OUT:-}" ]; then
  find benchmarks/results -type f -newer "$marker" \( -name '*.json' -o -name '*.md' \) -exec cp {} "$OUT"/ \;
fi
rm -f "$marker"
echo "== gpu_check: $([ $status -eq 0 ] && echo OK || echo FAILED) after ${SECONDS}s"
exit $status
