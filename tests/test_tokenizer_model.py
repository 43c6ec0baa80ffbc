"""VQTokenizer: shapes of both backbones, encode/quantize/decode agree, save/load round trip with
the frozen codebook and quantizer buffers, and clear errors for bad input."""
import pytest
import torch

from lcgen.tokenizer import VQTokenizer

TINY_VQGAN = dict(backbone="vqgan", resolution=32, ch=32, ch_mult=(1, 2, 2), attn_resolutions=(8,), z_channels=16)
TINY_VQVAE = dict(backbone="vqvae", in_channels=1, hidden_channels=32, residual_channels=8)


def images(b=2, c=3, s=32):
    return torch.rand(b, c, s, s) * 2 - 1


@pytest.mark.parametrize("ch_mult,factor", [((1, 2, 2), 4), ((1, 1, 2, 2, 4), 16), ((1, 2, 2, 4), 8)])
def test_vqgan_downsampling_factor_follows_ch_mult(ch_mult, factor):
    m = VQTokenizer(**{**TINY_VQGAN, "ch_mult": ch_mult, "resolution": 64}, embed_dim=4, quantizer_kind="vq",
                    codebook_size=16)
    enc = m.encode(images(1, 3, 64))
    assert enc.latents.shape == (1, 4, 64 // factor, 64 // factor)
    assert enc.indices.shape == (1, 64 // factor, 64 // factor)


def test_vqgan_attention_at_the_configured_resolutions():
    m = VQTokenizer(**TINY_VQGAN, embed_dim=4, quantizer_kind="vq", codebook_size=16)
    # levels at 32, 16, 8 px: attention only at 8 (the last level), and mirrored in the decoder
    assert [type(b).__name__ for b in m.encoder.down_blocks] == ["DownEncoderBlock2D", "DownEncoderBlock2D",
                                                                 "AttnDownEncoderBlock2D"]
    assert type(m.decoder.up_blocks[0]).__name__ == "AttnUpDecoderBlock2D"


def test_vqvae_backbone_looc_indices_and_reconstruction_shape():
    m = VQTokenizer(**TINY_VQVAE, embed_dim=32, quantizer_kind="looc", codebook_size=64)
    out = m(images(3, 1, 28))
    assert out.sample.shape == (3, 1, 28, 28)
    assert out.indices.shape == (3, 7, 7, 8)  # 32 channels / d* 4 = 8 chunks per position
    assert out.reconstruction_loss.ndim == 0 and out.quantizer_loss.ndim == 0


def test_vqvae_residual_layer_is_the_official_in_place_relu_block():
    """CVQ-VAE's residual layer opens with nn.ReLU(True): the skip carries relu(x), so a layer is
    relu(x) + conv1x1(relu(conv3x3(relu(x)))), with biases; checked against that formula by hand."""
    import torch.nn.functional as F

    from lcgen.tokenizer.backbones.vqvae import ResidualStack

    torch.manual_seed(0)
    stack = ResidualStack(6, 3, 2)
    for p in stack.parameters():
        torch.nn.init.normal_(p, std=0.5)  # biases non-zero, so a missing bias would show
    x = torch.randn(2, 6, 5, 5)
    want = x
    for layer in stack.layers:
        c3, c1 = layer[0], layer[2]
        assert c3.bias is not None and c1.bias is not None
        h = F.relu(want)
        want = h + F.conv2d(F.relu(F.conv2d(h, c3.weight, c3.bias, padding=1)), c1.weight, c1.bias)
    assert torch.allclose(stack(x), F.relu(want), atol=1e-6)
    # and it is not the out-of-place variant x + block(relu(x)) (x has negative entries)
    c3, c1 = stack.layers[0][0], stack.layers[0][2]
    other = x + F.conv2d(F.relu(F.conv2d(F.relu(x), c3.weight, c3.bias, padding=1)), c1.weight, c1.bias)
    assert not torch.allclose(stack.layers[0](F.relu(x)) + F.relu(x), other, atol=1e-3)


def test_forward_losses_follow_the_config():
    x = images(2, 1, 28)
    m = VQTokenizer(**TINY_VQVAE, embed_dim=16, quantizer_kind="vq", codebook_size=32, reconstruction_loss="l2",
                    data_variance=0.25).eval()
    out = m(x)
    assert torch.allclose(out.reconstruction_loss, ((out.sample - x) ** 2).mean() / 0.25, rtol=1e-5)
    m.register_to_config(reconstruction_loss="l1")
    out = m(x)
    assert torch.allclose(out.reconstruction_loss, (out.sample - x).abs().mean(), rtol=1e-5)


def test_encode_quantize_decode_and_decode_indices_agree():
    m = VQTokenizer(**TINY_VQVAE, embed_dim=16, quantizer_kind="pq", codebook_size=32,
                    quantizer_options={"chunk_dim": 4}).eval()
    x = images(2, 1, 28)
    with torch.no_grad():
        enc = m.encode(x)
        q = m.quantize(enc.latents)
        assert torch.equal(q.indices, enc.indices)
        assert torch.allclose(m.decode(enc.quantized), m.decode_indices(enc.indices), atol=1e-5)
        assert torch.allclose(m(x).sample, m.decode(enc.quantized), atol=1e-6)


def test_round_trip_keeps_frozen_codebook_and_weights(tmp_path):
    frozen = torch.randn(50, 24)
    m = VQTokenizer(**TINY_VQGAN, embed_dim=8, quantizer_kind="lc", codebook_size=50, init_codebook=frozen).eval()
    m.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = VQTokenizer.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.quantizer.codebook.frozen, frozen)
    assert loaded.config.quantizer_options["frozen_dim"] == 24
    x = images()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x).indices, m.encode(x).indices)
        assert torch.allclose(loaded(x).sample, m(x).sample, atol=1e-5)


def test_round_trip_keeps_online_clustering_buffers(tmp_path):
    m = VQTokenizer(**TINY_VQVAE, embed_dim=16, quantizer_kind="cvq", codebook_size=32)
    m.train()
    m(images(4, 1, 28))  # one training step moves the usage statistics
    usage = m.quantizer.reviver.usage.clone()
    assert usage.abs().sum() > 0
    m.save_pretrained(tmp_path)
    loaded = VQTokenizer.from_pretrained(tmp_path)
    assert torch.equal(loaded.quantizer.reviver.usage, usage)
    assert torch.equal(loaded.quantizer.codebook.embed, m.quantizer.codebook.embed)


def test_ema_codebook_state_round_trips(tmp_path):
    m = VQTokenizer(**TINY_VQVAE, embed_dim=16, quantizer_kind="ema", codebook_size=32)
    m.train()
    m(images(4, 1, 28))
    m.save_pretrained(tmp_path)
    loaded = VQTokenizer.from_pretrained(tmp_path)
    for k, v in m.quantizer.state_dict().items():
        assert torch.equal(loaded.quantizer.state_dict()[k], v), k


@pytest.mark.parametrize("bad,err,match", [
    (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), TypeError, "float in \\[-1, 1\\]"),
    (torch.rand(2, 1, 32, 32), ValueError, "shape \\(B, 3, H, W\\)"),
    (torch.rand(3, 32, 32), ValueError, "shape \\(B, 3, H, W\\)"),
    (torch.rand(2, 3, 32, 32) * 255, ValueError, "in \\[-1, 1\\]"),
    (torch.full((1, 3, 32, 32), float("nan")), ValueError, "in \\[-1, 1\\]"),
    (torch.rand(1, 3, 30, 30), ValueError, "divisible by the downsampling factor 4"),
    ("an image", TypeError, "float tensor"),
])
def test_bad_images_are_rejected_before_work(bad, err, match):
    m = VQTokenizer(**TINY_VQGAN, embed_dim=4, quantizer_kind="vq", codebook_size=16)
    with pytest.raises(err, match=match):
        m.encode(bad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(backbone="resnet"), "backbone must be one of"),
    (dict(quantizer_kind="lfq"), "unknown quantizer_kind"),
    (dict(reconstruction_loss="huber"), "reconstruction_loss"),
    (dict(in_channels=4), "in_channels must be 1 or 3"),
    (dict(quantizer_options={"init_codebook": "x.safetensors"}), "VQTokenizer\\(init_codebook"),
    (dict(quantizer_kind="vq", init_codebook=torch.randn(16, 4)), "only used by the VQGAN-LC"),
    (dict(resolution=30), "not divisible"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    base = dict(**TINY_VQGAN, embed_dim=4, quantizer_kind="vq", codebook_size=16)
    with pytest.raises(ValueError, match=match):
        VQTokenizer(**{**base, **kwargs})


def test_decode_rejects_wrong_latent_shape():
    m = VQTokenizer(**TINY_VQGAN, embed_dim=4, quantizer_kind="vq", codebook_size=16)
    with pytest.raises(ValueError, match="decode expects \\(B, 4, h, w\\)"):
        m.decode(torch.zeros(1, 8, 8, 8))
