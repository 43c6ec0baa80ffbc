"""The training recipe's details, each against an independent formula: warm-up is honoured (lr at
step 0), weight decay spares 1-d parameters, v-targets and min-SNR-γ weights, the chunk-direction
latent space of cosine tokenizers, and the LDM's scale-shift conditioning."""
import dataclasses

import pytest
import torch
import torch.nn as nn
from diffusers import DDPMScheduler
from tiny import tiny_dit, tiny_pipeline, tiny_tokenizer

from lcgen.pipelines import VQSiTPipeline
from lcgen.priors.families import PriorObjective, min_snr_weights
from lcgen.priors.latent_space import LatentSpace, resolve_normalization
from lcgen.priors.ldm import build_ldm_unet
from lcgen.training.run import adam_options, lr_scheduler, parameter_groups
from lcgen.training.settings import TrainingConfig, check_training


def lrs(t: TrainingConfig, steps: int, max_steps: int = 100) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=t.lr)
    sched = lr_scheduler(t, opt, max_steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_constant_schedule_honours_its_warm_up():
    t = TrainingConfig(lr=1e-3, lr_scheduler="constant", lr_warmup_steps=10)
    got = lrs(t, 15)
    assert got[0] == 0.0 and got[5] == pytest.approx(5e-4) and got[10:] == [pytest.approx(1e-3)] * 5
    assert lrs(dataclasses.replace(t, lr_warmup_steps=0), 3) == [1e-3] * 3
    assert lrs(dataclasses.replace(t, lr_scheduler="cosine"), 3)[:2] == [0.0, pytest.approx(1e-4)]


@pytest.mark.parametrize("kw,match", [({"lr_scheduler": "piecewise_constant", "lr_warmup_steps": 5}, "no warm-up"),
                                      ({"lr_scheduler": "onecycle"}, "lr_scheduler must be one of"),
                                      ({"lr_warmup_steps": -1}, "lr_warmup_steps must be >= 0")])
def test_schedule_settings_that_cannot_hold_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        check_training(TrainingConfig(**kw))


def test_weight_decay_spares_norm_gains_and_biases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    groups = parameter_groups(model, 0.1)
    assert [p.ndim for p in groups[0]["params"]] == [2, 2] and [p.ndim for p in groups[1]["params"]] == [1, 1, 1]
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(groups, lr=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only decoupled weight decay moves a parameter, by a factor (1 - lr * wd)
    for p, b in zip(model.parameters(), before):
        expected = b * (1 - 0.5 * 0.1) if p.ndim >= 2 else b
        assert torch.allclose(p, expected), p.shape


def linear_alphas_cumprod(n=1000, start=1e-4, end=0.02):
    return torch.cumprod(1 - torch.linspace(start, end, n, dtype=torch.float64), 0)


@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW])
def test_fused_adam_is_the_same_update_as_the_loop(kind):
    """The training loops' optimiser: fused on CPU (one kernel a parameter), the same parameters after
    five steps as torch's for-loop implementation, both weight-decay groups."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4))
    twin = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4))
    twin.load_state_dict(model.state_dict())
    groups, twin_groups = parameter_groups(model, 0.1), parameter_groups(twin, 0.1)
    assert adam_options(groups) == {"fused": True}
    fused = kind(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, **adam_options(groups))
    loop = kind(twin_groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    for step in range(5):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
        for m, opt in ((model, fused), (twin, loop)):
            m(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert adam_options([{"params": [torch.zeros(3, dtype=torch.complex64)]}]) == {}
    assert adam_options([{"params": [nn.Parameter(torch.zeros(3, device="meta"))]}]) == {}
    assert adam_options([]) == {}


def test_min_snr_weights_match_their_formula():
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    t = torch.tensor([0, 10, 250, 500, 999])
    a = linear_alphas_cumprod()[t]
    snr = a / (1 - a)
    for gamma in (1.0, 5.0):
        eps = torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) / snr
        v = torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) / (snr + 1)
        assert torch.allclose(min_snr_weights(sched, t, gamma, "epsilon").double(), eps, rtol=1e-3)  # the scheduler is float32
        assert torch.allclose(min_snr_weights(sched, t, gamma, "v_prediction").double(), v, rtol=1e-3)


class Recorder(nn.Module):
    """Predicts zero and remembers what it was asked: the loss is then the mean (weighted) square target."""

    def forward(self, xt, t, class_labels=None):
        self.xt, self.t = xt, t
        return torch.zeros_like(xt)


@pytest.mark.parametrize("prediction_type,gamma", [("epsilon", None), ("v_prediction", None), ("v_prediction", 5.0),
                                                   ("epsilon", 5.0)])
def test_diffusion_targets_and_weights(prediction_type, gamma):
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type)
    objective = PriorObjective("dit", 10, 0.0, sched, snr_gamma=gamma)
    x = torch.randn(64, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    model = Recorder()
    loss = objective(model, {"labels": torch.zeros(64, dtype=torch.long), "latents": x})
    a = linear_alphas_cumprod()[model.t].float().view(-1, 1, 1, 1)
    eps = (model.xt - a.sqrt() * x) / (1 - a).sqrt()  # x_t = sqrt(a) x + sqrt(1 - a) eps
    target = eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x
    per_sample = target.pow(2).flatten(1).mean(1)
    if gamma:
        snr = (a / (1 - a)).flatten()
        per_sample = per_sample * snr.clamp(max=gamma) / (snr if prediction_type == "epsilon" else snr + 1)
    assert loss.item() == pytest.approx(per_sample.mean().item(), rel=1e-4)


def test_chunk_space_keeps_what_a_cosine_snap_keeps():
    tok = tiny_tokenizer("looc")  # 16 channels, chunks of 4, cosine lookup
    assert resolve_normalization("auto", tok.quantizer) == "chunk"
    assert resolve_normalization("auto", tiny_tokenizer("vq").quantizer) == "global"
    with pytest.raises(ValueError, match="snaps the latent's chunks by cosine"):
        resolve_normalization("chunk", tiny_tokenizer("vq").quantizer)
    space = LatentSpace("chunk", chunk_dim=4)
    z = torch.randn(3, 16, 7, 7) * torch.linspace(0.2, 4, 16).view(1, 16, 1, 1)  # channels of unequal scale
    x = space.to_prior(z)
    norms = x.view(3, 4, 4, 7, 7).norm(dim=2)
    assert torch.allclose(norms, torch.full_like(norms, 2.0), atol=1e-5)  # sqrt(d*): unit mean square
    with torch.no_grad():
        same = tok.quantize(space.to_tokenizer(x)).indices
        assert torch.equal(same, tok.quantize(z).indices)  # the snap discards exactly what was normalised away
    g = LatentSpace("global", shift=0.5, scale=2.0)
    assert torch.allclose(g.to_tokenizer(g.to_prior(z)), z, atol=1e-6)


def test_a_chunk_space_pipeline_round_trips(tmp_path):
    tok = tiny_tokenizer("looc")
    pipe = VQSiTPipeline(tok, tiny_dit(tok), id2label={i: str(i) for i in range(10)}, num_inference_steps=2,
                         latent_normalization="chunk")
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = VQSiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.latent_normalization == "chunk"
    a, b = (p(class_id=[1, 2], generator=torch.Generator().manual_seed(0), output_type="pt").images
            for p in (pipe, loaded))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="snaps the latent's chunks by cosine"):
        VQSiTPipeline(tiny_tokenizer("vq"), tiny_dit(tiny_tokenizer("vq")), latent_normalization="chunk")
    assert tiny_pipeline("dit").config.latent_normalization == "global"  # the default stays the global one


def test_ldm_takes_its_conditioning_as_scale_and_shift():
    unet = build_ldm_unet("LDM-T", 7, 16, 10, block_out_channels=(32,), norm_num_groups=8, attention_head_dim=8)
    assert unet.config.resnet_time_scale_shift == "scale_shift"
    resnet = unet.down_blocks[0].resnets[0]
    assert resnet.time_emb_proj.out_features == 2 * resnet.conv1.out_channels  # a scale and a shift per channel
