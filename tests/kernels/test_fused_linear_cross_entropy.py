"""Triton ``fused_linear_cross_entropy`` against ``F.cross_entropy(hidden @ weight.T + bias)`` in float64:
the loss and the gradients of hidden, weight and bias, for every reduction, over several chunks of
rows and several blocks of the vocabulary, with ignored rows, row-slice weights and strided inputs."""
import pytest
import torch
import torch.nn.functional as F
from oracles import cross_entropy_float64, gradients, record_allocations

import dalle_kernels as dk
from dalle_kernels.backend import ENV_VAR
from dalle_kernels.ops.fused_linear_cross_entropy import kernel as flce_kernel
from dalle_kernels.ops.fused_linear_cross_entropy.reference import fused_linear_cross_entropy_reference
from dalle_kernels.testing import assert_close, kernel_dtypes

REDUCTIONS = ("mean", "sum", "none")
# (N, D, V), with Liger's chunk rule alone (see small_chunks): a single row; V = 4500 over two
# blocks of the vocabulary (the second masked), one row per chunk; 150 rows in five chunks of 32,
# the last partial.
CASES = [(1, 7, 33), (37, 24, 4500), (150, 40, 300)]
DEFAULT_MIN_CHUNK_ELEMENTS = flce_kernel.MIN_CHUNK_ELEMENTS


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """No lower bound on the chunk size, so small test shapes span several chunks."""
    monkeypatch.setattr(flce_kernel, "MIN_CHUNK_ELEMENTS", 1)


def inputs(n, d, v, device, dtype=torch.float32, bias=True, ignored=0.2, ignore_index=-100):
    """hidden (n, d), weight (v, d), bias (v,) or None, target (n,) with about ``ignored`` of the rows
    set to ``ignore_index``; unless ``ignored`` is 1, row 0 is kept (a mean over no row is NaN, which
    only test_all_rows_ignored wants)."""
    hidden = torch.randn(n, d, device=device).to(dtype)
    weight = (torch.randn(v, d, device=device) / d**0.5).to(dtype)
    b = torch.randn(v, device=device).to(dtype) if bias else None
    target = torch.randint(v, (n,), device=device)
    drop = torch.rand(n, device=device) < ignored
    drop[:1] &= ignored >= 1
    target[drop] = ignore_index
    return hidden, weight, b, target


def loss_and_grads(fn, hidden, weight, bias, target, grad_out, **options):
    """``fn``'s loss and its gradients wrt fresh leaves of (hidden, weight, bias) for ``grad_out``
    (None for an input that is None)."""
    return gradients(lambda h, w, b: fn(h, w, target, bias=b, **options), (hidden, weight, bias), grad_out)


def upstream(reduction, rows, device):
    """A random upstream gradient: per row (non-contiguous) for ``none``, else a scalar other than 1."""
    if reduction == "none":
        return torch.randn(2, rows, device=device)[1]
    return torch.rand((), device=device) + 0.5


def check(hidden, weight, bias, target, dtype=torch.float32, factor=1.0, **options):
    """Loss and all gradients of dk vs the float64 oracle (same upstream gradient); returns dk's."""
    reduction = options.get("reduction", "mean")
    grad_out = upstream(reduction, hidden.shape[0], hidden.device)
    ours = loss_and_grads(dk.fused_linear_cross_entropy, hidden, weight, bias, target, grad_out, **options)
    expected = loss_and_grads(cross_entropy_float64, hidden, weight, bias, target, grad_out, **options)
    assert ours[0].dtype == hidden.dtype and ours[0].shape == expected[0].shape
    for name, actual, reference in zip(("loss", "dhidden", "dweight", "dbias"), ours, expected):
        if reference is not None:
            assert actual.dtype == hidden.dtype and actual.shape == reference.shape, name
            assert_close(actual, reference, dtype, name, factor)
    return ours


# ---------------------------------------------------------------- values and gradients


def test_cases_span_several_chunks_and_vocabulary_blocks():
    """The shapes above exercise what they claim (guards against a change of the launch settings)."""
    one, two_blocks, many_chunks = (flce_kernel._chunk_rows(n, v, d) for n, d, v in CASES)
    assert one == 1
    assert 1 < 4500 / flce_kernel._launch_settings(4500)["BLOCK_V"] < 2 and two_blocks < 37
    assert 150 // many_chunks >= 4 and 150 % many_chunks != 0


def test_default_chunk_sizes(monkeypatch):
    # gpu preset: 32 x 256 text rows against 16384 + 256 text tokens, 32 x 1024 image rows against
    # 8192 codes, D = 512: 2048 and 4096 rows (64 MiB of bfloat16 logits each); the buffer stays
    # within MAX_CHUNK_ELEMENTS for any vocabulary, and never has more rows than hidden.
    monkeypatch.setattr(flce_kernel, "MIN_CHUNK_ELEMENTS", DEFAULT_MIN_CHUNK_ELEMENTS)
    chunk_rows = flce_kernel._chunk_rows
    assert chunk_rows(8192, 16640, 512) == 2048 and chunk_rows(32768, 8192, 512) == 4096
    assert chunk_rows(10, 8192, 512) == 10 and chunk_rows(1 << 20, 64, 4096) == 1 << 20
    for vocab in (8192, 16640, 10**6, 10**8):
        assert 1 <= chunk_rows(1 << 20, vocab, 512) * vocab <= max(vocab, flce_kernel.MAX_CHUNK_ELEMENTS)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n, d, v", CASES)
def test_matches_float64(device, n, d, v, reduction, bias):
    hidden, weight, b, target = inputs(n, d, v, device, bias=bias)
    check(hidden, weight, b, target, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index_inside_the_vocabulary(device, reduction):
    # ignore_index = 3 is a class index: rows with target 3 are ignored, like torch does.
    hidden, weight, bias, target = inputs(40, 6, 50, device, ignored=0.3, ignore_index=3)
    loss, dhidden, _, _ = check(hidden, weight, bias, target, reduction=reduction, ignore_index=3)
    ignored = target == 3
    assert ignored.any() and torch.all(dhidden[ignored] == 0) and torch.all(dhidden[~ignored].abs().sum(1) > 0)
    if reduction == "none":
        assert torch.all(loss[ignored] == 0) and torch.all(loss[~ignored] > 0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_rows_ignored(device, reduction):
    # As torch: mean is 0 / 0 = NaN, sum is 0, none is all zeros; every gradient is zero.
    hidden, weight, bias, target = inputs(20, 5, 70, device, ignored=1.0)
    grad_out = upstream(reduction, 20, device)
    loss, *grads = loss_and_grads(dk.fused_linear_cross_entropy, hidden, weight, bias, target, grad_out,
                                  reduction=reduction)
    expected = F.cross_entropy(hidden @ weight.T + bias, target, reduction=reduction)
    assert torch.equal(loss.isnan(), expected.isnan()) and torch.equal(loss.nan_to_num(), expected.nan_to_num())
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_large_logits_are_stable(device):
    # Logits of size ~100: exp overflows float32 without the running max.
    hidden, weight, bias, target = inputs(30, 16, 600, device)
    check(30 * hidden, weight, 50 * bias, target, reduction="none")


def test_backward_twice_with_retain_graph(device):
    # The saved gradients must not be scaled in place: a second backward gives the same result.
    hidden, weight, bias, target = inputs(25, 6, 90, device)
    leaves = [t.requires_grad_() for t in (hidden, weight, bias)]
    loss = dk.fused_linear_cross_entropy(hidden, weight, target, bias=bias)
    first = torch.autograd.grad(2 * loss, leaves, retain_graph=True)
    second = torch.autograd.grad(2 * loss, leaves)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("needs", ["hidden", "weight", "bias"])
def test_gradient_of_one_input_only(device, needs, reduction):
    hidden, weight, bias, target = inputs(33, 9, 120, device)
    tensors = dict(hidden=hidden, weight=weight, bias=bias)
    tensors[needs].requires_grad_()
    grad_out = upstream(reduction, 33, device)
    (actual,) = torch.autograd.grad(dk.fused_linear_cross_entropy(**tensors, target=target, reduction=reduction),
                                    tensors[needs], grad_out)
    (expected,) = torch.autograd.grad(cross_entropy_float64(**tensors, target=target, reduction=reduction),
                                      tensors[needs], grad_out.double())
    assert_close(actual, expected, torch.float32, f"d{needs}")


def test_reference_backend(device, monkeypatch):
    # The plain-PyTorch path (what CPU tensors use by default) against the same float64 oracle.
    monkeypatch.setenv(ENV_VAR, "reference")
    hidden, weight, bias, target = inputs(21, 5, 40, device)
    for reduction in REDUCTIONS:
        check(hidden, weight, bias, target, reduction=reduction)


# ---------------------------------------------------------------- weights, layouts, dtypes


@pytest.mark.parametrize("transposed_parent", [False, True])
def test_row_slice_weights_pass_gradients_to_the_parent(device, transposed_parent):
    # The transformer's head: one (V_text + V_image, D) matrix and bias; text rows use W[:V_text],
    # image rows W[V_text:]; loss = CE_text / 8 + 7 CE_image / 8. The parent is also stored
    # transposed, so the slices are non-contiguous.
    v_text, v_image, d = 70, 45, 12
    parent = torch.randn(v_text + v_image, d, device=device)
    if transposed_parent:
        parent = parent.t().contiguous().t()
    parent_bias = torch.randn(v_text + v_image, device=device)
    text, image = torch.randn(19, d, device=device), torch.randn(40, d, device=device)
    text_target = torch.randint(v_text, (19,), device=device)
    image_target = torch.randint(v_image, (40,), device=device)
    text_target[3] = -100

    def head_loss(fn, w, b, h_text, h_image):
        return (fn(h_text, w[:v_text], text_target, bias=b[:v_text]) / 8
                + 7 * fn(h_image, w[v_text:], image_target, bias=b[v_text:]) / 8)

    results = []
    for fn, cast in ((dk.fused_linear_cross_entropy, lambda t: t), (cross_entropy_float64, torch.Tensor.double)):
        leaves = [cast(t).detach().requires_grad_() for t in (parent, parent_bias, text, image)]
        loss = head_loss(fn, *leaves)
        loss.backward()
        results.append((loss, *(leaf.grad for leaf in leaves)))
    assert parent[:v_text].is_contiguous() != transposed_parent
    for name, actual, expected in zip(("loss", "dW", "dbias", "dtext", "dimage"), *results):
        assert_close(actual, expected, torch.float32, name)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_contiguous_inputs(device, reduction):
    # hidden: every other column of a transposed tensor; weight transposed; target every other entry.
    hidden = torch.randn(2 * 10, 31, device=device).t()[:, ::2]
    weight = torch.randn(10, 130, device=device).t()
    bias = torch.randn(130, 2, device=device)[:, 0]
    target = torch.randint(130, (31, 2), device=device)[:, 1]
    assert not any(t.is_contiguous() for t in (hidden, weight, bias, target))
    check(hidden, weight, bias, target, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_16_bit(device, reduction):
    # float16 (and bfloat16 on a GPU): logits and dlogits are rounded to the inputs' dtype, as in
    # the plain path; the float64 oracle starts from the same rounded inputs.
    for dtype in kernel_dtypes(device)[1:]:
        hidden, weight, bias, target = inputs(37, 24, 4500, device, dtype=dtype)
        check(hidden, weight, bias, target, dtype, factor=2.0, reduction=reduction)


def test_autocast(device):
    # Under autocast the float32 inputs are cast to float16 (as F.linear does) and the loss is float32
    # (as F.cross_entropy's is): the same as the plain ops under autocast.
    hidden, weight, bias, target = inputs(30, 16, 200, device)

    def plain(h, w, t, bias):
        return fused_linear_cross_entropy_reference(h, w, t, bias, -100, "mean")

    results = []
    for fn in (dk.fused_linear_cross_entropy, plain):
        leaves = [t.detach().requires_grad_() for t in (hidden, weight, bias)]
        with torch.autocast(torch.device(device).type, dtype=torch.float16):
            loss = fn(leaves[0], leaves[1], target, bias=leaves[2])
        results.append((loss, *torch.autograd.grad(loss, leaves)))
    assert all(t.dtype == torch.float32 for t in results[0])
    for name, actual, expected in zip(("loss", "dhidden", "dweight", "dbias"), *results):
        assert_close(actual, expected, torch.float16, name)


# ---------------------------------------------------------------- special values, memory, errors


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's NaN math
def test_nan_propagates_to_its_row_only(device):
    hidden, weight, bias, target = inputs(20, 6, 50, device, ignored=0.0)
    hidden[4, 2] = float("nan")
    loss = dk.fused_linear_cross_entropy(hidden, weight, target, bias=bias, reduction="none")
    assert torch.isnan(loss[4])
    finite = torch.arange(20, device=device) != 4
    expected = cross_entropy_float64(hidden[finite], weight, target[finite], bias=bias, reduction="none")
    assert_close(loss[finite], expected, torch.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_input(device, reduction):
    hidden, weight, bias, target = inputs(0, 4, 9, device)
    loss, dhidden, dweight, dbias = loss_and_grads(dk.fused_linear_cross_entropy, hidden, weight, bias, target,
                                                   upstream(reduction, 0, device), reduction=reduction)
    expected = F.cross_entropy(hidden @ weight.T + bias, target, reduction=reduction)
    assert loss.shape == expected.shape and torch.equal(loss.isnan(), expected.isnan())
    assert dhidden.shape == (0, 4) and torch.equal(dweight, torch.zeros_like(weight))
    assert torch.equal(dbias, torch.zeros_like(bias))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_never_allocates_the_full_logits(device, monkeypatch, reduction):
    # No allocation (forward or backward) comes near the N x V logits; without gradients wanted, none
    # the size of a gradient either.
    allocated = record_allocations(monkeypatch, flce_kernel)
    n, d, v = 300, 8, 400
    hidden, weight, bias, target = inputs(n, d, v, device)
    with torch.no_grad():
        dk.fused_linear_cross_entropy(hidden, weight, target, bias=bias, reduction=reduction)
    assert sorted(allocated) == [n, flce_kernel._chunk_rows(n, v, d) * v]  # losses, one chunk
    allocated.clear()
    loss_and_grads(dk.fused_linear_cross_entropy, hidden, weight, bias, target, upstream(reduction, n, device),
                   reduction=reduction)
    assert max(allocated) < n * v // 8


def test_out_of_range_target(device, monkeypatch):
    hidden, weight, bias, target = inputs(6, 4, 10, device, ignored=0.0)
    for backend in ("triton", "reference"):
        monkeypatch.setenv(ENV_VAR, backend)
        for bad in (10, -1):
            target[2] = bad
            with pytest.raises(ValueError, match="target"):
                dk.fused_linear_cross_entropy(hidden, weight, target)
        target[2] = 12  # out of range but the ignore_index: fine
        dk.fused_linear_cross_entropy(hidden, weight, target, ignore_index=12)


def test_bad_inputs(device):
    hidden, weight, bias, target = inputs(6, 4, 10, device)
    op = dk.fused_linear_cross_entropy
    bad = [  # (error, argument named, call)
        (ValueError, "hidden", lambda: op(hidden[0], weight, target)),
        (ValueError, "hidden", lambda: op(hidden[None], weight, target)),
        (ValueError, "weight", lambda: op(hidden, weight[0], target)),
        (ValueError, "weight", lambda: op(hidden, weight[:, :3], target)),  # D mismatch
        (ValueError, "weight", lambda: op(hidden[:, :0], weight[:, :0], target)),  # D = 0
        (ValueError, "weight", lambda: op(hidden, weight[:0], target)),  # V = 0
        (ValueError, "target", lambda: op(hidden, weight, target[:5])),
        (ValueError, "target", lambda: op(hidden, weight, target[:, None])),
        (TypeError, "target", lambda: op(hidden, weight, target.int())),
        (TypeError, "target", lambda: op(hidden, weight, target.float())),
        (TypeError, "hidden", lambda: op(hidden.long(), weight, target)),
        (TypeError, "hidden", lambda: op(hidden.tolist(), weight, target)),
        (TypeError, "weight", lambda: op(hidden, weight.double(), target)),
        (TypeError, "weight", lambda: op(hidden, weight.half(), target)),  # dtype mix
        (TypeError, "bias", lambda: op(hidden, weight, target, bias=bias.half())),
        (ValueError, "bias", lambda: op(hidden, weight, target, bias=bias[:9])),
        (ValueError, "bias", lambda: op(hidden, weight, target, bias=bias[None])),
        (ValueError, "weight", lambda: op(hidden, weight.to("meta"), target)),  # device mix
        (ValueError, "target", lambda: op(hidden, weight, target.to("meta"))),
        (ValueError, "bias", lambda: op(hidden, weight, target, bias=bias.to("meta"))),
        (ValueError, "reduction", lambda: op(hidden, weight, target, reduction="avg")),
        (ValueError, "reduction", lambda: op(hidden, weight, target, reduction=None)),
        (TypeError, "ignore_index", lambda: op(hidden, weight, target, ignore_index=1.5)),
        (TypeError, "ignore_index", lambda: op(hidden, weight, target, ignore_index=True)),
    ]
    for error, name, call in bad:
        with pytest.raises(error, match=name):
            call()
