"""Every kernel variant compiled by Triton's own compiler for sm_90 and sm_80 with no GPU present
(``benchmarks/compile_report.py --subset ci``), and the check itself: a kernel that does not compile,
one that spills registers (kilobytes outside any loop, or inside its loop), and shared memory over a
target's limit are reported as failures; a few spilled words outside loops are not.

The kernels' other tests run through Triton's interpreter on a CPU, which accepts code that the
compiler rejects (the broken kernel below is one); this file is what catches that before a GPU does.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton.language as tl
from triton.runtime.jit import JITFunction

from dalle_kernels import cross_compile
from dalle_kernels.cross_compile import TARGETS, Launch, Result

ROOT = Path(__file__).resolve().parents[2]


def clean_env() -> dict:
    """This process's environment without what makes Triton interpret kernels (the compiler is wanted)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "DALLE_KERNELS_BACKEND", "DALLE_KERNELS_POISON")}
    return env | {"OMP_NUM_THREADS": "1"}


def compile_once(name: str, arch: int, dtype: str, block: int, num_warps: int) -> Result:
    """Kernel ``name`` of this file compiled for ``arch`` through the check's own path, in a process
    where triton was imported without TRITON_INTERPRET (this one interprets: its ``tl.sum`` would too)."""
    run = subprocess.run([sys.executable, __file__, name, str(arch), dtype, str(block), str(num_warps)],
                         env=clean_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return Result(**json.loads(run.stdout.strip().splitlines()[-1]))


def _compile_here(name: str, arch: int, dtype: str, block: int, num_warps: int) -> Result:
    kernel = JITFunction(globals()[name])  # the function itself, not @triton.jit'ed at import
    size = block * block if name == "_dot_too_small_kernel" else block
    args = (meta(size, dtype=getattr(torch, dtype)), meta(size), block)
    variant = cross_compile.specialize(Launch(kernel, args, {"num_warps": num_warps}, (1,)), arch)
    return cross_compile.compile_variant(variant)


def _dot_too_small_kernel(a_ptr, out_ptr, BLOCK: tl.constexpr):
    # tl.dot needs every dimension >= 16: Triton's interpreter runs this with BLOCK = 8, the compiler refuses it.
    offs = tl.arange(0, BLOCK)
    tile = offs[:, None] * BLOCK + offs[None, :]
    a = tl.load(a_ptr + tile)
    tl.store(out_ptr + tile, tl.dot(a, a))


def _spilling_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    # One warp keeps BLOCK floats live across the reduction: BLOCK / 32 registers per thread, far over 255.
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(out_ptr + offs, x - tl.sum(x, 0))


def _loop_spilling_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    # The same BLOCK floats carried through a loop of a run-time trip count: the loop body reloads
    # what did not fit in registers on every iteration.
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    for _ in range(tl.load(x_ptr).to(tl.int32)):
        x = x * 0.5 + tl.sum(x, 0)
    tl.store(out_ptr + offs, x)


def meta(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_a_kernel_that_does_not_compile_fails_the_check(arch):
    result = compile_once("_dot_too_small_kernel", arch, "float16", 8, 1)
    assert result.error is not None and result.registers is None
    assert "16" in result.error, result.error  # tl.dot's minimum size, not some other failure
    found = cross_compile.problems(result)
    assert len(found) == 1 and "_dot_too_small_kernel" in found[0] and "does not compile" in found[0], found


def test_register_spills_fail_a_hot_kernel_only():
    result = compile_once("_spilling_kernel", 90, "float32", 16384, 1)
    assert result.error is None, result.error
    assert result.registers > 0 and result.spill_stores > 0 and result.spill_loads > 0, result
    assert cross_compile.problems(result, hot=frozenset()) == []
    found = cross_compile.problems(result, hot=frozenset({"_spilling_kernel"}))
    assert len(found) == 1 and "spills registers" in found[0], found
    assert cross_compile.problems(result, hot=frozenset({"_spilling_kernel"}), allowed_spill=lambda r: True) == []


def test_a_spill_inside_a_loop_is_counted_there_and_fails_a_hot_kernel():
    result = compile_once("_loop_spilling_kernel", 90, "float32", 16384, 1)
    assert result.error is None, result.error
    assert result.loops >= 1 and result.loop_spills > 0, result
    found = cross_compile.problems(result, hot=frozenset({"_loop_spilling_kernel"}))
    assert len(found) == 1 and "inside a loop" in found[0], found
    straight = compile_once("_spilling_kernel", 90, "float32", 16384, 1)  # no loop: its spills lie outside any
    assert straight.loops == 0 and straight.loop_spills == 0 and straight.spill_stores > cross_compile.SPILL_BUDGET


def test_a_kernel_that_fits_passes_and_reports_its_resources():
    result = compile_once("_spilling_kernel", 90, "float32", 256, 4)
    assert result.error is None and result.spill_stores == 0 and result.spill_loads == 0
    assert 0 < result.registers < 64 and result.instructions > 0 and result.loop_instructions is None
    assert cross_compile.problems(result, hot=frozenset({"_spilling_kernel"})) == []


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_shared_memory_over_the_target_limit_fails_any_kernel(arch):
    limit = TARGETS[arch].max_shared
    fits = Result("_any_kernel", arch, "bf16", registers=32, spill_stores=0, spill_loads=0, shared=limit)
    assert cross_compile.problems(fits) == []
    over = Result("_any_kernel", arch, "bf16", registers=32, spill_stores=0, spill_loads=0, shared=limit + 1)
    found = cross_compile.problems(over)
    assert len(found) == 1 and f"over the target's {limit}" in found[0], found


def test_sass_counts_loops_local_memory_and_tensor_core_instructions():
    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   STL.64 [R1], R2 ;
        /*0020*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0030*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24, gsb0 ;
        /*0040*/                   LDL R3, [R1] ;
        /*0050*/              @!P1 BRA 0x20 ;
        /*0060*/                   EXIT ;
        /*0070*/                   BRA 0x70;
    """
    counts = cross_compile.parse_sass(sass)
    assert counts == {"instructions": 8, "spill_stores": 8, "spill_loads": 4, "loop_spills": 4,
                      "loop_instructions": 4, "loops": 1, "mma": "HGMMA x2"}


def test_a_few_spilled_words_outside_loops_pass_and_any_spill_in_a_loop_fails():
    hot = frozenset({"_any_kernel"})
    budget = cross_compile.SPILL_BUDGET

    def result(stores, loads, in_loops):
        return Result("_any_kernel", 90, "fp32", registers=80, spill_stores=stores, spill_loads=loads,
                      loop_spills=in_loops, shared=0)

    assert cross_compile.problems(result(8, 8, 0), hot) == []
    assert cross_compile.problems(result(budget // 2, budget // 2, 0), hot) == []
    over = cross_compile.problems(result(budget // 2, budget // 2 + 4, 0), hot)
    assert len(over) == 1 and f"over the budget of {budget}" in over[0], over
    in_loop = cross_compile.problems(result(4, 4, 4), hot)
    assert len(in_loop) == 1 and "4 bytes of it inside a loop" in in_loop[0], in_loop
    assert cross_compile.problems(result(4, 4, 4), frozenset()) == []  # not a hot kernel


def test_a_known_spill_rule_covers_its_variants_up_to_its_bytes_only():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compile_report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rule = compile_report.KnownSpill(("_k",), r"^fp32/.* BLOCK=16 ", (80,), 16, "a test")

    def result(variant, arch=80, stores=8, loads=8, kernel="_k"):
        return Result(kernel, arch, variant, registers=80, spill_stores=stores, spill_loads=loads, loop_spills=4)

    assert rule.covers(result("fp32/i32 KIND=3 BLOCK=16 warps=4"))
    assert not rule.covers(result("fp32/i32 KIND=3 BLOCK=16 warps=4", loads=12))  # more bytes than it accepts
    assert not rule.covers(result("bf16/i32 KIND=3 BLOCK=16 warps=4"))
    assert not rule.covers(result("fp32/i32 KIND=3 BLOCK=16 warps=4", arch=90))
    assert not rule.covers(result("fp32/i32 KIND=3 BLOCK=16 warps=4", kernel="_other"))


def test_every_kernel_variant_compiles_for_hopper_and_ampere(tmp_path):
    """The CI subset of benchmarks/compile_report.py, in its own process: the kernels must be real
    JITFunctions, i.e. triton imported without TRITON_INTERPRET."""
    env = clean_env()
    report = tmp_path / "compile.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_report.py"), "--subset", "ci",
                          "--out", str(tmp_path), "--json", str(report)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f"compile check failed:\n{run.stdout[-4000:]}\n{run.stderr[-8000:]}"
    data = json.loads(report.read_text())
    assert data["problems"] == []
    compiled = {(r["kernel"], r["arch"]) for r in data["results"] if r["error"] is None}
    for kernel in cross_compile.kernels_of():
        for arch in TARGETS:
            assert (kernel, arch) in compiled, f"{kernel} was not compiled for sm_{arch}"
    for arch in TARGETS:
        table = (tmp_path / f"compile-sm{arch}.md").read_text()
        assert "**Check: PASS**" in table and "_sparse_attention_dkdv_kernel" in table


if __name__ == "__main__":  # compile_once's worker: python test_compile.py NAME ARCH DTYPE BLOCK NUM_WARPS
    kernel_name, target, dtype_name, block_size, warps = sys.argv[1:]
    print(json.dumps(_compile_here(kernel_name, int(target), dtype_name, int(block_size), int(warps)).as_dict()))
