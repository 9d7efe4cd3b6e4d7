"""Plot kinds of the hw6 and pset10 studies; like all plots they read saved files only.

vs_n_train     metrics vs the real training-set size (summary.json n_train; a size the data
               could not hold class-balanced was capped, so the swept value may differ)
kernels        the first conv layer's kernels, one row per job (e.g. per seed), from model.pt
smallest_width accuracy vs hidden width (+ a linear baseline), and the smallest width that
               reaches a threshold, written to smallest_width.md

Figures are written by plots.savefig, looked up when drawing (replacing it there catches them all).
"""
import json

import numpy as np
import yaml

from expkit.report import plots
from expkit.report.plots import _ok, band, groups, plt, seed_note, title
from expkit.report.registry import register
from expkit.report.tables import _finite, _mean_std, pm, swept_keys, to_markdown

LABELS = {"test_acc": "test accuracy", "wall_time_s": "training time (s)", "val_acc": "val accuracy"}


def _jobs(df, paths):
    return _ok(df, paths)


def _stats(values):
    """Mean and sample std over seeds of the finite values."""
    return _mean_std(_finite(values))


@register("vs_n_train")
def vs_n_train(df, paths, out, metrics=("test_acc", "wall_time_s"), study=None):
    """Per configuration (several seeds: mean ± std): metrics vs the real training-set size."""
    import pandas as pd

    grouped = groups(df, paths)
    rows, several = [], any(len(m) > 1 for _, m in grouped)
    for label, members in grouped:
        row, p = members[0]
        s = json.loads((p / "summary.json").read_text())
        r = {"n_train": s["n_train"]}
        if several:
            r["seeds"] = len(members)
        for m in metrics:
            r[m], r[f"{m}_std"] = _stats([row[m] for row, _ in members])
        rows.append(r)
    table = pd.DataFrame(rows).sort_values("n_train", kind="stable")
    shown = table[[c for c in table.columns if not c.endswith("_std")]].astype(object)
    for m in metrics:
        shown[m] = [pm(a, b) for a, b in zip(table[m], table[f"{m}_std"])] if several else table[m]
    (out / "vs_n_train.md").write_text(to_markdown(shown))
    for m in metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        band(ax, table.n_train.to_numpy(), table[m].to_numpy(float), table[f"{m}_std"].to_numpy(float), marker="o")
        ax.set(xlabel="training examples", ylabel=LABELS.get(m, m))
        ax.set_title(title(study, f"{LABELS.get(m, m)} vs training-set size", grouped), fontsize=10, wrap=True)
        ax.grid(alpha=0.3)
        plots.savefig(fig, out / f"{m}_vs_n_train.png")


def first_conv(state):
    """The first 4-D weight (out, in, kh, kw) of a saved state_dict, in layer order."""
    return next((v for k, v in state.items() if k.endswith("weight") and v.ndim == 4), None)


@register("kernels")
def kernels(df, paths, out, name="first_layer_kernels.png", max_filters=16, study=None):
    """The first conv layer's kernels, one row per job (each seed its own row)."""
    import torch

    found = []
    for row, p, label in _jobs(df, paths):
        if (p / "model.pt").exists():
            w = first_conv(torch.load(p / "model.pt", map_location="cpu", weights_only=True))
            if w is not None:
                found.append((label, w.float().numpy()))
    if not found:
        return
    cols = min(max_filters, max(w.shape[0] * w.shape[1] for _, w in found))
    fig, axes = plt.subplots(len(found), cols, figsize=(1.8 * cols + 1, 1.9 * len(found) + 0.4), squeeze=False)
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
    keys = swept_keys(df)
    per = f"one row per job ({', '.join(keys)})" if keys else "one row per job"
    fig.suptitle(f"{study + ': ' if study else ''}first conv layer's kernels, {per}; red +, blue -", fontsize=10)
    plots.savefig(fig, out / name)


@register("smallest_width")
def smallest_width(df, paths, out, threshold=0.99, metric="test_acc", study=None):
    """metric vs hidden width (+ the other models as baselines), per configuration; several seeds:
    mean ± std, and the smallest width whose MEAN reaches the threshold."""
    grouped = groups(df, paths)
    widths, baselines = [], []
    for label, members in grouped:
        row, p = members[0]
        model = (yaml.safe_load((p / "config.yaml").read_text()) or {}).get("model", {})
        hidden = model.get("hidden") or []
        mean, std = _stats([r[metric] for r, _ in members])
        if model.get("name") == "mlp" and len(hidden) == 1:
            widths.append((int(hidden[0]), mean, std))
        else:
            baselines.append((model.get("_target_", model.get("name", label)).split(".")[-1], mean, std))
    widths.sort()
    several = any(len(m) > 1 for _, m in grouped)
    what = f"mean {metric}" if several else metric
    best = next((w for w, acc, _ in widths if acc >= threshold), None)
    verdict = (f"smallest width with {what} >= {threshold}: {best}" if best is not None else
               f"no width tried reaches {what} >= {threshold} (widths {[w for w, _, _ in widths]})")
    head = f"| model | {metric}{' (mean ± std over seeds)' if several else ''} |"
    lines = [head, "|---|---|"] + [f"| {n} | {pm(a, s)} |" for n, a, s in baselines]
    lines += [f"| 1 hidden layer, width {w} | {pm(a, s)} |" for w, a, s in widths]
    (out / "smallest_width.md").write_text("\n".join(lines) + f"\n\n**{verdict}**\n")
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    if widths:
        w = np.array(widths, float)
        band(ax, w[:, 0], w[:, 1], w[:, 2], label="1 hidden layer", marker="o")
        ax.set_xscale("log", base=2)
    for n, a, s in baselines:
        line = ax.axhline(a, ls="--", color="gray", label=n)
        if s == s:
            ax.axhspan(a - s, a + s, color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(threshold, ls=":", color="red", label=f"{threshold}")
    ax.set(xlabel="hidden width", ylabel=metric)
    ax.set_title(f"{study + ': ' if study else ''}{metric} vs hidden width of a 1-hidden-layer MLP "
                 f"(other models dashed) {seed_note(grouped)}\n{verdict}".replace("  ", " "), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    plots.savefig(fig, out / "accuracy_vs_width.png")


STUDY_PLOTS = {"vs_n_train": vs_n_train, "kernels": kernels, "smallest_width": smallest_width}  # also in registry.PLOTS
