"""Installs two packages: `dalle_kernels` (from kernels/) and `dalle_fast`.

`kernels/` is installed under the name `dalle_kernels` only: a top-level package named
`kernels` belongs to another PyPI project that transformers imports.
"""
from setuptools import find_packages, setup

setup(
    name="dalle_fast",
    version="0.1.0",
    description="DALL-E (Ramesh et al. 2021) on custom Triton kernels",
    python_requires=">=3.10",
    packages=["dalle_kernels"]
    + ["dalle_kernels." + name for name in find_packages("kernels")]
    + find_packages(include=["dalle_fast", "dalle_fast.*"]),
    package_dir={"dalle_kernels": "kernels", "dalle_fast": "dalle_fast"},
    install_requires=[
        "torch>=2.4",
        "triton>=3.3",
        "numpy",
        "tokenizers",
        "safetensors",
        "pillow",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "ruff"],
        "bench": ["pytest", "pytest-benchmark"],
        # python -m dalle_fast.convert openai-dvae on pickled modules: what the dall_e package imports. dall_e
        # itself goes in alone, `pip install --no-deps DALL-E==0.1`: its own requirements (torchvision, mypy,
        # pytest, blobfile) are not needed to load the modules and could replace the installed torch.
        "openai": ["attrs", "requests"],
        # --clip open_clip:MODEL; install with the installed torch pinned so that pip picks its torchvision:
        # pip install -e ".[open_clip]" "torch==$(python -c 'import torch; print(torch.__version__)')"
        "open_clip": ["open-clip-torch"],
        # python -m dalle_fast.serve (the web page); its tests drive the page through selenium and Debian's
        # chromium + chromium-driver (apt), and call the server with gradio_client.
        "serve": ["gradio", "gradio_client"],
        "serve-test": ["gradio", "gradio_client", "selenium"],
        # --data 'shards/{00000..00099}.tar': WebDataset tar shards, as img2dataset writes them.
        "shards": ["webdataset"],
        # every stage's scalars and sample grids under RUN/tb/ (metrics.jsonl stays the record).
        "tensorboard": ["tensorboard"],
    },
)
