"""Plots. Each reads saved files only (metrics.csv, steps.csv, boundary.npz, results.csv)."""
import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from expkit.cache import atomic_write  # noqa: E402


def savefig(fig, path):
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


def curves(run_dir, title=None):
    """Loss and accuracy vs epoch for train/val/test: one run's curves.png."""
    m = pd.read_csv(run_dir / "metrics.csv")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, what in zip(axes, ("loss", "acc")):
        for part in ("train", "val", "test"):
            ax.plot(m.epoch, m[f"{part}_{what}"], marker="o" if len(m) < 15 else None, label=part)
        ax.set(xlabel="epoch", ylabel="accuracy" if what == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or run_dir.name, fontsize=10)
    savefig(fig, run_dir / "curves.png")


def boundary(npz_path, out_path, title=""):
    """Decision boundary: predicted class on a grid, with the test points on top."""
    z = np.load(npz_path)
    k = int(max(z["pred"].max(), z["y"].max())) + 1
    cmap = plt.get_cmap("tab20b" if k > 20 else "tab20", k)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.pcolormesh(z["gx"], z["gy"], z["pred"], cmap=cmap, vmin=-0.5, vmax=k - 0.5, alpha=0.45, shading="auto")
    ax.scatter(z["x"][:, 0], z["x"][:, 1], c=z["y"], cmap=cmap, vmin=-0.5, vmax=k - 0.5, s=3, edgecolors="none")
    acc = (z["test_pred"] == z["y"]).mean()
    ax.set(xlabel="x0 (long)", ylabel="x1 (lat)", title=f"{title}  test acc {acc:.3f}".strip())
    savefig(fig, out_path)


# ---- sweep plots: named in a preset's report.plots as {kind: NAME, ...options} ----

def _label(row, keys):
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys) or str(row["job"])


def _ok(df, paths):
    from expkit.report.aggregate import swept_keys

    keys = swept_keys(df)
    return [(row, p, _label(row, keys)) for row, p in zip(df.to_dict("records"), paths)
            if row["status"] in ("completed", "diverged") and (p / "metrics.csv").exists()]


def epochs(df, paths, out, metrics=("val_loss",), logy=False, name=None):
    """Metrics vs epoch, one line per job, one panel per metric."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for row, p, label in _ok(df, paths):
        m = pd.read_csv(p / "metrics.csv")
        for ax, metric in zip(axes[0], metrics):
            ax.plot(m.epoch, m[metric], label=label, marker="o" if len(m) < 15 else None)
    for ax, metric in zip(axes[0], metrics):
        ax.set(xlabel="epoch", ylabel=metric, yscale="log" if logy else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    savefig(fig, out / (name or f"{'_'.join(metrics)}_vs_epoch.png"))


def steps(df, paths, out, logx=True, name="train_loss_vs_step.png"):
    """Train loss at every step (raw, faint) and its running mean, one colour per job."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row, p, label in _ok(df, paths):
        if not (p / "steps.csv").exists():
            continue
        s = pd.read_csv(p / "steps.csv")
        line, = ax.plot(s.step, s.train_loss, alpha=0.25, lw=0.6)
        ax.plot(s.step, s.train_loss.rolling(max(1, len(s) // 100), min_periods=1).mean(),
                color=line.get_color(), label=label)
    # log y: single-sample steps spike 100x above the running mean, which would flatten the rest
    ax.set(xlabel="step", ylabel="train loss", xscale="log" if logx else "linear", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    savefig(fig, out / name)


def vs_param(df, paths, out, x, where=None, metrics=("train_acc", "val_acc", "test_acc"), name=None):
    """Final metrics vs one swept key, over the jobs matching `where` (e.g. width 16)."""
    sel = df[df.status == "completed"].copy()
    for k, v in (where or {}).items():
        sel = sel[sel[k].astype(str) == str(v)]
    sel[x] = pd.to_numeric(sel[x])
    sel = sel.sort_values(x)
    fig, ax = plt.subplots(figsize=(6, 4))
    for metric in metrics:
        ax.plot(sel[x], sel[metric], marker="o", label=metric)
    cond = ", ".join(f"{k}={v}" for k, v in (where or {}).items())
    ax.set(xlabel=x, ylabel="accuracy", title=cond)
    ax.grid(alpha=0.3)
    ax.legend()
    savefig(fig, out / (name or f"accuracy_vs_{x.split('.')[-1]}.png"))


def best_worst(df, paths, out, by="val_acc"):
    """For the best and the worst job by `by`: loss curves and the decision boundary."""
    ok = [(r, p, lbl) for r, p, lbl in _ok(df, paths) if r[by] == r[by]]
    if not ok:
        return
    ranked = sorted(ok, key=lambda t: t[0][by])
    for tag, (row, p, label) in (("best", ranked[-1]), ("worst", ranked[0])):
        m = pd.read_csv(p / "metrics.csv")
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for part in ("train", "val", "test"):
            ax.plot(m.epoch, m[f"{part}_loss"], label=part)
        ax.set(xlabel="epoch", ylabel="loss", title=f"{tag} by {by}: {label} ({by} {row[by]:.4f})")
        ax.grid(alpha=0.3)
        ax.legend()
        savefig(fig, out / f"{tag}_loss_curves.png")
        if (p / "boundary.npz").exists():
            boundary(p / "boundary.npz", out / f"{tag}_boundary.png", f"{tag}: {label}")


def losses(df, paths, out, name="loss_curves.png"):
    """Train, val and test loss vs epoch, one panel per job."""
    jobs = _ok(df, paths)
    fig, axes = plt.subplots(1, len(jobs), figsize=(6.5 * len(jobs), 4), squeeze=False)
    for ax, (row, p, label) in zip(axes[0], jobs):
        m = pd.read_csv(p / "metrics.csv")
        for part in ("train", "val", "test"):
            ax.plot(m.epoch, m[f"{part}_loss"], label=part)
        ax.set(xlabel="epoch", ylabel="loss", title=label)
        ax.grid(alpha=0.3)
        ax.legend()
    savefig(fig, out / name)


def boundaries(df, paths, out):
    """A decision-boundary plot per job."""
    for row, p, label in _ok(df, paths):
        if (p / "boundary.npz").exists():
            safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)
            boundary(p / "boundary.npz", out / f"boundary_{safe}.png", label)


def grad_norms(df, paths, out, name="grad_norms.png"):
    """Mean |grad|^2 per epoch of the recorded layers (log y), one panel per job."""
    jobs = [(r, p, lbl) for r, p, lbl in _ok(df, paths)]
    fig, axes = plt.subplots(1, len(jobs), figsize=(6.5 * len(jobs), 4.5), squeeze=False)
    for ax, (row, p, label) in zip(axes[0], jobs):
        m = pd.read_csv(p / "metrics.csv")
        for c in [c for c in m.columns if c.startswith("grad_sq_layer")]:
            zero = (m[c] == 0).sum()  # exactly 0 cannot be drawn on a log axis: say so in the legend
            note = f" (0 in {zero}/{len(m)} epochs)" if zero else ""
            ax.plot(m.epoch, m[c], marker="o", label=f"layer {c.removeprefix('grad_sq_layer')}{note}")
        ax.set(xlabel="epoch", ylabel="mean ||grad||^2", yscale="log", title=label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    savefig(fig, out / name)


PLOTS = {"epochs": epochs, "losses": losses, "steps": steps, "vs_param": vs_param, "best_worst": best_worst,
         "boundaries": boundaries, "grad_norms": grad_norms}
PLOTS.update(__import__("expkit.report.study_plots", fromlist=["STUDY_PLOTS"]).STUDY_PLOTS)  # hw6/pset10 kinds
from expkit.report.images import image_grid, ranking  # noqa: E402  (ex4 deepfake kinds)
PLOTS.update(ranking=ranking, image_grid=image_grid)


def draw(spec, df, paths, out):
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind not in PLOTS:
        raise ValueError(f"unknown plot kind {kind!r}; known: {sorted(PLOTS)}")
    PLOTS[kind](df, paths, out, **spec)
