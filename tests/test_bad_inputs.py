"""Bad input to the Python API, table-driven: every case must raise its documented error type (with
the argument named in the message) before any model forward and without writing a file.

The guard: `torch.nn.Module.__call__` is replaced by a function that raises `ForwardRan` (a
BaseException, so no `except Exception` in lcgen can swallow it) for the duration of each case, and
the case's temporary folder is listed before and after. Module methods under test are called through
`.forward` or their public method (encode, decode, lookup), so the check has to come before the first
sub-module call. The CLI's table is tests/test_bad_cli.py.
"""
import os

import pytest
import torch
from safetensors.torch import save_file

from tiny import tiny_pipeline, tiny_tokenizer

from lcgen.convert import convert
from lcgen.eval.class_fid import require_labels
from lcgen.eval.fid import frechet_distance
from lcgen.eval.generation_fid import evaluate_fid
from lcgen.eval.measure import MeasureSettings
from lcgen.eval.rfid import evaluate_rfid
from lcgen.eval.sampling import generate
from lcgen.official_checkpoints import load_state_dict
from lcgen.pipelines import load_pipeline
from lcgen.priors.dit import DiTModel
from lcgen.priors.extract import extract
from lcgen.priors.gpt import GPTPrior
from lcgen.priors.sampling import filter_logits, sample_tokens
from lcgen.tokenizer import VQTokenizer
from lcgen.tokenizer.codebook_init import build_lc_codebook
from lcgen.tokenizer.quantizers import build_quantizer
from lcgen.tokenizer.quantizers.search import nearest_code

FAMILIES = ("gpt", "ldm", "dit", "sit")
NAN, INF = float("nan"), float("inf")


class ForwardRan(BaseException):
    """A model forward started: the input check came too late."""


def _no_forward(self, *args, **kwargs):
    raise ForwardRan(f"{type(self).__name__}.forward ran before the bad input was refused")


def _listing(root):
    return sorted((os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f)))
                  for d, _, files in os.walk(root) for f in files) + \
        sorted(os.path.relpath(d, root) for d, _, _ in os.walk(root))


class Ctx:
    """What the cases use: tiny models built once, saved folders and bad files on disk."""

    def __init__(self, root):
        self.root = root
        self.tok = tiny_tokenizer()
        self.lc = build_quantizer("lc", dim=8, codebook_size=64, init_codebook=torch.randn(64, 16))
        self.pipes = {f: tiny_pipeline(f) for f in FAMILIES}
        self.tok_dir = os.path.join(root, "tokenizer")
        self.tok.save_pretrained(self.tok_dir)
        self.pipe_dir = os.path.join(root, "pipeline")
        self.pipes["gpt"].save_pretrained(self.pipe_dir)
        self.empty = self._write("empty.pt", b"")
        self.text = self._write("notes.pt", b"these are not weights\n")
        self.a_file = self._write("a_file", b"x")
        good = os.path.join(root, "good.safetensors")
        save_file({"w": torch.zeros(64, 64)}, good)
        with open(good, "rb") as f:
            self.truncated = self._write("truncated.safetensors", f.read()[:100])
        self.full_dir = os.path.join(root, "full")
        os.makedirs(self.full_dir)
        self._write("full/keep.txt", b"mine")
        self.missing = os.path.join(root, "does-not-exist")

    def _write(self, name, data):
        path = os.path.join(self.root, name)
        with open(path, "wb") as f:
            f.write(data)
        return path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Ctx(str(tmp_path_factory.mktemp("bad-inputs")))


def images(c=1, side=28, fill=0.0, dtype=torch.float32):
    return torch.full((2, c, side, side), fill, dtype=dtype)


def _call(pipe_family, **kwargs):
    def run(ctx):
        args = {"class_id": 1, "num_images_per_class": 1}
        if ctx.pipes[pipe_family].num_classes == 0:
            args.pop("class_id")
        args.update(kwargs)
        return ctx.pipes[pipe_family](**args)
    return run


# (id, call(ctx), expected error type, regex the message must contain: the argument's name)
CASES = [
    # ---------------------------------------------------------------- tokenizer
    ("tokenizer-unknown-quantizer", lambda c: VQTokenizer(quantizer_kind="nope"), ValueError, "nope|quantizer"),
    ("tokenizer-unknown-backbone", lambda c: VQTokenizer(backbone="resnet"), ValueError, "backbone"),
    ("tokenizer-codebook-size-0", lambda c: VQTokenizer(codebook_size=0), ValueError, "codebook_size"),
    ("tokenizer-codebook-size-float", lambda c: VQTokenizer(codebook_size=1.5), (ValueError, TypeError), "codebook_size"),
    ("tokenizer-embed-dim-negative", lambda c: VQTokenizer(embed_dim=-1), ValueError, "dim"),
    ("encode-list", lambda c: c.tok.encode([[0.0]]), TypeError, "images"),
    ("encode-uint8", lambda c: c.tok.encode(images(dtype=torch.uint8)), TypeError, "uint8|float"),
    ("encode-three-channels", lambda c: c.tok.encode(images(c=3)), ValueError, "shape"),
    ("encode-rank-3", lambda c: c.tok.encode(torch.zeros(1, 28, 28)), ValueError, "shape"),
    ("encode-side-not-divisible", lambda c: c.tok.encode(images(side=30)), ValueError, "divisible"),
    ("encode-0-255-range", lambda c: c.tok.encode(images(fill=200.0)), ValueError, r"\[-1, 1\]"),
    ("encode-nan", lambda c: c.tok.encode(images(fill=NAN)), ValueError, r"\[-1, 1\]"),
    ("encode-latents-inf", lambda c: c.tok.encode_latents(images(fill=INF)), ValueError, r"\[-1, 1\]"),
    ("decode-wrong-channels", lambda c: c.tok.decode(torch.zeros(1, 3, 7, 7)), ValueError, "decode"),
    ("decode-not-a-tensor", lambda c: c.tok.decode("codes"), ValueError, "decode"),
    ("decode-indices-float", lambda c: c.tok.decode_indices(torch.zeros(1, 7, 7, 4)), TypeError, "indices"),
    ("decode-indices-out-of-range", lambda c: c.tok.decode_indices(torch.full((1, 7, 7, 4), 32)), ValueError, "indices"),
    ("decode-indices-negative", lambda c: c.tok.decode_indices(torch.full((1, 7, 7, 4), -1)), ValueError, "indices"),
    ("decode-indices-wrong-rank", lambda c: c.tok.decode_indices(torch.zeros(1, 7, 7, dtype=torch.long)), ValueError, "indices"),
    ("tokenizer-load-missing", lambda c: VQTokenizer.from_pretrained(c.missing), (OSError, ValueError), "does-not-exist"),
    # ---------------------------------------------------------------- quantizers and search
    ("quantizer-unknown-kind", lambda c: build_quantizer("nope", 8, 16), ValueError, "nope"),
    ("quantizer-size-0", lambda c: build_quantizer("vq", 8, 0), ValueError, "codebook_size"),
    ("quantizer-size-bool", lambda c: build_quantizer("vq", 8, True), (ValueError, TypeError), "codebook_size"),
    ("quantizer-dim-0", lambda c: build_quantizer("vq", 0, 16), ValueError, "dim"),
    ("quantizer-unknown-option", lambda c: build_quantizer("vq", 8, 16, no_such_option=1), (ValueError, TypeError), "no_such_option"),
    ("quantizer-ema-decay-nan", lambda c: build_quantizer("ema", 8, 16, decay=NAN), ValueError, "decay"),
    ("quantizer-ema-decay-above-1", lambda c: build_quantizer("ema", 8, 16, decay=1.5), ValueError, "decay"),
    ("quantizer-commitment-nan", lambda c: build_quantizer("vq", 8, 16, commitment_weight=NAN), ValueError, "commitment"),
    ("quantizer-looc-chunk-not-dividing", lambda c: build_quantizer("looc", 10, 16, chunk_dim=4), ValueError, "chunk"),
    ("lc-codebook-wrong-rows", lambda c: build_quantizer("lc", 8, 64, init_codebook=torch.randn(10, 16)), ValueError, "64|rows|codebook"),
    ("lc-codebook-nan", lambda c: build_quantizer("lc", 8, 4, init_codebook=torch.full((4, 16), NAN)), ValueError, "NaN"),
    ("lc-codebook-int", lambda c: build_quantizer("lc", 8, 4, init_codebook=torch.zeros(4, 16, dtype=torch.long)), TypeError, "floating"),
    ("lc-codebook-missing-file", lambda c: build_quantizer("lc", 8, 4, init_codebook=c.missing), FileNotFoundError, "does-not-exist"),
    ("lc-codebook-truncated-file", lambda c: build_quantizer("lc", 8, 4, init_codebook=c.truncated), ValueError, "truncated"),
    ("lc-projector-init-unknown", lambda c: build_quantizer("lc", 8, 4, init_codebook=torch.randn(4, 16), projector_init="x"), ValueError, "projector_init"),
    ("quantize-wrong-channels", lambda c: c.lc.forward(torch.zeros(1, 3, 2, 2)), ValueError, "channels"),
    ("quantize-rank-3", lambda c: c.lc.forward(torch.zeros(8, 2, 2)), ValueError, "rank"),
    ("quantize-int", lambda c: c.lc.forward(torch.zeros(1, 8, 2, 2, dtype=torch.long)), TypeError, "floating"),
    ("quantize-nan", lambda c: c.lc.forward(torch.full((1, 8, 2, 2), NAN)), ValueError, "NaN"),
    ("quantize-not-a-tensor", lambda c: c.lc.forward([1.0]), TypeError, "tensor"),
    ("lookup-float", lambda c: c.lc.lookup(torch.zeros(1, 2, 2)), TypeError, "indices"),
    ("lookup-out-of-range", lambda c: c.lc.lookup(torch.full((1, 2, 2), 64)), ValueError, "indices"),
    ("search-unknown-distance", lambda c: nearest_code(torch.zeros(4, 8), torch.zeros(16, 8), distance="l1"), ValueError, "distance"),
    ("search-dim-mismatch", lambda c: nearest_code(torch.zeros(4, 8), torch.zeros(16, 4)), ValueError, "codes"),
    ("search-unknown-method", lambda c: nearest_code(torch.zeros(4, 8), torch.zeros(16, 8), method="ann"), ValueError, "method"),
    ("search-kdtree-cos", lambda c: nearest_code(torch.zeros(4, 8), torch.zeros(16, 8), "cos", method="kdtree"), ValueError, "kdtree"),
    # ---------------------------------------------------------------- priors
    ("gpt-heads-not-dividing", lambda c: GPTPrior(hidden_size=30, num_heads=4), ValueError, "num_heads"),
    ("gpt-codebook-0", lambda c: GPTPrior(codebook_size=0), ValueError, "codebook_size"),
    ("gpt-negative-classes", lambda c: GPTPrior(num_classes=-1), ValueError, "num_classes"),
    ("gpt-unknown-position-scheme", lambda c: GPTPrior(position_scheme="alibi"), ValueError, "position_scheme"),
    ("dit-patch-not-dividing", lambda c: DiTModel(sample_size=7, patch_size=2), ValueError, "patch_size"),
    ("dit-negative-classes", lambda c: DiTModel(num_classes=-2), ValueError, "num_classes"),
    ("sample-tokens-temperature-nan", lambda c: sample_tokens(torch.zeros(2, 8), temperature=NAN), ValueError, "temperature"),
    ("sample-tokens-temperature-negative", lambda c: sample_tokens(torch.zeros(2, 8), temperature=-1.0), ValueError, "temperature"),
    ("filter-top-p-above-1", lambda c: filter_logits(torch.zeros(2, 8), top_p=1.5), ValueError, "top_p"),
    ("filter-top-k-negative", lambda c: filter_logits(torch.zeros(2, 8), top_k=-3), ValueError, "top_k"),
    # ---------------------------------------------------------------- pipelines, every family
    *[case for f in FAMILIES for case in (
        (f"{f}-class-id-out-of-range", _call(f, class_id=10), ValueError, "class_id"),
        (f"{f}-class-id-negative", _call(f, class_id=-1), ValueError, "class_id"),
        (f"{f}-class-id-unknown-name", _call(f, class_id="zebra"), ValueError, "zebra"),
        (f"{f}-class-id-bool", _call(f, class_id=True), ValueError, "class_id"),
        (f"{f}-class-id-float", _call(f, class_id=1.5), ValueError, "class_id"),
        (f"{f}-class-id-empty-list", _call(f, class_id=[]), ValueError, "class_id"),
        (f"{f}-images-per-class-0", _call(f, num_images_per_class=0), ValueError, "num_images_per_class"),
        (f"{f}-guidance-nan", _call(f, guidance_scale=NAN), ValueError, "guidance_scale"),
        (f"{f}-guidance-inf", _call(f, guidance_scale=INF), ValueError, "guidance_scale"),
        (f"{f}-guidance-negative", _call(f, guidance_scale=-1.0), ValueError, "guidance_scale"),
        (f"{f}-guidance-string", _call(f, guidance_scale="4"), ValueError, "guidance_scale"),
        (f"{f}-generator-int", _call(f, generator=5), TypeError, "generator"),
        (f"{f}-generator-list-of-ints", _call(f, class_id=[1, 2], generator=[1, 2]), TypeError, "generator"),
        (f"{f}-generator-count", _call(f, class_id=[1, 2], generator=[torch.Generator()]), ValueError, "generator"),
        (f"{f}-output-type", _call(f, output_type="tiff"), ValueError, "output_type"),
    )],
    *[(f"{f}-steps-{name}", _call(f, num_inference_steps=v), ValueError, "num_inference_steps")
      for f in ("ldm", "dit", "sit") for name, v in (("0", 0), ("float", 2.5), ("bool", True))],
    ("sit-unknown-sampler", _call("sit", sampling_method="rk4"), ValueError, "sampling_method"),
    ("gpt-temperature-nan", _call("gpt", temperature=NAN), ValueError, "temperature"),
    ("gpt-temperature-inf", _call("gpt", temperature=INF), ValueError, "temperature"),
    ("gpt-top-k-negative", _call("gpt", top_k=-1), ValueError, "top_k"),
    ("gpt-top-p-0", _call("gpt", top_p=0.0), ValueError, "top_p"),
    ("gpt-top-p-nan", _call("gpt", top_p=NAN), ValueError, "top_p"),
    ("unconditional-with-class", lambda c: tiny_pipeline("dit", num_classes=0)(class_id=1), ValueError, "unconditional"),
    ("load-pipeline-of-tokenizer-folder", lambda c: load_pipeline(c.tok_dir), (ValueError, FileNotFoundError), "model_index|pipeline"),
    ("load-pipeline-missing-folder", lambda c: load_pipeline(c.missing), (ValueError, FileNotFoundError), "does-not-exist"),
    # ---------------------------------------------------------------- extraction
    ("extract-store-unknown", lambda c: extract(c.tok_dir, "fashion-mnist", c.out, store=("pixels",)), ValueError, "store"),
    ("extract-store-empty", lambda c: extract(c.tok_dir, "fashion-mnist", c.out, store=()), ValueError, "store"),
    ("extract-latent-dtype", lambda c: extract(c.tok_dir, "fashion-mnist", c.out, latent_dtype="int8"), ValueError, "latent_dtype"),
    ("extract-batch-0", lambda c: extract(c.tok_dir, "fashion-mnist", c.out, batch_size=0), ValueError, "batch_size"),
    ("extract-shard-negative", lambda c: extract(c.tok_dir, "fashion-mnist", c.out, shard_size=-5), ValueError, "shard_size"),
    ("extract-missing-tokenizer", lambda c: extract(c.missing, "fashion-mnist", c.out), (ValueError, FileNotFoundError), "tokenizer"),
    ("extract-pipeline-as-tokenizer", lambda c: extract(c.pipe_dir, "fashion-mnist", c.out), (ValueError, FileNotFoundError), "tokenizer"),
    ("extract-output-is-a-file", lambda c: extract(c.tok_dir, "fashion-mnist", c.a_file), ValueError, "output_dir"),
    ("extract-unknown-dataset", lambda c: extract(c.tok_dir, "mnist-but-not", c.out), ValueError, "mnist-but-not"),
    ("extract-unknown-split", lambda c: extract(c.tok_dir, "fashion-mnist", c.out, split="dev"), ValueError, "split"),
    ("extract-max-samples-0", lambda c: extract(c.tok_dir, "fashion-mnist", c.out, max_samples=0), ValueError, "max_samples"),
    # ---------------------------------------------------------------- sampling
    ("generate-num-samples-0", lambda c: generate(c.pipe_dir, c.out, 0), ValueError, "num_samples"),
    ("generate-batch-0", lambda c: generate(c.pipe_dir, c.out, 4, batch_size=0), ValueError, "batch_size"),
    ("generate-uint8-rule", lambda c: generate(c.pipe_dir, c.out, 4, uint8_rule="ceil"), ValueError, "uint8_rule"),
    ("generate-missing-pipeline", lambda c: generate(c.missing, c.out, 4), (ValueError, FileNotFoundError), "does-not-exist"),
    ("generate-output-is-a-file", lambda c: generate(c.pipe_dir, c.a_file, 4), ValueError, "output"),
    ("generate-guidance-nan", lambda c: generate(c.pipe_dir, c.out, 4, guidance_scale=NAN), ValueError, "guidance_scale"),
    ("generate-unknown-sampling-key", lambda c: generate(c.pipe_dir, c.out, 4, cfg_scale=2.0), (ValueError, TypeError), "cfg_scale"),
    # ---------------------------------------------------------------- evaluation
    ("fid-shape-mismatch", lambda c: frechet_distance(torch.zeros(4), torch.eye(4), torch.zeros(3), torch.eye(3)), ValueError, "shape|dim"),
    ("fid-nan-statistics", lambda c: frechet_distance(torch.full((2,), NAN), torch.eye(2), torch.zeros(2), torch.eye(2)), ValueError, "NaN|finite"),
    ("measure-unknown-metric", lambda c: MeasureSettings(metrics=("fld",)).check(), ValueError, "metrics"),
    ("measure-batch-0", lambda c: MeasureSettings(batch_size=0).check(), ValueError, "batch_size"),
    ("measure-is-splits", lambda c: MeasureSettings(is_splits="ten").check(), ValueError, "is_splits"),
    ("evaluate-fid-no-source", lambda c: evaluate_fid(c.out, "fashion-mnist-test"), ValueError, "pipeline"),
    ("evaluate-fid-num-samples-0", lambda c: evaluate_fid(c.out, "fashion-mnist-test", pipeline=c.pipe_dir, num_samples=0), ValueError, "num_samples"),
    ("evaluate-fid-missing-samples", lambda c: evaluate_fid(c.out, "fashion-mnist-test", samples=c.missing), FileNotFoundError, "does-not-exist"),
    ("evaluate-fid-missing-reference", lambda c: evaluate_fid(c.out, c.missing + ".npz", samples=c.full_dir), FileNotFoundError, "reference|does-not-exist"),
    ("evaluate-rfid-missing-tokenizer", lambda c: evaluate_rfid(c.missing, c.out), ValueError, "VQTokenizer"),
    ("evaluate-rfid-protocol", lambda c: evaluate_rfid(c.tok_dir, c.out, protocol="taming"), ValueError, "protocol"),
    ("evaluate-rfid-resolution-0", lambda c: evaluate_rfid(c.tok_dir, c.out, resolution=0), ValueError, "resolution"),
    ("class-fid-needs-labels", lambda c: require_labels(None, "sample", "samples.npz"), ValueError, "class_fid needs the class"),
    # ---------------------------------------------------------------- converters and checkpoints
    ("convert-unknown-source", lambda c: convert("vqgan-xl", c.text, c.out), ValueError, "source"),
    ("convert-missing-checkpoint", lambda c: convert("llamagen-vq", c.missing, c.out), FileNotFoundError, "checkpoint"),
    ("convert-empty-checkpoint", lambda c: convert("llamagen-vq", c.empty, c.out, model="VQ-16"), ValueError, "empty|checkpoint"),
    ("convert-text-checkpoint", lambda c: convert("llamagen-vq", c.text, c.out, model="VQ-16"), ValueError, "checkpoint"),
    ("convert-truncated-checkpoint", lambda c: convert("llamagen-vq", c.truncated, c.out, model="VQ-16"), ValueError, "truncated|checkpoint"),
    ("convert-output-is-a-file", lambda c: convert("llamagen-vq", c.text, c.a_file), ValueError, "output"),
    ("convert-output-not-empty", lambda c: convert("llamagen-vq", c.text, c.full_dir), ValueError, "overwrite"),
    ("convert-output-parent-missing", lambda c: convert("llamagen-vq", c.text, os.path.join(c.missing, "x")), FileNotFoundError, "parent"),
    ("convert-image-size-0", lambda c: convert("llamagen-vq", c.text, c.out, image_size=0), ValueError, "image-size"),
    ("convert-taming-without-config", lambda c: convert("taming", c.text, c.out), ValueError, "config"),
    ("convert-gpt-without-tokenizer", lambda c: convert("llamagen-gpt", c.text, c.out), ValueError, "tokenizer"),
    ("convert-llamagen-unknown-model", lambda c: convert("llamagen-vq", c.text, c.out, model="VQ-99"), ValueError, "VQ-99"),
    ("convert-dit-tokenizer-not-a-folder", lambda c: convert("dit-lc", c.text, c.out, tokenizer=c.a_file), FileNotFoundError, "tokenizer"),
    ("load-state-dict-empty", lambda c: load_state_dict(c.empty), ValueError, "empty"),
    ("load-state-dict-text", lambda c: load_state_dict(c.text), ValueError, "notes.pt"),
    ("load-state-dict-missing", lambda c: load_state_dict(c.missing), FileNotFoundError, "does-not-exist"),
    # ---------------------------------------------------------------- codebook initialisation
    ("init-codebook-size-0", lambda c: build_lc_codebook(c.tok_dir, None, 0, c.out + ".safetensors", dataset="fashion-mnist"), ValueError, "codebook_size"),
    ("init-codebook-output-extension", lambda c: build_lc_codebook(c.tok_dir, None, 16, c.out + ".pth", dataset="fashion-mnist"), ValueError, "safetensors"),
    ("init-codebook-missing-folder", lambda c: build_lc_codebook(c.tok_dir, c.missing, 16, c.out + ".safetensors"), (ValueError, FileNotFoundError), "does-not-exist|image_folder"),
    ("init-codebook-missing-encoder", lambda c: build_lc_codebook(c.missing, None, 16, c.out + ".safetensors", dataset="fashion-mnist"), (ValueError, FileNotFoundError), "encoder|does-not-exist"),
]


def test_the_table_has_at_least_100_cases_with_unique_names():
    names = [c[0] for c in CASES]
    assert len(names) >= 100 and len(set(names)) == len(names), len(names)


@pytest.mark.parametrize("name,call,error,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_any_work(ctx, monkeypatch, name, call, error, match):
    ctx.out = os.path.join(ctx.root, f"out-{name}")  # never created by a refused call
    before = _listing(ctx.root)
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_forward)
    with pytest.raises(error, match=match):
        call(ctx)
    monkeypatch.undo()
    assert _listing(ctx.root) == before, "a refused call wrote or removed files"


def test_the_guard_catches_a_forward(ctx, monkeypatch):
    """The table's guard is live: a valid call does reach a forward and is stopped."""
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_forward)
    with pytest.raises(ForwardRan):
        ctx.tok.encode(images())
