"""Benchmark cases shared by the pytest-benchmark suites (``bench_*.py``) and ``report.py``.

A case is one op at one shape, run by several contenders: ``dalle_kernels`` (the public ``dk.``
function on the DEFAULT backend: the Triton kernels for CUDA tensors, the PyTorch reference for
CPU tensors) and the peers a user would pick instead (``F.gumbel_softmax``, ``torch.compile`` of
it, gumbel-softmax + matmul, ``F.embedding``, ``torch.cdist`` + argmin). On a GPU the shapes are
the paper's dVAE (batch 8, 32x32 latent grid, K = 8192 codes) in bfloat16; on a CPU they are
small float32 shapes, so the CPU suites time the reference against the eager peers. The Triton
interpreter is never benchmarked: its timings say nothing about a GPU.

Each case states the bytes an implementation must move (inputs read once + outputs written once,
for GB/s) and, where matmuls dominate, the useful FLOPs (for TFLOP/s); both are the same for
every contender of a case, so the figures compare like with like. ``dalle_kernels`` reads the
backend at every call: set ``DALLE_KERNELS_BACKEND`` only to compare backends on purpose.
"""
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F

import dalle_kernels as dk

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
DTYPE = torch.bfloat16 if ON_GPU else torch.float32  # float inputs; bfloat16 math on a CPU is slow and atypical
OURS = "dalle_kernels"
INT64_BYTES, FP32_BYTES = 8, 4


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: N = batch * grid**2 latent positions, K codes, D codebook widths."""
    batch: int
    grid: int
    codes: int
    dims: tuple[int, ...]  # D of gumbel_softmax_codebook, one case each
    lookup_dim: int
    nearest_rows: int
    nearest_dim: int

    @property
    def positions(self) -> int:
        return self.batch * self.grid * self.grid


DVAE = Sizes(batch=8, grid=32, codes=8192, dims=(128, 256), lookup_dim=256, nearest_rows=65536, nearest_dim=256)
CPU_SIZES = Sizes(batch=2, grid=16, codes=1024, dims=(64,), lookup_dim=64, nearest_rows=4096, nearest_dim=64)
SIZES = DVAE if ON_GPU else CPU_SIZES


@dataclass(frozen=True)
class Contender:
    """One implementation of a case, called with the case's inputs as keyword arguments."""
    name: str
    fn: Callable[..., Any]
    gpu_only: bool = False  # torch.compile: building its C++ kernels takes minutes on a CPU


@dataclass(frozen=True)
class Case:
    """One op at one shape. Float inputs are standard normal in DTYPE; in fwd+bwd runs all of them
    get gradients (from a fixed random upstream gradient of ``output(result)``)."""
    op: str
    name: str
    floats: dict[str, tuple[int, ...]]
    contenders: tuple[Contender, ...]
    bytes: tuple[int, int]  # (fwd, fwd+bwd): bytes that must move
    flops: tuple[int, int] | None = None  # (fwd, fwd+bwd): useful FLOPs, for matmul-bound ops
    indices: tuple[tuple[int, ...], int] | None = None  # (shape, K): an int64 ``indices`` input in [0, K)
    options: dict[str, Any] = field(default_factory=dict)  # non-tensor keyword arguments
    output: Callable[[Any], torch.Tensor] = lambda result: result  # the differentiable output

    def describe(self) -> str:
        """Shapes and options, e.g. ``logits (8, 8192, 32, 32), dim=1``."""
        parts = [f"{name} {shape}" for name, shape in self.floats.items()]
        if self.indices is not None:
            parts.insert(0, f"indices {self.indices[0]}")
        return ", ".join(parts + [f"{key}={value}" for key, value in self.options.items()])


class Run(NamedTuple):
    """One benchmark: a contender of a case, forward only or forward + backward."""
    case: Case
    contender: Contender
    backward: bool

    @property
    def mode(self) -> str:
        return "fwd+bwd" if self.backward else "fwd"

    @property
    def bytes(self) -> int:
        return self.case.bytes[self.backward]

    @property
    def flops(self) -> int | None:
        return None if self.case.flops is None else self.case.flops[self.backward]

    def __str__(self) -> str:
        return f"{self.case.name}-{self.contender.name}-{self.mode}"


@functools.cache
def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)``, built once per function (it specializes on shapes at the first call)."""
    return torch.compile(fn, dynamic=False)


def unfused_gumbel_softmax_codebook(logits: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """What DALLE-pytorch does: the (B, K, H, W) soft one-hot, materialized, then an einsum."""
    return torch.einsum("bkhw,kd->bdhw", F.gumbel_softmax(logits, dim=1), codebook)


def cdist_argmin(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.cdist + argmin, returning what nearest_codebook returns: (indices, squared distance)."""
    dist = torch.cdist(x, codebook)
    indices = dist.argmin(-1)
    return indices, dist.gather(-1, indices[:, None]).squeeze(-1).square()


GUMBEL_SOFTMAX_CONTENDERS = (
    Contender(OURS, lambda logits, dim: dk.gumbel_softmax(logits, dim=dim)),
    Contender("F.gumbel_softmax", lambda logits, dim: F.gumbel_softmax(logits, dim=dim)),
    Contender("torch.compile", lambda logits, dim: compiled(F.gumbel_softmax)(logits, dim=dim), gpu_only=True),
)


def gumbel_softmax_cases(s: Sizes = SIZES) -> list[Case]:
    """Logits as (N, K) rows with dim=-1 and channels-first (B, K, H, W) with dim=1."""
    n, k, e = s.positions, s.codes, DTYPE.itemsize
    # fwd: read logits, write y. bwd: read dy and logits (y is recomputed; or read a saved y), write dlogits.
    moved = (2 * n * k * e, 5 * n * k * e)
    layouts = {"rows": ((n, k), -1), "channels-first": ((s.batch, k, s.grid, s.grid), 1)}
    return [Case("gumbel_softmax", name, {"logits": shape}, GUMBEL_SOFTMAX_CONTENDERS, moved, options={"dim": dim})
            for name, (shape, dim) in layouts.items()]


def gumbel_softmax_codebook_cases(s: Sizes = SIZES) -> list[Case]:
    """Channels-first logits (B, K, H, W), dim=1, times a (K, D) codebook, one case per D."""
    n, k, e = s.positions, s.codes, DTYPE.itemsize
    contenders = (
        Contender(OURS, lambda logits, codebook: dk.gumbel_softmax_codebook(logits, codebook, dim=1)),
        Contender("gumbel_softmax+matmul", unfused_gumbel_softmax_codebook),
    )
    # fwd: read logits and codebook, write out (N, D). bwd: read dout, logits and codebook again,
    # write dlogits and dcodebook. FLOPs: fwd y @ codebook; bwd dy = dout @ codebook^T, dcodebook = y^T @ dout.
    return [Case("gumbel_softmax_codebook", f"D={d}", {"logits": (s.batch, k, s.grid, s.grid), "codebook": (k, d)},
                 contenders, bytes=((n * k + k * d + n * d) * e, (3 * n * k + 3 * k * d + 2 * n * d) * e),
                 flops=(2 * n * k * d, 6 * n * k * d))
            for d in s.dims]


def codebook_lookup_cases(s: Sizes = SIZES) -> list[Case]:
    """Indices (B, H, W) -> (B, D, H, W) rows of a (K, D) codebook (dim=1)."""
    n, k, d, e = s.positions, s.codes, s.lookup_dim, DTYPE.itemsize
    contenders = (
        Contender(OURS, lambda indices, codebook: dk.codebook_lookup(indices, codebook, dim=1)),
        Contender("F.embedding", lambda indices, codebook: F.embedding(indices, codebook).permute(0, 3, 1, 2)),
        Contender("codebook[indices]", lambda indices, codebook: codebook[indices].permute(0, 3, 1, 2)),
    )
    # fwd: read the int64 indices and the (at most min(N, K)) codebook rows they pick, write out (N, D).
    # bwd: read indices and dout, write the whole dcodebook (K, D).
    fwd = n * INT64_BYTES + (min(n, k) + n) * d * e
    return [Case("codebook_lookup", f"D={d}", {"codebook": (k, d)}, contenders,
                 bytes=(fwd, fwd + n * INT64_BYTES + (n + k) * d * e), indices=((s.batch, s.grid, s.grid), k))]


def nearest_codebook_cases(s: Sizes = SIZES) -> list[Case]:
    """x (N, D) against a (K, D) codebook; the differentiable output is the squared distance."""
    n, k, d, e = s.nearest_rows, s.codes, s.nearest_dim, DTYPE.itemsize
    contenders = (Contender(OURS, dk.nearest_codebook), Contender("cdist+argmin", cdist_argmin))
    # fwd: read x and codebook, write indices (int64) and sq_dist (fp32). bwd: read dsq_dist, indices,
    # x and codebook again, write dx and dcodebook. FLOPs: x . c for every pair (backward is O(N D)).
    fwd = (n + k) * d * e + n * (INT64_BYTES + FP32_BYTES)
    return [Case("nearest_codebook", f"N={n}", {"x": (n, d), "codebook": (k, d)}, contenders,
                 bytes=(fwd, fwd + 2 * (n + k) * d * e + n * (INT64_BYTES + FP32_BYTES)),
                 flops=(2 * n * k * d, 2 * n * k * d), output=lambda result: result[1])]


def all_cases(s: Sizes = SIZES) -> list[Case]:
    return (gumbel_softmax_cases(s) + gumbel_softmax_codebook_cases(s) + codebook_lookup_cases(s)
            + nearest_codebook_cases(s))


def runs(case_list: list[Case], on_gpu: bool = ON_GPU) -> list[Run]:
    """Every (case, contender, fwd / fwd+bwd) of ``case_list`` to benchmark on this machine."""
    return [Run(case, contender, backward) for case in case_list for backward in (False, True)
            for contender in case.contenders if on_gpu or not contender.gpu_only]


def make_inputs(case: Case, backward: bool) -> dict:
    """Fresh random keyword arguments of ``case`` on DEVICE; float inputs require grad when ``backward``."""
    inputs = {name: torch.randn(shape, device=DEVICE, dtype=DTYPE, requires_grad=backward)
              for name, shape in case.floats.items()}
    if case.indices is not None:
        shape, high = case.indices
        inputs["indices"] = torch.randint(high, shape, device=DEVICE)
    return inputs | case.options


def make_step(run: Run, inputs: dict) -> Callable[[], Any]:
    """A no-argument callable doing one forward (and backward) of ``run`` on ``inputs``.

    The backward variant clears the input gradients first (so each call writes them afresh
    instead of accumulating) and backpropagates a fixed random gradient. Building it calls the
    contender once, which also compiles / autotunes it outside any timing.
    """
    forward = functools.partial(run.contender.fn, **inputs)
    if not run.backward:
        forward()
        return forward
    leaves = [value for value in inputs.values() if isinstance(value, torch.Tensor) and value.requires_grad]
    grad = torch.randn_like(run.case.output(forward()))

    def step():
        for leaf in leaves:
            leaf.grad = None
        run.case.output(forward()).backward(grad)

    return step
