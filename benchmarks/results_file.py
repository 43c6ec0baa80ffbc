"""The resumable results file the reproduction benchmarks share: one JSON object of finished runs,
rewritten atomically after each, so an interrupted benchmark keeps every run it finished."""
from __future__ import annotations

import json
import os
import platform

import torch


def machine() -> str:
    return f"{platform.machine()} CPU x{torch.get_num_threads()} threads, torch {torch.__version__}"


def load_results(output: str) -> dict:
    path = os.path.join(output, "results.json")
    return json.load(open(path)) if os.path.isfile(path) else {}


def record(results: dict, output: str, name: str, row: dict) -> None:
    """Add a finished run, print it, and rewrite results.json (temporary file, then rename)."""
    results[name] = row
    print(name, json.dumps(row))
    path = os.path.join(output, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)
