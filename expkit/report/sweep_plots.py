"""The generic sweep plots named in a preset's report.plots as {kind: NAME, ...options}: metrics vs
epoch or step, final metrics vs a swept key, the best and worst configuration, loss curves,
decision boundaries and gradient norms. Each reads saved files only.

Every kind groups its jobs by configuration (the swept keys but seed) and draws, per configuration,
the mean over its seeds with a shaded ±1 std band; every figure's title names the study. Figures
are written by plots.savefig, looked up when drawing (replacing it there catches them all)."""
import numpy as np
import pandas as pd

from expkit.report import plots
from expkit.report.plots import (_group_stat, _per, _wrap, band, boundary, grad_columns, groups, mean_curve, plt,
                                 pm_text, seed_of, title)
from expkit.report.registry import register
from expkit.report.tables import config_keys


@register("epochs")
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
    plots.savefig(fig, out / (name or f"{'_'.join(metrics)}_vs_epoch.png"))


@register("steps")
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
    plots.savefig(fig, out / name)


@register("vs_param")
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
    plots.savefig(fig, out / (name or f"accuracy_vs_{x.split('.')[-1]}.png"))


@register("best_worst")
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
        plots.savefig(fig, out / f"{tag}_loss_curves.png")
        row, p = members[0]
        if (p / "boundary.npz").exists():
            seed = seed_of(row, p)
            which = f", seed {seed}" + (f" (the first of its {len(members)} seeds)" if len(members) > 1 else "")
            boundary(p / "boundary.npz", out / f"{tag}_boundary.png",
                     f"{study + ': ' if study else ''}decision boundary of the {tag} configuration by "
                     f"{'mean ' if several else ''}{by}: {label}{which}; test points on top")


@register("losses")
def losses(df, paths, out, name="loss_curves.png", study=None):
    """Train, val and test loss vs epoch, one panel per configuration (mean ± std over seeds)."""
    grouped = groups(df, paths)
    fig, axes = plt.subplots(1, len(grouped), figsize=(6.5 * len(grouped), 4.4), squeeze=False)
    for ax, (label, members) in zip(axes[0], grouped):
        for part in ("train", "val", "test"):
            band(ax, *mean_curve(members, f"{part}_loss"), label=part, marker=None)
        ax.set(xlabel="epoch", ylabel="loss", title=label if config_keys(df) else None)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(_wrap(title(study, "train, val and test loss vs epoch", grouped, _per(df, "panel"))), fontsize=10)
    plots.savefig(fig, out / name)


@register("boundaries")
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


@register("grad_norms")
def grad_norms(df, paths, out, name="grad_norms.png", study=None):
    """Mean ‖∇W‖² per epoch of the recorded layers' weight matrices (log y), one panel per
    configuration, mean ± std over seeds."""
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
    plots.savefig(fig, out / name)
