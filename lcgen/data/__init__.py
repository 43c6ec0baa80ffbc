"""The data module every stage uses (datasets, preprocessing, skip-and-count of bad images)."""
from .datasets import HUB_FACTS, HUB_IDS, build_dataset, collate_skipping_bad, hub_split
from .transforms import ImageTransform

__all__ = ["build_dataset", "collate_skipping_bad", "ImageTransform", "HUB_IDS", "HUB_FACTS", "hub_split"]
