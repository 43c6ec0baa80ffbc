"""Feature extractors for FID/IS/KID/PR, built through torch-fidelity's registry, with their weights
resolved (and fingerprinted) before any long work starts.

- "inception-v3-compat" (default): torch-fidelity's TF-compatible Inception. Its weights come from
  torch-fidelity's own mechanism: `weights_path` if given, else the file torch hub caches as
  $TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth, else a download. Offline
  with neither, `build_extractor` raises a ValueError saying where to put the file.
- "lcgen-fashion-mnist": lcgen's classifier (eval/feature_extractors.py); weights_path = its folder.
- "dinov2-vit-{s,b,l,g}-14" (FD-DINOv2): torch-fidelity's DINOv2 extractor on local weights
  (eval/dinov2.py); weights_path = the official .pth or a transformers folder. Pool features only
  (the CLS token): no logits, so no Inception Score, and no sFID.

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
from .dinov2 import ARCHS as DINOV2_MODELS
from .dinov2 import LocalDinoV2

INCEPTION = "inception-v3-compat"
FASHION_MNIST = "lcgen-fashion-mnist"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# features each metric reads: pool features for FID/KID/PR (ADM's precision/recall uses the same
# Inception pool features, k=3), unbiased logits for the Inception Score (torch-fidelity's defaults),
# and for sFID ADM's spatial features (Inception only; see SpatialInception)
SPATIAL = "spatial"
LAYERS = {INCEPTION: {"pool": "2048", "logits": "logits_unbiased", "spatial": SPATIAL},
          FASHION_MNIST: {"pool": "features", "logits": "logits"},
          **{name: {"pool": "dinov2"} for name in DINOV2_MODELS}}
SPATIAL_CHANNELS = 7  # ADM evaluator.py: spatial[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # Mixed_6d's grid at Inception's 299 x 299 input


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
        if self.name in DINOV2_MODELS:
            if not self.weights_path or not (os.path.isfile(self.weights_path) or os.path.isfile(
                    os.path.join(self.weights_path, "config.json"))):
                raise ValueError(f"{self.name} needs --feature-extractor-weights = the official "
                                 f"dinov2_vit?14_pretrain.pth or a transformers Dinov2Model folder, got "
                                 f"{self.weights_path!r} (torch-fidelity's hub download is not used)")
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
        if self.name == FASHION_MNIST or os.path.isdir(self.weights_path):
            digest = folder_digest(self.weights_path)
        else:
            digest = file_digest(self.weights_path)
        return {"name": self.name, "weights_sha256": digest, "internal_dtype": self.internal_dtype}


def build_extractor(spec: ExtractorSpec, features: list[str], device: str | torch.device = "cpu"):
    """A torch-fidelity feature extractor (uint8 (B, 3, H, W) in, a tuple of features out); with
    SPATIAL among the features, torch-fidelity's Inception wrapped by `SpatialInception`."""
    kwargs = {"feature_extractor_weights_path": spec.weights_path, "verbose": False}
    if spec.name in DINOV2_MODELS:  # not through torch-fidelity's registry, whose DINOv2 loads from the hub
        return LocalDinoV2(spec.name, list(features), spec.weights_path, spec.internal_dtype).to(device)
    if spec.name == INCEPTION:
        kwargs["feature_extractor_internal_dtype"] = spec.internal_dtype
    features = list(features)
    if SPATIAL in features:
        if spec.name != INCEPTION:
            raise ValueError(f"sFID's spatial features are Inception's; {spec.name!r} has none")
        others = [f for f in features if f != SPATIAL] or ["2048"]
        inner = create_feature_extractor(spec.name, others, cuda=False, **kwargs)
        return SpatialInception(inner, features).to(device)
    return create_feature_extractor(spec.name, features, cuda=False, **kwargs).to(device)


class SpatialInception(torch.nn.Module):
    """torch-fidelity's Inception plus ADM's sFID features: `mixed_6/conv:0` of the 2015 TF graph,
    which is the 1x1 branch of the seventh mixed block, i.e. torch-fidelity's `Mixed_6d.branch1x1`
    (a public TF->PyTorch weight map sends mixed_6/conv to Mixed_6d.branch1x1, and guided-diffusion#109 agrees;
    not run against ADM's TF evaluator here), after its ReLU, 192 x
    17 x 17. ADM keeps the first 7 channels and flattens channels-last (h, w, c): so does this, so
    ADM's reference `mu_s`/`sigma_s` line up feature for feature (2,023 of them)."""

    def __init__(self, inner, features: list[str]):
        super().__init__()
        self.inner, self.features_list = inner, list(features)
        self._captured = None
        inner.Mixed_6d.branch1x1.register_forward_hook(self._capture)

    def _capture(self, module, args, output):
        x = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)  # NHWC, as the TF graph's tensor
        self._captured = x.reshape(len(x), -1).to(torch.float32)

    def forward(self, x):
        out = dict(zip(self.inner.features_list, self.inner(x)))
        out[SPATIAL], self._captured = self._captured, None
        return tuple(out[name] for name in self.features_list)


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
