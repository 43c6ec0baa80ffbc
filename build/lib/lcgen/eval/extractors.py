"""Feature extractors for FID/IS/KID/PR, built through torch-fidelity's registry, with their weights
resolved (and fingerprinted) before any long work starts.

- "inception-v3-compat" (default): torch-fidelity's TF-compatible Inception. Its weights come from
  torch-fidelity's own mechanism: `weights_path` if given, else the file torch hub caches as
  $TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth, else a download. Offline
  with neither, `build_extractor` raises a ValueError saying where to put the file.
- "lcgen-fashion-mnist": lcgen's classifier (eval/feature_extractors.py); weights_path = its folder.

`make_random_inception_weights` writes a test-only Inception whose BatchNorm statistics are
recalibrated on random images (a freshly initialised one maps every image to ~0 features, so FID
would be ~0 for anything). Its features mean nothing; it exercises the real torch-fidelity path offline.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass

import torch
from torch_fidelity.utils import create_feature_extractor

from . import feature_extractors  # noqa: F401  registers lcgen's Fashion-MNIST extractor with torch-fidelity

INCEPTION = "inception-v3-compat"
FASHION_MNIST = "lcgen-fashion-mnist"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# features each metric reads: pool features for FID/KID/PR (ADM's precision/recall uses the same
# Inception pool features, k=3), unbiased logits for the Inception Score (torch-fidelity's defaults)
LAYERS = {INCEPTION: {"pool": "2048", "logits": "logits_unbiased"},
          FASHION_MNIST: {"pool": "features", "logits": "logits"}}


def default_inception_path() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)


def file_digest(path: str) -> str:
    """sha256 prefix of a file's content, hashed once per (path, size, mtime) in a process."""
    st = os.stat(path)
    return _digest(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:16]


def folder_digest(folder: str) -> str:
    """The weights of a saved model folder, by content (all of its .safetensors files)."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise ValueError(f"{folder!r} holds no .safetensors weights")
    return ",".join(file_digest(os.path.join(folder, f)) for f in files)


@dataclass(frozen=True)
class ExtractorSpec:
    """What the features depend on: the name, the weights (by content) and the internal dtype."""

    name: str = INCEPTION
    weights_path: str | None = None
    internal_dtype: str = "float32"

    def resolve(self) -> "ExtractorSpec":
        """Check the weights exist now; returns a spec with the weights path made explicit."""
        if self.name not in LAYERS:
            raise ValueError(f"unknown feature extractor {self.name!r}: use one of {sorted(LAYERS)}")
        if self.internal_dtype not in ("float32", "float64"):
            raise ValueError(f"internal_dtype must be float32 or float64, got {self.internal_dtype!r}")
        if self.name == FASHION_MNIST:
            if not self.weights_path or not os.path.isfile(os.path.join(self.weights_path, "config.json")):
                raise ValueError(f"{FASHION_MNIST} needs --feature-extractor-weights = a saved classifier folder "
                                 f"(`lcgen train-classifier`), got {self.weights_path!r}")
            folder_digest(self.weights_path)
            return self
        path = self.weights_path or default_inception_path()
        if not os.path.isfile(path):
            if self.weights_path:
                raise ValueError(f"Inception weights file {self.weights_path!r} does not exist")
            from torch.hub import load_state_dict_from_url
            from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

            try:  # torch-fidelity's own download route, into the torch hub cache
                load_state_dict_from_url(URL_INCEPTION_V3, progress=False)
            except Exception as e:  # URLError / HTTPError / OSError offline
                raise ValueError(
                    f"the Inception weights are not available ({type(e).__name__}: {e}). Offline, download "
                    f"{URL_INCEPTION_V3} on a machine with network and either place it at {path} or pass "
                    f"--inception-weights FILE (feature_extractor_weights_path)") from None
        return ExtractorSpec(self.name, path, self.internal_dtype)

    def fingerprint(self) -> dict:
        """Identifies the features: torch-fidelity's own cache key omits the weights, this does not."""
        if self.name == FASHION_MNIST:
            digest = folder_digest(self.weights_path)
        else:
            digest = file_digest(self.weights_path)
        return {"name": self.name, "weights_sha256": digest, "internal_dtype": self.internal_dtype}


def build_extractor(spec: ExtractorSpec, features: list[str], device: str | torch.device = "cpu"):
    """A torch-fidelity feature extractor (uint8 (B, 3, H, W) in, a tuple of features out)."""
    kwargs = {"feature_extractor_weights_path": spec.weights_path, "verbose": False}
    if spec.name == INCEPTION:
        kwargs["feature_extractor_internal_dtype"] = spec.internal_dtype
    return create_feature_extractor(spec.name, list(features), cuda=False, **kwargs).to(device)


@torch.no_grad()
def make_random_inception_weights(path: str, seed: int = 0, batches: int = 2, batch_size: int = 8) -> str:
    """Test-only Inception weights (random init, BatchNorm recalibrated), saved where torch-fidelity
    reads them (`feature_extractor_weights_path`: a torch state dict, as its own file is)."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(seed)
    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", return_value={}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None):
        model = FeatureExtractorInceptionV3(INCEPTION, ["2048"])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
            m.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        model(torch.randint(0, 256, (batch_size, 3, 64, 64), dtype=torch.uint8, generator=g))
    model.eval()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
