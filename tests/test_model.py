"""The DALL-E transformer: shapes, causality under every mask kind, the text/image head split,
the loss, gradients, the layer schedule, the sparse attention it runs, bad inputs, the 12B count."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import dalle_kernels as dk
from dalle_fast.config import Config, preset
from dalle_fast.model import DALLE, layer_kinds


def tiny(layers: int = 4, attention: str = "sparse", **changes) -> Config:
    """tiny with ``layers`` layers (4: row, column, row, conv, every kind) and a 3x3 conv on a 4x4 grid."""
    config = preset("tiny")
    transformer = dataclasses.replace(config.transformer, layers=layers, attention=attention, **changes)
    return dataclasses.replace(config, transformer=transformer)


def random_tokens(model: DALLE, batch: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    text = torch.randint(0, model.num_text_tokens, (batch, model.text_len), device=device)
    image = torch.randint(0, model.image_vocab, (batch, model.image_seq_len), device=device)
    return text, image


def with_random_biases(model: DALLE) -> DALLE:
    """Zero-initialised biases and LayerNorm affines would hide mistakes in how they are used."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def position_outputs(model: DALLE, text: torch.Tensor, image: torch.Tensor) -> list[torch.Tensor]:
    """The logits of each sequence position 0..S-2 (text ones, then image ones), (B, V) each."""
    text_logits, image_logits = model.logits(text, image)
    return list(text_logits.unbind(1)) + list(image_logits.unbind(1))


def test_shapes_and_loss_terms(device):
    model = DALLE(tiny()).to(device)
    text, image = random_tokens(model, 3, device)
    text_logits, image_logits = model.logits(text, image)
    assert text_logits.shape == (3, model.text_len - 1, model.num_text_tokens)
    assert image_logits.shape == (3, 16, 64)
    out = model(text, image)
    assert all(t.shape == () for t in out)
    assert model.num_text_tokens == 512 + 16


@pytest.mark.parametrize("attention", ["sparse", "full"])
def test_causal_for_every_position(attention, device):
    """Changing the input token at position j changes no output at a position < j, and does
    change the output at j (each position sees itself under every mask kind)."""
    model = with_random_biases(DALLE(tiny(attention=attention))).to(device).eval()
    assert {m.kind for m in model.layer_masks} == ({"row", "column", "conv"} if attention == "sparse" else {"full"})
    text, image = random_tokens(model, 2, device)
    before = position_outputs(model, text, image)
    t, s = model.text_len, model.text_len + model.image_seq_len
    for j in range(1, s - 1):
        text2, image2 = text.clone(), image.clone()
        if j < t:
            step = 1 + torch.randint(0, model.num_text_tokens - 1, (1,)).item()
            text2[:, j] = (text2[:, j] + step) % model.num_text_tokens
        else:
            image2[:, j - t] = (image2[:, j - t] + 1 + torch.randint(0, 63, (1,)).item()) % 64
        after = position_outputs(model, text2, image2)
        for i in range(j):
            torch.testing.assert_close(after[i], before[i], rtol=0, atol=1e-6, msg=f"token {j} changed output {i}")
        assert (after[j] - before[j]).abs().max() > 1e-4, f"token {j} did not change its own output"


def test_text_positions_never_score_image_codes_and_back():
    """The head's text rows serve text positions only, its image rows image positions only:
    pushing the biases of one part moves only that part's logits, by exactly the push."""
    model = DALLE(tiny(layers=2))
    text, image = random_tokens(model, 2)
    text_logits, image_logits = model.logits(text, image)
    push = torch.randn_like(model.head_bias) * 10
    with torch.no_grad():
        model.head_bias.add_(push)
    text_after, image_after = model.logits(text, image)
    n = model.num_text_tokens
    torch.testing.assert_close(text_after, text_logits + push[:n])
    torch.testing.assert_close(image_after, image_logits + push[n:])


def test_loss_is_the_weighted_cross_entropies_of_the_logits(device):
    model = with_random_biases(DALLE(tiny(layers=2))).to(device)
    text, image = random_tokens(model, 3, device)
    out = model(text, image)
    text_logits, image_logits = model.logits(text, image)
    text_ce = F.cross_entropy(text_logits.double().reshape(-1, model.num_text_tokens), text[:, 1:].reshape(-1))
    image_ce = F.cross_entropy(image_logits.double().reshape(-1, 64), image.reshape(-1))
    close = dict(rtol=1e-5, atol=1e-6)  # float32 losses against float64 sums
    torch.testing.assert_close(out.text_loss.double(), text_ce, **close)
    torch.testing.assert_close(out.image_loss.double(), image_ce, **close)
    torch.testing.assert_close(out.loss.double(), text_ce / 8 + image_ce * 7 / 8, **close)


def test_text_len_one_predicts_no_text():
    model = DALLE(tiny(layers=2, text_len=1))
    text, image = random_tokens(model, 2)
    out = model(text, image)
    assert out.text_loss.item() == 0
    torch.testing.assert_close(out.loss, out.image_loss * 7 / 8)


def test_gradients_reach_every_parameter(device):
    model = DALLE(tiny()).to(device)
    text, image = random_tokens(model, 4, device)
    model(text, image).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_layer_schedule():
    assert layer_kinds(9, "sparse") == ["row", "column", "row", "row", "row", "column", "row", "row", "conv"]
    assert layer_kinds(1, "sparse") == ["conv"]
    assert layer_kinds(3, "full") == ["full"] * 3
    model = DALLE(tiny(layers=6, conv_kernel=5))
    assert [m.kind for m in model.layer_masks] == ["row", "column", "row", "row", "row", "conv"]
    assert all((m.text_len, m.image_size, m.conv_kernel) == (16, 4, 5) for m in model.layer_masks)
    assert [m.kind for m in DALLE(tiny(layers=6, attention="full")).layer_masks] == ["full"] * 6


def test_attention_equals_dense_masked_attention(monkeypatch, device):
    """Each layer calls sparse_attention with its own mask, and the model equals the same model
    whose attention is plain float64 softmax attention under ``mask.dense()``."""
    model = with_random_biases(DALLE(tiny(layers=5))).to(device)
    text, image = random_tokens(model, 2, device)
    expected_text, expected_image = model.logits(text, image)
    seen = []

    def dense(q, k, v, mask, scale=None):
        seen.append(mask)
        scores = (q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask.dense().to(q.device), float("-inf"))
        return (torch.softmax(scores, -1) @ v.double()).to(q.dtype)

    monkeypatch.setattr(dk, "sparse_attention", dense)
    text_logits, image_logits = model.logits(text, image)
    assert seen == model.layer_masks
    torch.testing.assert_close(text_logits, expected_text, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(image_logits, expected_image, rtol=1e-4, atol=1e-5)


def test_triton_kernels_match_the_reference(monkeypatch, device):
    """The same model through the Triton kernels (interpreted on a CPU) and the PyTorch reference,
    forward and backward."""
    model = with_random_biases(DALLE(tiny(layers=4))).to(device)
    text, image = random_tokens(model, 2, device)
    results = []
    for backend in ("reference", "triton"):
        monkeypatch.setenv("DALLE_KERNELS_BACKEND", backend)
        assert dk.backend_for(text) == backend
        model.zero_grad()
        loss = model(text, image).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_ref, grads_ref), (loss_tri, grads_tri) = results
    torch.testing.assert_close(loss_tri, loss_ref, rtol=1e-5, atol=1e-5)
    for g_tri, g_ref in zip(grads_tri, grads_ref):
        torch.testing.assert_close(g_tri, g_ref, rtol=1e-3, atol=1e-5)


def loss_and_gradients(model: DALLE, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The three losses (stacked) and every parameter's gradient, by name."""
    model.zero_grad()
    out = model(text, image)
    out.loss.backward()
    return torch.stack(out).detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fused_and_plain_cross_entropy_agree(monkeypatch, device, backend):
    """transformer.cross_entropy "fused" (dk.fused_linear_cross_entropy, called once per head on
    row slices of the tied embeddings) and "plain" (logits + F.cross_entropy) give the same three
    losses and the same gradient for every parameter; "triton" runs the kernel (interpreted on a CPU)."""
    monkeypatch.setenv("DALLE_KERNELS_BACKEND", backend)
    seed = torch.randint(0, 2**31, ()).item()
    models = {}
    for mode in ("fused", "plain"):
        torch.manual_seed(seed)
        models[mode] = with_random_biases(DALLE(tiny(layers=2, cross_entropy=mode))).to(device)
    assert models["fused"].config.transformer.cross_entropy == "fused"
    text, image = random_tokens(models["fused"], 3, device)
    calls = []
    fused_op = dk.fused_linear_cross_entropy

    def spy(hidden, weight, target, **kwargs):
        calls.append((tuple(hidden.shape), weight.data_ptr(), tuple(weight.shape)))
        return fused_op(hidden, weight, target, **kwargs)

    monkeypatch.setattr(dk, "fused_linear_cross_entropy", spy)
    loss_plain, grads_plain = loss_and_gradients(models["plain"], text, image)
    assert calls == []
    loss_fused, grads_fused = loss_and_gradients(models["fused"], text, image)
    model, d = models["fused"], models["fused"].config.transformer.d_model
    assert calls == [((3 * 15, d), model.text_embedding.weight.data_ptr(), (528, d)),
                     ((3 * 16, d), model.image_embedding.weight.data_ptr(), (64, d))]
    torch.testing.assert_close(loss_fused, loss_plain, rtol=1e-5, atol=1e-6)
    assert grads_fused.keys() == grads_plain.keys()
    for name, grad in grads_fused.items():
        torch.testing.assert_close(grad, grads_plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_cross_entropy_setting_round_trips_and_rejects_bad_values(tmp_path):
    """transformer.cross_entropy is saved in config.json and read back; a config.json written
    before the field existed loads as "fused"; other values are refused naming the field."""
    config = tiny(cross_entropy="plain")
    path = config.save(tmp_path / "run")
    assert json.loads(path.read_text())["transformer"]["cross_entropy"] == "plain"
    assert Config.load(path) == config
    assert DALLE(Config.load(path)).config.transformer.cross_entropy == "plain"
    data = config.to_dict()
    del data["transformer"]["cross_entropy"]
    assert Config.from_dict(data).transformer.cross_entropy == "fused"
    data["transformer"]["cross_entropy"] = "chunked"
    with pytest.raises(ValueError, match=r"TransformerConfig\.cross_entropy.*'fused', 'plain'.*'chunked'"):
        Config.from_dict(data)
    with pytest.raises(ValueError, match=r"TransformerConfig\.cross_entropy"):
        tiny(cross_entropy=True)


@pytest.mark.parametrize("text, image, match", [
    (torch.zeros(2, 15, dtype=torch.long), torch.zeros(2, 16, dtype=torch.long), "text: expected shape"),
    (torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long), "image: expected shape"),
    (torch.full((2, 16), 528), torch.zeros(2, 16, dtype=torch.long), "text: ids must lie in"),
    (torch.full((2, 16), -1), torch.zeros(2, 16, dtype=torch.long), "text: ids must lie in"),
    (torch.zeros(2, 16, dtype=torch.long), torch.full((2, 16), 64), "image: ids must lie in"),
    (torch.zeros(2, 16, dtype=torch.long), torch.zeros(3, 16, dtype=torch.long), "image: batch of 3"),
])
def test_bad_inputs_raise_value_error(text, image, match):
    model = DALLE(tiny(layers=1))
    with pytest.raises(ValueError, match=match):
        model(text, image)
    with pytest.raises(ValueError, match=match):
        model.logits(text, image)


def test_bad_dtypes_and_config_raise_type_error():
    model = DALLE(tiny(layers=1))
    with pytest.raises(TypeError, match="text: expected an integer tensor"):
        model(torch.zeros(2, 16), torch.zeros(2, 16, dtype=torch.long))
    with pytest.raises(TypeError, match="image: expected an integer tensor"):
        model(torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.bool))
    with pytest.raises(TypeError, match="config"):
        DALLE(preset("tiny").transformer)


def test_paper_preset_has_12_billion_parameters():
    with torch.device("meta"):
        model = DALLE(preset("paper"))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 12e9) <= 0.02 * 12e9, f"{count / 1e9:.3f}B parameters"


def test_residual_projections_start_smaller():
    """GPT-2 init: std 0.02 for weights, 0.02 / sqrt(2 * layers) for residual projections, biases 0."""
    model = DALLE(dataclasses.replace(preset("demo"), transformer=dataclasses.replace(
        preset("demo").transformer, layers=8, heads=8, head_dim=64)))
    block = model.blocks[3]
    assert abs(block.qkv.weight.std().item() - 0.02) < 0.002
    for linear in (block.proj, block.mlp[2]):
        assert abs(linear.weight.std().item() - 0.02 / 4) < 0.0005
    assert block.qkv.bias.abs().max() == 0 and model.head_bias.abs().max() == 0


def test_image_logits_are_the_image_half_of_logits():
    model = with_random_biases(DALLE(tiny(layers=2)))
    text, image = random_tokens(model, 2)
    torch.testing.assert_close(model.image_logits(text, image), model.logits(text, image)[1])
    with pytest.raises(ValueError, match="image: ids must lie in"):
        model.image_logits(text, image + 64)
