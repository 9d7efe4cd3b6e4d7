"""Parallel coordinates of a sweep: one line per configuration across an axis per swept key (the
seed aside) and one for the metric, coloured by the metric (the mean over seeds) with a colour bar.

Drawn with matplotlib (not pandas' version, which needs numeric columns and draws no per-axis
scales). An axis of a positive numeric key spanning more than one decade (lr, weight decay) is
logarithmic; a key of non-numeric values (a model choice, an activation) is an axis of categories.
Every sweep whose jobs differ in two or more keys draws it (aggregate.build_report); a preset can ask
for it in report.plots as {kind: parallel_coordinates}. Figures are written by plots.savefig."""
import math

import numpy as np

from expkit.report import plots
from expkit.report.plots import _wrap, plt
from expkit.report.registry import register
from expkit.report.tables import OK, PARALLEL, _finite, _mean_std, config_groups, config_keys, missing

NONE_AT = -0.1  # where a configuration without a value for a numeric key sits on that axis


def _number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


class Axis:
    """One vertical axis: a key's values mapped to 0..1, with its ticks."""

    def __init__(self, name, values, exact=True):
        self.name, self.exact = name, exact  # exact: tick each value (a key's few values), not a scale
        present = [v for v in values if not missing(v)]
        self.has_none = len(present) < len(values)
        self.numeric = bool(present) and all(_number(v) for v in present)
        if self.numeric:
            nums = [float(v) for v in present]
            self.lo, self.hi = min(nums), max(nums)
            self.values = sorted(set(nums))
            self.log = self.lo > 0 and self.hi / self.lo > 10  # more than one decade: lr, weight decay
            self.kind = "log" if self.log else "linear"
        else:
            self.categories = list(dict.fromkeys(str(v) for v in present))
            self.kind = "categories"

    def _t(self, x):
        return math.log10(x) if self.log else x

    def pos(self, v):
        if missing(v):
            return NONE_AT
        if not self.numeric:
            k = len(self.categories)
            return 0.5 if k == 1 else self.categories.index(str(v)) / (k - 1)
        lo, hi = self._t(self.lo), self._t(self.hi)
        return 0.5 if hi == lo else (self._t(float(v)) - lo) / (hi - lo)

    def ticks(self):
        """[(position, label)] along the axis."""
        if not self.numeric:
            out = [(self.pos(c), c) for c in self.categories]
        elif self.lo == self.hi:
            out = [(0.5, _fmt(self.lo))]
        elif self.exact and len(self.values) <= 8:
            out = [(self.pos(x), _fmt(x)) for x in self.values]
        elif self.log:
            decades = range(math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi)) + 1)
            out = [(self.pos(10.0 ** d), _fmt(10.0 ** d)) for d in decades if self.lo <= 10.0 ** d <= self.hi]
            ends = [(self.pos(x), _fmt(x)) for x in (self.lo, self.hi)]
            out = sorted(set(out + [e for e in ends if all(abs(e[0] - p) > 0.06 for p, _ in out)]))
        else:
            out = [(p, _fmt(self.lo + p * (self.hi - self.lo))) for p in np.linspace(0, 1, 5)]
        return out + ([(NONE_AT, "none")] if self.has_none and self.numeric else [])


def _fmt(x):
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.3g}"


def configurations(df, metric):
    """[(key values, mean of metric over its seeds, n seeds)] of the configurations with a finite
    mean, in order of first appearance, and how many configurations had none."""
    keys = config_keys(df)
    found, without = [], 0
    for _, idx in config_groups(df, keys):
        g = df.loc[idx]
        ok = g[g.status.isin(OK)]
        v = _finite(ok[metric]) if metric in ok else []
        if len(v):
            found.append(([g[k].iloc[0] for k in keys], _mean_std(v)[0], len(v)))
        else:
            without += 1
    return keys, found, without


@register(PARALLEL)
def parallel_coordinates(df, paths, out, metric="val_acc", name="parallel_coordinates.png", cmap="viridis",
                         study=None):
    """One line per configuration through an axis per swept key and one for `metric` (its mean over
    seeds), coloured by that mean (colour bar); the best configuration drawn thickest, on top."""
    keys, configs, without = configurations(df, metric)
    if not keys or not configs:
        return
    axes = [Axis(k, [vals[i] for vals, _, _ in configs]) for i, k in enumerate(keys)]
    scores = np.array([m for _, m, _ in configs], float)
    axes.append(Axis(f"{metric} (mean)" if any(n > 1 for _, _, n in configs) else metric, list(scores), exact=False))
    norm = plt.Normalize(scores.min(), scores.max() if scores.max() > scores.min() else scores.min() + 1e-9)
    colours = plt.get_cmap(cmap)
    fig, ax = plt.subplots(figsize=(max(6.5, 2.1 * len(axes) + 1.5), 5.2))
    xs = np.arange(len(axes))
    order = np.argsort(scores, kind="stable")  # the best last: drawn on top
    for rank, i in enumerate(order):
        vals, score, _ = configs[i]
        ys = [a.pos(v) for a, v in zip(axes, list(vals) + [score])]
        best = rank == len(order) - 1
        ax.plot(xs, ys, color=colours(norm(score)), lw=3.0 if best else 1.4, alpha=1.0 if best else 0.8,
                marker="o", ms=4 if best else 3, zorder=3 if best else 2)
    for x, a in zip(xs, axes):
        ax.axvline(x, color="black", lw=0.8, zorder=1)
        for p, label in a.ticks():
            ax.plot([x - 0.03, x], [p, p], color="black", lw=0.8, zorder=1)
            ax.text(x - 0.05, p, label, ha="right", va="center", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7), zorder=4)
    ax.set_xticks(xs, [f"{a.name}\n({a.kind})" if a.kind != "linear" else a.name for a in axes], fontsize=9)
    ax.tick_params(axis="x", length=0)
    ax.set_xlim(-0.45, len(axes) - 0.8)
    ax.set_ylim(NONE_AT - 0.06 if any(a.has_none and a.numeric for a in axes) else -0.06, 1.06)
    ax.set_yticks([])
    for side in ("left", "right", "top", "bottom"):
        ax.spines[side].set_visible(False)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=colours)
    fig.colorbar(sm, ax=ax, pad=0.02, fraction=0.04).set_label(
        f"mean {metric} over seeds" if any(n > 1 for _, _, n in configs) else metric)
    seeds = sorted({n for _, _, n in configs})
    what = (f"parallel coordinates: one line per configuration ({len(configs)}), coloured by {metric}"
            + (f" (mean over {seeds[0] if len(seeds) == 1 else f'{seeds[0]}-{seeds[-1]}'} seeds)"
               if seeds[-1] > 1 else "")
            + "; the best thickest" + (f"; {without} configuration(s) without a result left out" if without else ""))
    fig.suptitle(_wrap(f"{study}: {what}" if study else what, 90), fontsize=10)
    plots.savefig(fig, out / name)
