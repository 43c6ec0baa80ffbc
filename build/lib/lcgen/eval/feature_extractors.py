"""lcgen's Fashion-MNIST classifier as a torch-fidelity feature extractor, so FID/KID/precision-recall
on Fashion-MNIST run through torch-fidelity's own pipeline offline (no Inception download):

    import torch_fidelity, lcgen.eval.feature_extractors  # registers "lcgen-fashion-mnist"
    torch_fidelity.calculate_metrics(input1=..., input2=..., fid=True, cuda=False,
                                     feature_extractor="lcgen-fashion-mnist",
                                     feature_extractor_weights_path="outputs/demo/classifier")

Inputs are what torch-fidelity hands every extractor: uint8 (B, 3 or 1, H, W). They are converted to
grayscale in [-1, 1] and resized to 28x28. Features: "features" (the pooled penultimate layer, used for
FID/KID/PR) and "logits" (for the Inception Score).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from .classifier import ImageClassifier

NAME = "lcgen-fashion-mnist"


class FashionMNISTFeatureExtractor(FeatureExtractorBase):
    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        path = feature_extractor_weights_path
        if not path or not os.path.isdir(path):
            raise ValueError(f"{NAME} needs feature_extractor_weights_path = a saved ImageClassifier folder "
                             f"(e.g. outputs/demo/classifier from `lcgen train-classifier`), got {path!r}")
        self.classifier = ImageClassifier.from_pretrained(path).eval()

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

    def forward(self, x):
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"{NAME} expects uint8 (B, C, H, W) images, got {x.dtype} {tuple(x.shape)}")
        x = x.float().mean(1, keepdim=True) / 127.5 - 1  # grayscale in [-1, 1]
        if x.shape[-2:] != (28, 28):
            x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        feats = self.classifier.features(x.to(self.classifier.device))
        out = {"features": feats, "logits": self.classifier.head(feats)}
        return tuple(out[name].double() for name in self.features_list)


register_feature_extractor(NAME, FashionMNISTFeatureExtractor)
