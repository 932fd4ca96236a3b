"""Packaging: `dalle_kernels` stands alone and no top-level `kernels` package is installed."""
import subprocess
import sys


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_dalle_kernels_does_not_import_dalle_fast(tmp_path):
    result = _run("import sys, dalle_kernels; print('dalle_fast' in sys.modules)", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_no_top_level_kernels_package_is_installed(tmp_path):
    # Run outside the checkout, where the source folder kernels/ is not on the path.
    result = _run("import importlib.util as u; print(u.find_spec('kernels'))", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


def test_public_api_names(tmp_path):
    result = _run("import dalle_kernels as dk; print(sorted(dk.__all__))", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(sorted(
        ["backend_for", "gumbel_softmax", "gumbel_softmax_codebook", "codebook_lookup", "nearest_codebook",
         "dalle_mask", "sparse_attention", "sparse_attention_decode", "fused_linear_cross_entropy"]))
