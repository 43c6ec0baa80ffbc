"""Stage-one loss terms against hand computation: hinge, adaptive weight, PatchGAN shape, the
weighted total before and after disc_start, no discriminator gradient from the generator pass,
and LPIPS loading from a local VGG16 file."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lcgen.eval.metrics.perceptual import load_lpips, lpips_distance
from lcgen.tokenizer import VQTokenizer
from lcgen.tokenizer.losses import NLayerDiscriminator, TokenizerLoss, adaptive_weight, hinge_d_loss


def test_hinge_loss_hand_computed():
    real = torch.tensor([2.0, 0.5, -1.0])   # relu(1 - r) = 0, 0.5, 2   -> mean 5/6
    fake = torch.tensor([-3.0, 0.0, 1.0])   # relu(1 + f) = 0, 1, 2     -> mean 1
    assert torch.isclose(hinge_d_loss(real, fake), torch.tensor(0.5 * (5 / 6 + 1)))


def test_adaptive_weight_is_ratio_of_gradient_norms():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    nll = (3 * w).sum()          # grad (3, 3)   norm 3*sqrt(2)
    g = (w ** 2).sum()           # grad (2, 4)   norm sqrt(20)
    expected = (3 * 2 ** 0.5) / (20 ** 0.5 + 1e-4)
    assert torch.isclose(adaptive_weight(nll, g, w), torch.tensor(expected), rtol=1e-6)
    assert adaptive_weight(1e9 * nll, 1e-9 * g, w) == 1e4  # clamped


def test_patchgan_layout_matches_taming():
    d = NLayerDiscriminator(3, ndf=8, n_layers=2)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 1, 1]
    assert [c.out_channels for c in convs] == [8, 16, 32, 1]
    assert d(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 6, 6)  # 32 -> 16 -> 8 -> 7 -> 6


def _model_and_output():
    torch.manual_seed(0)
    m = VQTokenizer(backbone="vqvae", in_channels=1, hidden_channels=16, residual_channels=4, embed_dim=8,
                    quantizer_kind="vq", codebook_size=16)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    return m, x, m(x)


def test_generator_total_before_disc_start_is_weighted_sum():
    m, x, out = _model_and_output()
    loss = TokenizerLoss(in_channels=1, perceptual_weight=0.7, quantizer_weight=0.1, disc_weight=0.5, disc_start=10,
                         disc_ndf=8, lpips_random_trunk=True)
    total, logs = loss.generator_loss(x, out, step=9, last_layer=m.last_layer)
    p = lpips_distance(loss.lpips, x, out.sample).mean()
    assert torch.allclose(total, out.reconstruction_loss + 0.7 * p + 0.1 * out.quantizer_loss, rtol=1e-5)
    assert "loss/generator_adv" not in logs


def test_generator_total_after_disc_start_adds_adaptive_gan_term():
    m, x, out = _model_and_output()
    loss = TokenizerLoss(in_channels=1, perceptual_weight=0.0, quantizer_weight=0.1, disc_weight=0.5, disc_start=0,
                         disc_ndf=8)
    total, logs = loss.generator_loss(x, out, step=1, last_layer=m.last_layer)
    g = -loss.discriminator(out.sample).mean()
    w = adaptive_weight(out.reconstruction_loss, g, m.last_layer) * 0.5
    assert torch.allclose(total, out.reconstruction_loss + 0.1 * out.quantizer_loss + w * g, rtol=1e-5)
    assert torch.isclose(logs["loss/adaptive_weight"], w)


def test_generator_pass_leaves_no_discriminator_gradient_when_switched_off():
    m, x, out = _model_and_output()
    loss = TokenizerLoss(in_channels=1, perceptual_weight=0.0, disc_weight=0.5, disc_start=0, disc_ndf=8)
    loss.discriminator.requires_grad_(False)  # what the trainer does around the generator pass
    total, _ = loss.generator_loss(x, out, step=1, last_layer=m.last_layer)
    total.backward()
    assert all(p.grad is None for p in loss.discriminator.parameters())
    assert m.decoder.conv_out.weight.grad is not None
    loss.discriminator.requires_grad_(True)
    d_loss, _ = loss.discriminator_loss(x, out.sample, step=1)
    d_loss.backward()
    assert all(p.grad is not None for p in loss.discriminator.parameters())
    assert torch.isclose(d_loss, hinge_d_loss(loss.discriminator(x), loss.discriminator(out.sample.detach())))


def test_gan_switches_on_after_disc_start_as_vqgan_lc():
    """VQGAN-LC: `cur_iter > disc_start` on the 0-based step count (not taming's >=)."""
    loss = TokenizerLoss(in_channels=1, perceptual_weight=0.0, disc_weight=0.5, disc_start=10, disc_ndf=8)
    assert [loss.disc_active(s) for s in (0, 9, 10, 11, 12)] == [False, False, False, True, True]


def test_discriminator_loss_before_start_is_an_error():
    loss = TokenizerLoss(in_channels=1, perceptual_weight=0.0, disc_weight=0.5, disc_start=100, disc_ndf=8)
    with pytest.raises(RuntimeError, match="off at step 5"):
        loss.discriminator_loss(torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28), step=5)


def test_negative_weight_is_rejected():
    with pytest.raises(ValueError, match="perceptual_weight must be >= 0"):
        TokenizerLoss(perceptual_weight=-1.0, disc_weight=0.0)


def test_lpips_loads_vgg_trunk_from_local_safetensors(tmp_path):
    import torchvision

    vgg = torchvision.models.vgg16()  # random weights stand in for the real file
    path = tmp_path / "vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in vgg.state_dict().items()}, str(path))
    model = load_lpips(str(path))
    assert torch.equal(model.net.slice1[0].weight, vgg.features[0].weight)
    assert torch.equal(model.net.slice5._modules["28"].bias, vgg.features[28].bias)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(lpips_distance(model, x, x), torch.zeros(2), atol=1e-6)
    assert (lpips_distance(model, x, -x) > 0).all()
    assert not any(p.requires_grad for p in model.parameters())


def test_lpips_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="not found"):
        load_lpips(str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="not a torchvision vgg16 state dict"):
        load_lpips(str(bad))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache, offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="cannot be downloaded offline"):
        load_lpips()


def test_lpips_repeats_grayscale_to_three_channels():
    model = load_lpips(random_trunk=True)
    x, y = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.allclose(lpips_distance(model, x, y), lpips_distance(model, x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))
    assert F.l1_loss(lpips_distance(model, x, y), lpips_distance(model, y, x)) < 1e-5  # symmetric
