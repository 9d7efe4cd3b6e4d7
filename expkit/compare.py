"""Compare finished runs side by side:

    python -m expkit.compare RUN_A RUN_B [...] [--out compare.png]
    python -m expkit.compare SWEEP_DIR                 # its best and worst configuration

Prints the config keys whose values differ (dotted, e.g. model.width), then the final and best
metrics side by side, and writes the runs' curves overlaid (loss and accuracy vs epoch; train
dashed, val solid) to a PNG (--out, default ./compare.png; the last line says where). A sweep dir
stands for its best and its worst configuration by final val accuracy, averaged over the seeds
(their metrics mean ± std over seeds, their curves the mean over seeds with a ±1 std band).
Anything that is not a run or sweep dir is one `error:` line, exit 2, and nothing is written.
"""
import argparse
import json
import sys
from pathlib import Path

from expkit.errors import UserError, require

FINAL = ["train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss"]


class Entry:
    """One side of the comparison: a run, or a sweep's configuration (its runs over seeds)."""

    def __init__(self, label, runs, config, note=""):
        self.label, self.runs, self.config, self.note = label, runs, config, note
        self.name = ""  # the letter it is shown under

    def summaries(self):
        return [json.loads((d / "summary.json").read_text()) for d in self.runs]


def _summary(d: Path):
    try:
        return json.loads((d / "summary.json").read_text())
    except (OSError, ValueError) as ex:
        raise UserError(f"{d} is not a finished run: unreadable summary.json ({type(ex).__name__})") from None


def _config_of(d: Path, summary):
    """{dotted key: value} of the run's config, as the tables read it (its saved config, by value)."""
    from expkit.report.aggregate import JobConfig

    return JobConfig(d, summary).values()


def _run(d: Path):
    require((d / "summary.json").exists(), f"{d} is not a finished run: no summary.json (a run dir holds "
                                          f"summary.json, metrics.csv and config.yaml)")
    s = _summary(d)
    require(s.get("final") and (d / "metrics.csv").exists(),
            f"{d}: run {s.get('status', 'without a status')}" + (f" ({s['error']})" if s.get("error") else "")
            + ": no metrics to compare")
    return Entry(str(d), [d], _config_of(d, s))


def _sweep(d: Path):
    """A sweep's best and worst configuration by mean final val accuracy over its seeds."""
    from expkit.report.aggregate import collect, job_dirs
    from expkit.report.tables import OK, _finite, config_groups, config_keys

    df = collect([d])
    paths = job_dirs(d)
    keys = config_keys(df)
    ranked = []
    for _, idx in config_groups(df, keys):
        pos = [df.index.get_loc(i) for i in idx]
        ok = [p for p in pos if df.status.iloc[p] in OK and (paths[p] / "metrics.csv").exists()]
        vals = _finite(df.val_acc.iloc[ok]) if "val_acc" in df and ok else []
        if len(vals):
            row = df.iloc[ok[0]]
            what = ", ".join(f"{k}={row[k]}" for k in keys) or f"job {row['job']}"
            ranked.append((float(vals.mean()), what, [paths[p] for p in ok]))
    require(ranked, f"{d}: no job of this sweep has a final val accuracy to rank by (statuses: "
                    f"{', '.join(sorted(set(df.status))) if len(df) else 'none'})")
    ranked.sort(key=lambda r: r[0])
    picks = [("best", ranked[-1])] + ([("worst", ranked[0])] if len(ranked) > 1 else [])
    out = []
    for tag, (mean, what, runs) in picks:
        first = _summary(runs[0])
        config = _config_of(runs[0], first)
        seeds = [_summary(r).get("seed", config.get("seed")) for r in runs]
        if len(runs) > 1:
            config = dict(config, seed=",".join(str(s) for s in seeds))  # the seeds it pools
        over = f"mean of {len(runs)} seeds" if len(runs) > 1 else "one run"
        out.append(Entry(f"{d} {tag}: {what}", runs, config, note=f"val_acc {mean:.4f}, {over}"))
    return out


def entries(paths):
    """Each argument as one entry (a run) or two (a sweep's best and worst); UserError on bad input."""
    from expkit.report.aggregate import job_dirs

    out = []
    for p in map(Path, paths):
        require(p.is_dir(), f"not a directory: {p} (give run or sweep directories)")
        if (p / "summary.json").exists() or (p / ".hydra").is_dir():
            out.append(_run(p))
        elif job_dirs(p):
            out += _sweep(p)
        else:
            raise UserError(f"{p} is neither a run dir (summary.json, metrics.csv) nor a sweep dir (job dirs)")
    require(len(out) >= 2, "nothing to compare: give two or more runs, or a sweep dir with two or more "
                           "configurations")
    letters = [chr(ord("A") + i) if i < 26 else f"#{i + 1}" for i in range(len(out))]
    for e, name in zip(out, letters):
        e.name = name
    return out


def config_differences(es):
    """[(dotted key, [value per entry])] of the config keys whose values differ (by value; a key one
    config lacks counts as a value)."""
    from expkit.report.tables import same_value

    flat = [e.config for e in es]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [(k, [f.get(k) for f in flat]) for k in keys
            if len({same_value(f[k]) if k in f else "<none>" for f in flat}) > 1]


def metric_rows(es):
    """[(metric, [text per entry])]: status, epochs, final metrics, best val accuracy and its epoch,
    test accuracy at that epoch, time; a configuration over seeds: mean ± std."""
    from expkit.report.tables import _finite, _mean_std, pm

    def cell(values, digits=4):
        v = _finite(values)
        if not len(v):
            return ""
        if len(values) == 1:
            x = float(v.iloc[0])
            return f"{x:.{digits}f}" if abs(x) < 1000 else f"{x:.0f}"
        return pm(*_mean_std(v), digits=digits)

    rows = [("status", [",".join(dict.fromkeys(s.get("status", "?") for s in e.summaries())) for e in es]),
            ("epochs", [",".join(dict.fromkeys(str(s.get("epochs_run")) for s in e.summaries())) for e in es])]
    for m in FINAL:
        rows.append((f"final {m}", [cell([s.get("final", {}).get(m) for s in e.summaries()]) for e in es]))
    rows.append(("best val_acc", [cell([s.get("best", {}).get("val_acc") for s in e.summaries()]) for e in es]))
    rows.append(("best epoch", [",".join(str(s.get("best", {}).get("epoch")) for s in e.summaries()) for e in es]))
    rows.append(("test_acc at best", [cell([s.get("best", {}).get("test_acc") for s in e.summaries()]) for e in es]))
    rows.append(("wall time s", [cell([s.get("wall_time_s") for s in e.summaries()], 1) for e in es]))
    return rows


def _text(v):
    if v is None:
        return "-"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), default=str)
    return str(v)


def _table(head, rows):
    table = [head] + rows
    widths = [max(len(r[c]) for r in table) for c in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


def draw(es, out: Path):
    """Loss and accuracy vs epoch, one colour per entry (train dashed, val solid), to out."""
    from expkit.report import plots
    from expkit.report.plots import band, mean_curve, plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for k, e in enumerate(es):
        colour = f"C{k % 10}"
        members = [({}, d) for d in e.runs]
        for ax, what in zip(axes, ("loss", "acc")):
            for part, style in (("train", "--"), ("val", "-")):
                x, mean, std = mean_curve(members, f"{part}_{what}")
                if len(x):  # the band on the val curve only: the train curve stays a plain line
                    band(ax, x, mean, std if part == "val" else std * float("nan"), label=f"{e.name} {part}",
                         color=colour, ls=style, marker="o" if len(x) < 15 and part == "val" else None, ms=3)
    for ax, what in zip(axes, ("loss", "accuracy")):
        ax.set(xlabel="epoch", ylabel=what)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    names = "\n".join(f"{e.name} = {e.label}" + (f" ({e.note})" if e.note else "") for e in es)
    several = any(len(e.runs) > 1 for e in es)
    fig.suptitle(plots._wrap(f"compare: train (dashed) and val (solid) loss and accuracy vs epoch"
                             + (" (a configuration over seeds: mean, val ± 1 std shaded)" if several else "")
                             + f"\n{names}", 130), fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots.savefig(fig, out)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m expkit.compare", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("dirs", nargs="+", type=Path, help="run dirs, or sweep dirs (their best and worst configuration)")
    ap.add_argument("--out", type=Path, default=Path("compare.png"), help="the curves' PNG (default: ./compare.png)")
    args = ap.parse_args(argv)
    try:
        es = entries(args.dirs)
        require(not args.out.is_dir(), f"--out {args.out} is a directory; give a file name, e.g. {args.out / 'compare.png'}")
    except UserError as ex:
        sys.stderr.write(f"error: {ex}\n")
        return 2
    lines = [f"{e.name}  {e.label}" + (f"  ({e.note})" if e.note else "") for e in es]
    diffs = config_differences(es)
    names = [e.name for e in es]
    if diffs:
        lines += ["", "config keys that differ:",
                  _table(["key"] + names, [[k] + [_text(v) for v in vals] for k, vals in diffs])]
    else:
        lines += ["", "configs: identical"]
    lines += ["", "metrics (final epoch; best = the epoch of best val accuracy):",
              _table(["metric"] + names, [[m] + vals for m, vals in metric_rows(es)])]
    out = args.out.resolve()
    try:
        draw(es, out)
    except OSError as ex:
        sys.stderr.write(f"error: cannot write {out}: {ex.strerror or ex} (choose another --out)\n")
        return 2
    print("\n".join(lines) + f"\n\ncurves (loss and accuracy vs epoch, overlaid) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
