"""``python -m dalle_fast.plan``: the memory plan of the dalle stage.

- the weights, gradients and optimizer states against a hand count of a tiny transformer;
- the activations measured on ``meta`` against a real forward: the bytes autograd saves (per block,
  counted by an independent hook) and the bytes still alive after the forward and at the peak of
  the backward (every storage any op makes, tracked by a dispatch mode), with the real Triton
  kernels (interpreted on a CPU) and with ``torch.utils.checkpoint`` around the blocks;
- the autocast emulation against ``torch.autocast`` itself (on the CPU, kernel launches replaced,
  float32 and bf16 weights), its cast cache included; and that the model calls no op of CUDA
  autocast's lists that the emulation does not handle;
- FSDP's states shrinking with the GPUs, ``fits`` flipping at the total, the accumulation that fits,
  the 12B ``paper`` numbers, the command's table and its usage errors (exit 2 naming the flag).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint

from dalle_fast.config import Config, preset
from dalle_fast.dvae import DiscreteVAE
from dalle_fast.model import DALLE, Block
from dalle_fast.plan import cli, memory
from dalle_fast.plan.memory import GIB, build_on_meta, plan_memory, shard_size
from dalle_fast.plan.saved import AutocastPolicy, launches_skipped, measure_activations
from dalle_kernels.backend import ENV_VAR


def tiny(layers: int = 3, **changes: Any) -> Config:
    """tiny with ``layers`` blocks (row, column, conv), no dropout."""
    config = preset("tiny")
    transformer = dataclasses.replace(config.transformer, layers=layers, dropout=0.0, **changes)
    return dataclasses.replace(config, transformer=transformer)


def tokens(model: DALLE, batch: int, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randint(0, model.num_text_tokens, (batch, model.text_len), device=device),
            torch.randint(0, model.image_vocab, (batch, model.image_seq_len), device=device))


def hand_count(config: Config) -> int:
    """The transformer's parameters counted from the config by hand (docs/design.md#transformer)."""
    t, d = config.transformer, config.transformer.d_model
    text_ids = t.text_vocab + t.text_len
    embeddings = text_ids * d + config.image_vocab * d + t.text_len * d + 2 * config.grid_size * d
    hidden = t.mlp_ratio * d
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    return embeddings + t.layers * block + 2 * d + text_ids + config.image_vocab


# ---------------------------------------------------------------- states


def test_states_against_a_hand_count():
    config = tiny()
    d, blocks = config.transformer.d_model, config.transformer.layers
    parameters = hand_count(config)
    block = 12 * d * d + 13 * d  # (2+2) LN + (3d^2+3d) qkv + (d^2+d) proj + (4d^2+4d) + (4d^2+d) MLP
    vae = sum(p.numel() for p in DiscreteVAE(config).parameters())
    one = plan_memory(config, 1, 80)
    assert (one.parameters, one.largest_block, one.root) == (parameters, block, parameters - blocks * block)
    alone = one.row("single", False)
    assert (alone.params, alone.grads, alone.optimizer) == (4 * parameters + 4 * vae, 4 * parameters, 8 * parameters)

    two = plan_memory(config, 2, 80)  # every first dimension of tiny is even: the shard is exactly half
    ddp, fsdp = two.row("ddp", False), two.row("fsdp", True)
    assert (ddp.params, ddp.grads, ddp.optimizer) == (4 * parameters + 4 * vae, 8 * parameters, 8 * parameters)
    root = parameters - blocks * block
    assert fsdp.params == 4 * parameters // 2 + 2 * root + 2 * 2 * block + 4 * vae
    assert fsdp.grads == 4 * parameters // 2 + 2 * root + (2 + 4) * block
    assert fsdp.optimizer == 8 * parameters // 2
    assert two.row("ddp", True).params == ddp.params and two.row("fsdp", False).grads == fsdp.grads


def test_shards_are_padded_per_parameter():
    layer = torch.nn.Linear(5, 3)  # weight (3, 5), bias (3,): 2 rows of each on each of 2 ranks
    assert shard_size(layer, 2) == 2 * 5 + 2
    assert shard_size(layer, 1) == 18 and shard_size(layer, 4) == 5 + 1


def test_fsdp_states_shrink_with_the_gpus_and_ddp_states_do_not():
    config = tiny()
    plans = [plan_memory(config, gpus, 80) for gpus in (2, 4, 8)]
    states = [[sum(plan.row(kind, False)[2:5]) for plan in plans] for kind in ("ddp", "fsdp")]
    assert states[0][0] == states[0][1] == states[0][2]
    assert states[1][0] > states[1][1] > states[1][2]
    assert [plan.micro_batch for plan in plans] == [16, 8, 4]  # and the micro-batch with them
    activations = [plan.row("fsdp", False).activations for plan in plans]
    assert activations[0] > activations[1] > activations[2]


# ---------------------------------------------------------------- activations against a real forward


class LiveStorages(TorchDispatchMode):
    """Tracks every storage an op makes (not those of ``excluded`` tensors): bytes alive now and at the peak."""

    def __init__(self, excluded: list[torch.Tensor]) -> None:
        super().__init__()
        self.sizes: dict[StorageWeakRef, int] = {}
        self.excluded = {StorageWeakRef(t.untyped_storage()) for t in excluded}
        self.peak = 0

    def alive(self) -> int:
        for ref in [ref for ref in self.sizes if ref.expired()]:
            del self.sizes[ref]
        return sum(self.sizes.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                ref = StorageWeakRef(tensor.untyped_storage())
                if ref not in self.excluded and ref not in self.sizes:
                    self.sizes[ref] = tensor.untyped_storage().nbytes()
        self.peak = max(self.peak, self.alive())
        return out


def saved_per_block(model: DALLE, run: Any) -> tuple[list[int], int, Any]:
    """Bytes of the storages autograd saves while ``run()`` runs (each once, parameters not), per
    block of ``model`` and outside them; and what ``run`` returned."""
    seen = {StorageWeakRef(p.untyped_storage()) for p in model.parameters()}
    blocks, outside, where = [0] * len(model.blocks), [0], [None]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        ref = StorageWeakRef(tensor.untyped_storage())
        if ref not in seen:
            seen.add(ref)
            if where[0] is None:
                outside[0] += tensor.untyped_storage().nbytes()
            else:
                blocks[where[0]] += tensor.untyped_storage().nbytes()
        return tensor

    handles = []
    for i, block in enumerate(model.blocks):
        handles.append(block.register_forward_pre_hook(lambda module, args, i=i: where.__setitem__(0, i)))
        handles.append(block.register_forward_hook(lambda module, args, out: where.__setitem__(0, None)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            result = run()
    finally:
        for handle in handles:
            handle.remove()
    return blocks, outside[0], result


@pytest.fixture
def triton_backend(monkeypatch):
    """The kernels' Triton path (their autograd Functions): native on a GPU, interpreted on a CPU."""
    monkeypatch.setenv(ENV_VAR, "triton")


@pytest.fixture
def checkpointed_blocks(monkeypatch):
    """A function that makes every ``Block`` forward a non-reentrant ``torch.utils.checkpoint``."""
    forward = Block.forward

    def switch_on() -> None:
        monkeypatch.setattr(Block, "forward", lambda self, x, mask: checkpoint(forward, self, x, mask,
                                                                                use_reentrant=False))
    return switch_on


def test_activations_match_a_real_float32_forward_and_backward(triton_backend, checkpointed_blocks, device):
    """fp32: the meta profile equals what the real forward saves, block by block; it is what the
    forward leaves alive; with checkpointing the forward leaves the blocks' inputs and what is
    outside; and the backward's real peak stays under the plan's gradients + activations, close to it."""
    config, batch = tiny(), 4
    model = DALLE(config).to(device)
    text, image = tokens(model, batch, device)
    model(text, image).loss.backward()  # warm up: the masks' block layouts are built once, then cached
    model.zero_grad(set_to_none=True)
    meta, _ = build_on_meta(config)
    profile = measure_activations(meta, batch, torch.float32)
    gradients = 4 * sum(p.numel() for p in model.parameters())
    rows = batch * model.image_seq_len
    interpreter_slack = 0 if device == "cuda" else 4 * rows * (model.image_vocab + 1)

    blocks, outside, _ = saved_per_block(model, lambda: model(text, image))
    elements = batch * config.seq_len * config.transformer.d_model
    assert profile.inputs_saved == sum(profile.inputs) == len(blocks) * elements * 4
    assert blocks == [b + i for b, i in zip(profile.blocks, profile.inputs)]
    assert outside == profile.outside and profile.copies == (0,) * len(blocks)

    excluded = list(model.parameters())
    for checkpointing, planned in ((False, profile.total), (True, profile.checkpointed)):
        if checkpointing:
            checkpointed_blocks()
            assert profile.checkpointed < profile.total
        live = LiveStorages(excluded)
        with live:
            out = model(text.clone(), image.clone())  # the ids are saved too: made where they are tracked
            left = live.alive()
            out.loss.backward()
            del out
        model.zero_grad(set_to_none=True)
        held = sum(profile.inputs) + profile.outside if checkpointing else profile.total
        # beyond what autograd saves: the losses and a few scalars, and where Triton's interpreter
        # runs the kernels, the arguments of the last launch (the image loss's logits chunk and losses)
        assert held <= left <= held + interpreter_slack + 1024
        assert 0.75 * (gradients + planned) <= live.peak <= gradients + planned


def real_autocast_forward(model: DALLE, text: torch.Tensor, image: torch.Tensor, live: LiveStorages | None = None
                          ) -> tuple[list[int], int, int, int]:
    """A CPU bf16 ``torch.autocast`` forward with the kernels' launches skipped (their dispatchers,
    autograd Functions and Python wrappers run): saved bytes per block and outside, and
    the bytes ``live`` sees alive at the end of the forward, inside autocast and after it."""
    with launches_skipped():
        text, image = text.clone(), image.clone()  # the ids are saved too: made where ``live`` tracks them
        with torch.autocast("cpu", dtype=torch.bfloat16):
            blocks, outside, out = saved_per_block(model, lambda: model(text, image))
            inside = live.alive() if live else 0
        after = live.alive() if live else 0
    del out
    return blocks, outside, inside, after


class CPUAutocastPolicy(AutocastPolicy):
    """CPU autocast runs ``layer_norm`` in its input's dtype (CUDA's runs it in float32)."""

    FLOAT32 = ()


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16])
def test_the_autocast_emulation_saves_what_torch_autocast_saves(weights, triton_backend, checkpointed_blocks):
    """The emulation on meta against ``torch.autocast("cpu", bf16)`` on real tensors: the same
    bytes saved per block and outside, with float32 weights (DDP: autocast's bf16 copies) and bf16
    ones (FSDP's gathered weights; CPU autocast keeps layer_norm in bf16 there, so it is compared with
    a policy that does too; with float32 weights the residual stream is float32 and the two agree);
    and with checkpointing the weight copies autocast's cache holds at the end of the forward."""
    config, batch = tiny(), 3
    model = DALLE(config).to(weights)
    text, image = tokens(model, batch, "cpu")
    meta, _ = build_on_meta(config)
    policy = AutocastPolicy if weights == torch.float32 else CPUAutocastPolicy
    profile = measure_activations(meta.to(weights), batch, torch.bfloat16, autocast=policy)

    excluded = list(model.parameters())
    live = LiveStorages(excluded)
    with live:
        blocks, outside, inside, after = real_autocast_forward(model, text, image, live)
    assert profile.inputs_saved == sum(profile.inputs)  # each block's first LayerNorm saves its input
    # a bf16 layer_norm keeps its mean and rstd in bf16 on the CPU, in float32 on meta (and CUDA)
    stats = 2 * batch * config.seq_len * 2 if weights == torch.bfloat16 else 0  # per LayerNorm
    assert blocks == [b + i - 2 * stats for b, i in zip(profile.blocks, profile.inputs)]
    assert outside == profile.outside - stats
    # alive at the end of the forward: all that, and the cached copies no op saved until autocast exits
    total = profile.total - (2 * len(blocks) + 1) * stats
    assert total <= inside <= total + 1024
    assert inside - after == profile.unsaved_copies

    if weights == torch.bfloat16:  # under CUDA's policy the two LayerNorms save float32 copies of their bf16
        cuda = measure_activations(meta, batch, torch.bfloat16)  # inputs (2 x 4 bytes, not 2 + 2) and weights
        layer_norm_weights = 2 * 2 * config.transformer.d_model * 4
        assert cuda.inputs_saved == 0
        assert cuda.blocks[0] == profile.blocks[0] + 3 * profile.inputs[0] + layer_norm_weights

    checkpointed_blocks()
    live = LiveStorages(excluded)
    with live:
        _, _, inside, after = real_autocast_forward(model, text, image, live)
    assert inside - after == sum(profile.copies)  # the cache, emptied when autocast exits
    if weights == torch.float32:
        linear_weights = sum(p.numel() for b in model.blocks for n, p in b.named_parameters() if "norm" not in n)
        assert sum(profile.copies) == 2 * linear_weights > 0
        assert 0 < profile.unsaved_copies < sum(profile.copies) / 10  # the biases'
    else:
        assert sum(profile.copies) == profile.unsaved_copies == 0
    held = sum(profile.inputs) + profile.outside - stats
    assert held <= after <= held + 1024


# CUDA autocast's op lists (torch.amp docs): the ones cast to the lower precision, the ones run in float32
CUDA_LOWER = {"__matmul__", "addbmm", "addmm", "addmv", "addr", "baddbmm", "bmm", "chain_matmul", "multi_dot",
              "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear",
              "matmul", "mm", "mv", "prelu", "scaled_dot_product_attention"}
CUDA_FLOAT32 = {"__pow__", "__rdiv__", "__rpow__", "__rtruediv__", "acos", "asin", "binary_cross_entropy_with_logits",
                "cosh", "cosine_embedding_loss", "cdist", "cosine_similarity", "cross_entropy", "cumprod", "cumsum",
                "dist", "erfinv", "exp", "expm1", "group_norm", "hinge_embedding_loss", "kl_div", "l1_loss",
                "layer_norm", "log", "log_softmax", "log10", "log1p", "log2", "margin_ranking_loss", "mse_loss",
                "multilabel_margin_loss", "multi_margin_loss", "nll_loss", "norm", "normalize", "pdist",
                "poisson_nll_loss", "pow", "prod", "reciprocal", "rsqrt", "sinh", "smooth_l1_loss",
                "soft_margin_loss", "softmax", "softmin", "softplus", "sum", "renorm", "tan", "triplet_margin_loss"}


def _calling_module() -> str:
    """The module of the innermost caller outside torch (of a ``__torch_function__``)."""
    frame = sys._getframe(2)
    while frame is not None and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
        frame = frame.f_back
    return "" if frame is None else frame.f_globals.get("__name__", "")


def test_the_model_calls_no_autocast_op_the_emulation_leaves_out():
    """Every op of the training forward that CUDA autocast casts is one the policy casts the same
    way; a model change that calls another (a matmul, a softmax) must extend the policy. (Inside
    the kernels' wrappers autocast changes nothing: the loss casts its inputs to bf16 first, and the
    float32-list ops there, sums of the float32 losses, get float32 inputs.)"""
    called: set[str] = set()

    class Recording(AutocastPolicy):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            if not _calling_module().startswith("dalle_kernels"):
                called.add(getattr(func, "__name__", str(func)))
            return super().__torch_function__(func, types, args, kwargs)

    model, _ = build_on_meta(tiny())
    measure_activations(model, 2, autocast=Recording)
    assert {"linear", "layer_norm", "embedding", "gelu", "cat"} <= called
    handled = {f.__name__ for f in (*AutocastPolicy.LOWER, *AutocastPolicy.FLOAT32)}
    assert called & (CUDA_LOWER | CUDA_FLOAT32) == handled == {"linear", "layer_norm"}


def test_the_profile_is_affine_in_the_micro_batch():
    model, _ = build_on_meta(tiny())
    one, two, five = (measure_activations(model, b) for b in (1, 2, 5))
    for a, b, c in zip(one, two, five):
        a, b, c = (x if isinstance(x, tuple) else (x,) for x in (a, b, c))
        assert [z - x for x, z in zip(a, c)] == [4 * (y - x) for x, y in zip(a, b)]
    assert memory._interpolate(one, five, 5, 2) == two


# ---------------------------------------------------------------- fits


def test_fits_flips_at_the_total_and_the_accumulation_that_fits():
    config = tiny()
    plan = plan_memory(config, 2, 80)
    row = plan.row("fsdp", False)
    exact = row.total / GIB
    assert plan_memory(config, 2, exact).row("fsdp", False).fits
    assert not plan_memory(config, 2, exact * (1 - 1e-6)).row("fsdp", False).fits
    assert plan_memory(config, 2, exact).row("ddp", False).fits == (plan.row("ddp", False).total <= row.total)

    halved = plan_memory(config, 2, 80, accumulation=2).row("fsdp", False)  # micro-batch 8 instead of 16
    assert halved.activations < row.activations and halved[2:5] == row[2:5]
    between = plan_memory(config, 2, (halved.total + row.total) / 2 / GIB)
    assert between.row("fsdp", False).accumulation_to_fit == 2 and not between.row("fsdp", False).fits
    assert plan_memory(config, 2, exact).row("fsdp", False).accumulation_to_fit == 1
    assert plan_memory(config, 2, 1e-9).row("fsdp", True).accumulation_to_fit is None


# ---------------------------------------------------------------- the paper preset and the command


@pytest.fixture(scope="module")
def paper_plan() -> memory.MemoryPlan:
    return plan_memory(preset("paper"), 64, 80)


def test_the_paper_plan(paper_plan):
    plan, p = paper_plan, paper_plan.parameters
    assert abs(p - 12e9) / 12e9 < 0.02 and plan.micro_batch == 1024 // 64
    ddp = plan.row("ddp", False)
    assert ddp.params - 4 * plan.vae_parameters + ddp.grads / 2 + ddp.optimizer == 16 * p  # ~195 GB
    assert abs(16 * p / 1e9 - 195) < 1
    fsdp = plan.row("fsdp", True)
    sharded = 16 * shard_size(build_on_meta(preset("paper"))[0], 64)
    assert 0 < sharded - 16 * p / 64 < 1e-4 * sharded and 2.9e9 < sharded < 3.1e9  # ~3 GB of states per GPU
    gathered = 2 * plan.root + 2 * 2 * plan.largest_block + 2 * plan.root + 6 * plan.largest_block  # < 2.5 GB
    assert fsdp.params + fsdp.grads + fsdp.optimizer - 4 * plan.vae_parameters == sharded + gathered < 5.5e9
    assert fsdp.fits and not plan.row("fsdp", False).fits and not ddp.fits and not plan.row("ddp", True).fits
    # bytes a block of 16 x 1280 positions x 3968 channels saves per element: DDP, its float32 input
    # (4) and 34: the bf16 inputs of qkv (2), proj (2), fc1 (2) and fc2 (8), q k v (6), attention's
    # output (2), the float32 input of the second LayerNorm (4), GELU's input (8); FSDP, a bf16 input
    # and 38: both LayerNorms save float32 copies of their bf16 inputs (4 + 4 instead of 4)
    elements = 16 * 1280 * 3968
    ddp_profile, fsdp_profile = plan.profiles["ddp"], plan.profiles["fsdp"]
    assert ddp_profile.inputs[0] == 4 * elements and fsdp_profile.inputs[0] == 2 * elements
    assert 34 * elements < ddp_profile.blocks[0] - ddp_profile.copies[0] < 34.1 * elements
    assert 38 * elements < fsdp_profile.blocks[0] < 38.1 * elements and fsdp_profile.inputs_saved == 0
    assert ddp_profile.copies[0] == 2 * plan.largest_block - 2 * 4 * 3968  # bf16 copies of all but the LayerNorms
    assert fsdp_profile.copies[0] == 0
    # DDP with checkpointing: the blocks' inputs, what is outside, and autocast's cache of every bf16 weight copy
    assert plan.row("ddp", True).activations == sum(ddp_profile.inputs) + ddp_profile.outside + sum(ddp_profile.copies)
    assert sum(ddp_profile.copies) > 20 * GIB


def test_the_paper_table(paper_plan):
    table = memory.markdown(paper_plan)
    assert "12,195,315,712 transformer parameters" in table
    assert "micro-batch 16 x accumulation 1 x 64 GPU(s)" in table
    rows = [line for line in table.splitlines() if line.startswith("| DDP") or line.startswith("| FSDP")]
    assert len(rows) == 4 and rows[3].startswith("| FSDP | on |") and "| yes |" in rows[3]


def test_the_command_prints_the_table(capsys):
    assert cli.main(["--preset", "tiny", "--gpus", "2", "--gpu-memory", "1"]) == 0
    out = capsys.readouterr().out
    assert "preset `tiny`" in out and "| DDP | off |" in out and "| FSDP | on |" in out and "fits in 1 GiB" in out
    assert cli.main(["--preset", "tiny"]) == 0
    assert "| one process | on |" in capsys.readouterr().out


def test_the_command_reads_a_run_config(tmp_path, capsys):
    tiny().save(tmp_path)
    assert cli.main(["--config", str(tmp_path), "--gpus", "4"]) == 0
    assert "micro-batch 8 x accumulation 1 x 4 GPU(s)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, flag", [
    (["--gpus", "0"], "--gpus"),
    (["--gpus", "two"], "--gpus"),
    (["--preset", "tiny", "--gpus", "3"], "--gpus 3"),  # 32 samples do not split over 3 GPUs
    (["--preset", "tiny", "--gpus", "4", "--accumulation", "16"], "--accumulation 16"),
    (["--gpu-memory", "-1"], "--gpu-memory"),
    (["--gpu-memory", "nan"], "--gpu-memory"),
    (["--gpu-memory", "inf"], "--gpu-memory"),
    (["--accumulation", "0"], "--accumulation"),
    (["--preset", "huge"], "--preset"),
    (["--config", "/nonexistent/run"], "--config"),
    (["--preset", "tiny", "--config", "x"], "--config"),
    (["--steps", "3"], "--steps"),
])
def test_bad_flags_exit_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert flag in capsys.readouterr().err.splitlines()[-1]


def test_bad_arguments_of_the_function_name_them():
    with pytest.raises(ValueError, match="gpus"):
        plan_memory(tiny(), 0, 80)
    with pytest.raises(ValueError, match="gpu_memory"):
        plan_memory(tiny(), 1, math.nan)
    with pytest.raises(ValueError, match="batch_size"):
        plan_memory(tiny(), 5, 80)


def test_the_autocast_policy_casts_as_cuda_autocast():
    weight = torch.nn.Parameter(torch.randn(4, 3))
    x = torch.randn(2, 3)
    with AutocastPolicy(torch.bfloat16) as policy:
        first, second = F.linear(x, weight), F.linear(x, weight)
        assert first.dtype == second.dtype == torch.bfloat16 and len(policy.cache) == 1  # one cached copy
        assert F.layer_norm(first, (4,)).dtype == torch.float32 and F.gelu(first).dtype == torch.bfloat16
    assert not policy.cache
