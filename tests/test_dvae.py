"""The discrete VAE: shapes, the codebook view, the relaxed forward against a hand composition,
the objective's pieces against float64 formulas, encode/decode, and argument checks."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dalle_fast.config import preset
from dalle_fast.dvae import DiscreteVAE
from dalle_fast.dvae_loss import (
    gaussian_nll,
    kl_to_uniform,
    logit_laplace_nll,
    map_pixels,
    marginal_kl_to_uniform,
    unmap_pixels,
)
from dalle_fast.dvae_nets import ResidualBlock

EPS = 0.1  # logit_laplace_eps of every preset
ZERO_GUMBEL = math.exp(-1)  # uniform noise u with -log(-log(u)) = 0


@pytest.fixture(scope="module")
def tiny() -> DiscreteVAE:
    return DiscreteVAE(preset("tiny"))


def images(model: DiscreteVAE, batch: int = 2) -> torch.Tensor:
    side = model.config.vae.image_size
    return torch.rand(batch, 3, side, side)


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_shapes_of_encode_decode_and_forward(name):
    config = preset(name)
    model = DiscreteVAE(config)
    k, g, side = config.vae.codebook_size, config.vae.grid_size, config.vae.image_size
    x = images(model, 3)
    tokens = model.encode(x)
    assert tokens.shape == (3, g, g) and tokens.dtype == torch.int64
    assert 0 <= tokens.min() and tokens.max() < k
    assert model.decode(tokens).shape == (3, 3, side, side)
    out = model(x, tau=0.5, kl_weight=0.3)
    assert out.logits.shape == (3, k, g, g)
    assert out.reconstruction.shape == (3, 3, side, side)
    assert out.loss.shape == out.recon_loss.shape == out.kl.shape == ()
    torch.testing.assert_close(out.loss, out.recon_loss + 0.3 * model.latents_per_pixel * out.kl
                               + config.vae.usage_weight * out.marginal_kl)
    assert model.latents_per_pixel == g * g / (3 * side * side)
    assert model.codebook.shape == (k, config.vae.codebook_dim)


def test_network_structure_follows_the_config():
    vae = preset("demo").vae
    model = DiscreteVAE(preset("demo"))

    def block_widths(net):
        return [block.res_path[-1].out_channels for block in net.modules() if isinstance(block, ResidualBlock)]

    widths = [vae.hidden * 2**g for g in range(vae.num_groups) for _ in range(vae.blocks_per_group)]
    assert block_widths(model.encoder) == widths
    assert block_widths(model.decoder) == widths[::-1]
    n_blocks = vae.num_groups * vae.blocks_per_group
    assert all(block.post_gain == 1 / n_blocks**2 for block in model.modules() if isinstance(block, ResidualBlock))
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.encoder.modules()) == vae.num_groups - 1
    assert sum(isinstance(m, torch.nn.Upsample) for m in model.decoder.modules()) == vae.num_groups - 1
    # Released-model init: weights N(0, 1/fan_in), biases zero. The encoder's last conv has
    # 8 * hidden * codebook_size weights, enough for a tight estimate of the std.
    last, stem = model.encoder.net[-1], model.encoder.net[0]  # 1x1 from 8 * hidden; 7x7 from RGB
    assert last.weight.std().item() == pytest.approx(1 / math.sqrt(8 * vae.hidden), rel=0.05)
    assert stem.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 7 * 7), rel=0.05)
    assert all(conv.bias.abs().max() == 0 for conv in model.modules() if isinstance(conv, torch.nn.Conv2d))


def test_reconstruction_is_in_unit_range_and_reaches_both_ends(tiny):
    x = images(tiny)
    out_conv = tiny.decoder.net[-1]
    with torch.no_grad():
        saved = out_conv.bias.clone()
        out_conv.bias[:3] = torch.tensor([60.0, -60.0, 0.0])  # mu of R, G saturates the sigmoid
        try:
            reconstruction = tiny(x, tau=1.0, kl_weight=0.0).reconstruction
            decoded = tiny.decode(tiny.encode(x))
        finally:
            out_conv.bias.copy_(saved)
    for image in (reconstruction, decoded):
        assert image.min() >= 0 and image.max() <= 1
        assert (image[:, 0] == 1).all() and (image[:, 1] == 0).all()


def test_codebook_is_a_view_of_the_first_decoder_conv(tiny):
    weight = tiny.decoder.codebook_conv.weight  # (D, K, 1, 1)
    codebook = tiny.codebook
    assert codebook.shape == (weight.shape[1], weight.shape[0])
    assert torch.equal(codebook, weight[:, :, 0, 0].t())
    assert codebook.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
    with torch.no_grad():
        saved = weight.clone()
        weight[5, 3, 0, 0] = 7.0
        assert tiny.codebook[3, 5] == 7.0
        tiny.codebook[2, 4] = -9.0
        assert weight[4, 2, 0, 0] == -9.0
        weight.copy_(saved)


@pytest.fixture(params=["logit_laplace", "gaussian"])
def tiny_with_biases(request) -> DiscreteVAE:
    """A tiny model whose biases are random (they start at zero), so that a bias left out shows,
    with a codebook usage term in its loss; one per reconstruction likelihood."""
    config = preset("tiny")
    vae = dataclasses.replace(config.vae, usage_weight=0.5, reconstruction=request.param, gaussian_sigma=0.3)
    model = DiscreteVAE(dataclasses.replace(config, vae=vae))
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.bias.normal_(std=0.1)
    return model


@pytest.mark.parametrize("hard", [False, True])
def test_forward_equals_a_hand_composition(tiny_with_biases, hard):
    """Soft (or straight-through) Gumbel one-hot through the released decoder's first 1x1 conv,
    then the rest of the decoder; the loss from the float64 formulas."""
    tiny = tiny_with_biases
    x = images(tiny, 3)
    k, g = tiny.config.vae.codebook_size, tiny.config.vae.grid_size
    noise = torch.rand(3, k, g, g).clamp_(min=1e-6)
    tau, kl_weight = 0.7, 0.25
    out = tiny(x, tau, kl_weight, hard, noise=noise)

    logits = tiny.encoder(map_pixels(x, EPS))
    torch.testing.assert_close(out.logits, logits)
    y = torch.softmax((logits.double() - torch.log(-torch.log(noise.double()))) / tau, dim=1)
    if hard:
        y = F.one_hot(y.argmax(1), k).permute(0, 3, 1, 2).double()
    stats = tiny.decoder.net(tiny.decoder.codebook_conv(y.float())).double()
    mu, log_b = stats[:, :3], stats[:, 3:]
    target = (1 - 2 * EPS) * x.double() + EPS
    if tiny.config.vae.reconstruction == "gaussian":  # sigma 0.3, the constant left out
        recon = ((torch.sigmoid(mu) - target) ** 2 / (2 * 0.3**2)).mean()
    else:
        b = log_b.exp()
        density = torch.exp(-(torch.log(target / (1 - target)) - mu).abs() / b) / (2 * b * target * (1 - target))
        recon = -density.log().mean()
    q = torch.softmax(logits.double(), dim=1)
    kl = (q * torch.log(q * k)).sum(1).mean()
    torch.testing.assert_close(out.recon_loss.double(), recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.kl.double(), kl, rtol=1e-5, atol=1e-6)
    elbo_kl = kl * g * g / (3 * x.shape[2] * x.shape[3])  # the KL summed over latents, per pixel-channel
    mean = q.mean((0, 2, 3))
    marginal_kl = (mean * torch.log(mean * k)).sum()
    torch.testing.assert_close(out.marginal_kl.double(), marginal_kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), recon + kl_weight * elbo_kl + 0.5 * marginal_kl, rtol=1e-5, atol=1e-5)
    expected = ((torch.sigmoid(mu) - EPS) / (1 - 2 * EPS)).clamp(0, 1)
    torch.testing.assert_close(out.reconstruction.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hard", [False, True])
def test_gradients_reach_encoder_decoder_and_codebook(hard):
    model = DiscreteVAE(preset("tiny"))
    model(images(model, 4), tau=0.8, kl_weight=0.5, hard=hard).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert model.decoder.codebook_conv.weight.grad.abs().sum() > 0


def test_decoder_forward_trains_the_decoder_alone_on_the_argmax_tokens(tiny_with_biases):
    """Fine-tuning the decoder: it decodes exactly what ``decode(encode(x))`` does, its loss is
    the reconstruction term, and no gradient reaches the encoder."""
    model = tiny_with_biases
    x = images(model, 4)
    out = model.decoder_forward(x)
    torch.testing.assert_close(out.reconstruction, model.decode(model.encode(x)), rtol=1e-5, atol=1e-5)
    stats = model.decoder(model.codebook[model.encode(x)].permute(0, 3, 1, 2))  # (B, 6, H, W)
    target, vae = map_pixels(x, EPS), model.config.vae
    if vae.reconstruction == "gaussian":
        nll = gaussian_nll(stats, target, vae.gaussian_sigma)
    else:
        nll = logit_laplace_nll(stats, target)
    torch.testing.assert_close(out.loss, nll.mean())
    assert torch.equal(out.loss, out.recon_loss)
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert model.decoder.codebook_conv.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_kl_is_zero_for_uniform_logits_and_log_k_for_one_hot(tiny):
    k = tiny.config.vae.codebook_size
    out_conv = tiny.encoder.net[-1]  # the 1x1 conv to the logits
    with torch.no_grad():
        saved = out_conv.weight.clone(), out_conv.bias.clone()
        out_conv.weight.zero_()  # logits = bias at every position, whatever the image
        try:
            out = tiny(images(tiny), 1.0, 1.0)
            assert out.kl.item() == pytest.approx(0.0, abs=1e-6)
            assert out.marginal_kl.item() == pytest.approx(0.0, abs=1e-6)
            out_conv.bias[7] = 1e4
            out = tiny(images(tiny), 1.0, 1.0)
            assert out.kl.item() == pytest.approx(math.log(k), rel=1e-6)
            assert out.marginal_kl.item() == pytest.approx(math.log(k), rel=1e-6)
            assert (out.logits.argmax(1) == 7).all()
        finally:
            out_conv.weight.copy_(saved[0])
            out_conv.bias.copy_(saved[1])


def test_kl_to_uniform_matches_float64():
    logits = torch.randn(2, 5, 3, 4) * 3
    q = torch.softmax(logits.double(), dim=1)
    expected = (q * (q.log() + math.log(5))).sum(1)
    torch.testing.assert_close(kl_to_uniform(logits, dim=1).double(), expected, rtol=1e-5, atol=1e-6)


def test_marginal_kl_is_the_kl_of_the_mean_softmax_in_float64():
    logits = torch.randn(2, 5, 3, 4) * 3
    mean = torch.softmax(logits.double(), dim=1).mean((0, 2, 3))  # the batch's code distribution
    expected = (mean * (mean.log() + math.log(5))).sum()
    torch.testing.assert_close(marginal_kl_to_uniform(logits, dim=1).double(), expected, rtol=1e-5, atol=1e-6)
    # Each position one-hot on a different code, all codes equally often: no penalty.
    one_hot = torch.eye(5)[:, :, None, None].expand(5, 5, 1, 1).mul(1e4)
    assert marginal_kl_to_uniform(one_hot, dim=1).item() == pytest.approx(0.0, abs=1e-6)


def test_gaussian_nll_matches_float64_formula():
    stats, x = torch.randn(2, 6, 4, 5) * 2, torch.rand(2, 3, 4, 5)
    expected = (torch.sigmoid(stats[:, :3].double()) - x.double()) ** 2 / (2 * 0.2**2)
    torch.testing.assert_close(gaussian_nll(stats, x, 0.2).double(), expected, rtol=1e-5, atol=1e-6)
    assert gaussian_nll(stats.double(), x.double(), 0.2).dtype == torch.float64


def test_logit_laplace_nll_matches_float64_formula():
    mu, log_b = torch.randn(2, 3, 4, 5) * 2, torch.randn(2, 3, 4, 5)
    x = torch.rand(2, 3, 4, 5) * 0.98 + 0.01
    b, xd = log_b.double().exp(), x.double()
    logit = torch.log(xd) - torch.log(1 - xd)
    expected = torch.log(2 * b * xd * (1 - xd)) + (logit - mu.double()).abs() / b
    nll = logit_laplace_nll(torch.cat([mu, log_b], 1), x)
    torch.testing.assert_close(nll.double(), expected, rtol=1e-5, atol=1e-5)


def test_logit_laplace_density_integrates_to_one():
    x = torch.linspace(0, 1, 400_001, dtype=torch.float64)[1:-1]
    stats = torch.tensor([0.7, math.log(0.4)], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 1, len(x))
    density = torch.exp(-logit_laplace_nll(stats, x.view(1, 1, 1, -1))).flatten()
    assert torch.trapezoid(density, x).item() == pytest.approx(1.0, abs=1e-4)


def test_map_pixels_round_trip():
    x = torch.rand(100)
    mapped = map_pixels(x, EPS)
    assert mapped.min() >= EPS and mapped.max() <= 1 - EPS
    torch.testing.assert_close(unmap_pixels(mapped, EPS), x)
    torch.testing.assert_close(map_pixels(torch.tensor([0.0, 1.0]), EPS), torch.tensor([EPS, 1 - EPS]))
    assert torch.equal(unmap_pixels(torch.tensor([0.0, 1.0]), EPS), torch.tensor([0.0, 1.0]))  # clamped


def test_decode_of_encode_equals_the_hard_forward(tiny_with_biases):
    tiny = tiny_with_biases
    x = images(tiny, 4)
    k, g = tiny.config.vae.codebook_size, tiny.config.vae.grid_size
    zero_gumbel = torch.full((4, k, g, g), ZERO_GUMBEL)  # hard sample = argmax of the logits
    hard = tiny(x, tau=0.3, kl_weight=1.0, hard=True, noise=zero_gumbel).reconstruction
    torch.testing.assert_close(tiny.decode(tiny.encode(x)), hard, rtol=1e-5, atol=1e-5)


def test_encode_is_the_argmax_of_the_logits(tiny):
    x = images(tiny, 3)
    assert torch.equal(tiny.encode(x), tiny(x, 1.0, 0.0).logits.argmax(1))


def test_decode_accepts_int32_tokens(tiny):
    tokens = torch.randint(0, tiny.config.vae.codebook_size, (2, 4, 4))
    torch.testing.assert_close(tiny.decode(tokens.int()), tiny.decode(tokens))


@pytest.mark.parametrize("bad, error, match", [
    (torch.rand(2, 3, 16, 16), ValueError, r"images: expected shape \(B, 3, 32, 32\)"),
    (torch.rand(2, 1, 32, 32), ValueError, "images: expected shape"),
    (torch.rand(3, 32, 32), ValueError, "images: expected shape"),
    (torch.randint(0, 255, (2, 3, 32, 32)), TypeError, "images: expected a float tensor"),
    (torch.rand(2, 3, 32, 32) * 255, ValueError, r"images: values must lie in \[0, 1\]"),
    (torch.full((2, 3, 32, 32), float("nan")), ValueError, r"images: values must lie in \[0, 1\]"),
])
def test_bad_images_raise(tiny, bad, error, match):
    for call in (lambda: tiny(bad, 1.0, 0.0), lambda: tiny.encode(bad)):
        with pytest.raises(error, match=match):
            call()


@pytest.mark.parametrize("bad, error, match", [
    (torch.full((2, 4, 4), 64), ValueError, r"tokens: values must lie in \[0, 64\)"),
    (torch.full((2, 4, 4), -1), ValueError, r"tokens: values must lie in \[0, 64\)"),
    (torch.zeros(2, 8, 8, dtype=torch.long), ValueError, r"tokens: expected shape \(B, 4, 4\)"),
    (torch.zeros(2, 4, 4), TypeError, "tokens: expected an int32/int64 tensor"),
])
def test_bad_tokens_raise(tiny, bad, error, match):
    with pytest.raises(error, match=match):
        tiny.decode(bad)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tau": 0.0}, ValueError, "tau"),
    ({"tau": float("nan")}, ValueError, "tau"),
    ({"kl_weight": -1.0}, ValueError, "kl_weight"),
    ({"kl_weight": float("inf")}, ValueError, "kl_weight"),
    ({"kl_weight": "1"}, TypeError, "kl_weight"),
    ({"hard": 1}, TypeError, "hard"),
    ({"noise": torch.rand(2, 64, 2, 2)}, ValueError, "noise"),
])
def test_bad_forward_arguments_raise(tiny, kwargs, error, match):
    args = {"tau": 1.0, "kl_weight": 1.0} | kwargs
    with pytest.raises(error, match=match):
        tiny(images(tiny), **args)


def test_config_must_be_a_config():
    with pytest.raises(TypeError, match="config"):
        DiscreteVAE(preset("tiny").vae)
