"""The four pipelines: `pipe(class_id=...)` by id, list and name, outputs, determinism, bad input,
save/load with identical samples (own class and diffusers' generic DiffusionPipeline loader), loading
from the Hub cache offline, and push_to_hub's upload with a Hub-readable model card."""
import hashlib
import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard
from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache  # the layout snapshot_download writes
from tiny import tiny_pipeline

from lcgen.pipelines import VQDiTPipeline, VQGPTPipeline, VQLDMPipeline, VQSiTPipeline, load_pipeline

FAMILIES = ["gpt", "ldm", "dit", "sit"]


@pytest.fixture(scope="module", params=FAMILIES)
def pipe(request):
    p = tiny_pipeline(request.param)
    p.set_progress_bar_config(disable=True)
    return p


def sample(p, seed=0, **kw):
    return p(generator=torch.Generator().manual_seed(seed), output_type="pt", **{"class_id": [1, 2], **kw}).images


def test_class_ids_names_and_outputs(pipe):
    out = pipe(class_id=[1, "class2", "frock"], num_images_per_class=2, generator=torch.Generator().manual_seed(0),
               output_type="pt")
    assert out.images.shape == (6, 1, 28, 28) and 0 <= out.images.min() and out.images.max() <= 1
    pil = pipe(class_id=4, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 1 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (28, 28) and pil[0].mode == "L"
    arr = pipe(class_id="dress", output_type="np", return_dict=False)[0]
    assert isinstance(arr, np.ndarray) and arr.shape == (1, 28, 28, 1)
    assert pipe.get_label_ids("dress") == [3] and pipe.get_label_ids(["class1", "frock"]) == [1, 3]


def test_fixed_generator_is_deterministic(pipe):
    a, b, c = sample(pipe, 0), sample(pipe, 0), sample(pipe, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    assert pipe(class_id=[1, 2], generator=gens, output_type="pt").images.shape[0] == 2


@pytest.mark.slow
def test_compiled_sampling_gives_the_eager_images(pipe):
    """compile=True (torch.compile of the GPT step / the denoiser) changes the speed, not the samples;
    a non-bool is refused."""
    eager = sample(pipe, 3)
    compiled = sample(pipe, 3, compile=True)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=2e-5)
    torch.testing.assert_close(sample(pipe, 3), eager, rtol=0, atol=0)  # the model is left eager
    with pytest.raises(TypeError, match="compile"):
        sample(pipe, 3, compile="yes")


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.load(open(tmp_path / "model_index.json"))
    assert index["_class_name"] == type(pipe).__name__ and index["vqvae"] == ["lcgen.tokenizer.model", "VQTokenizer"]
    assert not list(tmp_path.rglob("*.bin")) and list(tmp_path.rglob("*.safetensors"))
    loaded = type(pipe).from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.id2label == pipe.id2label and loaded.id2label[3] == "dress, frock"
    assert torch.equal(sample(loaded, 5), sample(pipe, 5))
    assert type(load_pipeline(str(tmp_path))) is type(pipe)


@pytest.mark.parametrize("kwargs,match", [
    ({"class_id": 10}, "out of range"),
    ({"class_id": -1}, "out of range"),
    ({"class_id": "unicorn"}, "not in id2label"),
    ({"class_id": None}, "class_id is required"),
    ({"class_id": []}, "empty"),
    ({"class_id": 1.5}, "ints or class names"),
    ({"class_id": 1, "num_images_per_class": 0}, "num_images_per_class"),
    ({"class_id": [1, 2], "generator": [torch.Generator()]}, "generators for 2 images"),
    ({"class_id": 1, "output_type": "latent"}, "output_type"),
    ({"class_id": 1, "guidance_scale": -1.0}, "guidance_scale"),
])
def test_bad_inputs(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(**kwargs)


@pytest.mark.parametrize("family", ["gpt", "ldm", "dit", "sit"])
@pytest.mark.parametrize("kwargs,error,match", [
    ({"generator": 5}, TypeError, "generator must be a torch.Generator"),
    ({"generator": [torch.Generator(), "seed"]}, TypeError, "generator must be a torch.Generator"),
    ({"guidance_scale": float("nan")}, ValueError, "guidance_scale must be a finite number"),
    ({"guidance_scale": float("inf")}, ValueError, "guidance_scale must be a finite number"),
    ({"guidance_scale": True}, ValueError, "guidance_scale must be a finite number"),
])
def test_non_finite_numbers_and_wrong_generators_fail_before_sampling(family, kwargs, error, match, monkeypatch):
    """Found by hand in issue 17: these reached diffusers or the sampling loop before failing."""
    pipe = tiny_pipeline(family)
    model = pipe.transformer if family == "gpt" else pipe.denoiser
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("the model ran before the input was checked"))
    with pytest.raises(error, match=match):
        pipe(class_id=[1, 1] if "generator" in kwargs and isinstance(kwargs["generator"], list) else 1, **kwargs)


@pytest.mark.parametrize("steps", [0, -3, 2.5])
@pytest.mark.parametrize("family", ["ldm", "dit", "sit"])
def test_bad_step_counts(family, steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny_pipeline(family)(class_id=1, num_inference_steps=steps)


@pytest.mark.parametrize("kwargs,match", [({"temperature": -1.0}, "temperature"), ({"top_k": -2}, "top_k"),
                                          ({"temperature": float("nan")}, "temperature .* must be a finite number"),
                                          ({"temperature": float("inf")}, "temperature .* must be a finite number"),
                                          ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")])
def test_bad_gpt_sampling_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipeline("gpt")(class_id=1, **kwargs)


def test_bad_sit_sampler():
    with pytest.raises(ValueError, match="sampling_method"):
        tiny_pipeline("sit")(class_id=1, sampling_method="rk45")


@pytest.mark.parametrize("family", FAMILIES)
def test_unconditional_pipelines(family):
    pipe = tiny_pipeline(family, num_classes=0)
    assert pipe(num_images_per_class=3, output_type="pt").images.shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="unconditional"):
        pipe(num_images_per_class=1, guidance_scale=4.0)
    with pytest.raises(ValueError, match="unconditional"):
        pipe(class_id=1)


def test_guidance_mixes_conditional_and_null_outputs():
    """guidance_scale 0 gives the null-class sample, 1 the conditional one (same noise)."""
    pipe = tiny_pipeline("dit")
    null = pipe(class_id=[10 - 1], guidance_scale=0.0, generator=torch.Generator().manual_seed(0), output_type="pt")
    for other in (2, 5):
        assert torch.equal(null.images, pipe(class_id=[other], guidance_scale=0.0, output_type="pt",
                                             generator=torch.Generator().manual_seed(0)).images)
    assert not torch.equal(pipe(class_id=[2], guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                                output_type="pt").images, null.images)


def test_mismatched_components_are_rejected():
    from tiny import tiny_dit, tiny_gpt, tiny_tokenizer

    tok, other = tiny_tokenizer(), tiny_tokenizer("vq", embed_dim=8)
    with pytest.raises(ValueError, match="tokenizer"):
        VQGPTPipeline(other, tiny_gpt(tok))
    with pytest.raises(ValueError, match="embed_dim"):
        VQSiTPipeline(other, tiny_dit(tok))
    with pytest.raises(ValueError, match="id2label"):
        VQSiTPipeline(tok, tiny_dit(tok), id2label={12: "x"})


def _fake_hub_cache(cache, repo_id, folder, tree_listing):
    """huggingface_hub's cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}, and, as a
    real snapshot_download leaves it, the commit's file listing (trees/<commit>.json): with it diffusers
    runs the same component checks offline as online."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, os.path.join(root, "snapshots", commit))
    os.makedirs(os.path.join(root, "refs"))
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(commit)
    if tree_listing:
        entries = {}
        for dirpath, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(dirpath, name)
                entries[os.path.relpath(path, folder).replace(os.sep, "/")] = TreeCacheEntry(
                    size=os.path.getsize(path), blob_id=hashlib.sha1(open(path, "rb").read()).hexdigest())
        write_tree_cache(root, commit, entries)


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_generic_loader_returns_the_lcgen_pipeline(family, tmp_path):
    """DiffusionPipeline.from_pretrained(folder) -> the class model_index.json names, same samples."""
    pipe = tiny_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe) and torch.equal(sample(loaded, 3), sample(pipe, 3))


@pytest.mark.parametrize("family,tree_listing", [("gpt", True), ("ldm", True), ("dit", True), ("sit", True),
                                                 ("dit", False)])
def test_from_pretrained_repo_id_offline_from_the_hub_cache(family, tree_listing, tmp_path, offline):
    pipe = tiny_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "saved")
    repo = f"lcgen/tiny-{family}"
    _fake_hub_cache(str(tmp_path / "cache"), repo, str(tmp_path / "saved"), tree_listing)
    for loader in (DiffusionPipeline, type(pipe)):
        loaded = loader.from_pretrained(repo, cache_dir=str(tmp_path / "cache"))
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded) is type(pipe) and torch.equal(sample(loaded), sample(pipe))
    with pytest.raises(Exception):
        type(pipe).from_pretrained("lcgen/not-cached", cache_dir=str(tmp_path / "cache"))


def test_load_pipeline_refuses_another_librarys_pipeline(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionPipeline.*not one of lcgen's"):
        load_pipeline(str(tmp_path))


def test_push_to_hub_uploads_pipeline_card_and_grid(monkeypatch, tmp_path):
    """huggingface_hub is intercepted at HfApi.create_repo / upload_folder (the calls that would go
    over HTTP); the uploaded folder must load back and carry the model card and example grid."""
    from huggingface_hub import HfApi

    uploaded = {}

    class Repo:
        repo_id = "you/tiny-ldm"

    def create_repo(self, repo_id, **kw):
        uploaded["create"] = (repo_id, kw)
        return Repo()

    def upload_folder(self, repo_id, folder_path, **kw):
        shutil.copytree(folder_path, tmp_path / "uploaded")
        uploaded["upload"] = (repo_id, kw)
        return "https://huggingface.co/you/tiny-ldm/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    pipe = tiny_pipeline("ldm")
    pipe.register_to_config(info={"dataset": "fashion-mnist", "class_accuracy": 0.5})
    url = pipe.push_to_hub("you/tiny-ldm", private=True, example_class_ids=[0, 3])
    assert url.endswith("/0") and uploaded["create"] == ("you/tiny-ldm", {"private": True, "exist_ok": True})
    files = set(os.listdir(tmp_path / "uploaded"))
    assert {"README.md", "example_grid.png", "model_index.json", "vqvae", "unet", "scheduler"} <= files
    card = open(tmp_path / "uploaded" / "README.md").read()
    meta = ModelCard.load(tmp_path / "uploaded" / "README.md").data
    assert meta.library_name == "lcgen" and meta.pipeline_tag == "unconditional-image-generation"
    assert {"lcgen", "diffusers", "ldm"} <= set(meta.tags) and meta.datasets == ["zalando-datasets/fashion_mnist"]
    for needle in ("DiffusionPipeline.from_pretrained", "VQLDMPipeline", "fashion-mnist", "class_accuracy", "guidance_scale",
                   "example_grid.png", "`unet` | `UNet2DModel`", "codebook size 32"):
        assert needle in card, needle
    assert PIL.Image.open(tmp_path / "uploaded" / "example_grid.png").size[0] > 28
    loaded = VQLDMPipeline.from_pretrained(tmp_path / "uploaded")
    assert loaded.config.info["class_accuracy"] == 0.5


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_dtype_on_load(family, tmp_path):
    pipe = tiny_pipeline(family)
    pipe.save_pretrained(tmp_path)
    low = type(pipe).from_pretrained(tmp_path, dtype=torch.bfloat16)  # diffusers 0.42: dtype, was torch_dtype
    assert low.denoiser.dtype == torch.bfloat16 if family != "gpt" else low.transformer.dtype == torch.bfloat16
    images = low(class_id=[0, 1], generator=torch.Generator().manual_seed(0), output_type="pt").images
    ref = sample(pipe, 0, class_id=[0, 1])
    assert images.dtype == torch.float32 and torch.isfinite(images).all() and images.shape == ref.shape
