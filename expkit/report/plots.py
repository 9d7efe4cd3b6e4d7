"""Plots. Each reads saved files only (metrics.csv, steps.csv, boundary.npz, results.csv)."""
import logging
import re

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from expkit.cache import atomic_write  # noqa: E402


log = logging.getLogger(__name__)


def figure_title(fig):
    """The figure's title: its suptitle, else the titles of its panels, joined by ' | '."""
    sup = fig._suptitle.get_text() if fig._suptitle is not None else ""
    return sup or " | ".join(t for t in (ax.get_title() for ax in fig.axes) if t)


def savefig(fig, path):
    if not figure_title(fig):  # every figure says what it shows
        log.warning("plot %s has no title", path)
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
    fig.suptitle(f"{title or run_dir.name}\ntrain, val and test loss and accuracy vs epoch", fontsize=10)
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
    ax.set(xlabel="x0 (long)", ylabel="x1 (lat)")
    ax.set_title(_wrap(f"{title}; test acc {acc:.3f}" if title else f"decision boundary; test acc {acc:.3f}", 80),
                 fontsize=10)
    savefig(fig, out_path)


# ---- sweep plots: named in a preset's report.plots as {kind: NAME, ...options} ----
# Every kind groups its jobs by configuration (the swept keys but seed) with groups() and draws,
# per configuration, the mean over its seeds with a shaded ±1 std band (mean_curve() + band());
# one seed per configuration draws plain lines, as a single run. Every figure has a title()
# naming the study and what is plotted.

def _label(row, keys):
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys) or str(row["job"])


def _ok(df, paths):
    """(row, path, label) of every job with a result and a metrics.csv; label = all swept keys."""
    from expkit.report.aggregate import swept_keys

    keys = swept_keys(df)
    return [(row, p, _label(row, keys)) for row, p in zip(df.to_dict("records"), paths)
            if row["status"] in ("completed", "diverged") and (p / "metrics.csv").exists()]


def groups(df, paths, statuses=("completed", "diverged"), need="metrics.csv"):
    """The jobs with a result (status in `statuses`, file `need` present) grouped by configuration =
    the swept keys other than seed, in order of first appearance: [(label, [(row, path), ...])];
    a group holds one job per seed. label: 'key=value, ...' ('job N' / 'all jobs' without keys)."""
    from expkit.report.aggregate import config_groups, config_keys

    keys = config_keys(df)
    rows = df.to_dict("records")
    out = []
    for _, idx in config_groups(df, keys):
        members = [(rows[i], paths[i]) for i in (df.index.get_loc(j) for j in idx)
                   if rows[i]["status"] in statuses and (need is None or (paths[i] / need).exists())]
        if members:
            label = ", ".join(f"{k.split('.')[-1]}={members[0][0][k]}" for k in keys)
            out.append((label or (f"job {members[0][0]['job']}" if len(members) == 1 else "all jobs"), members))
    return out


def mean_curve(members, column, file="metrics.csv", x="epoch", smooth=None):
    """`column` of each member's `file` (smoothed per job by `smooth`, if given), aligned on `x`
    (the x values present in any member): (x, mean, std) arrays over the members; std is the
    sample std, NaN where fewer than two members have a finite value. Non-finite values are left out."""
    frames = []
    for _, p in members:
        f = pd.read_csv(p / file)
        if column in f:
            y = pd.to_numeric(f[column], errors="coerce").replace([np.inf, -np.inf], np.nan)
            frames.append(pd.DataFrame({"x": f[x], "y": smooth(y) if smooth else y}))
    if not frames:
        return np.array([]), np.array([]), np.array([])
    g = pd.concat(frames).groupby("x")["y"]
    return g.mean().index.to_numpy(), g.mean().to_numpy(), g.std(ddof=1).to_numpy()


def band(ax, x, mean, std, label=None, **kw):
    """The mean line, and a shaded ±1 std band where the std is known (several seeds)."""
    kw.setdefault("marker", "o" if len(x) < 15 else None)
    line, = ax.plot(x, mean, label=label, **kw)
    known = np.isfinite(np.asarray(std, float)) & np.isfinite(np.asarray(mean, float))
    if known.any():
        lo, hi = np.where(known, mean - std, mean), np.where(known, mean + std, mean)
        ax.fill_between(x, lo, hi, where=known, color=line.get_color(), alpha=0.2, lw=0)
    return line


def seed_note(grouped):
    """'(mean ± 1 std over 3 seeds, shaded)' when some configuration has several seeds, else ''."""
    counts = sorted({len(m) for _, m in grouped})
    if not counts or counts[-1] < 2:
        return ""
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"(mean ± 1 std over {n} seeds, shaded)"


def title(study, what, grouped=(), per=None):
    """'<study>: <what>, one line per <per> (mean ± 1 std over N seeds, shaded)'."""
    text = f"{study}: {what}" if study else what
    if per:
        text += f", {per}"
    note = seed_note(grouped)
    return f"{text} {note}".strip()


def _per(df, what="line"):
    from expkit.report.aggregate import config_keys

    keys = config_keys(df)
    return f"one {what} per {', '.join(keys)}" if keys else None


def _wrap(text, width=95):
    import textwrap

    return "\n".join(textwrap.fill(part, width) for part in text.split("\n"))


def seed_of(row, path):
    """A job's seed: its swept value, else the one its summary.json records."""
    s = row.get("seed")
    if s is not None and s == s:
        return s
    import json

    try:
        return json.loads((path / "summary.json").read_text()).get("seed")
    except (OSError, ValueError):
        return None


def _group_stat(members, column):
    from expkit.report.aggregate import _finite, _mean_std

    return _mean_std(_finite([row.get(column) for row, _ in members]))


def epochs(df, paths, out, metrics=("val_loss",), logy=False, name=None, study=None):
    """Metrics vs epoch, one line per configuration (mean over seeds ± std), one panel per metric."""
    grouped = groups(df, paths)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.4), squeeze=False)
    for label, members in grouped:
        for ax, metric in zip(axes[0], metrics):
            band(ax, *mean_curve(members, metric), label=label)
    for ax, metric in zip(axes[0], metrics):
        ax.set(xlabel="epoch", ylabel=metric, yscale="log" if logy else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    what = f"{', '.join(metrics)} vs epoch" + (" (log y)" if logy else "")
    fig.suptitle(_wrap(title(study, what, grouped, _per(df))), fontsize=10)
    savefig(fig, out / (name or f"{'_'.join(metrics)}_vs_epoch.png"))


def steps(df, paths, out, logx=True, name="train_loss_vs_step.png", study=None):
    """Train loss at every step (faint) and its running mean, one colour per configuration
    (both averaged over seeds, the running mean with a ±1 std band)."""
    grouped = groups(df, paths, need="steps.csv")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for label, members in grouped:
        x, raw, _ = mean_curve(members, "train_loss", "steps.csv", "step")
        line, = ax.plot(x, raw, alpha=0.25, lw=0.6)
        band(ax, *mean_curve(members, "train_loss", "steps.csv", "step",
                             smooth=lambda y: y.rolling(max(1, len(y) // 100), min_periods=1).mean()),
             label=label, color=line.get_color(), marker=None)
    # log y: single-sample steps spike 100x above the running mean, which would flatten the rest
    ax.set(xlabel="step", ylabel="train loss", xscale="log" if logx else "linear", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    what = "train loss at every step (faint) and its running mean (window 1% of the steps) vs step (log y)"
    fig.suptitle(_wrap(title(study, what, grouped, _per(df, "colour"))), fontsize=10)
    savefig(fig, out / name)


def vs_param(df, paths, out, x, where=None, metrics=("train_acc", "val_acc", "test_acc"), name=None, study=None):
    """Final metrics vs one swept key, over the configurations matching `where` (e.g. width 16):
    the mean over seeds with a ±1 std band."""
    grouped = [(label, m) for label, m in groups(df, paths, statuses=("completed",), need=None)
               if all(str(m[0][0].get(k)) == str(v) for k, v in (where or {}).items())]
    grouped.sort(key=lambda g: float(g[1][0][0][x]))
    xs = [float(m[0][0][x]) for _, m in grouped]
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for metric in metrics:
        stats = np.array([_group_stat(m, metric) for _, m in grouped], float).reshape(-1, 2)
        band(ax, np.array(xs), stats[:, 0], stats[:, 1], label=metric, marker="o")
    cond = ", ".join(f"{k}={v}" for k, v in (where or {}).items())
    ax.set(xlabel=x, ylabel="accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    what = f"final {', '.join(metrics)} vs {x}" + (f" at {cond}" if cond else "")
    fig.suptitle(_wrap(title(study, what, grouped), 70), fontsize=10)
    savefig(fig, out / (name or f"accuracy_vs_{x.split('.')[-1]}.png"))


def best_worst(df, paths, out, by="val_acc", study=None):
    """For the best and the worst configuration by the mean of `by` over its seeds: its loss curves
    (mean ± std over seeds) and the decision boundary of its first seed."""
    ranked = [(label, m, *_group_stat(m, by)) for label, m in groups(df, paths)]
    ranked = sorted([r for r in ranked if r[2] == r[2]], key=lambda r: r[2])
    if not ranked:
        return
    several = any(len(r[1]) > 1 for r in ranked)
    for tag, (label, members, mean, std) in (("best", ranked[-1]), ("worst", ranked[0])):
        fig, ax = plt.subplots(figsize=(7, 4.4))
        for part in ("train", "val", "test"):
            band(ax, *mean_curve(members, f"{part}_loss"), label=part, marker=None)
        ax.set(xlabel="epoch", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend()
        score = f"{by} {pm_text(mean, std)}" + (f" over {len(members)} seeds" if several else "")
        what = (f"train/val/test loss vs epoch of the {tag} configuration by {'mean ' if several else ''}"
                f"{by}: {label} ({score})")
        fig.suptitle(_wrap(title(study, what, [(label, members)]), 80), fontsize=10)
        savefig(fig, out / f"{tag}_loss_curves.png")
        row, p = members[0]
        if (p / "boundary.npz").exists():
            seed = seed_of(row, p)
            which = f", seed {seed}" + (f" (the first of its {len(members)} seeds)" if len(members) > 1 else "")
            boundary(p / "boundary.npz", out / f"{tag}_boundary.png",
                     f"{study + ': ' if study else ''}decision boundary of the {tag} configuration by "
                     f"{'mean ' if several else ''}{by}: {label}{which}; test points on top")


def losses(df, paths, out, name="loss_curves.png", study=None):
    """Train, val and test loss vs epoch, one panel per configuration (mean ± std over seeds)."""
    grouped = groups(df, paths)
    fig, axes = plt.subplots(1, len(grouped), figsize=(6.5 * len(grouped), 4.4), squeeze=False)
    from expkit.report.aggregate import config_keys

    for ax, (label, members) in zip(axes[0], grouped):
        for part in ("train", "val", "test"):
            band(ax, *mean_curve(members, f"{part}_loss"), label=part, marker=None)
        ax.set(xlabel="epoch", ylabel="loss", title=label if config_keys(df) else None)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(_wrap(title(study, "train, val and test loss vs epoch", grouped, _per(df, "panel"))), fontsize=10)
    savefig(fig, out / name)


def boundaries(df, paths, out, study=None):
    """A decision-boundary plot per configuration, from its first seed (the title says which)."""
    for label, members in groups(df, paths):
        row, p = members[0]
        if (p / "boundary.npz").exists():
            safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)
            seed = seed_of(row, p)
            which = (f", seed {seed}" if seed is not None else "") + \
                (f" (the first of its {len(members)} seeds)" if len(members) > 1 else "")
            boundary(p / "boundary.npz", out / f"boundary_{safe}.png",
                     f"{study + ': ' if study else ''}decision boundary of {label}{which}; test points on top")


GRAD_COLUMN = re.compile(r"grad_sq_layer(\d+)")  # the weight matrix's; grad_sq_bias_layer* is not drawn


def grad_columns(columns):
    """The weight-matrix gradient columns grad_sq_layer<i> (not grad_sq_bias_layer<i>), by layer."""
    found = [(int(m.group(1)), c) for c in columns if (m := GRAD_COLUMN.fullmatch(c))]
    return [c for _, c in sorted(found)]


def grad_norms(df, paths, out, name="grad_norms.png", study=None):
    """Mean ‖∇W‖² per epoch of the recorded layers' weight matrices (log y), one panel per
    configuration, mean ± std over seeds."""
    from expkit.report.aggregate import config_keys

    grouped = groups(df, paths)
    fig, axes = plt.subplots(1, len(grouped), figsize=(6.5 * len(grouped), 4.8), squeeze=False)
    for ax, (label, members) in zip(axes[0], grouped):
        for c in grad_columns(pd.read_csv(members[0][1] / "metrics.csv", nrows=0).columns):
            x, mean, std = mean_curve(members, c)
            zero = int((mean == 0).sum())  # exactly 0 cannot be drawn on a log axis: say so in the legend
            note = f" (0 in {zero}/{len(mean)} epochs)" if zero else ""
            band(ax, x, mean, std, label=f"layer {c.removeprefix('grad_sq_layer')}{note}", marker="o")
        ax.set(xlabel="epoch", ylabel="mean ‖∇W‖² (weight matrix)", yscale="log",
               title=label if config_keys(df) else None)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    what = "mean ‖∇W‖² of each layer's weight matrix per epoch (averaged over the epoch's batches; log y)"
    fig.suptitle(_wrap(title(study, what, grouped, _per(df, "panel"))), fontsize=10)
    savefig(fig, out / name)


def pm_text(mean, std):
    from expkit.report.aggregate import pm

    return pm(mean, std)


PLOTS = {"epochs": epochs, "losses": losses, "steps": steps, "vs_param": vs_param, "best_worst": best_worst,
         "boundaries": boundaries, "grad_norms": grad_norms}
PLOTS.update(__import__("expkit.report.study_plots", fromlist=["STUDY_PLOTS"]).STUDY_PLOTS)  # hw6/pset10 kinds
from expkit.report.images import image_grid, ranking  # noqa: E402  (ex4 deepfake kinds)
PLOTS.update(ranking=ranking, image_grid=image_grid)


def draw(spec, df, paths, out, study=None):
    """One plot kind of a preset's report.plots; `study` (the study's name) goes into every title."""
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind not in PLOTS:
        raise ValueError(f"unknown plot kind {kind!r}; known: {sorted(PLOTS)}")
    PLOTS[kind](df, paths, out, study=study, **spec)
