"""Each kind against its formula on small hand-checkable cases."""
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lcgen.tokenizer.quantizers import KINDS, build_quantizer


def fp64_nearest(flat, codes, distance="l2"):
    flat, codes = flat.double(), codes.double()
    if distance == "cos":
        return (F.normalize(flat, dim=-1) @ F.normalize(codes, dim=-1).t()).argmax(-1)
    return torch.cdist(flat, codes).argmin(-1)


def bhwc(z):
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


# ------------------------------------------------------------------ shared interface
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_interface_shapes_lookup_and_autocast(kind):
    opts = {"interp_scale": 2} if kind == "looc" else {}
    q = build_quantizer(kind, dim=16, codebook_size=32, **opts).eval()
    z = torch.randn(2, 16, 3, 5)
    out = q(z)
    m = q.num_chunks
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.indices.dtype == torch.int64
    assert out.indices.shape == ((2, 3, 5) if m == 1 else (2, 3, 5, m))
    assert out.loss.ndim == 0
    assert torch.allclose(q.lookup(out.indices), out.quantized, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = q(z)
    assert torch.equal(out_bf16.indices, out.indices)
    assert kind in ("looc", "pq", "looc-pq") or m == 1


# ------------------------------------------------------------------ vq
def test_vq_indices_values_loss_and_gradients():
    q = build_quantizer("vq", dim=4, codebook_size=10)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    codes = q.codebook.embed[0]
    idx = fp64_nearest(bhwc(z.detach()), codes.detach())
    assert torch.equal(out.indices.flatten(), idx)
    zq = codes.detach()[idx]
    assert torch.allclose(bhwc(out.quantized.detach()), zq, atol=1e-6)
    mse = F.mse_loss(bhwc(z.detach()), zq)
    assert out.loss.item() == pytest.approx(1.33 * mse.item(), rel=1e-5)  # 1.0 commitment + 0.33 codebook
    g = torch.randn_like(z)
    (out.quantized * g).sum().backward()
    assert torch.allclose(z.grad, g)  # straight-through
    assert q.codebook.embed.grad is None or q.codebook.embed.grad.abs().sum() == 0
    z.grad = None
    out = q(z)
    out.loss.backward()
    # d/dz of mse(z, sg(zq)) = 2(z - zq)/numel ; d/de_k = 0.33 * sum over assigned 2(e_k - z)/numel
    diff = bhwc(z.detach()) - zq
    assert torch.allclose(bhwc(z.grad), 2 * diff / diff.numel(), atol=1e-6)
    expected = torch.zeros_like(codes).index_add_(0, idx, -0.33 * 2 * diff / diff.numel())
    assert torch.allclose(q.codebook.embed.grad[0], expected, atol=1e-6)


# ------------------------------------------------------------------ ema
def test_ema_one_step_matches_laplace_formula():
    k, d, decay, eps = 5, 3, 0.9, 1e-5
    q = build_quantizer("ema", dim=d, codebook_size=k, decay=decay)
    e0 = torch.randn(1, k, d)
    q.codebook.embed.copy_(e0)
    q.codebook.embed_avg.copy_(e0)
    z = torch.randn(1, d, 4, 4)
    out = q(z)  # training mode: one EMA step
    flat = bhwc(z)
    idx = fp64_nearest(flat, e0[0])
    assert torch.equal(out.indices.flatten(), idx)
    assert torch.allclose(bhwc(out.quantized), e0[0][idx], atol=1e-6)  # outputs use the old codebook
    n = torch.bincount(idx, minlength=k).float()
    sums = torch.zeros(k, d).index_add_(0, idx, flat)
    cs = (1 - decay) * n
    avg = decay * e0[0] + (1 - decay) * sums
    smoothed = (cs + eps) / (cs.sum() + k * eps) * cs.sum()
    assert torch.allclose(q.codebook.cluster_size[0], cs)
    assert torch.allclose(q.codebook.embed[0], avg / smoothed[:, None], rtol=1e-4)
    assert out.loss.item() == pytest.approx(F.mse_loss(flat, e0[0][idx]).item(), rel=1e-5)
    assert not any(p.requires_grad for p in q.codebook.parameters())


def test_ema_eval_does_not_update():
    q = build_quantizer("ema", dim=3, codebook_size=5).eval()
    before = q.codebook.embed.clone()
    q(torch.randn(1, 3, 4, 4))
    assert torch.equal(before, q.codebook.embed)


# ------------------------------------------------------------------ fc
def test_fc_projects_to_code_dim_and_back():
    q = build_quantizer("fc", dim=32, codebook_size=16)
    assert q.code_dim == 8 and q.codebook.embed.shape == (1, 16, 8)
    z = torch.randn(2, 32, 2, 2)
    out = q(z)
    h = q.project_in(z)
    idx = fp64_nearest(bhwc(h.detach()), q.codebook.embed[0].detach())
    assert torch.equal(out.indices.flatten(), idx)
    expected = q.project_out(q.codebook.embed[0][idx].view(2, 2, 2, 8).permute(0, 3, 1, 2))
    assert torch.allclose(out.quantized, expected, atol=1e-5)


def test_fc_l2_normalised_codes():
    q = build_quantizer("fc", dim=32, codebook_size=16, normalize=True).eval()
    z = torch.randn(2, 32, 2, 2)
    out = q(z)
    h = F.normalize(q.project_in(z), dim=1)
    codes = F.normalize(q.codebook.embed[0], dim=-1)
    idx = fp64_nearest(bhwc(h.detach()), codes.detach())
    assert torch.equal(out.indices.flatten(), idx)
    assert torch.allclose(q.lookup(out.indices), out.quantized, atol=1e-6)


# ------------------------------------------------------------------ lc
def test_lc_frozen_codebook_trainable_projector(tmp_path):
    frozen = torch.randn(50, 12)
    path = tmp_path / "codebook.safetensors"
    save_file({"codebook": frozen}, str(path))
    q = build_quantizer("lc", dim=8, codebook_size=50, init_codebook=str(path))
    assert torch.equal(q.codebook.frozen, frozen)
    assert "codebook.frozen" not in dict(q.named_parameters())
    assert q.codebook.projector.weight.std().item() == pytest.approx(8 ** -0.5, rel=0.3)
    z = torch.randn(2, 8, 3, 3)
    out = q(z)
    projected = (frozen @ q.codebook.projector.weight.t() + q.codebook.projector.bias).detach()
    idx = fp64_nearest(bhwc(z), projected)
    assert torch.equal(out.indices.flatten(), idx)
    out.loss.backward()
    assert q.codebook.projector.weight.grad.abs().sum() > 0  # 0.33 codebook term trains the projector
    # the same from a tensor, and a projector into a wider latent (dim != code_dim)
    q2 = build_quantizer("lc", dim=256, codebook_size=50, init_codebook=frozen)
    assert q2.code_dim == 8 and q2(torch.randn(1, 256, 2, 2)).quantized.shape == (1, 256, 2, 2)


def test_lc_without_init_warns_and_builds_vqgan_lc_random_fix_table():
    with pytest.warns(UserWarning, match=r"uniform\(-1/K, 1/K\)"):
        q = build_quantizer("lc", dim=8, codebook_size=20, frozen_dim=16)
    frozen = q.codebook.frozen  # VQGAN-LC --tuning_codebook -2: uniform(-1/K, 1/K), K = 20
    assert frozen.shape == (20, 16) and frozen.abs().max() <= 1 / 20 and frozen.abs().max() > 0.8 / 20


# ------------------------------------------------------------------ cvq
def test_cvq_one_step_closest_anchor_by_hand():
    k, d, gamma = 4, 2, 0.99
    q = build_quantizer("cvq", dim=d, codebook_size=k, distance="cos")
    e0 = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1], [0.5, 0.5]]])
    q.codebook.embed.data.copy_(e0)
    feats = torch.tensor([[2.0, 0.1], [0.1, 3.0], [1.5, 0.2], [0.2, 2.0]])  # all near codes 0 / 1
    z = feats.t().reshape(1, d, 1, 4)
    out = q(z)
    idx = fp64_nearest(feats, e0[0], "cos")
    assert out.indices.flatten().tolist() == idx.tolist() == [0, 1, 0, 1]
    assert torch.allclose(bhwc(out.quantized), e0[0][idx])  # raw code, pre-update codebook
    usage = (1 - gamma) * torch.bincount(idx, minlength=k).double() / 4
    assert torch.allclose(q.reviver.usage[0].double(), usage)
    alpha = torch.exp(-usage * k * 10 / (1 - gamma) - 1e-3)
    # closest (cosine) feature to each code, with the codebook before the update
    sim = F.normalize(e0[0].double(), dim=1) @ F.normalize(feats.double(), dim=1).t()
    anchors = feats.double()[sim.argmax(1)]
    expected = e0[0].double() * (1 - alpha[:, None]) + anchors * alpha[:, None]
    assert torch.allclose(q.codebook.embed[0].double(), expected, atol=1e-6)
    # unused codes 2 and 3 are essentially replaced (alpha ~ 0.999); used ones barely move
    assert alpha[2] > 0.99 and alpha[0] < 0.01
    assert q.reviver.steps.item() == 1


def test_cvq_l2_closest_keeps_norm_term():
    q = build_quantizer("cvq", dim=2, codebook_size=2, distance="l2")
    e0 = torch.tensor([[[0.0, 0.0], [10.0, 10.0]]])
    q.codebook.embed.data.copy_(e0)
    feats = torch.tensor([[0.1, 0.1], [5.0, 5.0], [0.2, 0.0]])
    q(feats.t().reshape(1, 2, 1, 3))
    # code 1 is unused: its anchor is the feature nearest in l2 (5,5), not the largest dot product
    alpha1 = math.exp(-1e-3)
    assert torch.allclose(q.codebook.embed[0, 1], e0[0, 1] * (1 - alpha1) + torch.tensor([5.0, 5.0]) * alpha1, atol=1e-5)


def test_cvq_random_pool_and_probrandom_revive_dead_codes():
    for anchor in ("random", "probrandom"):
        q = build_quantizer("cvq", dim=4, codebook_size=64, anchor=anchor)
        z = torch.randn(4, 4, 8, 8) + 3
        q(z)
        # dead codes moved onto batch features: every revived code is (almost) a feature row
        feats = bhwc(z)
        dist = torch.cdist(q.codebook.embed[0].detach(), feats).min(1).values
        assert (dist < 0.05).float().mean() > 0.9


def test_revival_only_in_training_and_composes_with_ema():
    q = build_quantizer("ema", dim=4, codebook_size=16, revival="cvq")
    q(torch.randn(2, 4, 4, 4))
    assert q.reviver.steps.item() == 1
    # embed_avg follows a revived code, so the next EMA step keeps it
    assert torch.allclose(q.codebook.embed_avg, q.codebook.embed * q.codebook.smoothed_cluster_size()[..., None])
    q.eval()
    before = q.codebook.embed.clone()
    q(torch.randn(2, 4, 4, 4))
    assert torch.equal(before, q.codebook.embed) and q.reviver.steps.item() == 1


# ------------------------------------------------------------------ looc
def test_looc_chunks_share_one_codebook():
    q = build_quantizer("looc", dim=8, codebook_size=6, chunk_dim=4).eval()
    z = torch.randn(2, 8, 3, 3)
    out = q(z)
    assert q.num_chunks == 2 and q.codebook.embed.shape == (1, 6, 4)
    flat = bhwc(z).view(-1, 2, 4)  # chunk j = channels [4j, 4j+4)
    idx = fp64_nearest(flat.reshape(-1, 4), q.codebook.embed[0].detach(), "cos").view(-1, 2)
    assert torch.equal(out.indices.reshape(-1, 2), idx)
    assert torch.allclose(bhwc(out.quantized).view(-1, 2, 4), q.codebook.embed[0].detach()[idx])


def test_looc_interpolation_official_channel_order():
    """beta=2, d*=4: chunk c at (h, w) is channel c's 2x2 block of the bilinear x2 upsample, and the
    decoded value is the mean of the chosen code's entries (pixel_shuffle + 2x2 average pool)."""
    q = build_quantizer("looc", dim=3, codebook_size=16, chunk_dim=4, interp_scale=2).eval()
    assert q.num_chunks == 3
    z = torch.randn(2, 3, 4, 5)
    out = q(z)
    up = F.interpolate(z, scale_factor=2, mode="bilinear", align_corners=False)
    codes = q.codebook.embed[0].detach()
    for b in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(5):
                    block = up[b, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(1, 4)
                    k = fp64_nearest(block, codes, "cos").item()
                    assert out.indices[b, i, j, c].item() == k
                    assert out.quantized[b, c, i, j].item() == pytest.approx(codes[k].mean().item(), abs=1e-6)


def test_looc_interpolation_gradient_passes_up_and_down():
    q = build_quantizer("looc", dim=3, codebook_size=16, chunk_dim=4, interp_scale=2).eval()
    z = torch.randn(1, 3, 4, 4, requires_grad=True)
    g = torch.randn(1, 3, 4, 4)
    (q(z).quantized * g).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    from lcgen.tokenizer.quantizers.interpolation import interpolate_down, interpolate_up
    (interpolate_down(interpolate_up(z2, 2), 2) * g).sum().backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)
    assert not torch.allclose(z.grad, g)  # not the identity


def test_looc_over_frozen_lc_codebook():
    frozen = torch.randn(40, 16)
    q = build_quantizer("looc", dim=8, codebook_size=40, codebook="frozen_projected", revival=None,
                        init_codebook=frozen)
    out = q(torch.randn(2, 8, 2, 2))
    assert out.indices.shape == (2, 2, 2, 2) and q.codebook.projector.out_features == 4
    out.loss.backward()
    assert q.codebook.projector.weight.grad is not None


# ------------------------------------------------------------------ pq
def test_pq_one_codebook_per_chunk():
    q = build_quantizer("pq", dim=8, codebook_size=5, chunk_dim=2).eval()
    assert q.codebook.embed.shape == (4, 5, 2)
    z = torch.randn(2, 8, 2, 3)
    out = q(z)
    flat = bhwc(z).view(-1, 4, 2)
    for j in range(4):
        idx = fp64_nearest(flat[:, j], q.codebook.embed[j].detach())
        assert torch.equal(out.indices.reshape(-1, 4)[:, j], idx)
        assert torch.allclose(bhwc(out.quantized).view(-1, 4, 2)[:, j], q.codebook.embed[j].detach()[idx])


def test_pq_with_revival_per_codebook():
    q = build_quantizer("pq", dim=8, codebook_size=5, chunk_dim=4, revival="cvq")
    q(torch.randn(2, 8, 4, 4))
    assert q.reviver.usage.shape == (2, 5)
    assert torch.allclose(q.reviver.usage.sum(1), torch.full((2,), 0.01))


def test_looc_pq_is_cosine_per_codebook_with_revival_and_summed_losses():
    """LooC's PQ (quantizer_zoo/PQ): m LooC sub-quantizers -- cosine argmax in each one's own codebook,
    CVQ revival per codebook, raw codes out, loss = sum over the m of 0.25 mse(sg zq, z) + mse(zq, sg z)."""
    torch.manual_seed(0)
    q = build_quantizer("looc-pq", dim=8, codebook_size=5, chunk_dim=2)
    assert q.distance == "cos" and q.reviver is not None and q.codebook.embed.shape == (4, 5, 2)
    codes = q.codebook.embed.detach().clone()
    z = torch.randn(2, 8, 2, 3)
    out = q(z)
    flat = bhwc(z).view(-1, 4, 2)
    want = 0.0
    for j in range(4):
        idx = fp64_nearest(flat[:, j], codes[j], "cos")
        assert torch.equal(out.indices.reshape(-1, 4)[:, j], idx)
        zq = codes[j][idx]
        assert torch.allclose(bhwc(out.quantized).view(-1, 4, 2)[:, j], zq, atol=1e-6)  # pre-update raw code
        want += 0.25 * ((zq - flat[:, j]) ** 2).mean() + ((zq - flat[:, j]) ** 2).mean()
    assert torch.allclose(out.loss, torch.as_tensor(want, dtype=torch.float32), rtol=1e-5)
    assert q.reviver.usage.shape == (4, 5)  # one running usage per sub-codebook
    plain = build_quantizer("pq", dim=8, codebook_size=5, chunk_dim=2)  # plain PQ stays: l2, mean loss, no revival
    assert plain.distance == "l2" and plain.reviver is None and plain.loss_scale == 1.0


# ------------------------------------------------------------------ bad input
def test_bad_latents_raise_before_state_changes():
    q = build_quantizer("cvq", dim=4, codebook_size=8)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    cases = [
        (torch.randn(4, 3, 3), ValueError, "rank"),
        (torch.randn(1, 5, 3, 3), ValueError, "channels"),
        (torch.zeros(1, 4, 3, 3, dtype=torch.long), TypeError, "floating"),
        (torch.full((1, 4, 2, 2), float("nan")), ValueError, "NaN"),
        (torch.full((1, 4, 2, 2), float("inf")), ValueError, "inf"),
        ([[1.0]], TypeError, "tensor"),
    ]
    for z, err, msg in cases:
        with pytest.raises(err, match=msg):
            q(z)
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="chunk_dim=3 must divide"):
        build_quantizer("looc", dim=8, codebook_size=4, chunk_dim=3)
    with pytest.raises(ValueError, match="unknown quantizer kind"):
        build_quantizer("vqvae", dim=8, codebook_size=4)
    with pytest.raises(TypeError, match="commitment_cost"):
        build_quantizer("vq", dim=8, codebook_size=4, commitment_cost=0.25)
    with pytest.raises(ValueError, match=r"shape \(codebook_size=10, D\)"):
        build_quantizer("lc", dim=8, codebook_size=10, init_codebook=torch.randn(9, 16))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_quantizer("lc", dim=8, codebook_size=10, init_codebook=str(tmp_path / "missing.safetensors"))
    pickle_path = tmp_path / "codebook.pth"
    pickle_path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        build_quantizer("lc", dim=8, codebook_size=10, init_codebook=str(pickle_path))
    with pytest.raises(ValueError, match="anchor"):
        build_quantizer("cvq", dim=8, codebook_size=4, anchor="nearest")
    with pytest.raises(ValueError, match="frozen"):
        build_quantizer("lc", dim=8, codebook_size=4, revival="cvq", frozen_dim=4)
    with pytest.raises(TypeError, match="codebook_size"):
        build_quantizer("vq", dim=8, codebook_size=4.0)


def test_bad_lookup_indices():
    q = build_quantizer("looc", dim=8, codebook_size=4)
    with pytest.raises(ValueError, match="shape"):
        q.lookup(torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        q.lookup(torch.full((1, 2, 2, 2), 4))
    with pytest.raises(TypeError):
        q.lookup(torch.zeros(1, 2, 2, 2))


def test_code_to_latent_scale_by_hand_and_recorded_in_training():
    from lcgen.tokenizer.quantizers.vector_quantizer import code_to_latent_scale

    codes = torch.tensor([[[-3.0, 0.0], [1.0, 0.0]]])  # spread about the mean (-1, 0): 2
    latents = torch.tensor([[[0.0, 0.1]], [[0.0, -0.1]], [[0.0, 0.1]], [[0.0, -0.1]]])  # spread 0.1
    assert torch.isclose(code_to_latent_scale(codes, latents), torch.tensor(20.0))
    q = build_quantizer("vq", dim=2, codebook_size=2)
    q.codebook.embed.data.copy_(codes)
    q.train()(torch.tensor([0.0, 0.0, 0.1, -0.1]).view(1, 2, 1, 2))
    assert torch.isclose(q.scale_ratio, torch.tensor(20.0))


def test_lc_latent_stats_projector_init_matches_the_first_batch_and_persists(tmp_path):
    """projector_init="latent-stats": after the first training batch the projected codes have the
    latents' mean and RMS spread (formula below); it happens once, and survives a save/load."""
    from lcgen.tokenizer.quantizers.vector_quantizer import code_to_latent_scale

    torch.manual_seed(0)
    frozen = torch.randn(50, 6) * 30 + 5  # far wider than the latents, off-centre
    q = build_quantizer("lc", dim=8, codebook_size=50, init_codebook=frozen, projector_init="latent-stats")
    assert q.codebook.needs_alignment
    z = torch.randn(4, 8, 3, 3) * 0.1 + 0.2
    q.train()(z)
    flat = bhwc(q.project_in(z)).detach()
    codes = q.codebook.weight()[0].detach()
    assert torch.allclose(codes.mean(0), flat.mean(0), atol=1e-5)
    assert torch.isclose(code_to_latent_scale(codes[None], flat[:, None]), torch.tensor(1.0), atol=1e-4)
    w = q.codebook.projector.weight.clone()
    q(z * 5)  # no second alignment
    assert torch.equal(q.codebook.projector.weight, w) and not q.codebook.needs_alignment
    plain = build_quantizer("lc", dim=8, codebook_size=50, init_codebook=frozen)  # the paper's: untouched
    assert "codebook.aligned" not in plain.state_dict() and not plain.codebook.needs_alignment
    with pytest.raises(ValueError, match="projector_init"):
        build_quantizer("vq", dim=8, codebook_size=50, projector_init="latent-stats")
    from lcgen.tokenizer import VQTokenizer

    m = VQTokenizer(backbone="vqvae", in_channels=1, hidden_channels=16, residual_channels=4, embed_dim=8,
                    quantizer_kind="lc", codebook_size=50, init_codebook=frozen,
                    quantizer_options={"projector_init": "latent-stats"})
    m.train()(torch.rand(2, 1, 8, 8) * 2 - 1)
    m.save_pretrained(tmp_path / "m")
    loaded = VQTokenizer.from_pretrained(tmp_path / "m")
    assert not loaded.quantizer.codebook.needs_alignment
    assert torch.equal(loaded.quantizer.codebook.projector.weight, m.quantizer.codebook.projector.weight)


def test_lc_mlp_projector_is_vqgan_lc_use_cblinear_2_and_aligns_its_last_layer():
    """projector="mlp": Linear(D, 256) -> ReLU -> Linear(256, D'), the codes are that map of the frozen
    table; latent-stats rescales and shifts its last layer onto the first batch."""
    from lcgen.tokenizer.quantizers.vector_quantizer import code_to_latent_scale

    torch.manual_seed(0)
    frozen = torch.randn(40, 12) * 10
    q = build_quantizer("lc", dim=8, codebook_size=40, init_codebook=frozen, projector="mlp")
    first, act, last = q.codebook.projector
    assert (first.in_features, first.out_features, last.in_features, last.out_features) == (12, 256, 256, 8)
    assert isinstance(act, torch.nn.ReLU)
    expected = F.relu(frozen @ first.weight.t() + first.bias) @ last.weight.t() + last.bias
    assert torch.allclose(q.codebook.weight()[0], expected, atol=1e-4)
    aligned = build_quantizer("lc", dim=8, codebook_size=40, init_codebook=frozen, projector="mlp",
                              projector_init="latent-stats")
    w0 = aligned.codebook.projector[0].weight.clone()
    z = torch.randn(2, 8, 3, 3) * 0.1 - 0.3
    aligned.train()(z)
    codes, flat = aligned.codebook.weight()[0].detach(), bhwc(aligned.project_in(z)).detach()
    assert torch.allclose(codes.mean(0), flat.mean(0), atol=1e-5)
    assert torch.isclose(code_to_latent_scale(codes[None], flat[:, None]), torch.tensor(1.0), atol=1e-4)
    assert torch.equal(aligned.codebook.projector[0].weight, w0)  # only the last layer moved
    with pytest.raises(ValueError, match="projector"):
        build_quantizer("lc", dim=8, codebook_size=40, init_codebook=frozen, projector="conv")
    with pytest.raises(ValueError, match="projector"):
        build_quantizer("vq", dim=8, codebook_size=40, projector="mlp")
