"""Plotting helpers every plot uses, and a run's own plots (curves, boundary). Plots read saved
files only (metrics.csv, steps.csv, boundary.npz, results.csv).

Every figure is written by savefig() here; the plot kinds of report.plots (sweep_plots.py,
study_plots.py, images.py) call it as plots.savefig, so replacing it here catches every figure.
This module imports tables.py and nothing else of the report: no plot kind, no aggregate."""
import logging
import re

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from expkit.cache import atomic_write  # noqa: E402
from expkit.report.tables import _finite, _mean_std, config_groups, config_keys, pm, swept_keys  # noqa: E402


log = logging.getLogger(__name__)


def figure_title(fig):
    """The figure's title: its suptitle, else the titles of its panels, joined by ' | '."""
    sup = fig._suptitle.get_text() if fig._suptitle is not None else ""
    return sup or " | ".join(t for t in (ax.get_title() for ax in fig.axes) if t)


def savefig(fig, path, tight=True):
    """tight=False: the figure set its own margins (a tight bounding box draws the figure twice)."""
    if not figure_title(fig):  # every figure says what it shows
        log.warning("plot %s has no title", path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight" if tight else None, format="png"))
    plt.close(fig)


def curves(run_dir, title=None):
    """Loss and accuracy vs epoch for train/val/test: one run's curves.png."""
    m = pd.read_csv(run_dir / "metrics.csv")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, what in zip(axes, ("loss", "acc")):
        for part in ("train", "val", "test"):
            ax.plot(m.epoch, m[f"{part}_{what}"], marker="o" if len(m) < 15 else None, label=part)
        ax.set(xlabel="epoch", ylabel="accuracy" if what == "acc" else "loss")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title or run_dir.name}\ntrain, val and test loss and accuracy vs epoch", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.13, top=0.84, wspace=0.18)  # every run pays for this plot
    savefig(fig, run_dir / "curves.png", tight=False)


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


# ---- helpers of the sweep plots (the kinds named in a preset's report.plots) ----
# Every kind groups its jobs by configuration (the swept keys but seed) with groups() and draws,
# per configuration, the mean over its seeds with a shaded ±1 std band (mean_curve() + band());
# one seed per configuration draws plain lines, as a single run. Every figure has a title()
# naming the study and what is plotted.

def _label(row, keys):
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys) or str(row["job"])


def _ok(df, paths):
    """(row, path, label) of every job with a result and a metrics.csv; label = all swept keys."""
    keys = swept_keys(df)
    return [(row, p, _label(row, keys)) for row, p in zip(df.to_dict("records"), paths)
            if row["status"] in ("completed", "diverged") and (p / "metrics.csv").exists()]


def groups(df, paths, statuses=("completed", "diverged"), need="metrics.csv"):
    """The jobs with a result (status in `statuses`, file `need` present) grouped by configuration =
    the swept keys other than seed, in order of first appearance: [(label, [(row, path), ...])];
    a group holds one job per seed. label: 'key=value, ...' ('job N' / 'all jobs' without keys)."""
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
    return _mean_std(_finite([row.get(column) for row, _ in members]))


GRAD_COLUMN = re.compile(r"grad_sq_layer(\d+)")  # the weight matrix's; grad_sq_bias_layer* is not drawn


def grad_columns(columns):
    """The weight-matrix gradient columns grad_sq_layer<i> (not grad_sq_bias_layer<i>), by layer."""
    found = [(int(m.group(1)), c) for c in columns if (m := GRAD_COLUMN.fullmatch(c))]
    return [c for _, c in sorted(found)]


def pm_text(mean, std):
    return pm(mean, std)
