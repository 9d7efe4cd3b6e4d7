"""Plot kinds of the hw6 and pset10 studies; like all plots they read saved files only.

vs_n_train     metrics vs the real training-set size (summary.json n_train; a size the data
               could not hold class-balanced was capped, so the swept value may differ)
kernels        the first conv layer's kernels, one row per job (e.g. per seed), from model.pt
smallest_width accuracy vs hidden width (+ a linear baseline), and the smallest width that
               reaches a threshold, written to smallest_width.md
"""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

LABELS = {"test_acc": "test accuracy", "wall_time_s": "training time (s)", "val_acc": "val accuracy"}


def _jobs(df, paths):
    from expkit.report.plots import _ok

    return _ok(df, paths)


def vs_n_train(df, paths, out, metrics=("test_acc", "wall_time_s")):
    from expkit.report.aggregate import to_markdown
    from expkit.report.plots import savefig
    import pandas as pd

    rows = []
    for row, p, label in _jobs(df, paths):
        s = json.loads((p / "summary.json").read_text())
        rows.append({"n_train": s["n_train"], **{m: row[m] for m in metrics}})
    table = pd.DataFrame(rows).sort_values("n_train")
    (out / "vs_n_train.md").write_text(to_markdown(table))
    for m in metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(table.n_train, table[m], marker="o")
        ax.set(xlabel="training examples", ylabel=LABELS.get(m, m), title=f"{LABELS.get(m, m)} vs training-set size")
        ax.grid(alpha=0.3)
        savefig(fig, out / f"{m}_vs_n_train.png")


def first_conv(state):
    """The first 4-D weight (out, in, kh, kw) of a saved state_dict, in layer order."""
    return next((v for k, v in state.items() if k.endswith("weight") and v.ndim == 4), None)


def kernels(df, paths, out, name="first_layer_kernels.png", max_filters=16):
    import torch

    from expkit.report.plots import savefig

    found = []
    for row, p, label in _jobs(df, paths):
        if (p / "model.pt").exists():
            w = first_conv(torch.load(p / "model.pt", map_location="cpu", weights_only=True))
            if w is not None:
                found.append((label, w.float().numpy()))
    if not found:
        return
    cols = min(max_filters, max(w.shape[0] * w.shape[1] for _, w in found))
    fig, axes = plt.subplots(len(found), cols, figsize=(1.8 * cols + 1, 1.9 * len(found)), squeeze=False)
    for r, (label, w) in enumerate(found):
        flat = w.reshape(-1, *w.shape[2:])[:cols]  # filter-major: (out 0, in 0), (out 0, in 1), ...
        lim = np.abs(flat).max() or 1.0
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(flat):
                ax.imshow(flat[c], cmap="RdBu_r", vmin=-lim, vmax=lim)
                ax.set_title(f"kernel {c // w.shape[1]}" + (f" ch {c % w.shape[1]}" if w.shape[1] > 1 else ""),
                             fontsize=8)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.suptitle("first conv layer kernels (red +, blue -)")
    savefig(fig, out / name)


def smallest_width(df, paths, out, threshold=0.99, metric="test_acc"):
    from expkit.report.plots import savefig

    widths, baselines = [], []
    for row, p, label in _jobs(df, paths):
        model = (yaml.safe_load((p / "config.yaml").read_text()) or {}).get("model", {})
        hidden = model.get("hidden") or []
        if model.get("name") == "mlp" and len(hidden) == 1:
            widths.append((int(hidden[0]), row[metric]))
        else:
            baselines.append((model.get("_target_", model.get("name", label)).split(".")[-1], row[metric]))
    widths.sort()
    best = next((w for w, acc in widths if acc >= threshold), None)
    verdict = (f"smallest width with {metric} >= {threshold}: {best}" if best is not None else
               f"no width tried reaches {metric} >= {threshold} (widths {[w for w, _ in widths]})")
    lines = [f"| model | {metric} |", "|---|---|"] + [f"| {n} | {a:.4f} |" for n, a in baselines]
    lines += [f"| 1 hidden layer, width {w} | {a:.4f} |" for w, a in widths]
    (out / "smallest_width.md").write_text("\n".join(lines) + f"\n\n**{verdict}**\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    if widths:
        ax.plot([w for w, _ in widths], [a for _, a in widths], marker="o", label="1 hidden layer")
        ax.set_xscale("log", base=2)
    for n, a in baselines:
        ax.axhline(a, ls="--", color="gray", label=n)
    ax.axhline(threshold, ls=":", color="red", label=f"{threshold}")
    ax.set(xlabel="hidden width", ylabel=metric, title=verdict)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    savefig(fig, out / "accuracy_vs_width.png")


STUDY_PLOTS = {"vs_n_train": vs_n_train, "kernels": kernels, "smallest_width": smallest_width}
