"""Per-class FID: for every class c, the Fréchet distance between the samples of class c and the
reference images of class c, and the mean over classes (LooC's "class-average FID", Table 11).

Labels come from the sources (`labels()` of eval.image_inputs: the class each sample was drawn for,
the split's class column), in item order, so they line up with the feature shards row for row.
A class is scored when both sides have at least 2 images of it; the others are named in a note.
With few images per class the covariances are rank-deficient (50 ImageNet samples per class against
2,048 dimensions), so per-class values are far above whole-set FID and comparable only to numbers
computed with the same number of images per class.
"""
from __future__ import annotations

import numpy as np

from .feature_store import FeatureStore, rank_deficiency_warning
from .fid import frechet_distance

PROTOCOL = ("FID of each class's samples against the reference images of that class (pool features), "
            "and their unweighted mean over classes (LooC's class-average FID)")


def require_labels(labels, who: str, spec: str) -> np.ndarray:
    """The labels, or a clear error (before any work) naming the side that has none."""
    if labels is None:
        raise ValueError(f"class_fid needs the class of every {who} image; {spec!r} has none (a split with a "
                         "class column, an npz with arr_1, a folder sampled by lcgen or of class sub-folders)")
    return labels


def class_fid(samples: FeatureStore, sample_labels: np.ndarray, reference: FeatureStore,
              reference_labels: np.ndarray, layer: str) -> tuple[dict, list[str]]:
    """({"class_fid": {class: FID}, "class_fid_mean": mean, "class_fid_classes": count}, notes)."""
    mine = samples.class_statistics(layer, sample_labels)
    theirs = reference.class_statistics(layer, reference_labels)
    scored = sorted(c for c, (mu, _, _) in mine.items() if mu is not None and theirs.get(c, (None,))[0] is not None)
    if not scored:
        raise ValueError("class_fid: no class has at least 2 images among both the samples and the reference "
                         f"(sample classes {sorted(mine)[:10]}, reference classes {sorted(theirs)[:10]})")
    values = {str(c): frechet_distance(mine[c][0], mine[c][1], theirs[c][0], theirs[c][1]) for c in scored}
    notes = []
    skipped = sorted(set(mine) - set(scored))
    if skipped:
        notes.append(f"class_fid: {len(skipped)} sample classes have fewer than 2 images on one side and are not "
                     f"scored (e.g. {skipped[:5]})")
    counts = [mine[c][2] for c in scored] + [theirs[c][2] for c in scored]
    if note := rank_deficiency_warning(min(counts), len(mine[scored[0]][0])):
        notes.append(f"class_fid: {min(counts)} to {max(counts)} images per class; {note}")
    return {"class_fid": values, "class_fid_mean": float(np.mean(list(values.values()))),
            "class_fid_classes": len(scored)}, notes
