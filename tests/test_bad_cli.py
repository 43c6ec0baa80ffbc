"""Bad input to the `lcgen` command line, table-driven: each command line runs in its own process
(tests/cli_fork.py forks one per case after a single import) and must exit non-zero with one
`error:` line that names the argument, no traceback, and nothing written in its folder."""
import os
import re

import pytest
import torch
from safetensors.torch import save_file

from cli_fork import run_cases
from tiny import tiny_pipeline, tiny_tokenizer

PRESET = "fashion-mnist-looc-d16-cpu"
PRIOR_PRESET = "fashion-mnist-gpt-cpu"

# (id, argv with {placeholders}, regex the error line must contain)
CASES = [
    # sample
    ("sample-missing-pipeline", "sample {missing} --output {out}", "does-not-exist"),
    ("sample-tokenizer-folder", "sample {tok} --output {out}", "model_index"),
    ("sample-num-images-0", "sample {pipe} --output {out} --num-images 0", "num-images"),
    ("sample-guidance-nan", "sample {pipe} --output {out} --class-id 1 --guidance-scale nan", "guidance_scale"),
    ("sample-guidance-negative", "sample {pipe} --output {out} --class-id 1 --guidance-scale -2", "guidance_scale"),
    ("sample-temperature-inf", "sample {pipe} --output {out} --class-id 1 --temperature inf", "temperature"),
    ("sample-top-k-negative", "sample {pipe} --output {out} --class-id 1 --top-k -1", "top_k"),
    ("sample-top-p-2", "sample {pipe} --output {out} --class-id 1 --top-p 2", "top_p"),
    ("sample-class-id-out-of-range", "sample {pipe} --output {out} --class-id 10", "class_id"),
    ("sample-class-name-unknown", "sample {pipe} --output {out} --class-id zebra", "zebra"),
    ("sample-output-is-a-file", "sample {pipe} --output {file} --class-id 1", "output"),
    ("sample-steps-not-int", "sample {pipe} --output {out} --num-inference-steps two", "num-inference-steps"),
    ("sample-no-output", "sample {pipe}", "--output"),
    # extract
    ("extract-missing-tokenizer", "extract {missing} --output {out}", "tokenizer"),
    ("extract-pipeline-as-tokenizer", "extract {pipe} --output {out}", "tokenizer"),
    ("extract-store-unknown", "extract {tok} --output {out} --store pixels", "store"),
    ("extract-latent-dtype", "extract {tok} --output {out} --latent-dtype int8", "latent-dtype"),
    ("extract-batch-0", "extract {tok} --output {out} --batch-size 0", "batch_size"),
    ("extract-shard-0", "extract {tok} --output {out} --shard-size 0", "shard_size"),
    ("extract-output-is-a-file", "extract {tok} --output {file}", "output"),
    ("extract-unknown-dataset", "extract {tok} --output {out} --dataset mnist-but-not", "mnist-but-not"),
    ("extract-max-samples-0", "extract {tok} --output {out} --max-samples 0", "max_samples"),
    # train-tokenizer / train-prior
    ("train-tokenizer-unknown-preset", "train-tokenizer --config no-such-preset", "no-such-preset"),
    ("train-tokenizer-unknown-key", f"train-tokenizer --config {PRESET} --no_such_key 1", "no_such_key"),
    ("train-tokenizer-wrong-type", f"train-tokenizer --config {PRESET} --batch_size many", "batch_size"),
    ("train-tokenizer-lr-nan", f"train-tokenizer --config {PRESET} --lr nan --output_dir {{out}}", "lr"),
    ("train-tokenizer-yaml-unknown-key", "train-tokenizer --config {yaml_unknown}", "warmup_stepz"),
    ("train-tokenizer-yaml-unknown-section", "train-tokenizer --config {yaml_section}", "optimiser"),
    ("train-tokenizer-yaml-not-a-mapping", "train-tokenizer --config {yaml_list}", "mapping"),
    ("train-tokenizer-output-is-a-file", f"train-tokenizer --config {PRESET} --output_dir {{file}}", "output_dir"),
    ("train-prior-unknown-preset", "train-prior --config no-such-prior", "no-such-prior"),
    ("train-prior-unknown-key", f"train-prior --config {PRIOR_PRESET} --no_such_key 1", "no_such_key"),
    ("train-prior-missing-shards", f"train-prior --config {PRIOR_PRESET} --shards {{missing}} --output_dir {{out}}",
     "does-not-exist"),
    ("train-prior-steps-nan", f"train-prior --config {PRIOR_PRESET} --lr nan --output_dir {{out}}", "lr"),
    # evaluate / evaluate-tokenizer
    ("evaluate-fid-missing-samples", "evaluate fid --samples {missing} --reference fashion-mnist-test --output {out}", "does-not-exist"),
    ("evaluate-fid-num-samples-0", "evaluate fid --pipeline {pipe} --num-samples 0 --reference fashion-mnist-test --output {out}", "num_samples"),
    ("evaluate-fid-unknown-metric", "evaluate fid --samples {full} --reference fashion-mnist-test --output {out} --metrics fld", "metrics"),
    ("evaluate-fid-batch-0", "evaluate fid --samples {full} --reference fashion-mnist-test --output {out} --batch-size 0", "batch_size"),
    ("evaluate-fid-output-is-a-file", "evaluate fid --samples {full} --reference fashion-mnist-test --output {file}", "output"),
    ("evaluate-rfid-missing-tokenizer", "evaluate rfid --tokenizer {missing} --output {out}", "VQTokenizer"),
    ("evaluate-rfid-resolution-0", "evaluate rfid --tokenizer {tok} --output {out} --resolution 0", "resolution"),
    ("evaluate-unknown-subcommand", "evaluate fld --output {out}", "fld"),
    ("evaluate-tokenizer-missing-model", "evaluate-tokenizer {missing} --output {out}", "does-not-exist|model"),
    ("evaluate-tokenizer-batch-0", "evaluate-tokenizer {tok} --output {out} --batch-size 0", "batch"),
    # convert
    ("convert-unknown-source", "convert vqgan-xl --checkpoint {text} --output {out}", "source|vqgan-xl"),
    ("convert-missing-checkpoint", "convert llamagen-vq --checkpoint {missing} --output {out}", "checkpoint"),
    ("convert-empty-checkpoint", "convert llamagen-vq --checkpoint {empty} --output {out} --model VQ-16", "empty|checkpoint"),
    ("convert-text-checkpoint", "convert llamagen-vq --checkpoint {text} --output {out} --model VQ-16", "checkpoint|notes.pt"),
    ("convert-truncated-checkpoint", "convert llamagen-vq --checkpoint {truncated} --output {out} --model VQ-16", "truncated|checkpoint"),
    ("convert-output-is-a-file", "convert llamagen-vq --checkpoint {text} --output {file}", "output"),
    ("convert-output-not-empty", "convert llamagen-vq --checkpoint {text} --output {full}", "overwrite"),
    ("convert-image-size-0", "convert llamagen-vq --checkpoint {text} --output {out} --image-size 0", "image-size"),
    ("convert-taming-without-config", "convert taming --checkpoint {text} --output {out}", "config"),
    ("convert-gpt-without-tokenizer", "convert llamagen-gpt --checkpoint {text} --output {out}", "tokenizer"),
    # init-codebook / train-classifier
    ("init-codebook-size-0", "init-codebook --encoder {tok} --dataset fashion-mnist --codebook-size 0 --output {out}.safetensors", "codebook"),
    ("init-codebook-extension", "init-codebook --encoder {tok} --dataset fashion-mnist --codebook-size 16 --output {out}.pth", "safetensors"),
    ("init-codebook-missing-images", "init-codebook --encoder {tok} --image-folder {missing} --codebook-size 16 --output {out}.safetensors", "does-not-exist|image"),
    ("init-codebook-no-images", "init-codebook --encoder {tok} --codebook-size 16 --output {out}.safetensors", "image-folder|dataset"),
    ("train-classifier-epochs-0", "train-classifier --output {out} --epochs 0", "epochs"),
    ("train-classifier-batch-0", "train-classifier --output {out} --batch-size 0", "batch"),
    ("train-classifier-output-is-a-file", "train-classifier --output {file}", "output"),
    ("unknown-command", "paint --output {out}", "paint"),
]


def _listing(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, dirs, files in os.walk(root) for f in files + dirs)


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad-cli"))
    shared = os.path.join(root, "shared")
    os.makedirs(shared)
    tiny_tokenizer().save_pretrained(os.path.join(shared, "tokenizer"))
    tiny_pipeline("gpt").save_pretrained(os.path.join(shared, "pipeline"))
    good = os.path.join(shared, "good.safetensors")
    save_file({"w": torch.zeros(64, 64)}, good)
    with open(good, "rb") as f:
        blob = f.read()
    files = {"empty.pt": b"", "notes.pt": b"these are not weights\n", "a_file": b"x",
             "truncated.safetensors": blob[:100], "full/keep.txt": b"mine",
             "unknown-key.yaml": b"model: {}\ntraining:\n  warmup_stepz: 3\n",
             "unknown-section.yaml": b"optimiser:\n  lr: 1.0\n", "list.yaml": b"- 1\n- 2\n"}
    for name, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(shared, name)), exist_ok=True)
        with open(os.path.join(shared, name), "wb") as f:
            f.write(data)
    place = {"tok": "tokenizer", "pipe": "pipeline", "missing": "does-not-exist", "file": "a_file", "empty": "empty.pt",
             "text": "notes.pt", "truncated": "truncated.safetensors", "full": "full",
             "yaml_unknown": "unknown-key.yaml", "yaml_section": "unknown-section.yaml", "yaml_list": "list.yaml"}
    place = {k: os.path.join(shared, v) for k, v in place.items()}
    cases, folders = [], {}
    for name, line, _ in CASES:
        cwd = os.path.join(root, "cases", name)
        os.makedirs(cwd)
        folders[name] = cwd
        argv = line.format(out=os.path.join(cwd, "out"), **place).split()
        cases.append({"argv": argv, "cwd": cwd})
    before = _listing(shared)
    results = run_cases(cases, root)
    return {name: (r, _listing(folders[name])) for (name, _, _), r in zip(CASES, results)}, before == _listing(shared)


def test_the_cli_table_is_large_and_leaves_shared_files_alone(cli_results):
    results, shared_untouched = cli_results
    assert len(results) == len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)
    assert shared_untouched, "a refused command changed the shared fixtures"


@pytest.mark.parametrize("name,line,match", CASES, ids=[c[0] for c in CASES])
def test_bad_command_line_exits_with_one_error_line(cli_results, name, line, match):
    result, listing = cli_results[0][name]
    err = result["stderr"]
    assert result["returncode"] != 0, f"exit 0; stdout: {result['stdout'][-500:]}"
    assert "Traceback" not in err, err[-3000:]
    last = [ln for ln in err.strip().splitlines() if ln.strip()][-1]
    assert "error:" in last and re.search(match, last), last
    assert listing == [], f"the refused command wrote {listing}"
