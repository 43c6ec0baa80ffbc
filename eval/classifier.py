"""A small Fashion-MNIST classifier trained on the real training set: it judges whether
`pipe(class_id=k)` draws class k (class accuracy of samples), and its penultimate features give an
offline feature space for Fréchet distances on Fashion-MNIST.
"""
from __future__ import annotations

import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch.utils.data import DataLoader

from lcgen.checks import check_output_folder
from lcgen.data import build_dataset, collate_skipping_bad
from lcgen.strict_loading import StrictLoadingMixin


class ImageClassifier(StrictLoadingMixin, ModelMixin, ConfigMixin):
    """Three conv blocks (two 2x poolings) -> the 7x7 feature map flattened (where garments differ: a
    global average pool loses it: 89.8% against 92.5% test accuracy with the same 4-epoch recipe here) -> `feature_dim` features ->
    linear over classes. Input: float (B, in_channels, H, W) in [-1, 1]."""

    @register_to_config
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128,
                 dropout: float = 0.3):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.body = nn.Sequential(block(in_channels, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
                                  block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                                  nn.Dropout(dropout), nn.Linear(2 * width * 49, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last conv block's map (B, 2 * width, 7, 7), before the flatten: 49 patch features an image
        (the VQGAN-LC codebook's pretrained encoder on this offline machine)."""
        return self.body[:6](images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@torch.no_grad()
def predict(classifier: ImageClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted class ids for float images in [-1, 1]."""
    classifier.eval()
    return torch.cat([classifier(images[i:i + batch_size].to(classifier.device)).argmax(-1).cpu()
                      for i in range(0, len(images), batch_size)])


def bf16_is_fast(device_type: str) -> bool:
    """Whether bf16 autocast speeds training up on this device: always on CUDA; on the CPU only where
    oneDNN has native bf16 kernels (AVX512-BF16 or AMX), without which it emulates them, slower than fp32."""
    return device_type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def train_classifier(output_dir: str, dataset: str = "fashion-mnist", epochs: int = 1, batch_size: int = 128,
                     lr: float = 3e-3, max_samples: int | None = None, seed: int = 0,
                     mixed_precision: str = "no") -> dict:
    """Train on the training split (AdamW with one-cycle lr, random horizontal flips, label smoothing 0.1),
    measure accuracy on the test split (always in fp32), save to output_dir (safetensors + config.json +
    metrics.json). Returns the metrics.

    mixed_precision "bf16" trains under bf16 autocast (CPU or CUDA); with channels-last activations a
    step is 2.5x faster than fp32 on a CPU with native bf16 (40 ms against 101 ms at batch 128, 2-core
    AVX-512 CPU) but 9x slower on one without (1.42 s against 0.16 s, 1 thread, AVX2-only EPYC).
    "auto" takes bf16 where it is fast: CUDA, or a CPU whose oneDNN has native bf16; else fp32."""
    if epochs <= 0 or batch_size <= 0:
        raise ValueError(f"epochs and batch_size must be > 0, got {epochs} and {batch_size}")
    check_output_folder("output_dir", output_dir)
    if mixed_precision not in ("no", "bf16", "auto"):
        raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'auto', got {mixed_precision!r}")
    if mixed_precision == "auto":
        mixed_precision = "bf16" if bf16_is_fast("cpu") else "no"
    torch.manual_seed(seed)
    train_set = build_dataset(dataset, "train", channels=1, max_samples=max_samples, seed=seed)
    test_set = build_dataset(dataset, "test", channels=1)
    names = getattr(train_set, "class_names", None) or []
    # channels-last: the same maths, 1.4x faster convolutions on the CPU (oneDNN's preferred layout)
    model = ImageClassifier(in_channels=1, num_classes=len(names) or 10).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, collate_fn=collate_skipping_bad,
                        generator=torch.Generator().manual_seed(seed))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    start = time.time()
    g = torch.Generator().manual_seed(seed + 1)
    model.train()
    for _ in range(epochs):
        for batch in loader:
            x = batch["pixel_values"]
            flip = torch.rand(len(x), generator=g) < 0.5  # garments are left-right symmetric classes
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x).contiguous(memory_format=torch.channels_last)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    test = next(iter(DataLoader(test_set, batch_size=len(test_set), collate_fn=collate_skipping_bad)))
    accuracy = float((predict(model, test["pixel_values"]) == test["labels"]).float().mean())
    metrics = {"test_accuracy": accuracy, "test_images": len(test_set), "train_images": len(train_set),
               "epochs": epochs, "mixed_precision": mixed_precision, "seconds": round(time.time() - start, 1),
               "class_names": names}
    model.to(memory_format=torch.contiguous_format).save_pretrained(output_dir)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


@torch.no_grad()
def sample_class_accuracy(pipe, classifier: ImageClassifier, num_images_per_class: int = 10, seed: int = 0,
                          **sample_kwargs) -> dict:
    """Sample `num_images_per_class` images of every class through `pipe` (one call per class, so memory
    stays that of one class) and report how often the classifier agrees with the requested class
    (overall and per class), plus the images (pt, [0, 1], class-major)."""
    classes = list(range(pipe.num_classes))
    if not classes:
        raise ValueError("class accuracy needs a class-conditional pipeline")
    generator = torch.Generator().manual_seed(seed)
    images = torch.cat([pipe(class_id=k, num_images_per_class=num_images_per_class, generator=generator,
                             output_type="pt", **sample_kwargs).images for k in classes])
    wanted = torch.tensor(classes).repeat_interleave(num_images_per_class)
    hit = (predict(classifier, images * 2 - 1) == wanted).float()
    per_class = hit.view(len(classes), num_images_per_class).mean(1)
    return {"accuracy": float(hit.mean()), "per_class": [round(float(a), 3) for a in per_class],
            "images_per_class": num_images_per_class, "images": images}
