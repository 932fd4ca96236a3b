"""Compile the Triton kernels for a CUDA GPU on a machine without one, and read what ptxas made of them.

No device is needed at any step. :func:`capture_launches` records every Triton launch the
launchers make (the kernel, its arguments and launch options) instead of running it, so the
launchers can be driven with ``meta`` tensors (shapes and strides, no memory). :func:`specialize`
runs Triton's own argument binder for a target: a launch gets the signature a real launch on that
GPU would get (pointer dtypes, 16-byte alignment of pointers and ints, ints equal to 1 as
constants). :func:`compile_variant` then runs ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))``, i.e. the whole pipeline down to ptxas (shipped in
Triton's wheel), and reads the cubin back with the wheel's ``cuobjdump``: registers, stack frame,
static shared memory (``-res-usage``) and the SASS, from which it counts local-memory traffic
(``STL`` / ``LDL``: register spills, and how much of it lies inside a loop), the instructions of
the main loop and the tensor-core instructions. Works with Triton 3.3 to 3.9 (the binder's API
changed between them).

:func:`problems` is the check: a compile error, or shared memory over the target's limit, fails any
kernel (it could not launch); costly spills fail the hot kernels (``HOT_KERNELS``): any local-memory
traffic inside a loop (paid on every iteration), or more than ``SPILL_BUDGET`` bytes outside loops.
ptxas often parks a few values live across the main loop in local memory to stay at a register
count a step lower (more warps per SM); that traffic is paid once per program, and is reported,
not failed.
"""
import contextlib
import importlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime import jit as triton_jit


@dataclass(frozen=True)
class Target:
    """A CUDA compute capability and the per-block limits kernels are checked against."""

    arch: int  # compute capability as Triton writes it: 90, 80
    name: str
    max_shared: int  # bytes of shared memory one block may use (the opt-in maximum)


TARGETS = {
    90: Target(90, "sm_90 (H100 / H200)", 227 * 1024),
    80: Target(80, "sm_80 (A100)", 163 * 1024),
}

# Bytes per thread (stores + loads) of local-memory traffic outside every loop that a hot kernel may
# have: a few words, paid once per program (ptxas's spills to reach a lower register step are 4-40).
SPILL_BUDGET = 64

# Kernels on the training / sampling hot path: a costly register spill in one of them fails the check.
HOT_KERNELS = frozenset({
    "_sparse_attention_forward_kernel", "_sparse_attention_dq_kernel", "_sparse_attention_dkdv_kernel",
    "_sparse_attention_decode_kernel",
    "_gumbel_softmax_forward_kernel", "_gumbel_softmax_backward_kernel",
    "_gumbel_softmax_codebook_forward_kernel", "_gumbel_softmax_codebook_dlogits_kernel",
    "_gumbel_softmax_codebook_dcodebook_kernel",
    "_nearest_codebook_forward_kernel",
})


class Launch(NamedTuple):
    """One recorded ``kernel[grid](*args, **kwargs)``: kwargs hold the constexprs and launch options."""

    kernel: Any  # a triton JITFunction
    args: tuple
    kwargs: dict
    grid: Any


@contextlib.contextmanager
def capture_launches() -> Iterator[list[Launch]]:
    """Within this context every Triton launch is appended to the yielded list instead of running.

    The launchers' own PyTorch work still runs: drive them with ``meta`` tensors (free, any size;
    a meta tensor's ``data_ptr`` is its byte offset, so slices keep their real alignment).
    """
    launches: list[Launch] = []
    original = triton_jit.JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, dict(kwargs), grid))

    triton_jit.JITFunction.run = record
    try:
        yield launches
    finally:
        triton_jit.JITFunction.run = original


class Variant(NamedTuple):
    """A launch specialized for a target, as Triton's JIT would hand it to the compiler."""

    kernel: Any
    arch: int
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict

    @property
    def name(self) -> str:
        return self.kernel.__name__

    def key(self) -> str:
        """Identifies the compiled binary: equal keys compile to the same cubin."""
        return repr((self.kernel.fn.__module__, self.name, self.arch, sorted(self.signature.items()),
                     sorted((k, _plain(v)) for k, v in self.constexprs.items()), sorted(self.attrs.items()),
                     sorted((k, _plain(v)) for k, v in self.options.items())))

    def describe(self) -> str:
        """The variant in one line: tensor dtypes, then constexprs (``BLOCK_R=1 HARD=0``), warps and stages."""
        names = [p.name for p in self.kernel.params]
        dtypes = sorted({t.lstrip("*") for t in self.signature.values() if isinstance(t, str) and t.startswith("*")})
        consts = []
        for path, value in sorted(self.constexprs.items()):
            name = names[path[0]] if len(path) == 1 else str(path)
            if self.kernel.params[path[0]].is_constexpr:
                consts.append(f"{name}={_short(value)}")
        specialized = [names[path[0]] for path, value in sorted(self.constexprs.items())
                       if not self.kernel.params[path[0]].is_constexpr and value == 1]
        parts = ["/".join(dtypes), *consts, f"warps={self.options.get('num_warps')}",
                 f"stages={self.options.get('num_stages')}"]
        if specialized:
            parts.append("=1: " + ",".join(specialized))
        return " ".join(parts)


def _short(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return str(value).removeprefix("triton.language.").removeprefix("tl.")


def _plain(value):
    """A hashable, printable stand-in for a constexpr or option value (tl.dtype objects included)."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return str(value)


def _option_names(backend) -> set[str]:
    return set(backend.parse_options({}).__dict__)


def specialize(launch: Launch, arch: int) -> Variant:
    """``launch`` as Triton's JIT would compile it for compute capability ``arch`` (no device needed)."""
    fn = launch.kernel
    if not isinstance(fn, triton_jit.JITFunction):
        raise TypeError(f"{getattr(fn, '__name__', fn)!r} is not a JITFunction: import triton without "
                        "TRITON_INTERPRET=1 to compile kernels")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = triton_jit.create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs)
    bound, specialization, options = binder(*launch.args, **kwargs)
    if hasattr(fn, "_pack_args"):  # Triton >= 3.5 (3.9 included)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    else:  # Triton 3.3 / 3.4: what JITFunction.run does inline
        from triton._utils import find_paths_if, get_iterable_path
        options = backend.parse_options(kwargs)
        sigvals = [x[0] for x in specialization]
        signature = dict(zip([p.name for p in fn.params], sigvals))
        paths = find_paths_if(sigvals, lambda _, val: val == "constexpr")
        constexprs = {path: get_iterable_path(list(bound.values()), path) for path in paths}
        attrvals = [x[1] for x in specialization]
        paths = find_paths_if(attrvals, lambda _, x: isinstance(x, str))
        attrs = {path: backend.parse_attr(get_iterable_path(attrvals, path)) for path in paths}
    unknown = set(kwargs) - _option_names(backend) - set(signature)
    if unknown:
        raise KeyError(f"{fn.__name__}: launch keyword(s) {sorted(unknown)} are neither parameters nor options")
    return Variant(fn, arch, signature, constexprs, attrs, dict(options.__dict__))


@dataclass
class Result:
    """What compiling one variant for one target gave (``error`` set when it did not compile)."""

    kernel: str
    arch: int
    variant: str
    origins: list[str] = field(default_factory=list)  # which plans launch it (report cases, rule sweeps, ...)
    error: str | None = None
    registers: int | None = None
    stack: int | None = None  # stack frame bytes per thread
    spill_stores: int | None = None  # bytes per thread written to local memory (STL) by one pass of the code
    spill_loads: int | None = None  # bytes read back (LDL)
    loop_spills: int | None = None  # bytes of those stores and loads that lie inside a loop (paid every iteration)
    shared: int | None = None  # bytes per block: Triton's dynamic shared memory + static
    instructions: int | None = None  # SASS instructions of the whole kernel
    loop_instructions: int | None = None  # SASS instructions of the main loop (None: the kernel has no loop)
    loops: int | None = None  # innermost loops found in the SASS
    mma: str = ""  # tensor-core instructions of the main loop (``HGMMA x8``), else of the kernel
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _tool(name: str) -> str:
    """Path of an NVIDIA tool shipped in Triton's wheel (``backends/nvidia/bin``), else on PATH."""
    import triton.backends.nvidia as nvidia
    path = os.path.join(os.path.dirname(nvidia.__file__), "bin", name)
    if os.path.exists(path):
        return path
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name}: not in Triton's backends/nvidia/bin nor on PATH")
    return found


RES_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
SASS_LINE = re.compile(r"/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
LOCAL_WIDTH = {".U8": 1, ".S8": 1, ".U16": 2, ".S16": 2, ".64": 8, ".128": 16}
MMA_PREFIXES = ("HGMMA", "QGMMA", "IGMMA", "HMMA", "IMMA", "DMMA")


def _local_bytes(mnemonic: str) -> int:
    for suffix, width in LOCAL_WIDTH.items():
        if suffix in mnemonic:
            return width
    return 4


def parse_sass(sass: str) -> dict:
    """Counts from ``cuobjdump -sass`` of one kernel: instructions, STL / LDL bytes, loops and MMAs.

    A loop is a backward branch (``BRA`` to a lower address); the main loop is the largest innermost
    one (a loop with no loop inside it), e.g. the K-loop of a matmul, counted in instructions.
    ``loop_spills``: the STL / LDL bytes inside any loop.
    """
    instructions = []  # (address, mnemonic, text)
    for address, text in SASS_LINE.findall(sass):
        body = re.sub(r"^@!?U?P\w+\s+", "", text.strip())
        instructions.append((int(address, 16), body.split()[0] if body else "", body))
    loops = []
    for address, mnemonic, text in instructions:
        target = re.search(r"\b0x([0-9a-f]+)\b", text)
        if mnemonic.startswith("BRA") and target and int(target.group(1), 16) < address:
            loops.append((int(target.group(1), 16), address))
    innermost = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    main = max(innermost, key=lambda loop: loop[1] - loop[0], default=None)

    def inside(loop):
        return [m for address, m, _ in instructions if loop is None or loop[0] <= address <= loop[1]]

    loop_body = inside(main) if main else []
    mma_source = loop_body if any(m.startswith(MMA_PREFIXES) for m in loop_body) else inside(None)
    kinds: dict[str, int] = {}
    for mnemonic in mma_source:
        if mnemonic.startswith(MMA_PREFIXES):
            kind = mnemonic.split(".")[0]
            kinds[kind] = kinds.get(kind, 0) + 1

    def in_a_loop(address):
        return any(start <= address <= end for start, end in loops)

    return {
        "instructions": len(instructions),
        "spill_stores": sum(_local_bytes(m) for _, m, _ in instructions if m.startswith("STL")),
        "spill_loads": sum(_local_bytes(m) for _, m, _ in instructions if m.startswith("LDL")),
        "loop_spills": sum(_local_bytes(m) for a, m, _ in instructions
                           if m.startswith(("STL", "LDL")) and in_a_loop(a)),
        "loop_instructions": len(loop_body) if main else None,
        "loops": len(innermost),
        "mma": " ".join(f"{kind} x{count}" for kind, count in sorted(kinds.items())),
    }


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack and static shared memory (``cuobjdump -res-usage``) and the SASS counts of a cubin."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True)
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True, text=True, check=True)
    match = RES_USAGE.search(usage.stdout)
    if match is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no resource line:\n{usage.stdout}")
    registers, stack, shared, _ = map(int, match.groups())
    return {"registers": registers, "stack": stack, "static_shared": shared, **parse_sass(sass.stdout)}


def compile_variant(variant: Variant, origins: list[str] | None = None) -> Result:
    """Compile ``variant`` with ``triton.compile`` for its target and read the cubin's resources."""
    result = Result(variant.name, variant.arch, variant.describe(), list(origins or []))
    start = time.perf_counter()
    try:
        source = ASTSource(variant.kernel, variant.signature, variant.constexprs, variant.attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", variant.arch, 32), options=variant.options)
        usage = resource_usage(compiled.asm["cubin"])
        result.shared = compiled.metadata.shared + usage.pop("static_shared")
        for name, value in usage.items():
            setattr(result, name, value)
    except Exception as error:  # noqa: BLE001 -- a compile error is a result to report, not a crash
        result.error = f"{type(error).__name__}: {error}".strip()
    result.seconds = time.perf_counter() - start
    return result


def compile_job(job: tuple) -> Result:
    """:func:`compile_variant` of a picklable job ``(module, kernel name, arch, signature, constexprs,
    attrs, options, origins)``, for worker processes."""
    module, name, arch, signature, constexprs, attrs, options, origins = job
    kernel = getattr(importlib.import_module(module), name)
    return compile_variant(Variant(kernel, arch, signature, constexprs, attrs, options), origins)


def as_job(variant: Variant, origins: list[str]) -> tuple:
    return (variant.kernel.fn.__module__, variant.name, variant.arch, variant.signature, variant.constexprs,
            variant.attrs, variant.options, origins)


def spills(result: Result) -> bool:
    return bool(result.spill_stores or result.spill_loads)


def spill_bytes(result: Result) -> int:
    """Local-memory bytes per thread, stores + loads (0 for a variant that did not compile)."""
    return (result.spill_stores or 0) + (result.spill_loads or 0)


def costly_spill(result: Result) -> str | None:
    """Why ``result``'s spills cost more than a few words once per program, or None."""
    if result.loop_spills:
        return f"{result.loop_spills} bytes of it inside a loop"
    if spill_bytes(result) > SPILL_BUDGET:
        return f"outside loops, over the budget of {SPILL_BUDGET}"
    return None


def problems(result: Result, hot: frozenset[str] = HOT_KERNELS, allowed_spill=None) -> list[str]:
    """Why ``result`` fails the check (empty when it passes). ``allowed_spill(result)``, when given,
    exempts a spill it returns True for (a known, reported one)."""
    target = TARGETS[result.arch].name if result.arch in TARGETS else f"sm_{result.arch}"
    where = f"{result.kernel} [{result.variant}] for {target}"
    if result.error is not None:
        return [f"{where}: does not compile: {result.error.splitlines()[0][:400]}"]
    found = []
    limit = TARGETS[result.arch].max_shared if result.arch in TARGETS else None
    if limit is not None and result.shared is not None and result.shared > limit:
        found.append(f"{where}: {result.shared} bytes of shared memory, over the target's {limit}")
    cost = costly_spill(result) if result.kernel in hot else None
    if cost and not (allowed_spill and allowed_spill(result)):
        found.append(f"{where}: spills registers ({result.spill_stores} bytes stored, {result.spill_loads} loaded "
                     f"to local memory, {cost}; {result.registers} registers)")
    return found


class TritonOps:
    """The public ops' Triton path without their argument checks, for driving launchers on ``meta``
    tensors (the checks read values, which meta tensors do not have): each function takes the
    public op's arguments and defaults and calls the autograd Function the op calls on a GPU. Seeds
    are fixed (12345 without noise, 0 with it, as the ops pass)."""

    SEED = 12345

    @staticmethod
    def gumbel_softmax(logits, tau=1.0, hard=False, dim=-1, *, noise=None, generator=None):
        from .ops.gumbel_softmax.kernel import GumbelSoftmaxFunction
        seed = 0 if noise is not None else TritonOps.SEED
        return GumbelSoftmaxFunction.apply(logits, float(tau), hard, dim % logits.ndim, noise, seed)

    @staticmethod
    def gumbel_softmax_codebook(logits, codebook, tau=1.0, hard=False, dim=-1, *, noise=None, generator=None):
        from .ops.gumbel_softmax_codebook.kernel import GumbelSoftmaxCodebookFunction
        seed = 0 if noise is not None else TritonOps.SEED
        return GumbelSoftmaxCodebookFunction.apply(logits, codebook, float(tau), hard, dim % logits.ndim, noise, seed)

    @staticmethod
    def codebook_lookup(indices, codebook, dim=-1):
        from .ops.codebook_lookup.kernel import CodebookLookupFunction
        return CodebookLookupFunction.apply(indices, codebook, dim % (indices.ndim + 1))

    @staticmethod
    def nearest_codebook(x, codebook, dim=-1):
        from .ops.nearest_codebook.kernel import NearestCodebookFunction
        return NearestCodebookFunction.apply(x, codebook, dim % x.ndim)

    @staticmethod
    def sparse_attention(q, k, v, mask, scale=None):
        from .ops.sparse_attention.kernel import SparseAttentionFunction
        return SparseAttentionFunction.apply(q, k, v, mask, q.shape[3] ** -0.5 if scale is None else float(scale))

    @staticmethod
    def sparse_attention_decode(q, k_cache, v_cache, mask, position, scale=None):
        from .ops.sparse_attention.kernel import sparse_attention_decode_forward
        scale = q.shape[3] ** -0.5 if scale is None else float(scale)
        return sparse_attention_decode_forward(q.detach(), k_cache.detach(), v_cache.detach(), mask, position, scale)

    @staticmethod
    def fused_linear_cross_entropy(hidden, weight, target, *, bias=None, ignore_index=-100, reduction="mean"):
        from .ops.fused_linear_cross_entropy.kernel import FusedLinearCrossEntropyFunction
        return FusedLinearCrossEntropyFunction.apply(hidden, weight, bias, target, ignore_index, reduction,
                                                     hidden.dtype)

    @staticmethod
    def dalle_mask(*args, **kwargs):
        from .ops.sparse_attention.mask import dalle_mask
        return dalle_mask(*args, **kwargs)


def kernels_of(package: str = "dalle_kernels.ops") -> dict[str, str]:
    """Every Triton kernel (a JITFunction named ``*_kernel``) of the ``kernel`` modules under ``package``:
    {kernel name: module}."""
    found = {}
    ops = importlib.import_module(package)
    for entry in sorted(os.listdir(os.path.dirname(ops.__file__))):
        try:
            module = importlib.import_module(f"{package}.{entry}.kernel")
        except ModuleNotFoundError:
            continue
        for name, value in vars(module).items():
            if name.endswith("_kernel") and isinstance(value, triton_jit.JITFunction) \
                    and value.fn.__module__ == module.__name__:
                found[name] = module.__name__
    return found
