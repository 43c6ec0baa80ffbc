"""Published checkpoints through lcgen: synthetic files with the official key names and shapes (random
values made here, laid out as LlamaGen's and taming's modules name them) convert into ordinary lcgen
models whose blocks compute the official formulas, written out below by hand. Parity on the official
code itself is measured outside the suite (README "Published models")."""
import argparse
import math
import os

import pytest
import torch
import torch.nn.functional as F

from lcgen.official_checkpoints import load_checkpoint, load_state_dict
from lcgen.pipelines import VQGPTPipeline
from lcgen.priors.gpt import apply_rope, rope_2d_table
from lcgen.priors.published import gpt_from_llamagen, parse_llamagen_name
from lcgen.tokenizer.published import tokenizer_from_llamagen, tokenizer_from_taming


# ---------------------------------------------------------------- synthetic official checkpoints
class _Weights:
    """Random tensors under official names (norm gains near 1, everything else small)."""

    def __init__(self, seed=0):
        self.g, self.s = torch.Generator().manual_seed(seed), {}

    def t(self, *shape, scale=0.1, offset=0.0):
        return offset + scale * torch.randn(*shape, generator=self.g)

    def conv(self, name, cin, cout, k):
        self.s[f"{name}.weight"], self.s[f"{name}.bias"] = self.t(cout, cin, k, k, scale=1 / math.sqrt(cin * k * k)), self.t(cout)

    def norm(self, name, c):
        self.s[f"{name}.weight"], self.s[f"{name}.bias"] = self.t(c, offset=1.0), self.t(c)

    def resnet(self, name, cin, cout):
        self.norm(f"{name}.norm1", cin)
        self.conv(f"{name}.conv1", cin, cout, 3)
        self.norm(f"{name}.norm2", cout)
        self.conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            self.conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(self, name, c):
        self.norm(f"{name}.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            self.conv(f"{name}.{p}", c, c, 1)


def llamagen_vq_state(ch=32, ch_mult=(1, 1, 2, 2, 4), z=64, embed_dim=8, k=64, blocks=2):
    """LlamaGen's VQModel layout: conv_blocks.i.{res,attn,downsample|upsample}, attention in the
    lowest-resolution level only, mid.0/1/2, the decoder's levels lowest resolution first."""
    w, last = _Weights(), len(ch_mult) - 1
    w.conv("encoder.conv_in", 3, ch, 3)
    cin = ch
    for i, m in enumerate(ch_mult):
        for j in range(blocks):
            w.resnet(f"encoder.conv_blocks.{i}.res.{j}", cin, ch * m)
            cin = ch * m
            if i == last:
                w.attn(f"encoder.conv_blocks.{i}.attn.{j}", cin)
        if i != last:
            w.conv(f"encoder.conv_blocks.{i}.downsample.conv", cin, cin, 3)
    for side in ("encoder", "decoder"):
        if side == "decoder":
            w.conv("decoder.conv_in", z, cin, 3)
        w.resnet(f"{side}.mid.0", cin, cin)
        w.attn(f"{side}.mid.1", cin)
        w.resnet(f"{side}.mid.2", cin, cin)
        if side == "encoder":
            w.norm("encoder.norm_out", cin)
            w.conv("encoder.conv_out", cin, z, 3)
    for n, i in enumerate(reversed(range(len(ch_mult)))):
        for j in range(blocks + 1):
            w.resnet(f"decoder.conv_blocks.{n}.res.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
            if i == last:
                w.attn(f"decoder.conv_blocks.{n}.attn.{j}", cin)
        if i != 0:
            w.conv(f"decoder.conv_blocks.{n}.upsample.conv", cin, cin, 3)
    w.norm("decoder.norm_out", cin)
    w.conv("decoder.conv_out", cin, 3, 3)
    w.conv("quant_conv", z, embed_dim, 1)
    w.conv("post_quant_conv", embed_dim, z, 1)
    w.s["quantize.embedding.weight"] = w.t(k, embed_dim, scale=1.0)
    w.s["quantize.codebook_used"] = torch.zeros(65536)
    return w.s


def taming_state(ch=32, ch_mult=(1, 2), attn_resolutions=(8,), resolution=16, z=32, embed_dim=4, k=16, blocks=1):
    """taming's VQModel layout: down.i.{block,attn,downsample}, mid.block_1/attn_1/block_2, the
    decoder's up.i indexed by level (highest resolution first), plus loss weights to be dropped."""
    w = _Weights(1)
    w.conv("encoder.conv_in", 3, ch, 3)
    cin, res = ch, resolution
    for i, m in enumerate(ch_mult):
        for j in range(blocks):
            w.resnet(f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
            if res in attn_resolutions:
                w.attn(f"encoder.down.{i}.attn.{j}", cin)
        if i != len(ch_mult) - 1:
            w.conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
            res //= 2
    for side in ("encoder", "decoder"):
        if side == "decoder":
            w.conv("decoder.conv_in", z, cin, 3)
        w.resnet(f"{side}.mid.block_1", cin, cin)
        w.attn(f"{side}.mid.attn_1", cin)
        w.resnet(f"{side}.mid.block_2", cin, cin)
    w.norm("encoder.norm_out", cin)
    w.conv("encoder.conv_out", cin, z, 3)
    for i in reversed(range(len(ch_mult))):
        for j in range(blocks + 1):
            w.resnet(f"decoder.up.{i}.block.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
            if res in attn_resolutions:
                w.attn(f"decoder.up.{i}.attn.{j}", cin)
        if i != 0:
            w.conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
            res *= 2
    w.norm("decoder.norm_out", cin)
    w.conv("decoder.conv_out", cin, 3, 3)
    w.conv("quant_conv", z, embed_dim, 1)
    w.conv("post_quant_conv", embed_dim, z, 1)
    w.s["quantize.embedding.weight"] = w.t(k, embed_dim, scale=1.0)
    w.s["loss.discriminator.main.0.weight"] = w.t(8, 3, 4, 4)
    ddconfig = dict(double_z=False, z_channels=z, resolution=resolution, in_channels=3, out_ch=3, ch=ch, ch_mult=list(ch_mult),
                    num_res_blocks=blocks, attn_resolutions=list(attn_resolutions), dropout=0.0)
    return w.s, ddconfig


# ---------------------------------------------------------------- the official formulas, by hand
def resnet_formula(s, name, x):
    def gn(n, h):
        return F.group_norm(h, 32, s[f"{name}.{n}.weight"], s[f"{name}.{n}.bias"], eps=1e-6)

    h = F.conv2d(F.silu(gn("norm1", x)), s[f"{name}.conv1.weight"], s[f"{name}.conv1.bias"], padding=1)
    h = F.conv2d(F.silu(gn("norm2", h)), s[f"{name}.conv2.weight"], s[f"{name}.conv2.bias"], padding=1)
    if f"{name}.nin_shortcut.weight" in s:
        x = F.conv2d(x, s[f"{name}.nin_shortcut.weight"], s[f"{name}.nin_shortcut.bias"])
    return x + h


def attn_formula(s, name, x):
    b, c, hh, ww = x.shape
    h = F.group_norm(x, 32, s[f"{name}.norm.weight"], s[f"{name}.norm.bias"], eps=1e-6)
    q, k, v = (F.conv2d(h, s[f"{name}.{p}.weight"], s[f"{name}.{p}.bias"]).flatten(2) for p in "qkv")  # (B, C, N)
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (B, N_query, N_key)
    out = (v @ weights.transpose(1, 2)).view(b, c, hh, ww)
    return x + F.conv2d(out, s[f"{name}.proj_out.weight"], s[f"{name}.proj_out.bias"])


def test_llamagen_vq_converts_and_computes_the_official_blocks():
    s = llamagen_vq_state()
    tok = tokenizer_from_llamagen(s, "VQ-16", image_size=32)
    assert tok.config.ch == 32 and tok.config.z_channels == 64 and tok.downsample_factor == 16
    assert tok.config.attn_resolutions == (2,)  # the lowest-resolution level of a 32 px input
    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(tok.encoder.down_blocks[0].resnets[0](x, None),
                                   resnet_formula(s, "encoder.conv_blocks.0.res.0", x), atol=1e-5, rtol=1e-5)
        y = torch.randn(2, 128, 2, 2)
        torch.testing.assert_close(tok.encoder.down_blocks[4].attentions[1](y),
                                   attn_formula(s, "encoder.conv_blocks.4.attn.1", y), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tok.decoder.mid_block.attentions[0](y), attn_formula(s, "decoder.mid.1", y),
                                   atol=1e-5, rtol=1e-5)
        z = torch.randn(2, 128, 2, 2)
        torch.testing.assert_close(tok.decoder.up_blocks[0].resnets[2](z, None),
                                   resnet_formula(s, "decoder.conv_blocks.0.res.2", z), atol=1e-5, rtol=1e-5)
        # l2-normalised codes: the index is the code of largest cosine, the code output is normalised
        images = torch.rand(3, 3, 32, 32) * 2 - 1
        enc = tok.encode(images)
        latents = F.conv2d(tok.encoder(images), s["quant_conv.weight"], s["quant_conv.bias"])
        codes = F.normalize(s["quantize.embedding.weight"], dim=-1)
        cos = torch.einsum("bchw,kc->bhwk", F.normalize(latents, dim=1), codes)
        assert torch.equal(enc.indices, cos.argmax(-1))
        torch.testing.assert_close(enc.quantized, codes[enc.indices].permute(0, 3, 1, 2))
        # the straight-through codes z + (zq - z) differ from zq by fp32 rounding, which the decoder amplifies
        torch.testing.assert_close(tok.decode_indices(enc.indices), tok.decode(enc.quantized), atol=1e-4, rtol=1e-4)


def test_taming_vqgan_converts_with_levels_reversed_and_loss_weights_dropped():
    s, ddconfig = taming_state()
    tok = tokenizer_from_taming(s, ddconfig, n_embed=16, embed_dim=4)
    # taming's decoder.up.1 (the lowest resolution, level 1) is diffusers' first up block
    assert torch.equal(tok.decoder.up_blocks[0].resnets[0].conv1.weight, s["decoder.up.1.block.0.conv1.weight"])
    assert torch.equal(tok.decoder.up_blocks[1].resnets[1].conv2.weight, s["decoder.up.0.block.1.conv2.weight"])
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(tok.decoder.up_blocks[0].attentions[0](x), attn_formula(s, "decoder.up.1.attn.0", x),
                                   atol=1e-5, rtol=1e-5)
        images = torch.rand(2, 3, 16, 16) * 2 - 1
        enc = tok.encode(images)
        d = torch.cdist(enc.latents.permute(0, 2, 3, 1).reshape(-1, 4), s["quantize.embedding.weight"])
        assert torch.equal(enc.indices.flatten(), d.argmin(-1))  # plain l2 codes
        assert tok(images).sample.shape == images.shape


def test_wrong_or_mismatched_checkpoints_are_refused_with_the_reason():
    s = llamagen_vq_state()
    with pytest.raises(ValueError, match="unexpected key"):
        tokenizer_from_llamagen({**s, "something.else": torch.zeros(1)}, "VQ-16", 32)
    with pytest.raises(ValueError, match="missing"):
        tokenizer_from_llamagen(s, "VQ-8", 32)  # VQ-16's weights are not VQ-8's
    with pytest.raises(ValueError, match="not a LlamaGen VQ"):
        tokenizer_from_llamagen(llamagen_gpt_state(), "VQ-16", 32)
    with pytest.raises(ValueError, match="not a LlamaGen c2i GPT"):
        gpt_from_llamagen(s, num_heads=4, model=None)
    with pytest.raises(ValueError, match="width 64 and 2 layers"):
        gpt_from_llamagen(llamagen_gpt_state(), "GPT-B")


# ---------------------------------------------------------------- LlamaGen GPT
def llamagen_gpt_state(dim=64, layers=2, vocab=64, classes=5):
    w = _Weights(2)
    hidden = 256  # find_multiple(int(2 * 4 * 64 / 3), 256)
    s = {"tok_embeddings.weight": w.t(vocab, dim, scale=1.0),
         "cls_embedding.embedding_table.weight": w.t(classes + 1, dim, scale=1.0),
         "norm.weight": w.t(dim, offset=1.0), "output.weight": w.t(vocab, dim, scale=0.3)}
    for i in range(layers):
        s.update({f"layers.{i}.attention.wqkv.weight": w.t(3 * dim, dim, scale=0.2),
                  f"layers.{i}.attention.wo.weight": w.t(dim, dim, scale=0.2),
                  f"layers.{i}.feed_forward.w1.weight": w.t(hidden, dim, scale=0.2),
                  f"layers.{i}.feed_forward.w3.weight": w.t(hidden, dim, scale=0.2),
                  f"layers.{i}.feed_forward.w2.weight": w.t(dim, hidden, scale=0.1),
                  f"layers.{i}.attention_norm.weight": w.t(dim, offset=1.0),
                  f"layers.{i}.ffn_norm.weight": w.t(dim, offset=1.0)})
    return s


def llamagen_formula_logits(s, idx, cls, heads, grid):
    """LlamaGen's c2i forward written with complex rotations: the class row first, 2-D RoPE whose
    first head_dim/4 frequencies follow the row and the rest the column, the class step unrotated
    *and zeroed* (its table entry is 0), RMSNorm, SwiGLU, causal attention."""
    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    b, length = idx.shape
    dim = s["tok_embeddings.weight"].shape[1]
    hd = dim // heads
    x = torch.cat([s["cls_embedding.embedding_table.weight"][cls][:, None], s["tok_embeddings.weight"][idx[:, :-1]]], 1)
    freqs = 1.0 / 10000 ** (torch.arange(0, hd // 2, 2).float() / (hd // 2))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = torch.cat([rows.flatten()[:, None] * freqs, cols.flatten()[:, None] * freqs], -1)  # (L, hd/2)
    rot = torch.cat([torch.zeros(1, hd // 2, dtype=torch.complex64), torch.polar(torch.ones_like(angles), angles)[:-1]])
    mask = torch.ones(length, length).tril().bool()
    layers = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("layers."))
    for i in range(layers):
        p = f"layers.{i}."
        h = rms(x, s[p + "attention_norm.weight"])
        q, k, v = (h @ s[p + "attention.wqkv.weight"].T).split(dim, -1)
        q, k, v = (t.view(b, length, heads, hd) for t in (q, k, v))
        q, k = (torch.view_as_real(torch.view_as_complex(t.reshape(b, length, heads, hd // 2, 2).contiguous())
                                   * rot[None, :, None]).flatten(-2) for t in (q, k))
        att = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        x = x + torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, length, dim) @ s[p + "attention.wo.weight"].T
        h = rms(x, s[p + "ffn_norm.weight"])
        x = x + (F.silu(h @ s[p + "feed_forward.w1.weight"].T) * (h @ s[p + "feed_forward.w3.weight"].T)) \
            @ s[p + "feed_forward.w2.weight"].T
    return rms(x, s["norm.weight"]) @ s["output.weight"].T


def test_rope_2d_rotation_by_hand():
    table = rope_2d_table(3, 3, head_dim=4)  # one frequency (1.0) for the row pair, one for the column pair
    assert table.shape == (9, 2, 2) and torch.equal(table[0], torch.zeros(2, 2))  # the class step
    x = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 4)
    # sequence step 6 holds grid position 5 = (row 1, column 2): pair 0 turns by 1 rad, pair 1 by 2 rad
    out = apply_rope(x, table[6:7]).flatten()
    torch.testing.assert_close(out, torch.tensor([math.cos(1), math.sin(1), -math.sin(2), math.cos(2)]))
    assert torch.equal(apply_rope(x, table[:1]), torch.zeros_like(x))


def test_llamagen_gpt_logits_equal_the_official_formula():
    s = llamagen_gpt_state()
    prior = gpt_from_llamagen(s, model=None, image_size=64, downsample_size=16, num_heads=4)
    assert prior.config.position_scheme == "rope_2d" and prior.config.num_classes == 5
    assert prior.position_embedding is None
    idx, cls = torch.randint(64, (3, 16)), torch.tensor([0, 4, 5])
    with torch.no_grad():
        torch.testing.assert_close(prior(idx.view(3, 4, 4), cls)[:, :, 0], llamagen_formula_logits(s, idx, cls, 4, 4),
                                   atol=1e-4, rtol=1e-4)


def test_checkpoint_loading_is_weights_only_with_an_allow_list(tmp_path):
    ok = tmp_path / "ok.pt"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1.0)}, ok)
    assert torch.equal(load_state_dict(str(ok))["w"], torch.ones(2))
    ddp = tmp_path / "ddp.pt"
    torch.save({"module.w": torch.ones(1)}, ddp)
    assert list(load_state_dict(str(ddp))) == ["w"]
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(1)}, "extra": _Weights}, evil)  # a class: needs a full unpickle
    with pytest.raises(ValueError, match="refusing to open"):
        load_checkpoint(str(evil))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ok.read_bytes()[:40])
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(str(truncated))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_checkpoint(str(tmp_path / "empty.pt"))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_parse_llamagen_names():
    assert parse_llamagen_name("c2i_XXL_384.pt") == ("GPT-XXL", 384)
    with pytest.raises(ValueError, match="cannot read"):
        parse_llamagen_name("gpt.pt")


def write_llamagen_files(folder):
    os.makedirs(folder, exist_ok=True)
    torch.save({"model": llamagen_vq_state(), "args": argparse.Namespace()}, os.path.join(folder, "vq_ds16_c2i.pt"))
    torch.save({"model": llamagen_gpt_state()}, os.path.join(folder, "tiny_gpt.pt"))


def test_from_llamagen_folder_and_offline_hub_cache(tmp_path, monkeypatch):
    write_llamagen_files(str(tmp_path / "files"))
    pipe = VQGPTPipeline.from_llamagen(str(tmp_path / "files"), gpt="tiny_gpt.pt", model="GPT-B", image_size=32,
                                       num_heads=4, top_k=10)
    assert pipe.config.guidance_scale == 4.0 and pipe.config.top_k == 10  # LlamaGen's cfg, the given top-k
    assert pipe.transformer.config.grid_height == 2 and pipe.vqvae.downsample_factor == 16
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_id=[1, 4], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (2, 3, 32, 32)
    # the Hub cache layout, offline: models--org--name/snapshots/<commit>/<file> + refs/main
    cache = tmp_path / "hub"
    snap = cache / "models--FoundationVision--LlamaGen" / "snapshots" / ("0" * 40)
    write_llamagen_files(str(snap))
    (cache / "models--FoundationVision--LlamaGen" / "refs").mkdir()
    (cache / "models--FoundationVision--LlamaGen" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = VQGPTPipeline.from_llamagen("FoundationVision/LlamaGen", gpt="tiny_gpt.pt", model="GPT-B", image_size=32,
                                      num_heads=4, cache_dir=str(cache))
    assert torch.equal(hub.transformer.head.weight, pipe.transformer.head.weight)
    with pytest.raises(FileNotFoundError):
        VQGPTPipeline.from_llamagen(str(tmp_path / "files"), gpt="c2i_B_256.pt")
    with pytest.raises(TypeError, match="sampling settings"):
        VQGPTPipeline.from_llamagen(str(tmp_path / "files"), gpt="tiny_gpt.pt", image_size=32, num_heads=4, cfg=2.0)


def test_lcgen_convert_commands_write_loadable_folders(tmp_path, capsys):
    from diffusers import DiffusionPipeline

    from lcgen.cli import main
    from lcgen.tokenizer import VQTokenizer

    files = tmp_path / "files"
    write_llamagen_files(str(files))
    vq_dir, pipe_dir = tmp_path / "vq16", tmp_path / "gpt"
    main(["convert", "llamagen-vq", "--checkpoint", str(files / "vq_ds16_c2i.pt"), "--image-size", "32",
          "--output", str(vq_dir)])
    tok = VQTokenizer.from_pretrained(str(vq_dir))
    assert tok.config.quantizer_options["normalize"] is True and tok.config.codebook_size == 64
    main(["convert", "llamagen-gpt", "--checkpoint", str(files / "tiny_gpt.pt"), "--model", "GPT-B", "--image-size", "32",
          "--num-heads", "4", "--tokenizer", str(vq_dir), "--output", str(pipe_dir)])
    pipe = DiffusionPipeline.from_pretrained(str(pipe_dir))
    assert isinstance(pipe, VQGPTPipeline) and pipe.transformer.config.position_scheme == "rope_2d"
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []  # nothing left beside the final folders
    # bad calls fail before any work, with one line naming the argument, and write nothing
    before = sorted(os.listdir(tmp_path))
    for argv, message in [
        (["convert", "llamagen-vq", "--checkpoint", str(files / "vq_ds16_c2i.pt"), "--output", str(vq_dir)], "not empty"),
        (["convert", "llamagen-vq", "--checkpoint", str(files / "nope.pt"), "--output", str(tmp_path / "x")], "not found"),
        (["convert", "llamagen-gpt", "--checkpoint", str(files / "tiny_gpt.pt"), "--output", str(tmp_path / "x")],
         "needs --tokenizer"),
        (["convert", "taming", "--checkpoint", str(files / "tiny_gpt.pt"), "--output", str(tmp_path / "x")],
         "needs --config"),
        (["convert", "llamagen-vq", "--checkpoint", str(files / "vq_ds16_c2i.pt"), "--model", "VQ-32",
          "--output", str(tmp_path / "x")], "unknown LlamaGen VQ model"),
    ]:
        with pytest.raises(SystemExit, match=message):
            main(argv)
    assert sorted(os.listdir(tmp_path)) == before


def test_vqgan_lc_converts_frozen_codebook_and_projector(monkeypatch):
    from lcgen.tokenizer import published

    s, ddconfig = taming_state(embed_dim=8)
    del s["quantize.embedding.weight"], s["loss.discriminator.main.0.weight"]  # taming's names, not VQGAN-LC's
    w = _Weights(3)
    s["codebook_projection.weight"], s["codebook_projection.bias"] = w.t(8, 12), w.t(8)
    s["discriminator.main.0.weight"] = w.t(4, 3, 4, 4)  # training-only modules are dropped
    s["perceptual_loss.lin0.model.1.weight"] = w.t(1, 64, 1, 1)
    codebook = w.t(40, 12, scale=1.0)  # the frozen (K, D) table, released as its own file
    monkeypatch.setitem(published.VQGAN_LC_DDCONFIGS, "tiny", ddconfig)
    with pytest.raises(ValueError, match="pass the frozen codebook"):
        published.tokenizer_from_vqgan_lc(dict(s), "tiny")
    tok = published.tokenizer_from_vqgan_lc(dict(s), "tiny", codebook=codebook)
    assert tok.config.quantizer_kind == "lc" and tok.config.codebook_size == 40
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        enc = tok.encode(images)
        projected = codebook @ s["codebook_projection.weight"].T + s["codebook_projection.bias"]  # (K, 8)
        flat = enc.latents.permute(0, 2, 3, 1).reshape(-1, 8)
        assert torch.equal(enc.indices.flatten(), torch.cdist(flat, projected).argmin(-1))
        torch.testing.assert_close(enc.quantized.permute(0, 2, 3, 1).reshape(-1, 8), projected[enc.indices.flatten()])
    with pytest.raises(ValueError, match="unknown VQGAN-LC config"):
        published.tokenizer_from_vqgan_lc(dict(s), "f32", codebook=codebook)


# ---------------------------------------------------------------- DiT (facebookresearch/DiT, VQGAN-LC's DiT-LC)
def dit_sincos(dim, grid):
    """DiT's get_2d_sincos_pos_embed, written out: half the width for the column coordinate, half for
    the row, each [sin, cos] of pos * 10000^(-i / (dim / 4))."""
    import numpy as np

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return torch.from_numpy(np.concatenate([one_d(dim // 2, cols), one_d(dim // 2, rows)], 1)).float()[None]


def dit_state(width=32, layers=2, channels=4, patch=2, grid=4, classes=5, learn_sigma=True):
    w = _Weights(4)
    out = channels * (2 if learn_sigma else 1)
    s = {"x_embedder.proj.weight": w.t(width, channels, patch, patch), "x_embedder.proj.bias": w.t(width),
         "pos_embed": dit_sincos(width, grid),
         "t_embedder.mlp.0.weight": w.t(width, 256), "t_embedder.mlp.0.bias": w.t(width),
         "t_embedder.mlp.2.weight": w.t(width, width), "t_embedder.mlp.2.bias": w.t(width),
         "y_embedder.embedding_table.weight": w.t(classes + 1, width, scale=1.0),
         "final_layer.linear.weight": w.t(patch * patch * out, width), "final_layer.linear.bias": w.t(patch * patch * out),
         "final_layer.adaLN_modulation.1.weight": w.t(2 * width, width),
         "final_layer.adaLN_modulation.1.bias": w.t(2 * width)}
    for i in range(layers):
        for name, shape in (("attn.qkv", (3 * width, width)), ("attn.proj", (width, width)),
                            ("mlp.fc1", (4 * width, width)), ("mlp.fc2", (width, 4 * width)),
                            ("adaLN_modulation.1", (6 * width, width))):
            s[f"blocks.{i}.{name}.weight"], s[f"blocks.{i}.{name}.bias"] = w.t(*shape), w.t(shape[0])
    return s


def test_dit_converts_with_learned_sigma_in_dits_channel_layout():
    from lcgen.priors.published import dit_from_official

    s = dit_state()
    model = dit_from_official(s, num_heads=4)
    c = model.config
    assert (c.sample_size, c.patch_size, c.in_channels, c.num_classes, c.learn_sigma) == (8, 2, 4, 5, True)
    torch.testing.assert_close(model.pos_embed, dit_sincos(32, 4))  # DiT's table, built independently
    # DiT unpatchifies (p, q, c) with c fastest: the prediction is the rows whose channel index is < C
    rows = [r for r in range(2 * 2 * 8) if r % 8 < 4]
    fixed = {**s, "final_layer.linear.weight": s["final_layer.linear.weight"][rows],
             "final_layer.linear.bias": s["final_layer.linear.bias"][rows]}
    plain = dit_from_official(fixed, num_heads=4)
    assert plain.config.learn_sigma is False
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0.0, 500.0, 999.0]), torch.tensor([0, 4, 5])
    with torch.no_grad():
        both = model(x, t, y)
        assert both.shape == (3, 8, 8, 8)
        torch.testing.assert_close(both[:, :4], plain(x, t, y))
    with pytest.raises(ValueError, match="not DiT's fixed"):
        dit_from_official({**s, "pos_embed": s["pos_embed"] + 0.1}, num_heads=4)
    with pytest.raises(ValueError, match="pass num_heads"):
        dit_from_official(s)  # width 32 is no DiT size


def test_learned_variance_pipeline_guides_the_prediction_and_keeps_the_conditional_variance():
    from diffusers import DDIMScheduler, DDPMScheduler

    from lcgen.pipelines import VQDiTPipeline
    from lcgen.priors.published import dit_from_official
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer("looc", embed_dim=4)
    model = dit_from_official(dit_state(grid=7, patch=1, channels=4), num_heads=4)
    learned = DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range")
    pipe = VQDiTPipeline(tok, model, learned, num_inference_steps=3)
    pipe.set_progress_bar_config(disable=True)
    cond, uncond = torch.full((2, 8, 7, 7), 3.0), torch.full((2, 8, 7, 7), 1.0)
    cond[:, 4:], uncond[:, 4:] = 0.5, -0.5
    pipe._call_denoiser = lambda denoiser, x, t, labels: torch.cat([cond, uncond])
    out = pipe._model_output(torch.zeros(2, 4, 7, 7), 10, torch.tensor([0, 1]), 2.0)
    assert torch.equal(out[:, :4], torch.full((2, 4, 7, 7), 1.0 + 2.0 * (3.0 - 1.0)))  # guided prediction
    assert torch.equal(out[:, 4:], torch.full((2, 4, 7, 7), 0.5))  # the conditional rows' variance
    assert pipe._scheduler_input(out, 4).shape[1] == 8  # a learned-range scheduler reads both halves
    del pipe._call_denoiser
    images = pipe(class_id=[0, 3], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()
    ddim = VQDiTPipeline(tok, model, DDIMScheduler(num_train_timesteps=1000), num_inference_steps=3)
    assert ddim._scheduler_input(out, 4).shape[1] == 4  # other schedulers get the prediction half
    # DiT's and DiT-LC's own choice, on request: guide the first 3 latent channels, the rest from the cond rows
    three = VQDiTPipeline(tok, model, learned, guided_channels=3)
    three._call_denoiser = lambda denoiser, x, t, labels: torch.cat([cond, uncond])
    out = three._model_output(torch.zeros(2, 4, 7, 7), 10, torch.tensor([0, 1]), 2.0)
    assert torch.equal(out[:, :3], torch.full((2, 3, 7, 7), 5.0)) and torch.equal(out[:, 3:4], cond[:, 3:4])
    assert torch.equal(out[:, 4:], cond[:, 4:])
    with pytest.raises(ValueError, match="guided_channels"):
        VQDiTPipeline(tok, model, learned, guided_channels=5)


def test_convert_dit_lc_writes_dit_lcs_sampling_protocol(tmp_path):
    from diffusers import DiffusionPipeline

    from lcgen.cli import main
    from tiny import tiny_tokenizer

    tiny_tokenizer("looc", embed_dim=4).save_pretrained(str(tmp_path / "tok"))
    ema = dit_state(grid=7, patch=1, channels=4)
    model = {k: torch.zeros_like(v) for k, v in ema.items()}  # the raw weights: the EMA ones must be taken
    torch.save({"model": model, "ema": ema, "args": argparse.Namespace()}, tmp_path / "dit-lc.pth")
    main(["convert", "dit-lc", "--checkpoint", str(tmp_path / "dit-lc.pth"), "--tokenizer", str(tmp_path / "tok"),
          "--num-heads", "4", "--output", str(tmp_path / "pipe")])
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert pipe.scheduler.config.variance_type == "learned_range" and pipe.scheduler.config.timestep_spacing == "linspace"
    assert (pipe.config.num_inference_steps, pipe.config.guidance_scale) == (250, 8.0)
    assert torch.equal(pipe.transformer.proj_out.weight, ema["final_layer.linear.weight"])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_id=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (1, 1, 28, 28)


def test_convert_sit_lc_gives_the_network_t_in_0_1(tmp_path):
    from lcgen.convert import convert
    from lcgen.pipelines import load_pipeline
    from tiny import tiny_tokenizer

    tiny_tokenizer("looc", embed_dim=4).save_pretrained(str(tmp_path / "tok"))
    torch.save({"ema": dit_state(grid=7, patch=1, channels=4)}, tmp_path / "sit-lc.pth")
    convert("sit-lc", str(tmp_path / "sit-lc.pth"), str(tmp_path / "pipe"), tokenizer=str(tmp_path / "tok"), num_heads=4)
    pipe = load_pipeline(str(tmp_path / "pipe"))
    assert pipe.family == "sit" and pipe.config.timestep_scale == 1.0
    assert pipe.default_sampling() == {"guidance_scale": 8.0, "num_inference_steps": 250, "sampling_method": "dopri5",
                                       "path_type": "linear", "atol": 1e-6, "rtol": 1e-3}  # runTestSiT.sh
    seen = []
    real = pipe._call_denoiser
    pipe._call_denoiser = lambda d, x, t, labels: (seen.append(float(t.reshape(-1)[0])), real(d, x, t, labels))[1]
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_id=2, num_inference_steps=3, guidance_scale=1.0, sampling_method="heun", output_type="pt").images
    assert out.shape == (1, 1, 28, 28) and 0.0 <= min(seen) and max(seen) <= 1.0 and max(seen) > 0.5
    with pytest.raises(ValueError, match="diffusion_norm"):
        type(pipe)(pipe.vqvae, pipe.transformer, diffusion_norm=float("nan"))


# ---------------------------------------------------------------- VQGAN-LC's GPT-LC (minGPT)
def mingpt_state(dim=32, layers=2, k=40, classes=5, block=17):
    """VQGANTransformer.state_dict() names: the GPT under `transformer.`, the tokenizer under `vqgan.`."""
    w = _Weights(11)
    s = {"transformer.tok_emb.weight": w.t(k + classes, dim, scale=1.0), "transformer.pos_emb": w.t(1, block, dim),
         "transformer.ln_f.weight": 1 + w.t(dim), "transformer.ln_f.bias": w.t(dim),
         "transformer.head.weight": w.t(k + classes, dim), "vqgan.encoder.conv_in.weight": w.t(4, 3, 3, 3)}
    for i in range(layers):
        p = f"transformer.blocks.{i}."
        for n in ("ln1", "ln2"):
            s[p + n + ".weight"], s[p + n + ".bias"] = 1 + w.t(dim), w.t(dim)
        for n in ("key", "query", "value", "proj"):
            s[p + f"attn.{n}.weight"], s[p + f"attn.{n}.bias"] = w.t(dim, dim), w.t(dim)
        s[p + "attn.mask"] = torch.tril(torch.ones(block, block)).view(1, 1, block, block)
        s[p + "mlp.0.weight"], s[p + "mlp.0.bias"] = w.t(4 * dim, dim), w.t(4 * dim)
        s[p + "mlp.2.weight"], s[p + "mlp.2.bias"] = w.t(dim, 4 * dim), w.t(dim)
    return s


def mingpt_formula_logits(s, idx, cls, heads, k):
    """minGPT by hand: the class token K + c, then the image tokens; learned positions; pre-LayerNorm
    blocks with separate q/k/v linears and an exact-GELU MLP; logits over the K image tokens."""
    g = {n[len("transformer."):]: v for n, v in s.items() if n.startswith("transformer.")}
    seq = torch.cat([cls[:, None] + k, idx[:, :-1]], 1)
    t = seq.shape[1]
    x = g["tok_emb.weight"][seq] + g["pos_emb"][0, :t]
    layers = 1 + max(int(n.split(".")[1]) for n in g if n.startswith("blocks."))

    def ln(v, name):
        return F.layer_norm(v, v.shape[-1:], g[name + ".weight"], g[name + ".bias"], eps=1e-5)

    def lin(v, name):
        return v @ g[name + ".weight"].T + g[name + ".bias"]

    for i in range(layers):
        p = f"blocks.{i}."
        h = ln(x, p + "ln1")
        b, _, d = h.shape
        q, kk, v = (lin(h, p + f"attn.{n}").view(b, t, heads, d // heads).transpose(1, 2) for n in ("query", "key", "value"))
        att = (q @ kk.transpose(-2, -1)) / math.sqrt(d // heads)
        att = att.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        x = x + lin((att @ v).transpose(1, 2).reshape(b, t, d), p + "attn.proj")
        h = ln(x, p + "ln2")
        x = x + lin(0.5 * lin(h, p + "mlp.0") * (1 + torch.erf(lin(h, p + "mlp.0") / math.sqrt(2))), p + "mlp.2")
    return (ln(x, "ln_f") @ g["head.weight"].T)[..., :k]


def test_gpt_lc_logits_equal_the_mingpt_formula():
    from lcgen.priors.published import gpt_from_vqgan_lc

    s = mingpt_state()
    prior = gpt_from_vqgan_lc(s, num_classes=5, grid_size=4, num_heads=4)
    c = prior.config
    assert (c.norm_type, c.ffn_type, c.bias, c.position_scheme, c.codebook_size) == ("layernorm", "gelu", True, "learned", 40)
    idx, cls = torch.randint(40, (3, 16)), torch.tensor([0, 2, 4])
    with torch.no_grad():
        torch.testing.assert_close(prior(idx.view(3, 4, 4), cls)[:, :, 0], mingpt_formula_logits(s, idx, cls, 4, 40),
                                   atol=1e-4, rtol=1e-4)
    assert torch.equal(prior.class_embedding.weight[-1], torch.zeros(32))  # no null class was trained
    for bad, message in [(dict(num_classes=45), "too few"), (dict(grid_size=5), "fewer than"),
                         (dict(num_heads=None), "pass num_heads")]:
        with pytest.raises(ValueError, match=message):
            gpt_from_vqgan_lc(s, **{**dict(num_classes=5, grid_size=4, num_heads=4), **bad})
    with pytest.raises(ValueError, match="not a VQGAN-LC GPT-LC"):
        gpt_from_vqgan_lc(llamagen_gpt_state(), num_heads=4)


def test_convert_gpt_lc_takes_the_tokenizer_from_the_same_file(tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    from lcgen.cli import main
    from lcgen.tokenizer import published

    vq, ddconfig = taming_state(embed_dim=8)
    del vq["quantize.embedding.weight"], vq["loss.discriminator.main.0.weight"]
    w = _Weights(5)
    vq["codebook_projection.weight"], vq["codebook_projection.bias"] = w.t(8, 12), w.t(8)
    vq["tok_embeddings.weight"] = w.t(40, 12, scale=1.0)
    monkeypatch.setitem(published.VQGAN_LC_DDCONFIGS, "tiny", ddconfig)
    gpt = {k: v for k, v in mingpt_state(k=40, classes=5, block=65).items() if k.startswith("transformer.")}
    torch.save({**gpt, **{"vqgan." + k: v for k, v in vq.items()}}, tmp_path / "gpt-lc.pth")
    out = tmp_path / "gpt-lc"
    main(["convert", "gpt-lc", "--checkpoint", str(tmp_path / "gpt-lc.pth"), "--config", "tiny", "--num-heads", "4",
          "--output", str(out)])
    pipe = DiffusionPipeline.from_pretrained(str(out))
    assert isinstance(pipe, VQGPTPipeline) and pipe.transformer.config.num_classes == 5
    assert (pipe.config.guidance_scale, pipe.config.top_k) == (1.0, None)  # GPT-LC's own sampling
    assert pipe.transformer.config.grid_height == 8 and pipe.vqvae.config.codebook_size == 40
    pipe.set_progress_bar_config(disable=True)
    assert pipe(class_id=[0, 4], generator=torch.Generator().manual_seed(0), output_type="pt").images.shape == (2, 3, 16, 16)
    torch.save({k: v for k, v in gpt.items()}, tmp_path / "no-vq.pth")
    with pytest.raises(SystemExit, match="holds no tokenizer"):
        main(["convert", "gpt-lc", "--checkpoint", str(tmp_path / "no-vq.pth"), "--config", "tiny",
              "--output", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- VQGAN-LC's LDM-LC (latent-diffusion's UNet)
def ldm_unet_state(mc=32, mult=(1, 2), blocks=1, attention=(True, False), channels=4, context=8, emb_rows=6):
    """latent-diffusion's openaimodel.UNetModel names and shapes (use_spatial_transformer, conv proj_in /
    proj_out, GEGLU feed-forward) under model.diffusion_model, plus the ClassEmbedder's table."""
    w, s, emb = _Weights(21), {}, 4 * mc

    def resblock(p, cin, cout):
        s.update({p + "in_layers.0.weight": 1 + w.t(cin), p + "in_layers.0.bias": w.t(cin),
                  p + "in_layers.2.weight": w.t(cout, cin, 3, 3), p + "in_layers.2.bias": w.t(cout),
                  p + "emb_layers.1.weight": w.t(cout, emb), p + "emb_layers.1.bias": w.t(cout),
                  p + "out_layers.0.weight": 1 + w.t(cout), p + "out_layers.0.bias": w.t(cout),
                  p + "out_layers.3.weight": w.t(cout, cout, 3, 3), p + "out_layers.3.bias": w.t(cout)})
        if cin != cout:
            s[p + "skip_connection.weight"], s[p + "skip_connection.bias"] = w.t(cout, cin, 1, 1), w.t(cout)

    def transformer(p, c):
        s.update({p + "norm.weight": 1 + w.t(c), p + "norm.bias": w.t(c), p + "proj_in.weight": w.t(c, c, 1, 1),
                  p + "proj_in.bias": w.t(c), p + "proj_out.weight": w.t(c, c, 1, 1), p + "proj_out.bias": w.t(c)})
        b = p + "transformer_blocks.0."
        for a, kv in (("attn1", c), ("attn2", context)):
            s.update({b + f"{a}.to_q.weight": w.t(c, c), b + f"{a}.to_k.weight": w.t(c, kv), b + f"{a}.to_v.weight": w.t(c, kv),
                      b + f"{a}.to_out.0.weight": w.t(c, c), b + f"{a}.to_out.0.bias": w.t(c)})
        s.update({b + "ff.net.0.proj.weight": w.t(8 * c, c), b + "ff.net.0.proj.bias": w.t(8 * c),
                  b + "ff.net.2.weight": w.t(c, 4 * c), b + "ff.net.2.bias": w.t(c)})
        for n in ("norm1", "norm2", "norm3"):
            s[b + n + ".weight"], s[b + n + ".bias"] = 1 + w.t(c), w.t(c)

    s.update({"time_embed.0.weight": w.t(emb, mc), "time_embed.0.bias": w.t(emb), "time_embed.2.weight": w.t(emb, emb),
              "time_embed.2.bias": w.t(emb), "input_blocks.0.0.weight": w.t(mc, channels, 3, 3),
              "input_blocks.0.0.bias": w.t(mc)})
    ch, i, skips = mc, 1, [mc]
    for level, m in enumerate(mult):
        for _ in range(blocks):
            resblock(f"input_blocks.{i}.0.", ch, m * mc)
            ch = m * mc
            if attention[level]:
                transformer(f"input_blocks.{i}.1.", ch)
            skips.append(ch)
            i += 1
        if level < len(mult) - 1:
            s[f"input_blocks.{i}.0.op.weight"], s[f"input_blocks.{i}.0.op.bias"] = w.t(ch, ch, 3, 3), w.t(ch)
            skips.append(ch)
            i += 1
    resblock("middle_block.0.", ch, ch)
    transformer("middle_block.1.", ch)
    resblock("middle_block.2.", ch, ch)
    i = 0
    for level in reversed(range(len(mult))):
        for j in range(blocks + 1):
            resblock(f"output_blocks.{i}.0.", ch + skips.pop(), mult[level] * mc)
            ch, part = mult[level] * mc, 1
            if attention[level]:
                transformer(f"output_blocks.{i}.1.", ch)
                part = 2
            if level and j == blocks:
                s[f"output_blocks.{i}.{part}.conv.weight"], s[f"output_blocks.{i}.{part}.conv.bias"] = w.t(ch, ch, 3, 3), w.t(ch)
            i += 1
    s.update({"out.0.weight": 1 + w.t(mc), "out.0.bias": w.t(mc), "out.2.weight": w.t(channels, mc, 3, 3),
              "out.2.bias": w.t(channels)})
    state = {"model.diffusion_model." + k: v for k, v in s.items()}
    state["cond_stage_model.embedding.weight"] = w.t(emb_rows, context, scale=1.0)
    return state


def test_ldm_lc_converts_every_unet_weight_uses_ema_and_the_class_as_context(monkeypatch):
    from lcgen.priors import ldm, published

    monkeypatch.setitem(ldm.LDM_CROSS_ATTENTION_SIZES, "LDM-LC-f16", dict(
        block_out_channels=(32, 64), layers_per_block=1, attention_levels=(True, False), head_channels=16))
    raw = ldm_unet_state()
    model = published.ldm_from_latent_diffusion(raw, "LDM-LC-f16")  # strict: every official weight has a place
    assert model.config.num_classes == 5 and model.config.in_channels == 4
    # LitEma's dot-less buffer names hold the weights LDM samples with
    ema = {**raw, **{"model_ema." + k[len("model."):].replace(".", ""): v + 0.01 for k, v in raw.items()
                     if k.startswith("model.diffusion_model.")}}
    ema_model = published.ldm_from_latent_diffusion(ema, "LDM-LC-f16")
    plain = published.ldm_from_latent_diffusion(ema, "LDM-LC-f16", use_ema=False)
    torch.testing.assert_close(ema_model.unet.conv_in.weight, raw["model.diffusion_model.input_blocks.0.0.weight"] + 0.01)
    torch.testing.assert_close(plain.unet.conv_in.weight, raw["model.diffusion_model.input_blocks.0.0.weight"])
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([10, 900]), torch.tensor([3, 5])
    with torch.no_grad():
        context = raw["cond_stage_model.embedding.weight"][y][:, None]  # ClassEmbedder: embedding(c[:, None])
        torch.testing.assert_close(model(x, t, y).sample, model.unet(x, t, encoder_hidden_states=context).sample)
        assert not torch.allclose(model(x, t, y).sample[0], model(x, t, torch.tensor([0, 5])).sample[0])
    with pytest.raises(ValueError, match="not a class-conditional latent-diffusion"):
        published.ldm_from_latent_diffusion({k: v for k, v in raw.items() if not k.startswith("cond_stage")})


def test_ldm_lc_ddim_protocol_timesteps_and_eta_by_hand():
    from lcgen.convert import ldm_lc_scheduler

    sched = ldm_lc_scheduler()
    sched.set_timesteps(200)
    assert sched.timesteps.tolist() == list(range(996, 0, -5))  # latent-diffusion's make_ddim_timesteps + 1
    betas = torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(sched.alphas_cumprod.double(), abar, atol=1e-6, rtol=1e-5)
    # one eta = 1 step by the DDIM formula, with the noise given
    x, eps, noise = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    t, prev = 6, 1
    a, ap = abar[t].float(), abar[prev].float()
    sigma = ((1 - ap) / (1 - a) * (1 - a / ap)).sqrt()
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    want = ap.sqrt() * x0 + (1 - ap - sigma ** 2).sqrt() * eps + sigma * noise
    got = sched.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the last step's previous alpha-bar is alpha-bar_0, not 1 (DDIMSampler's ddim_alphas_prev)
    assert sched.final_alpha_cumprod == pytest.approx(float(abar[0]), rel=1e-6)


def test_convert_ldm_lc_writes_ldms_ddim_eta_1_protocol(tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler

    from lcgen.cli import main
    from lcgen.pipelines import VQLDMPipeline
    from lcgen.priors import ldm
    from lcgen.tokenizer import VQTokenizer

    monkeypatch.setitem(ldm.LDM_CROSS_ATTENTION_SIZES, "LDM-LC-f16", dict(
        block_out_channels=(32, 64), layers_per_block=1, attention_levels=(True, False), head_channels=16))
    torch.save({"state_dict": ldm_unet_state()}, tmp_path / "ldm-lc-f16.pth")
    VQTokenizer(backbone="vqvae", resolution=16, embed_dim=4, codebook_size=16, quantizer_kind="vq").save_pretrained(
        str(tmp_path / "tok"))
    main(["convert", "ldm-lc", "--checkpoint", str(tmp_path / "ldm-lc-f16.pth"), "--tokenizer", str(tmp_path / "tok"),
          "--output", str(tmp_path / "ldm")])
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "ldm"))
    assert isinstance(pipe, VQLDMPipeline) and pipe.default_sampling()["eta"] == 1.0
    assert (pipe.config.num_inference_steps, pipe.config.guidance_scale) == (200, 1.6)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_id=[0, 4], num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert torch.isfinite(out.images).all()
    for bad in (float("nan"), -1.0, "1"):
        with pytest.raises(ValueError, match="eta must be"):
            pipe(class_id=0, eta=bad)
    with pytest.raises(ValueError, match="needs a DDIM scheduler"):
        VQLDMPipeline(pipe.vqvae, pipe.unet, EulerDiscreteScheduler(), eta=1.0)
