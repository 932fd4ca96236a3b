#!/usr/bin/env bash
# THE test command (the README names it). Installs what it needs on a fresh machine, lints, then runs
# the kernel tests on the Triton backend (natively on a CUDA machine, through Triton's interpreter
# otherwise), the rest of the suite, and the CPU benchmarks once each as a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

has_cuda_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

if ! $PY -c "import torch" 2>/dev/null; then
  if has_cuda_gpu; then
    $PY -m pip install -q torch
  else
    $PY -m pip install -q torch==2.13.0  # the CPU build
  fi
fi
if ! $PY -c "import dalle_kernels, dalle_fast, triton, pytest, pytest_benchmark, hypothesis" 2>/dev/null \
    || ! $PY -m ruff --version >/dev/null 2>&1; then
  $PY -m pip install -q -e ".[test,bench]"
fi

# Optional extras (setup.py: openai, open_clip) for the tests of the OpenAI dVAE converter and the open_clip
# rerankers. dall_e alone, without its own requirements (torchvision, mypy, ...); open_clip with the installed
# torch pinned, so that pip takes the torchvision of that torch and never replaces torch.
if ! $PY -c "import dall_e" 2>/dev/null; then
  $PY -m pip install -q --no-deps "DALL-E==0.1" && $PY -m pip install -q attrs requests
fi
if ! $PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('open_clip') is None)"; then
  $PY -m pip install -q open-clip-torch "torch==$($PY -c 'import torch; print(torch.__version__)')"
fi

# Optional extras with tests of their own: the web page (gradio; its browser test drives Debian's chromium
# through selenium), WebDataset tar shards, TensorBoard.
if ! $PY -c "import gradio, gradio_client, selenium, webdataset, tensorboard" 2>/dev/null; then
  $PY -m pip install -q -e ".[serve-test,shards,tensorboard]" "torch==$($PY -c 'import torch; print(torch.__version__)')"
fi
# Debian packages, installed when this runs as root with apt-get: chromium for the page's browser test; the
# font and the CLDR annotations of the built-in emoji data (tests/test_emoji.py; their tests skip without).
APT_PACKAGES=()
{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || APT_PACKAGES+=(chromium chromium-driver)
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || APT_PACKAGES+=(fonts-noto-color-emoji)
[ -f /usr/share/unicode/cldr/common/annotations/en.xml ] || APT_PACKAGES+=(unicode-cldr-core)
if [ "${#APT_PACKAGES[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
fi

echo "== lint (ruff: pyflakes, pycodestyle, import order; pyproject.toml)"
$PY -m ruff check .

if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "== kernel tests: Triton on the GPU"
  DALLE_KERNELS_BACKEND=triton $PY -m pytest -q tests/kernels
else
  echo "== kernel tests: Triton interpreter on the CPU"
  DALLE_KERNELS_BACKEND=triton TRITON_INTERPRET=1 $PY -m pytest -q tests/kernels
fi
echo "== other tests"
$PY -m pytest -q tests --ignore=tests/kernels
echo "== the GPU report rehearsed on the CPU (every case and contender at tiny shapes, no timings)"
$PY benchmarks/report.py --rehearse
echo "== benchmarks (smoke: each once, no timing)"
$PY -m pytest -q benchmarks --benchmark-disable
