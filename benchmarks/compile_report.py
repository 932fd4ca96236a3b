"""Every kernel variant compiled for Hopper (sm_90) and Ampere (sm_80) without a GPU, checked and tabled.

    python benchmarks/compile_report.py              # the full matrix -> benchmarks/results/compile-sm90.md, -sm80.md
    python benchmarks/compile_report.py --subset ci  # the CI subset (tests/kernels/test_compile.py runs it)

The launchers are driven with ``meta`` tensors through the ops' Triton path
(:class:`dalle_kernels.cross_compile.TritonOps`); every launch they make is recorded, specialized
as Triton's JIT would for the target, deduplicated and compiled by ``triton.compile`` down to
ptxas (see :mod:`dalle_kernels.cross_compile`). The plans, per op:

- ``report``: each case of ``cases.py`` at its GPU shapes in bfloat16, forward and forward +
  backward, through the report's own step code (``cases.make_step``; decoding: every position);
- ``modes``: the report's and the tests' kinds of shapes x every dtype (fp32, fp16, bf16, and the
  mixed pairs the codebook ops accept) x every mode the op has (hard / soft, noise given / drawn,
  with / without gradients, mask kinds, reductions, bias);
- ``settings``: a sweep of shapes that makes the launch rule pick each of its block / warp / stage
  settings (all of them where the rule has few, every extreme and every warp count where it has
  many), in float32 and bfloat16, in the op's heaviest mode.

``--subset full`` compiles all of it. ``--subset ci`` compiles the ``report`` plans and, of the
other two, a cover: every shape, every dtype and every mode of each op at least once, each kernel
at least once per target. Exit status 1 when a variant fails (``cross_compile.problems``: a
compile error or shared memory over the target's limit for any kernel, costly register spills
for the hot ones: any inside a loop, or over ``SPILL_BUDGET`` bytes outside loops) or when a
kernel of ``dalle_kernels`` is launched by no plan.
"""
import argparse
import concurrent.futures
import contextlib
import datetime
import functools
import itertools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cases
import torch
import triton

from dalle_kernels import cross_compile
from dalle_kernels.cross_compile import TARGETS, TritonOps

ops = TritonOps
RESULTS_DIR = Path(__file__).resolve().parent / "results"
META = "meta"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = (F32, F16, BF16)
SWEEP_DTYPES = (F32, BF16)  # fp32: no pipelining, FMA dots; bf16: pipelined tensor-core dots (fp16 compiles alike)
MAX_ORIGINS_SHOWN = 2


@dataclass(frozen=True)
class Plan:
    """One call of an op on meta tensors; ``origin`` says what it stands for (a report case, a sweep)."""

    op: str
    layer: str  # report | modes | settings
    origin: str
    run: Callable[[], object]


def meta(shape, dtype=F32, grad=False) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=META, requires_grad=grad)


def backward(out) -> None:
    """Backpropagate a (meta) upstream gradient of ``out`` if it has a graph."""
    out = out[1] if isinstance(out, tuple) else out
    if out.requires_grad:
        out.backward(torch.empty_like(out))


def short(dtype: torch.dtype) -> str:
    return {F32: "fp32", F16: "fp16", BF16: "bf16"}[dtype]


def cover(*axes: list) -> list[tuple]:
    """Combinations in which every value of every axis appears at least once (max(len) of them)."""
    return [tuple(axis[i % len(axis)] for axis in axes) for i in range(max(map(len, axes)))]


def combine(subset: str, *axes: list) -> list[tuple]:
    """``full``: every combination of the axes; ``ci``: a :func:`cover` of them."""
    return list(itertools.product(*axes)) if subset == "full" else cover(*axes)


def sweep_combos(subset: str, sweep: list, dtypes=SWEEP_DTYPES) -> list[tuple]:
    """(shape, dtype) pairs of a settings sweep, which lists the smallest tiles first and the largest
    last. ``full``: all of them; ``ci``: the first and middle shapes, and the last in every dtype
    (the largest tile holds the most registers and shared memory)."""
    if subset == "full":
        return list(itertools.product(sweep, dtypes))
    return cover([sweep[0], sweep[len(sweep) // 2]], list(dtypes)) + [(sweep[-1], dtype) for dtype in dtypes]


@contextlib.contextmanager
def report_on_triton_ops() -> Iterator[None]:
    """``cases``' contenders call ``dk.<op>``: point that at the checks-free Triton path for meta tensors."""
    saved = cases.dk
    cases.dk = TritonOps
    try:
        yield
    finally:
        cases.dk = saved


def report_plans() -> list[Plan]:
    """The report's cases at their GPU shapes (bfloat16), dalle_kernels' contender, each mode."""
    plans = []
    with report_on_triton_ops():  # some cases bind dk.<op> when they are built
        every = cases.all_cases(cases.DVAE, cases.PAPER_ATTENTION, cases.GPU_HEAD)
    for run in cases.runs(every, on_gpu=True):
        if run.contender.name != cases.OURS:
            continue

        def go(run=run):
            with report_on_triton_ops():
                step = cases.make_step(run, cases.make_inputs(run.case, run.backward, META, BF16))
                if run.backward:
                    step()

        plans.append(Plan(run.case.op, "report", f"report: {run.case.op} {run.case.name} {run.mode}", go))
    return plans


# ----------------------------------------------------------------------------------------- per op

GUMBEL_MODES = [(hard, noise, grad) for hard in (False, True) for noise in (False, True) for grad in (False, True)]


def gumbel_mode_name(hard, noise, grad) -> str:
    return f"{'hard' if hard else 'soft'} {'noise' if noise else 'philox'}{' +bwd' if grad else ''}"


def gumbel_softmax_plans(subset: str) -> list[Plan]:
    def call(shape, dim, dtype, hard, noise, grad):
        logits = meta(shape, dtype, grad)
        backward(ops.gumbel_softmax(logits, 0.7, hard, dim, noise=meta(shape, dtype) if noise else None))

    shapes = [((8192, 8192), -1), ((8, 8192, 32, 32), 1), ((7, 45), -1), ((2, 45, 3, 5), 1), ((16, 20000), -1)]
    # The rule (gumbel_softmax.kernel.launch_settings): rows layout, BLOCK_K = pow2(K) up to 8192 with
    # BLOCK_R rows up to a 4096-element tile; channels-first, BLOCK_R up to 128 rows by what fits of K.
    # Smallest tiles first, the largest (8192 categories in one chunk, 16 warps) last.
    sweep = [((1, 1), -1), ((1, 64), -1), ((4096, 1), -1), ((4096, 4), -1), ((1, 3, 1, 1000), 1), ((1, 64, 4, 4), 1),
             ((4096, 32), -1), ((1, 512), -1), ((4096, 256), -1), ((1, 4096, 1, 2), 1), ((4096, 2048), -1),
             ((1, 4096), -1), ((4096, 4096), -1), ((4, 8192, 16, 16), 1), ((64, 8192), -1)]
    plans = [Plan("gumbel_softmax", "modes", f"{shape} dim={dim} {short(dtype)} {gumbel_mode_name(*mode)}",
                  functools.partial(call, shape, dim, dtype, *mode))
             for (shape, dim), dtype, mode in combine(subset, shapes, DTYPES, GUMBEL_MODES)]
    plans += [Plan("gumbel_softmax", "settings", f"{shape} dim={dim} {short(dtype)} hard philox +bwd",
                   functools.partial(call, shape, dim, dtype, True, False, True))
              for (shape, dim), dtype in sweep_combos(subset, sweep)]
    return plans


CODEBOOK_DTYPES = [(F32, F32), (F16, F16), (BF16, BF16), (BF16, F32), (F32, F16)]  # (logits, codebook)


def gumbel_softmax_codebook_plans(subset: str) -> list[Plan]:
    def call(shape, dim, size, dtypes, hard, noise, grad):
        logits, codebook = meta(shape, dtypes[0], grad), meta((shape[dim], size), dtypes[1], grad)
        noise = meta(shape, dtypes[0]) if noise else None
        backward(ops.gumbel_softmax_codebook(logits, codebook, 0.7, hard, dim, noise=noise))

    shapes = [((8, 8192, 32, 32), 1, 128), ((2, 45, 3, 5), 1, 19), ((1024, 512), -1, 64)]
    # The rule: BLOCK_R, BLOCK_K in {16, 32}, BLOCK_D in {16, 32, 64, 128}: all 16 of them.
    sweep = [((rows, codes), -1, size) for rows in (16, 64) for codes in (16, 100) for size in (16, 32, 64, 256)]

    def name(dtypes):
        return "/".join(short(d) for d in dtypes)

    plans = [Plan("gumbel_softmax_codebook", "modes",
                  f"{shape} dim={dim} D={size} {name(dtypes)} {gumbel_mode_name(*mode)}",
                  functools.partial(call, shape, dim, size, dtypes, *mode))
             for (shape, dim, size), dtypes, mode in combine(subset, shapes, CODEBOOK_DTYPES, GUMBEL_MODES)]
    plans += [Plan("gumbel_softmax_codebook", "settings", f"{shape} D={size} {short(dtype)} soft philox +bwd",
                   functools.partial(call, shape, dim, size, (dtype, dtype), False, False, True))
              for (shape, dim, size), dtype in sweep_combos(subset, sweep)]
    return plans


def codebook_lookup_plans(subset: str) -> list[Plan]:
    def call(shape, dim, codes, size, dtype, index_dtype, grad):
        indices = torch.empty(shape, dtype=index_dtype, device=META)
        backward(ops.codebook_lookup(indices, meta((codes, size), dtype, grad), dim))

    shapes = [((8, 32, 32), 1, 8192, 256), ((37,), -1, 19, 300), ((2, 9, 11), 1, 13, 7), ((3, 5, 7), 0, 11, 1)]
    # The rule: BLOCK_I up to 64 inner rows, BLOCK_D up to 128, BLOCK_O outer rows up to a 4096 tile.
    sweep = [((1,), -1, 4, 4096), ((4096,), -1, 64, 1), ((16, 8), 1, 64, 32), ((4096,), -1, 64, 128),
             ((2, 64, 64), 1, 64, 128)]
    index_dtypes = [torch.int64, torch.int32]
    plans = [Plan("codebook_lookup", "modes", f"{shape} dim={dim} K={codes} D={size} {short(dtype)} "
                  f"{str(index_dtype).removeprefix('torch.')}{' +bwd' if grad else ''}",
                  functools.partial(call, shape, dim, codes, size, dtype, index_dtype, grad))
             for (shape, dim, codes, size), dtype, index_dtype, grad
             in combine(subset, shapes, list(DTYPES), index_dtypes, [False, True])]
    plans += [Plan("codebook_lookup", "settings", f"{shape} dim={dim} D={size} {short(dtype)} +bwd",
                   functools.partial(call, shape, dim, codes, size, dtype, torch.int64, True))
              for (shape, dim, codes, size), dtype in sweep_combos(subset, sweep)]
    return plans


def nearest_codebook_plans(subset: str) -> list[Plan]:
    def call(shape, dim, codes, dtype, grad):
        x = meta(shape, dtype, grad)
        backward(ops.nearest_codebook(x, meta((codes, shape[dim]), dtype, grad), dim))

    shapes = [((65536, 256), -1, 8192), ((37, 3), -1, 3), ((2, 300, 2, 3), 1, 131), ((64,), 0, 3)]
    # The rule: 16-bit codes: >= 32768 rows 128 x 128 tiles, BLOCK_D = pow2(D) in 16..32, else BLOCK_N up
    # to 64 x 64 codes, BLOCK_D in 16..64; 8 warps, 3 stages. float32: BLOCK_N up to 64 x 64 codes,
    # BLOCK_D 16, 4 warps, 1 stage.
    sweep = [((rows, size), -1, 1000) for rows in (16, 40, 40000) for size in (16, 32, 300)]
    plans = [Plan("nearest_codebook", "modes", f"{shape} dim={dim} K={codes} {short(dtype)}{' +bwd' if grad else ''}",
                  functools.partial(call, shape, dim, codes, dtype, grad))
             for (shape, dim, codes), dtype, grad in combine(subset, shapes, list(DTYPES), [False, True])]
    plans += [Plan("nearest_codebook", "settings", f"{shape} K={codes} {short(dtype)}",
                   functools.partial(call, shape, dim, codes, dtype, False))
              for (shape, dim, codes), dtype in sweep_combos(subset, sweep)]
    return plans


KINDS = ("full", "row", "column", "conv")


def sparse_attention_plans(subset: str) -> list[Plan]:
    def call(text_len, image_size, conv_kernel, block, head_dim, batch, heads, kind, dtype):
        mask = ops.dalle_mask(kind, text_len, image_size, conv_kernel, block=block)
        q, k, v = (meta((batch, heads, mask.seq_len, head_dim), dtype, True) for _ in range(3))
        backward(ops.sparse_attention(q, k, v, mask))

    shapes = [(256, 32, 11, 64, 64, 8, 16), (9, 5, 3, 16, 16, 2, 3), (13, 6, 5, 16, 24, 2, 2), (5, 5, 3, 16, 1, 1, 2)]
    # The rule: BLOCK_D = pow2(head dim) >= 16; BLOCK = mask.block (16, 32, 64, 128) up to 64 positions and
    # 64 x 64 elements (float32: 32 and 32 x 32), SPLIT = mask.block // BLOCK; 4 or 8 warps; 2 stages unless
    # float32. All 16 (mask block, head dim) pairs in both dtypes, conv (the most mask arithmetic), plus head
    # dim 80 (padded to 128).
    sweep = [(16, 16, 11, 64, 80, 1, 1)]
    sweep += [(16, 16, 11, block, head_dim, 1, 1) for block in (16, 32, 64, 128) for head_dim in (16, 32, 64, 128)]

    def name(shape):
        return f"T={shape[0]} W={shape[1]} k={shape[2]} block={shape[3]} Dh={shape[4]}"

    plans = [Plan("sparse_attention", "modes", f"{name(shape)} {kind} {short(dtype)} +bwd",
                  functools.partial(call, *shape, kind, dtype))
             for shape, kind, dtype in combine(subset, shapes, list(KINDS), [BF16, F32, F16])]
    plans += [Plan("sparse_attention", "settings", f"{name(shape)} conv {short(dtype)} +bwd",
                   functools.partial(call, *shape, "conv", dtype))
              for shape, dtype in sweep_combos(subset, sweep)]
    return plans


def sparse_attention_decode_plans(subset: str) -> list[Plan]:
    def call(text_len, image_size, head_dim, kind, dtype):
        mask = ops.dalle_mask(kind, text_len, image_size)
        shape = (2, 2, mask.seq_len, head_dim)
        q, k, v = meta(shape, dtype), meta(shape, dtype), meta(shape, dtype)
        for position in range(mask.seq_len):  # every position: the key count and the key list's alignment vary
            ops.sparse_attention_decode(q[:, :, position:position + 1], k, v, mask, position)

    # The rule: 64 keys x BLOCK_D = pow2(head dim) >= 16, 4 warps.
    shapes = [(9, 5, 16), (16, 8, 32), (3, 7, 48)]
    sweep = [(4, 4, head_dim) for head_dim in (1, 16, 32, 64, 80, 128)]
    plans = [Plan("sparse_attention_decode", "modes", f"T={t} W={w} Dh={d} {kind} {short(dtype)}",
                  functools.partial(call, t, w, d, kind, dtype))
             for (t, w, d), kind, dtype in combine(subset, shapes, list(KINDS), list(DTYPES))]
    plans += [Plan("sparse_attention_decode", "settings", f"T={t} W={w} Dh={d} row {short(dtype)}",
                   functools.partial(call, t, w, d, "row", dtype))
              for (t, w, d), dtype in sweep_combos(subset, sweep)]
    return plans


def fused_linear_cross_entropy_plans(subset: str) -> list[Plan]:
    def call(rows, size, vocab, dtype, reduction, bias, grad):
        hidden, weight = meta((rows, size), dtype, grad), meta((vocab, size), dtype, grad)
        target = torch.empty(rows, dtype=torch.int64, device=META)
        loss = ops.fused_linear_cross_entropy(hidden, weight, target, bias=meta(vocab, dtype, grad) if bias else None,
                                              reduction=reduction)
        if grad:
            loss.backward(torch.empty_like(loss))

    # (N, D, V): the tests' shapes, the gpu preset's text and image heads.
    shapes = [(1, 7, 33), (37, 24, 4500), (150, 40, 300), (8192, 512, 16640), (32768, 512, 8192)]
    modes = [(reduction, bias, grad) for reduction in ("mean", "sum", "none") for bias in (False, True)
             for grad in (False, True)]
    # The rule: BLOCK_V = pow2(V) up to 4096; 4 warps, 8 from 2048.
    sweep = [(64, 32, vocab) for vocab in (1, 3, 64, 1000, 2048, 4096, 50000)]
    plans = [Plan("fused_linear_cross_entropy", "modes",
                  f"N={n} D={d} V={v} {short(dtype)} {reduction}{' bias' if bias else ''}{' +bwd' if grad else ''}",
                  functools.partial(call, n, d, v, dtype, reduction, bias, grad))
             for (n, d, v), dtype, (reduction, bias, grad) in combine(subset, shapes, list(DTYPES), modes)]
    plans += [Plan("fused_linear_cross_entropy", "settings", f"N={n} D={d} V={v} {short(dtype)} mean +bwd",
                   functools.partial(call, n, d, v, dtype, "mean", False, True))
              for (n, d, v), dtype in sweep_combos(subset, sweep)]
    return plans


OP_PLANS = (gumbel_softmax_plans, gumbel_softmax_codebook_plans, codebook_lookup_plans, nearest_codebook_plans,
            sparse_attention_plans, sparse_attention_decode_plans, fused_linear_cross_entropy_plans)


def all_plans(subset: str) -> list[Plan]:
    return report_plans() + [plan for make in OP_PLANS for plan in make(subset)]


# ---------------------------------------------------------------------------------- known spills


@dataclass(frozen=True)
class KnownSpill:
    """Spills of hot-kernel variants found by this check and not fixed here: the tile / warp / stage
    choices that would remove them need GPU timings to choose. A spill the rules do not cover fails
    the check, so a new one (one in another variant, or a larger one) still does."""

    kernels: tuple[str, ...]
    pattern: str  # a regular expression the variant's description must match (re.search)
    archs: tuple[int, ...]
    up_to: int  # most bytes per thread (stores + loads) of local memory the rule accepts
    reason: str

    def covers(self, result: cross_compile.Result) -> bool:
        return (result.kernel in self.kernels and result.arch in self.archs
                and cross_compile.spill_bytes(result) <= self.up_to
                and bool(re.search(self.pattern, result.variant)))


ATTENTION_TRAINING = ("_sparse_attention_forward_kernel", "_sparse_attention_dq_kernel",
                      "_sparse_attention_dkdv_kernel")
KNOWN_SPILLS = (
    KnownSpill(ATTENTION_TRAINING[:2], r"^fp32/.* BLOCK=16 BLOCK_D=128 ", (90, 80), 4608,
               "float32 attention at head dim 128: its tl.dot (input_precision 'ieee') runs on FMA units with "
               "the operands in registers, and 16 x 128 tiles of q, k, v and the accumulators overflow them in "
               "the main loop"),
    KnownSpill(("_sparse_attention_dkdv_kernel",), r"^fp32/.* KIND=3 .*BLOCK=32 BLOCK_D=(16|32) SPLIT=4 ", (80,), 64,
               "float32 conv-mask dk/dv at mask block 128 on sm_80 (8-24 bytes in the loop at 96 registers)"),
    KnownSpill(("_sparse_attention_dkdv_kernel",), r"^(bf|fp)16/.* KIND=[23] .*BLOCK=64 BLOCK_D=64 ", (80,), 80,
               "16-bit column- and conv-mask dk/dv at 64 x 64 tiles (the paper's head dim) on sm_80, at 255 "
               "registers; the same tiles fit on sm_90"),
    KnownSpill(("_gumbel_softmax_codebook_dlogits_kernel",), r"BLOCK_R=32 BLOCK_K=(16|32) BLOCK_D=(64|128) warps=8 ",
               (90, 80), 16,
               "one value reloaded in the loop at 64-80 registers, where ptxas keeps a lower register step; "
               "4 warps instead spill hundreds of bytes"),
)


def known_spill(result: cross_compile.Result) -> KnownSpill | None:
    return next((rule for rule in KNOWN_SPILLS if rule.covers(result)), None)


# ------------------------------------------------------------------------------------ compiling


def collect_variants(plans: list[Plan], archs: list[int]) -> dict[str, tuple[cross_compile.Variant, list[str]]]:
    """Run every plan under capture; {variant key: (variant, origins)} over all targets, first origin first."""
    variants: dict[str, tuple[cross_compile.Variant, list[str]]] = {}
    for plan in plans:
        with cross_compile.capture_launches() as launches:
            plan.run()
        for launch in launches:
            for arch in archs:
                variant = cross_compile.specialize(launch, arch)
                _, origins = variants.setdefault(variant.key(), (variant, []))
                if plan.origin not in origins:
                    origins.append(plan.origin)
    return variants


def compile_all(variants, jobs: int, progress: bool = True) -> list[cross_compile.Result]:
    items = [cross_compile.as_job(variant, origins) for variant, origins in variants.values()]
    if jobs <= 1:
        results = []
        for i, job in enumerate(items):
            results.append(cross_compile.compile_job(job))
            if progress and (i + 1) % 25 == 0:
                print(f"  compiled {i + 1}/{len(items)}", flush=True)
        return results
    results = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=quiet) as pool:
        for i, result in enumerate(pool.map(cross_compile.compile_job, items, chunksize=4)):
            results.append(result)
            if progress and (i + 1) % 25 == 0:
                print(f"  compiled {i + 1}/{len(items)}", flush=True)
    return results


def quiet() -> None:
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")


def missing_kernels(results: list[cross_compile.Result], archs: list[int]) -> list[str]:
    """A problem per (kernel of dalle_kernels, target) that no plan compiled."""
    done = {(r.kernel, r.arch) for r in results}
    return [f"{name} ({module}) for {TARGETS[arch].name}: launched by no plan of benchmarks/compile_report.py"
            for name, module in cross_compile.kernels_of().items() for arch in archs if (name, arch) not in done]


# -------------------------------------------------------------------------------------- tables


def ptxas_version() -> str:
    try:
        out = subprocess.run([cross_compile._tool("ptxas"), "--version"], capture_output=True, text=True).stdout
        return out.strip().splitlines()[-1]
    except (OSError, IndexError):
        return "unknown"


def cell(value) -> str:
    return "" if value is None else str(value)


def markdown(results: list[cross_compile.Result], arch: int, subset: str, failures: list[str], seconds: float) -> str:
    target = TARGETS[arch]
    mine = sorted((r for r in results if r.arch == arch), key=lambda r: (r.kernel, r.variant))
    hot = cross_compile.HOT_KERNELS
    lines = [f"# dalle_kernels compiled for {target.name}, no GPU present", "",
             f"Generated by `python benchmarks/compile_report.py{'' if subset == 'full' else ' --subset ' + subset}` "
             f"on {datetime.date.today().isoformat()}: triton {triton.__version__}, torch {torch.__version__}, "
             f"{ptxas_version()}. Each variant is compiled by `triton.compile` for `GPUTarget(\"cuda\", {arch}, 32)` "
             f"with the signature Triton's JIT gives the launch (see `kernels/cross_compile.py`); the numbers are "
             f"read from the cubin with the wheel's `cuobjdump`. {len(mine)} variants; compile time of the whole "
             f"run (both targets) {seconds / 60:.1f} min.", "",
             "- **registers**: per thread (`-res-usage`); **spills**: bytes per thread of the `STL` / `LDL` "
             "(local memory) instructions in the SASS, stores / loads, counted once per instruction, 0 / 0 is none, "
             "then the bytes of them inside a loop (paid every iteration); "
             f"**shared**: bytes per block (Triton's dynamic + static), limit {target.max_shared};",
             "- **main loop**: SASS instructions of the largest innermost loop (a backward branch with no loop "
             "inside), empty when the kernel has no loop; Triton itself does not report it; **MMA**: the "
             "tensor-core instructions in that loop (in the whole kernel when the loop has none);",
             "- **hot** kernels: " + ", ".join(f"`{k}`" for k in sorted(hot)) + f". A spill of theirs fails the "
             f"check when any of it is inside a loop or it passes {cross_compile.SPILL_BUDGET} bytes (stores + "
             "loads) outside loops; under that it is a few values ptxas keeps across the main loop in local memory "
             "to stay at a lower register count, paid once per program, marked *once*.", ""]
    lines += ["**Check: " + ("PASS**" if not failures else f"FAIL** ({len(failures)}):"), ""]
    lines += [f"- {failure}" for failure in failures]
    known = [r for r in mine
             if r.kernel in hot and r.error is None and cross_compile.costly_spill(r) and known_spill(r)]
    if known:
        lines += ["", f"**Known spills** ({len(known)} hot-kernel variants, reported, not failing; marked *known* "
                  "below). Not fixed here: the tile, warp and stage choices that would remove them need GPU "
                  "timings:", ""]
        for rule in KNOWN_SPILLS:
            hits = [r for r in known if known_spill(r) is rule]
            if hits:
                worst = max(hits, key=cross_compile.spill_bytes)
                lines.append(f"- {', '.join(f'`{k}`' for k in rule.kernels)} (`{rule.pattern}`): {len(hits)} variants, "
                             f"up to {worst.spill_stores}/{worst.spill_loads} bytes: {rule.reason}.")
    lines += ["", "## Per kernel", "",
              "| kernel | hot | variants | registers (max) | spills (max bytes) | in loops (max bytes) | "
              "shared (max bytes) | main loop (instructions, min-max) | MMA |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for kernel, group in itertools.groupby(mine, key=lambda r: r.kernel):
        group = [r for r in group if r.error is None]
        if not group:
            lines.append(f"| `{kernel}` | {'yes' if kernel in hot else ''} | 0 compiled | | | | | | |")
            continue
        loops = [r.loop_instructions for r in group if r.loop_instructions is not None]
        mma = sorted({m.split(" x")[0] for r in group for m in r.mma.split("  ") if m} or {""})
        lines.append(f"| `{kernel}` | {'yes' if kernel in hot else ''} | {len(group)} | "
                     f"{max(r.registers for r in group)} | {max(map(cross_compile.spill_bytes, group))} | "
                     f"{max(r.loop_spills for r in group)} | "
                     f"{max(r.shared for r in group)} | {f'{min(loops)}-{max(loops)}' if loops else ''} | "
                     f"{', '.join(m for m in mma if m)} |")
    lines += ["", "## Every variant", "",
              "| kernel | variant | registers | spills st/ld | shared | main loop | MMA | launched by |",
              "|---|---|---:|---:|---:|---:|---|---|"]
    for r in mine:
        origins = "; ".join(r.origins[:MAX_ORIGINS_SHOWN])
        if len(r.origins) > MAX_ORIGINS_SHOWN:
            origins += f"; +{len(r.origins) - MAX_ORIGINS_SHOWN} more"
        if r.error is not None:
            lines.append(f"| `{r.kernel}` | {r.variant} | **error** | {r.error.splitlines()[0][:120]} | | | | "
                         f"{origins} |")
            continue
        spill = f"{r.spill_stores}/{r.spill_loads}" + (f", {r.loop_spills} in loops" if r.loop_spills else "")
        if r.kernel in hot and cross_compile.spills(r):
            costly = cross_compile.costly_spill(r)
            spill = f"**{spill}** {('*known*' if known_spill(r) else '**FAIL**') if costly else '*once*'}"
        lines.append(f"| `{r.kernel}` | {r.variant} | {r.registers} | {spill} | {r.shared} | "
                     f"{cell(r.loop_instructions)} | {r.mma} | {origins} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", choices=("full", "ci"), default="full")
    parser.add_argument("--arch", type=int, action="append", choices=sorted(TARGETS), help="default: 90 and 80")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of compile-sm<arch>.md")
    parser.add_argument("--json", type=Path, help="also write every result and problem here")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes")
    args = parser.parse_args(argv)
    quiet()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_report: unset TRITON_INTERPRET (kernels must be compiled, not interpreted)", file=sys.stderr)
        return 2
    archs = args.arch or sorted(TARGETS, reverse=True)
    start = time.perf_counter()
    plans = all_plans(args.subset)
    variants = collect_variants(plans, archs)
    print(f"{len(plans)} plans -> {len(variants)} variants for {', '.join(f'sm_{a}' for a in archs)} "
          f"({time.perf_counter() - start:.0f} s to capture); compiling with {args.jobs} process(es)", flush=True)
    results = compile_all(variants, args.jobs)
    seconds = time.perf_counter() - start
    failures = {arch: [p for r in results if r.arch == arch
                       for p in cross_compile.problems(r, allowed_spill=known_spill)] for arch in archs}
    for problem in missing_kernels(results, archs):
        failures[archs[0]].append(problem)
    args.out.mkdir(parents=True, exist_ok=True)
    for arch in archs:
        path = args.out / f"compile-sm{arch}.md"
        path.write_text(markdown(results, arch, args.subset, failures[arch], seconds))
        print(f"wrote {path}: {sum(r.arch == arch for r in results)} variants, "
              f"{'PASS' if not failures[arch] else f'FAIL ({len(failures[arch])})'}")
    if args.json:
        args.json.write_text(json.dumps({"subset": args.subset, "archs": archs, "seconds": seconds,
                                         "triton": triton.__version__,
                                         "results": [r.as_dict() for r in results],
                                         "problems": [p for arch in archs for p in failures[arch]]}, indent=1))
    for problem in (p for arch in archs for p in failures[arch]):
        print(f"FAIL {problem}", file=sys.stderr)
    print(f"compile_report: {len(results)} compiles in {seconds:.0f} s: "
          f"{'PASS' if not any(failures.values()) else 'FAIL'}")
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
