"""Memory of FID statistics over N images: lcgen's sharded, streamed statistics (eval.feature_store)
against torch-fidelity's path (`fid_input_id_to_statistics`: every feature held, then np.cov), with
the same feature extractor, registered with torch-fidelity, on the same images.

    python benchmarks/fid_statistics_memory.py [--sizes 10000,50000] [--dim 2048]

The extractor is a fixed random projection of 4x4-pooled pixels to `dim` features (ReLU): cheap, so
what is measured is the feature and statistics handling, which is what grows with N (the Inception
forward is the same network on both sides). Each case runs in a fresh process; memory is the peak
RSS growth over the process's state after imports and data set-up (VmHWM reset via clear_refs).
Prints a table and the ratios; the two results must agree (max |mu| and |sigma| differences shown).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(method: str, n: int, dim: int, out: str) -> None:
    sys.path.insert(0, ROOT)
    import numpy as np
    import torch
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    torch.set_num_threads(2)

    class Projection(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            g = torch.Generator().manual_seed(0)
            self.register_buffer("w", torch.randn(48, dim, generator=g) / 48 ** 0.5)

        @staticmethod
        def get_provided_features_list():
            return ("f",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "f"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

        def forward(self, x):
            pooled = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)
            return (torch.relu(pooled @ self.w),)

    register_feature_extractor("bench-projection", Projection)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g)

    from torch_fidelity.utils import create_feature_extractor

    extractor = create_feature_extractor("bench-projection", ["f"], cuda=False, verbose=False)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    base = _rss_mib("VmRSS")
    start = time.perf_counter()
    if method == "lcgen":
        from lcgen.eval.feature_store import FeatureStore

        with tempfile.TemporaryDirectory() as tmp:
            store = FeatureStore(tmp, {"bench": True}, n, shard_size=1000)
            store.prepare()
            store.extract(Images(), extractor, ["f"], batch_size=500, progress=False)
            mu, sigma, _ = store.statistics("f")
    else:
        from torch_fidelity.metric_fid import fid_input_id_to_statistics

        stats = fid_input_id_to_statistics(1, extractor, "f", input1=Images(), batch_size=500, cuda=False,
                                           save_cpu_ram=True, verbose=False)
        mu, sigma = stats["mu"], stats["sigma"]
    seconds = time.perf_counter() - start
    peak = _rss_mib("VmHWM") - base
    np.savez(out, mu=mu, sigma=sigma)
    print(json.dumps({"method": method, "n": n, "dim": dim, "seconds": seconds, "peak_extra_mib": peak}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,50000")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--child", nargs=3, metavar=("METHOD", "N", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a.child[0], int(a.child[1]), a.dim, a.child[2])
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in a.sizes.split(",")]:
            result = {}
            for method in ("torch-fidelity", "lcgen"):
                out = os.path.join(tmp, f"{method}-{n}.npz")
                proc = subprocess.run([sys.executable, __file__, "--dim", str(a.dim), "--child", method, str(n), out],
                                      capture_output=True, text=True, check=True)
                result[method] = json.loads(proc.stdout.strip().splitlines()[-1])
                result[method]["stats"] = np.load(out)
            tf, ours = result["torch-fidelity"], result["lcgen"]
            dmu = float(np.abs(tf["stats"]["mu"] - ours["stats"]["mu"]).max())
            dsig = float(np.abs(tf["stats"]["sigma"] - ours["stats"]["sigma"]).max())
            rows.append((n, tf, ours, dmu, dsig))
    print(f"| N | dim | torch-fidelity MiB | lcgen MiB | memory ratio | torch-fidelity s | lcgen s | time ratio "
          f"| max abs diff mu / sigma |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, tf, ours, dmu, dsig in rows:
        print(f"| {n:,} | {a.dim} | {tf['peak_extra_mib']:,.0f} | {ours['peak_extra_mib']:,.0f} | "
              f"{ours['peak_extra_mib'] / tf['peak_extra_mib']:.2f}x | {tf['seconds']:.1f} | {ours['seconds']:.1f} | "
              f"{ours['seconds'] / tf['seconds']:.2f}x | {dmu:.1e} / {dsig:.1e} |")


if __name__ == "__main__":
    main(sys.argv[1:])
