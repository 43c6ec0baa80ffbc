"""The Fashion-MNIST classifier registered with torch-fidelity: its FID through torch-fidelity's own
pipeline equals eval.fid.frechet_distance on the classifier's features computed directly."""
import numpy as np
import pytest
import torch
import torch_fidelity

import lcgen.eval.feature_extractors as fe
from lcgen.eval.classifier import ImageClassifier
from lcgen.data.fashion_mnist import DEBIAN_DIR, load_fashion_mnist
from lcgen.eval.fid import frechet_distance


class UInt8Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images  # uint8 (N, 28, 28)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i][None].repeat(3, 1, 1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("clf")
    torch.manual_seed(0)
    ImageClassifier().eval().save_pretrained(path)
    train, _ = load_fashion_mnist("train", DEBIAN_DIR)
    test, _ = load_fashion_mnist("test", DEBIAN_DIR)
    return str(path), train[:300], test[:250]


def test_fid_through_torch_fidelity_equals_our_frechet_distance(setup):
    path, a, b = setup
    metrics = torch_fidelity.calculate_metrics(
        input1=UInt8Images(a), input2=UInt8Images(b), fid=True, kid=True, kid_subset_size=100, cuda=False,
        feature_extractor=fe.NAME, feature_extractor_weights_path=path, batch_size=64, verbose=False,
        cache=False)
    clf = ImageClassifier.from_pretrained(path).eval()

    def stats(x):
        with torch.no_grad():
            f = clf.features(x.float()[:, None] / 127.5 - 1).double().numpy()
        return f.mean(0), np.cov(f, rowvar=False)

    ours = frechet_distance(*stats(a), *stats(b))
    assert metrics["frechet_inception_distance"] == pytest.approx(ours, rel=1e-5)
    assert metrics["frechet_inception_distance"] > 0 and "kernel_inception_distance_mean" in metrics


def test_same_images_give_zero_fid(setup):
    path, a, _ = setup
    m = torch_fidelity.calculate_metrics(input1=UInt8Images(a), input2=UInt8Images(a), fid=True, cuda=False,
                                         feature_extractor=fe.NAME, feature_extractor_weights_path=path,
                                         verbose=False, cache=False)
    assert abs(m["frechet_inception_distance"]) < 1e-6


def test_missing_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="feature_extractor_weights_path"):
        fe.FashionMNISTFeatureExtractor(fe.NAME, ["features"], feature_extractor_weights_path=None)
