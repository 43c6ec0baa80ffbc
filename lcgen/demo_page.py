"""The demo's report as a page a person opens in a browser: `<output>/index.html`, with its figures
beside it in `<output>/figures/` (the tokenizer's reconstructions and code usage, the training-loss
curves of every stage, one labelled sample grid per prior with a row per class) and the metrics
tables. Everything it names is a relative path inside the output folder."""
from __future__ import annotations

import html
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from lcgen.training.run import read_metrics_log  # noqa: E402

FIGURES = "figures"


def labelled_grid(images: torch.Tensor, class_names: list[str], per_class: int, path: str, title: str) -> str:
    """images (C * per_class, ch, H, W) in [0, 1], class-major -> a PNG with one labelled row per class."""
    grid = make_grid(images.float().cpu(), nrow=per_class, padding=2, pad_value=1.0)  # (3, H', W')
    cell = images.shape[-2] + 2
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * per_class, 0.55 * len(class_names) + 0.5), dpi=110)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_yticks([2 + cell * i + cell / 2 - 1 for i in range(len(class_names))], class_names, fontsize=8)
    ax.set_xticks([])
    ax.set_title(title, fontsize=9)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def loss_curves(runs: dict[str, tuple[str, str]], path: str) -> str:
    """runs: stage -> (output_dir, logged key) -> one panel per stage of that key against the step."""
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 2.6), dpi=110, squeeze=False)
    for ax, (stage, (run_dir, key)) in zip(axes[0], runs.items()):
        records = [r for r in read_metrics_log(run_dir) if key in r]
        ax.plot([r["step"] for r in records], [r[key] for r in records], lw=1.2)
        ax.set_title(f"{stage}: {key}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(src: str, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}"{size}>'
            f'<figcaption>{html.escape(alt)}</figcaption></figure>')


def _pct(x) -> str:
    return "—" if x is None else f"{x:.1%}"


def _num(x, digits=2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.4em 1em .4em 0;vertical-align:top}img{max-width:100%;image-rendering:pixelated}
figcaption{font-size:.8em;color:#555}.grids figure{max-width:48%}"""


def write_page(report: dict, out: str) -> str:
    """`out/index.html` from the demo's report (report.json's content) and the run folders under `out`."""
    os.makedirs(os.path.join(out, FIGURES), exist_ok=True)
    names = report["class_names"]
    curves = {"tokenizer": (os.path.join(out, "tokenizer"), "loss/total")}
    curves.update({f: (os.path.join(out, "runs", f), "loss") for f in report["priors"]})
    loss_curves(curves, os.path.join(out, FIGURES, "losses.png"))
    m, judge = report["tokenizer_metrics"], report["classifier"]
    parts = [f"<h1>lcgen demo: Fashion-MNIST, both stages on the CPU</h1>",
             f"<p>Budget <b>{html.escape(report['budget'])}</b>, {report['total_seconds']:.0f} s in all. "
             "Class accuracy: how often an independent judge (a CNN trained on the real training split) names the "
             "class that was asked for. FID, precision and recall: the samples against the 10,000 test images, "
             "in the judge's feature space (128-d, not Inception: comparable between these priors only).</p>",
             "<h2>Priors</h2>",
             _table(["prior", "size", "steps", "train s", "sample s", "class accuracy", "of the judge's own", "FID",
                     "precision", "recall"],
                    [[f, r["size"], r["train_steps"], _num(r["train_seconds"], 0), _num(r["sample_seconds"], 0),
                      _pct(r["class_accuracy"]), _pct(r["class_accuracy"] / judge["test_accuracy"]),
                      _num(r.get("fid")), _num(r.get("precision")), _num(r.get("recall"))]
                     for f, r in report["priors"].items()]),
             "<h3>Per-class accuracy</h3>",
             _table(["prior"] + names, [[f] + [_pct(a) for a in r["per_class_accuracy"]]
                                        for f, r in report["priors"].items()]),
             '<div class="grids">' + "".join(_img(r["grid"], f"{f}: {r['size']}, one row per class")
                                             for f, r in report["priors"].items()) + "</div>",
             "<h2>Tokenizer</h2>",
             _table(["steps", "PSNR dB", "SSIM", "utilisation", "perplexity", "test images"],
                    [[report["tokenizer_steps"], _num(m["psnr"]), _num(m["ssim"], 3), _pct(m["utilisation"]),
                      _num(m["perplexity"], 1), m["images"]]]),
             _img("eval/reconstructions.png", "test images (odd rows) and their reconstructions (even rows)", 560),
             _img("eval/code_usage.png", "code frequencies, sorted", 420),
             "<h2>Judge</h2>",
             _table(["on", "accuracy"], [["real test images", _pct(judge["test_accuracy"])],
                                         ["tokenizer reconstructions of them (a prior's ceiling)",
                                          _pct(report["judge_on_reconstructions"])]]),
             "<h2>Training losses</h2>", _img(f"{FIGURES}/losses.png", "logged loss against step, every stage"),
             "<h2>Time</h2>", _table(["stage", "seconds"], [[k, _num(v, 1)] for k, v in report["seconds"].items()])]
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>lcgen demo</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    path = os.path.join(out, "index.html")
    with open(path, "w") as f:
        f.write(page)
    return path
