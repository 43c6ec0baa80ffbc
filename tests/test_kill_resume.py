"""Long jobs survive `kill -9`: extraction, sampling, feature extraction (evaluate fid) and
`lcgen convert` are each killed at the worst moment — a temporary file written, not yet renamed
(tests/cli_fork.py sends SIGKILL just before the job's os.replace half-way through) — then rerun
with the same command. The rerun must end with exactly the files of an uninterrupted run (bitwise;
JSON compared parsed, without run-local fields), and after the kill no file under a final name may
be partial."""
import io
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load
from cli_fork import run_cases
from test_fid_evaluation import smooth_images, write_npz
from test_published import write_llamagen_files
from tiny import tiny_pipeline, tiny_tokenizer

from lcgen.eval.classifier import ImageClassifier

pytestmark = pytest.mark.slow
TEMPORARY = (".tmp", ".partial-", ".lock")  # names lcgen writes before a rename, and lock files


def _jobs(inputs):
    """name -> (entry point, argv without the output folder, flag naming the output)."""
    return {
        "extract": ("lcgen.cli", ["extract", inputs["tok"], "--max-samples", "60", "--shard-size", "20",
                                  "--batch-size", "20", "--device", "cpu"], "--output"),
        "sampling": ("lcgen.eval.sampling", ["--pipeline", inputs["pipe"], "--num-samples", "6", "--batch-size", "2",
                                            "--npz"], "--output"),
        "features": ("lcgen.cli", ["evaluate", "fid", "--samples", inputs["samples"], "--reference", inputs["ref"],
                                   "--feature-extractor", "lcgen-fashion-mnist", "--feature-extractor-weights",
                                   inputs["clf"], "--shard-size", "4", "--batch-size", "4"], "--output"),
        "convert": ("lcgen.cli", ["convert", "llamagen-vq", "--checkpoint", inputs["vq"], "--image-size", "32"],
                    "--output"),
    }


def _files(root):
    """relative path -> bytes of every file under a final name (temporaries and locks left out)."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            path = os.path.join(d, n)
            rel = os.path.relpath(path, root)
            if not any(t in rel for t in TEMPORARY):
                with open(path, "rb") as f:
                    out[rel] = f.read()
    return out


def _comparable(rel, data, root):
    """A file's content as two equal runs share it: safetensors as (tensor bytes, metadata) — the
    header's metadata order is a hash map's —, npz as its arrays (the zip records mtimes), JSON
    without the run's own folders and timings, anything else as bytes."""
    if rel.endswith(".safetensors"):
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])  # the format's 8-byte length
        return {k: v.numpy().tobytes() for k, v in load(data).items()}, header.get("__metadata__", {})
    if rel.endswith(".npz"):
        with np.load(io.BytesIO(data)) as z:
            return {k: (z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files}
    if not rel.endswith(".json"):
        return data
    run = os.path.basename(root)
    obj = json.loads(data.decode().replace(root, "<run>").replace(f"cache-{run}", "<cache>"))
    for key in ("seconds", "elapsed_seconds", "extract_seconds", "time", "created"):
        if isinstance(obj, dict):
            obj.pop(key, None)
    return obj


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("kill"))
    inputs = {"tok": os.path.join(root, "tokenizer"), "pipe": os.path.join(root, "pipeline"),
              "clf": os.path.join(root, "classifier"), "samples": os.path.join(root, "s.npz"),
              "ref": os.path.join(root, "r.npz")}
    tiny_tokenizer().save_pretrained(inputs["tok"])
    tiny_pipeline("sit").save_pretrained(inputs["pipe"])
    torch.manual_seed(0)
    ImageClassifier().eval().save_pretrained(inputs["clf"])
    write_npz(inputs["samples"], smooth_images(12, 0, size=28))
    write_npz(inputs["ref"], smooth_images(12, 1, size=28))
    write_llamagen_files(os.path.join(root, "llamagen"))
    inputs["vq"] = os.path.join(root, "llamagen", "vq_ds16_c2i.pt")
    jobs = _jobs(inputs)

    def case(name, run, kill_at=0):
        entry, argv, flag = jobs[name]
        folder = os.path.join(root, name, run)
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        cache = ["--cache-dir", os.path.join(root, name, f"cache-{run}")] if name == "features" else []
        return {"entry": entry, "argv": argv + cache + [flag, folder], "cwd": root, "kill_at": kill_at}

    clean = dict(zip(jobs, run_cases([case(n, "clean") for n in jobs], root)))
    kills = {n: max(1, clean[n]["replaces"] // 2 + 1) for n in jobs}  # half-way through the job's renames
    os.makedirs(os.path.join(root, "second"), exist_ok=True)
    killed_then_rerun = run_cases([c for n in jobs for c in (case(n, "run", kills[n]), case(n, "run"))],
                                  os.path.join(root, "second"))
    killed = dict(zip(jobs, killed_then_rerun[0::2]))
    rerun = dict(zip(jobs, killed_then_rerun[1::2]))
    return root, jobs, clean, kills, killed, rerun


@pytest.mark.parametrize("name", ["extract", "sampling", "features", "convert"])
def test_a_job_killed_half_way_then_rerun_ends_as_an_uninterrupted_run(runs, name):
    root, jobs, clean, kills, killed, rerun = runs
    assert clean[name]["returncode"] == 0, clean[name]["stderr"][-3000:]
    assert clean[name]["replaces"] >= 1
    assert killed[name]["returncode"] == -9, killed[name]["stderr"][-3000:]  # SIGKILL, at replace kills[name]
    assert rerun[name]["returncode"] == 0, rerun[name]["stderr"][-3000:]
    clean_dir, run_dir = os.path.join(root, name, "clean"), os.path.join(root, name, "run")
    want = {rel: _comparable(rel, data, clean_dir) for rel, data in _files(clean_dir).items()}
    got = {rel: _comparable(rel, data, run_dir) for rel, data in _files(run_dir).items()}
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], f"{name}: {rel} differs from the uninterrupted run's"
    leftovers = [n for n in os.listdir(os.path.dirname(run_dir)) if ".partial-" in n]
    assert leftovers == [], leftovers


def test_after_the_kill_no_final_name_holds_a_partial_file(runs):
    """Re-kill each job at the same point and look before rerunning: every file under a final name is
    complete — byte-equal to the uninterrupted run's, or (metadata rewritten as a job goes) valid JSON."""
    root, jobs, clean, kills, _, _ = runs
    cases = []
    for name, (entry, argv, flag) in jobs.items():
        cache = ["--cache-dir", os.path.join(root, name, "cache-probe")] if name == "features" else []
        cases.append({"entry": entry, "argv": argv + cache + [flag, os.path.join(root, name, "probe")], "cwd": root,
                      "kill_at": kills[name]})
    os.makedirs(os.path.join(root, "probe"), exist_ok=True)
    for name, result in zip(jobs, run_cases(cases, os.path.join(root, "probe"))):
        assert result["returncode"] == -9, (name, result["stderr"][-2000:])
        clean_dir, probe = os.path.join(root, name, "clean"), os.path.join(root, name, "probe")
        clean_files = _files(clean_dir)
        for rel, data in _files(probe).items() if os.path.isdir(probe) else ():
            if rel.endswith(".json"):
                json.loads(data)  # complete, though a job rewrites its metadata as it goes
            else:
                assert rel in clean_files and _comparable(rel, data, probe) == _comparable(
                    rel, clean_files[rel], clean_dir), f"{name}: {rel} is partial or differs after the kill"
