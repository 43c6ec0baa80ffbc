"""from_pretrained refuses weights that do not fit the model (diffusers alone warns and leaves them random)."""
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from lcgen.priors.gpt import GPTPrior
from lcgen.tokenizer import VQTokenizer


def weights_file(folder):
    (name,) = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    return os.path.join(folder, name)


def small_tokenizer():
    return VQTokenizer(backbone="vqvae", in_channels=1, resolution=28, embed_dim=16, quantizer_kind="looc",
                       codebook_size=64, quantizer_options={"chunk_dim": 4})


def test_tokenizer_without_the_residual_biases_is_refused_naming_them(tmp_path):
    small_tokenizer().save_pretrained(tmp_path)
    path = weights_file(tmp_path)
    weights = load_file(path)
    old_layout = {k: v for k, v in weights.items() if not ("residual_stack" in k and k.endswith("bias"))}
    assert len(weights) - len(old_layout) == 8  # 2 blocks x 2 convolutions, encoder and decoder
    save_file(old_layout, path)
    with pytest.raises(ValueError, match=r"8 weights missing from the checkpoint \(decoder\.residual_stack"):
        VQTokenizer.from_pretrained(tmp_path)


def test_extra_weights_are_refused_and_a_faithful_checkpoint_loads_equal(tmp_path):
    model = GPTPrior(codebook_size=32, grid_height=2, grid_width=2, num_classes=3, hidden_size=16, num_layers=1,
                     num_heads=2, ffn_multiple_of=16)
    model.save_pretrained(tmp_path / "good")
    loaded, info = GPTPrior.from_pretrained(tmp_path / "good", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    model.save_pretrained(tmp_path / "extra")
    path = weights_file(tmp_path / "extra")
    save_file({**load_file(path), "stray.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"1 weights not in the model \(stray\.weight\)"):
        GPTPrior.from_pretrained(tmp_path / "extra")
