"""Stage-one losses around a VQTokenizer's own terms (reconstruction + quantizer):

    generator:     rec + perceptual_weight * LPIPS + quantizer_weight * q
                   + disc_factor * adaptive_weight * disc_weight * (-mean D(x_hat))
    discriminator: disc_factor * 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))

disc_factor is 0 until the global step passes `disc_start` (VQGAN-LC's `cur_iter > disc_start`, on
the 0-based count of finished steps; taming's `adopt_weight` switches on one step earlier, at
`global_step >= disc_start`). The adaptive weight is taming's
||grad_last(rec + p * LPIPS)|| / (||grad_last(g)|| + 1e-4), clamped to [0, 1e4], detached.
Defaults are VQGAN-LC's (`rate_p` 1.0, `rate_q` 0.1, `rate_d` 0.1, PatchGAN with 2 layers).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lcgen.eval.metrics.perceptual import load_lpips, lpips_distance


class NLayerDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming) with BatchNorm; VQGAN-LC uses n_layers=2, ndf=64."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 2):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden layer keeps the resolution
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))  # (B, 1, h', w') patch logits
        self.main = nn.Sequential(*layers)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)  # DCGAN init, as taming's weights_init
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4):
    """taming's balance of the GAN gradient against the reconstruction gradient at the last layer."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


class TokenizerLoss(nn.Module):
    """Perceptual + adversarial terms and the weighting; owns the LPIPS net and the discriminator.

    Args:
        in_channels: image channels (the discriminator's input).
        perceptual_weight: LPIPS weight (0 disables LPIPS and never loads VGG).
        quantizer_weight: multiplies the quantizer's own loss.
        disc_weight: GAN generator weight (0 disables the discriminator).
        disc_start: the GAN terms are on at global steps after this one (step > disc_start).
        disc_layers, disc_ndf: PatchGAN size.
        adaptive_disc_weight: use taming's adaptive weight (else a fixed disc_weight).
        lpips_vgg_weights / lpips_random_trunk: see `eval.metrics.perceptual.load_lpips`.
    """

    def __init__(self, in_channels: int = 3, perceptual_weight: float = 1.0, quantizer_weight: float = 0.1,
                 disc_weight: float = 0.1, disc_start: int = 50_000, disc_layers: int = 2, disc_ndf: int = 64,
                 adaptive_disc_weight: bool = True, lpips_vgg_weights: str | None = None,
                 lpips_random_trunk: bool = False):
        super().__init__()
        for name, v in dict(perceptual_weight=perceptual_weight, quantizer_weight=quantizer_weight,
                            disc_weight=disc_weight, disc_start=disc_start).items():
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        self.perceptual_weight, self.quantizer_weight = perceptual_weight, quantizer_weight
        self.disc_weight, self.disc_start, self.adaptive = disc_weight, disc_start, adaptive_disc_weight
        self.lpips = load_lpips(lpips_vgg_weights, lpips_random_trunk) if perceptual_weight > 0 else None
        self.discriminator = NLayerDiscriminator(in_channels, disc_ndf, disc_layers) if disc_weight > 0 else None

    @property
    def has_discriminator(self) -> bool:
        return self.discriminator is not None

    def disc_active(self, step: int) -> bool:
        return self.discriminator is not None and step > self.disc_start

    def generator_loss(self, images, out, step: int, last_layer: torch.Tensor | None = None):
        """images, out.sample: (B, C, H, W) in [-1, 1]; out: TokenizerOutput. Returns (total, logs)."""
        nll = out.reconstruction_loss
        logs = {"loss/reconstruction": out.reconstruction_loss.detach(), "loss/quantizer": out.quantizer_loss.detach()}
        if self.lpips is not None:
            p = lpips_distance(self.lpips, images.float(), out.sample.float()).mean()
            nll = nll + self.perceptual_weight * p
            logs["loss/perceptual"] = p.detach()
        total = nll + self.quantizer_weight * out.quantizer_loss
        if self.disc_active(step):
            # the generator's pass must not leave gradients on the discriminator: callers switch its
            # parameters off (requires_grad_(False)) and this uses the unwrapped module
            g_loss = -self.discriminator(out.sample).mean()
            if self.adaptive and last_layer is not None and torch.is_grad_enabled():
                w = adaptive_weight(nll, g_loss, last_layer) * self.disc_weight
            else:
                w = torch.tensor(self.disc_weight, device=g_loss.device)
            total = total + w * g_loss
            logs.update({"loss/generator_adv": g_loss.detach(), "loss/adaptive_weight": w.detach()})
        logs["loss/total"] = total.detach()
        return total, logs

    def discriminator_loss(self, images, reconstructions, step: int, discriminator: nn.Module | None = None):
        """Hinge loss on real images vs detached reconstructions. `discriminator`: the
        data-parallel wrapper of self.discriminator when training with several processes."""
        if not self.disc_active(step):
            raise RuntimeError(f"the discriminator is off at step {step} (disc_start={self.disc_start})")
        disc = discriminator if discriminator is not None else self.discriminator
        d_loss = hinge_d_loss(disc(images.detach()), disc(reconstructions.detach()))
        return d_loss, {"loss/discriminator": d_loss.detach()}
