"""Benchmark cases shared by the pytest-benchmark suites (``bench_*.py``) and ``report.py``.

A case is one op at one shape, run by several contenders: ``dalle_kernels`` (the public ``dk.``
function on the DEFAULT backend: the Triton kernels for CUDA tensors, the PyTorch reference for
CPU tensors) and the peers a user would pick instead (``F.gumbel_softmax``, ``torch.compile`` of
it, gumbel-softmax + matmul, ``F.embedding``, ``torch.cdist`` + argmin; for attention SDPA with
the dense bool mask, SDPA causal on the flash backend, compiled FlexAttention with the same
mask; for the loss, matmul + F.cross_entropy). On a GPU the shapes are the paper's dVAE (batch 8,
32x32 latent grid, K = 8192 codes), the paper's transformer attention (T = 256 text + 32x32 image
tokens, head dim 64, batch 8, 16 heads) and the gpu preset's loss step (batch 32 x (256 text rows
against 16384 + 256 text tokens and 1024 image rows against 8192 codes), D = 512) in bfloat16; on
a CPU they are small float32 shapes, so the CPU suites time the reference against the eager peers.
The Triton interpreter is never benchmarked: its timings say nothing about a GPU.

Each case states the bytes an implementation must move (inputs read once + outputs written once,
for GB/s) and, where matmuls dominate, the useful FLOPs (for TFLOP/s); both are the same for
every contender of a case, so the figures compare like with like. ``dalle_kernels`` reads the
backend at every call: set ``DALLE_KERNELS_BACKEND`` only to compare backends on purpose.
"""
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

import dalle_kernels as dk
from dalle_kernels.ops.sparse_attention import DalleMask

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
TINY_SIZES = Sizes(batch=1, grid=4, codes=32, dims=(16,), lookup_dim=16, nearest_rows=64, nearest_dim=16)  # rehearsal


@dataclass(frozen=True)
class AttentionSizes:
    """Transformer attention: q, k, v (batch, heads, S, head_dim), S = text_len + image_size**2."""
    batch: int
    heads: int
    text_len: int
    image_size: int
    head_dim: int

    def mask(self, kind: str) -> DalleMask:
        return dk.dalle_mask(kind, self.text_len, self.image_size)

    @property
    def qkv_shape(self) -> tuple[int, int, int, int]:
        return self.batch, self.heads, self.text_len + self.image_size**2, self.head_dim


PAPER_ATTENTION = AttentionSizes(batch=8, heads=16, text_len=256, image_size=32, head_dim=64)
CPU_ATTENTION = AttentionSizes(batch=2, heads=2, text_len=16, image_size=8, head_dim=32)
TINY_ATTENTION = AttentionSizes(batch=1, heads=1, text_len=4, image_size=4, head_dim=16)
ATTENTION_SIZES = PAPER_ATTENTION if ON_GPU else CPU_ATTENTION
ATTENTION_KINDS = ("full", "row", "column", "conv")


@dataclass(frozen=True)
class HeadSizes:
    """The transformer's loss step: per sample ``text_len`` text rows against the text vocabulary
    (BPE tokens + one padding token per position) and ``image_tokens`` image rows against the
    ``codes`` image tokens, all of width D; one (text_vocab + codes, D) output matrix."""
    batch: int
    text_len: int
    text_vocab: int
    image_tokens: int
    codes: int
    width: int

    @property
    def rows(self) -> tuple[int, int]:
        return self.batch * self.text_len, self.batch * self.image_tokens


GPU_HEAD = HeadSizes(batch=32, text_len=256, text_vocab=16384 + 256, image_tokens=1024, codes=8192, width=512)
CPU_HEAD = HeadSizes(batch=2, text_len=16, text_vocab=512 + 16, image_tokens=64, codes=512, width=64)
TINY_HEAD = HeadSizes(batch=1, text_len=4, text_vocab=32 + 4, image_tokens=16, codes=32, width=16)
HEAD_SIZES = GPU_HEAD if ON_GPU else CPU_HEAD
PLAIN_CE = "matmul+F.cross_entropy"


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
    modes: tuple[bool, ...] = (False, True)  # backward off / on: fwd, fwd+bwd

    def describe(self) -> str:
        """Name, shapes and options, e.g. ``channels-first: logits (8, 8192, 32, 32), dim=1``."""
        parts = [f"{name} {shape}" for name, shape in self.floats.items()]
        if self.indices is not None:
            parts.insert(0, f"indices {self.indices[0]}")
        return f"{self.name}: " + ", ".join(parts + [f"{key}={value}" for key, value in self.options.items()])


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


@functools.cache
def dense_mask(mask: DalleMask) -> torch.Tensor:
    """``mask.dense()`` on DEVICE, built once (SDPA's bool attn_mask: True = may attend)."""
    return mask.dense(DEVICE)


@functools.cache
def flex_block_mask(mask: DalleMask) -> BlockMask:
    """FlexAttention's BlockMask of ``mask`` on DEVICE (its own 128 x 128 blocks), built once."""
    s = mask.seq_len
    return create_block_mask(lambda b, h, q_idx, kv_idx: mask.allows(q_idx, kv_idx), None, None, s, s, device=DEVICE)


def sdpa_causal_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense causal attention on SDPA's flash backend: the lower bound of not exploiting the mask."""
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def allowed_entries(mask: DalleMask) -> int:
    """Number of (query, key) pairs ``mask`` allows."""
    return int(dense_mask(mask).sum())


def sparse_attention_cases(s: AttentionSizes = ATTENTION_SIZES) -> list[Case]:
    """One case per mask kind: q, k, v (B, H, S, Dh), against SDPA (dense mask; causal flash) and
    compiled FlexAttention with the same mask (not for ``full``, which is causal attention: that
    keeps torch.compile's recompiles of flex_attention (3 masks x fwd, fwd+bwd) under its limit of 8)."""
    b, h, seq, d = s.qkv_shape
    e = DTYPE.itemsize
    cases = []
    for kind in ATTENTION_KINDS:
        mask = s.mask(kind)
        contenders = (
            Contender(OURS, lambda q, k, v, mask=mask: dk.sparse_attention(q, k, v, mask)),
            Contender("SDPA dense mask",
                      lambda q, k, v, mask=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(mask))),
            Contender("SDPA causal flash", sdpa_causal_flash),
        )
        if kind != "full":
            contenders += (Contender(
                "FlexAttention compiled",
                lambda q, k, v, mask=mask: compiled(flex_attention)(q, k, v, block_mask=flex_block_mask(mask)),
                gpu_only=True),)
        # FLOPs over allowed entries only: fwd q k^T and p v (2 * 2 * Dh per entry); bwd p^T dO, dO v^T,
        # dS k and dS^T q (4 * 2 * Dh). Bytes: fwd reads q, k, v and writes out; bwd reads q, k, v,
        # out, dout and writes dq, dk, dv.
        entries = allowed_entries(mask) * b * h
        cases.append(Case("sparse_attention", kind, {"q": s.qkv_shape, "k": s.qkv_shape, "v": s.qkv_shape},
                          contenders, bytes=(4 * b * h * seq * d * e, 12 * b * h * seq * d * e),
                          flops=(4 * entries * d, 12 * entries * d)))
    return cases


def decode_loop(attend: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A generation loop's attention: ``attend(q_p, k, v, p)`` for every position p in turn, q_p
    (B, H, 1, Dh) taken from q (B, H, S, Dh), k and v the full (B, H, S, Dh) caches."""
    def loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        for p in range(q.shape[2]):
            out = attend(q[:, :, p:p + 1], k, v, p)
        return out  # the last step's output
    return loop


def sparse_attention_decode_cases(s: AttentionSizes = ATTENTION_SIZES) -> list[Case]:
    """One case per sparse kind: all S steps of cached decoding (forward only), against dense SDPA
    over the whole cache with the position's mask row."""
    b, h, seq, d = s.qkv_shape
    e = DTYPE.itemsize
    cases = []
    for kind in ATTENTION_KINDS[1:]:
        mask = s.mask(kind)
        contenders = (
            Contender(OURS, decode_loop(lambda q, k, v, p, mask=mask: dk.sparse_attention_decode(q, k, v, mask, p))),
            Contender("SDPA over the full cache", decode_loop(
                lambda q, k, v, p, mask=mask: F.scaled_dot_product_attention(q, k, v,
                                                                             attn_mask=dense_mask(mask)[p:p + 1]))),
        )
        # Over all steps: each allowed key row of k and v read once per query (2 * 2 * Dh FLOPs
        # per entry), each query read and each output written once.
        entries = allowed_entries(mask) * b * h
        cases.append(Case("sparse_attention_decode", kind, {"q": s.qkv_shape, "k": s.qkv_shape, "v": s.qkv_shape},
                          contenders, bytes=((2 * entries + 2 * b * h * seq) * d * e,) * 2,
                          flops=(4 * entries * d,) * 2, modes=(False,)))
    return cases


def dalle_head_loss(cross_entropy: Callable[..., torch.Tensor], s: HeadSizes) -> Callable[..., torch.Tensor]:
    """The transformer's loss on (hidden, weight, indices): rows ``:N_text`` of hidden are text
    rows scored against ``weight[:text_vocab]``, the rest image rows against ``weight[text_vocab:]``,
    loss = text CE / 8 + 7 image CE / 8 (``cross_entropy(hidden, weight, target)``, mean over rows)."""
    text_rows = s.rows[0]

    def loss(hidden: torch.Tensor, weight: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        text = cross_entropy(hidden[:text_rows], weight[:s.text_vocab], indices[:text_rows])
        image = cross_entropy(hidden[text_rows:], weight[s.text_vocab:], indices[text_rows:])
        return text / 8 + 7 * image / 8

    return loss


def plain_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The unfused path: the whole (N, V) logits, then F.cross_entropy."""
    return F.cross_entropy(hidden @ weight.T, target)


def fused_linear_cross_entropy_cases(s: HeadSizes = HEAD_SIZES) -> list[Case]:
    """One loss step of both heads: hidden (N_text + N_image, D), weight (text_vocab + codes, D),
    targets < codes (valid for both vocabularies)."""
    n, v, d, e = sum(s.rows), s.text_vocab + s.codes, s.width, DTYPE.itemsize
    contenders = (Contender(OURS, dalle_head_loss(dk.fused_linear_cross_entropy, s)),
                  Contender(PLAIN_CE, dalle_head_loss(plain_linear_cross_entropy, s)))
    # fwd: read hidden, weight and the int64 targets. bwd: write dhidden and dweight. FLOPs: the
    # logits (text rows x text vocabulary + image rows x codes); bwd adds dhidden and dweight.
    fwd = (n + v) * d * e + n * INT64_BYTES
    logits = s.rows[0] * s.text_vocab + s.rows[1] * s.codes
    return [Case("fused_linear_cross_entropy", f"B={s.batch}", {"hidden": (n, d), "weight": (v, d)}, contenders,
                 bytes=(fwd, fwd + (n + v) * d * e), flops=(2 * logits * d, 6 * logits * d), indices=((n,), s.codes))]


def all_cases(s: Sizes = SIZES, a: AttentionSizes = ATTENTION_SIZES, h: HeadSizes = HEAD_SIZES) -> list[Case]:
    return (gumbel_softmax_cases(s) + gumbel_softmax_codebook_cases(s) + codebook_lookup_cases(s)
            + nearest_codebook_cases(s) + sparse_attention_cases(a) + sparse_attention_decode_cases(a)
            + fused_linear_cross_entropy_cases(h))


# The headline of each op: its main (first) case in this mode against its strongest peer.
HEADLINE = {
    "gumbel_softmax": ("torch.compile", True),
    "gumbel_softmax_codebook": ("gumbel_softmax+matmul", True),
    "codebook_lookup": ("F.embedding", True),
    "nearest_codebook": ("cdist+argmin", False),
    "sparse_attention": ("FlexAttention compiled", True),
    "sparse_attention_decode": ("SDPA over the full cache", False),
    "fused_linear_cross_entropy": (PLAIN_CE, True),
}
HEADLINE_CASES = {"sparse_attention": "row"}  # the first case is "full", which has no FlexAttention peer


def is_headline(run: Run, case_list: list[Case]) -> bool:
    """Whether ``run`` is one of its op's headline pair (dalle_kernels or the strongest peer, main case, mode)."""
    peer, backward = HEADLINE[run.case.op]
    main = HEADLINE_CASES.get(run.case.op) or next(c.name for c in case_list if c.op == run.case.op)
    return run.case.name == main and run.backward == backward and run.contender.name in (OURS, peer)


def runs(case_list: list[Case], on_gpu: bool = ON_GPU) -> list[Run]:
    """Every (case, contender, mode) of ``case_list`` to benchmark on this machine."""
    return [Run(case, contender, backward) for case in case_list for backward in case.modes
            for contender in case.contenders if on_gpu or not contender.gpu_only]


def make_inputs(case: Case, backward: bool, device: torch.device | str = DEVICE, dtype: torch.dtype = DTYPE) -> dict:
    """Fresh random keyword arguments of ``case`` (on DEVICE in DTYPE unless given; ``meta`` tensors
    have shapes only); float inputs require grad when ``backward``."""
    inputs = {name: torch.randn(shape, device=device, dtype=dtype, requires_grad=backward)
              for name, shape in case.floats.items()}
    if case.indices is not None:
        shape, high = case.indices
        inputs["indices"] = torch.randint(high, shape, device=device)
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
