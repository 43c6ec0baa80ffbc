"""ImageNet-1k class names for converted ImageNet models, in class-id order (torchvision's weights
metadata, so no list is copied here)."""
from __future__ import annotations

from torchvision.models import ResNet50_Weights


def imagenet_id2label() -> dict[int, str]:
    """{0: "tench", ..., 207: "golden retriever", ..., 999: "toilet tissue"}."""
    return dict(enumerate(ResNet50_Weights.IMAGENET1K_V1.meta["categories"]))
