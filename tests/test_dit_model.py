"""DiTModel: adaLN-Zero starts as zero output, patch sizes round-trip shapes, and DiT-XL/2 has the
original DiT's parameter count once its differences (fixed position table, no learned-σ half) are
accounted for."""
import pytest
import torch

from lcgen.priors.dit import DiTModel, parse_dit_size, sincos_2d, timestep_embedding


def test_zero_init_output_and_shapes():
    for patch in (1, 2, 4):
        m = DiTModel(sample_size=8, patch_size=patch, in_channels=3, hidden_size=32, num_layers=2, num_heads=4,
                     num_classes=5)
        out = m(torch.randn(2, 3, 8, 8), torch.tensor([10, 900]), torch.tensor([0, 5]))
        assert out.shape == (2, 3, 8, 8) and torch.count_nonzero(out) == 0


def test_unpatchify_places_each_patch():
    """With the output projection set to copy channel c of pixel (p, q) from a one-hot feature, the
    output image is the patch grid laid out in raster order."""
    m = DiTModel(sample_size=4, patch_size=2, in_channels=1, hidden_size=8, num_layers=0, num_heads=2, num_classes=0)
    with torch.no_grad():
        m.proj_out.weight.zero_()
        m.proj_out.bias.copy_(torch.arange(4.0))  # each patch's 2x2 pixels get 0, 1, 2, 3 in (p, q) order
    out = m(torch.zeros(1, 1, 4, 4), torch.tensor([0]), torch.tensor([0]))
    assert out[0, 0].tolist() == [[0, 1, 0, 1], [2, 3, 2, 3], [0, 1, 0, 1], [2, 3, 2, 3]]


def test_dit_xl2_parameter_count_matches_the_paper_model():
    with torch.device("meta"):
        m = DiTModel(sample_size=32, patch_size=2, in_channels=4, hidden_size=1152, num_layers=28, num_heads=16,
                     num_classes=1000)
    ours = sum(p.numel() for p in m.parameters())
    pos_embed = 256 * 1152  # a parameter (frozen) in DiT, a buffer here
    learned_sigma = 1152 * 16 + 16  # DiT's final layer also predicts 4 variance channels per pixel of a 2x2 patch
    assert ours + pos_embed + learned_sigma == 675_129_632  # DiT-XL/2 as printed by facebookresearch/DiT train.py


def test_embeddings_closed_forms():
    e = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    assert torch.allclose(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert abs(e[1, 0].item() - torch.cos(torch.tensor(3.0)).item()) < 1e-6
    table = sincos_2d(8, 3)
    assert table.shape == (9, 8) and torch.allclose(table[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))


def test_sizes_and_bad_configs():
    assert parse_dit_size("DiT-XL/2") == (28, 1152, 16, 2) and parse_dit_size("SiT-S/1") == (12, 384, 6, 1)
    for bad in ("DiT-XXL/2", "DiT-XL", "XL/2"):
        with pytest.raises(ValueError, match="unknown size"):
            parse_dit_size(bad)
    with pytest.raises(ValueError, match="patch_size"):
        DiTModel(sample_size=7, patch_size=2)
    with pytest.raises(ValueError, match="sample must be"):
        DiTModel(sample_size=4, patch_size=1, in_channels=2, hidden_size=8, num_layers=1, num_heads=2)(
            torch.zeros(1, 3, 4, 4), torch.tensor([1]), torch.tensor([0]))
