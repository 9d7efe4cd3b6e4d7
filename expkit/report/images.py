"""Sweep reports for image-classification baselines, from saved files only (summary.json,
predictions.csv): a ranking table, and a grid of test images the best job gets right and the
worst gets wrong. Named in a preset's report.plots as {kind: ranking} / {kind: image_grid}.
The grid is written by plots.savefig, looked up when drawing (replacing it there catches it)."""
import json
import logging
from pathlib import Path

import pandas as pd

from expkit.cache import atomic_write
from expkit.report.registry import register
from expkit.report.tables import _finite, _mean_std, config_groups, pm, to_markdown

log = logging.getLogger(__name__)


def _jobs(df, paths):
    """One record per job: baseline (model, or resnet mode), lr (torch models only), metrics, status,
    and its configuration (the swept keys but seed)."""
    config = {df.index.get_loc(i): key for key, idx in config_groups(df) for i in idx}
    out = []
    for pos, (row, p) in enumerate(zip(df.to_dict("records"), paths)):
        s = json.loads((p / "summary.json").read_text()) if (p / "summary.json").exists() else {}
        cfg = s.get("config") or _hydra_config(p)
        model = cfg.get("model", {})
        mode = model.get("mode")
        out.append({
            "baseline": mode or model.get("name", "?"),
            "lr": cfg.get("optim", {}).get("lr") if mode else None,  # estimators have no lr
            "status": row["status"], "test_acc": row.get("test_acc"), "val_acc": row.get("val_acc"),
            "wall_time_s": row.get("wall_time_s"), "job": row["job"], "error": s.get("error", ""), "path": p,
            "config": config[pos], "seed": row.get("seed", s.get("seed")),
        })
    return out


def _hydra_config(p: Path):
    import yaml

    f = p / ".hydra" / "config.yaml"
    return (yaml.safe_load(f.read_text()) or {}) if f.exists() else {}


def _done(jobs):
    return [j for j in jobs if j["status"] == "completed" and j["test_acc"] == j["test_acc"]
            and j["test_acc"] is not None and (j["path"] / "predictions.csv").exists()]


def _configs(done):
    """The finished jobs grouped by configuration, in order of first appearance: one record each
    with the mean (and sample std) over its seeds of test/val accuracy and wall time, n seeds,
    its jobs, and the first seed's path and seed (whose predictions stand for the configuration)."""
    grouped = {}
    for j in done:
        grouped.setdefault(j["config"], []).append(j)
    out = []
    for members in grouped.values():
        c = dict(members[0], n=len(members), job=",".join(str(j["job"]) for j in members))
        for m in ("test_acc", "val_acc", "wall_time_s"):
            c[m], c[f"{m}_std"] = _mean_std(_finite([j[m] for j in members]))
        out.append(c)
    return out


@register("ranking")
def ranking(df, paths, out, per_baseline=2, study=None):
    """ranking.csv / ranking.md: the best two configurations of each baseline by test accuracy (the
    mean over seeds ± std when there are several), the worst overall, and the jobs that did not run
    (skipped/failed, with the reason)."""
    jobs = _jobs(df, paths)
    done = _configs(_done(jobs))
    several = any(c["n"] > 1 for c in done)
    rows = []
    for base in dict.fromkeys(j["baseline"] for j in done):
        ranked = sorted((j for j in done if j["baseline"] == base), key=lambda j: -j["test_acc"])
        rows += [dict(j, rank=f"best {i + 1} of {base}") for i, j in enumerate(ranked[:per_baseline])]
    if done:
        rows.append(dict(min(done, key=lambda j: j["test_acc"]), rank="worst overall"))
    cols = ["rank", "baseline", "lr", "test_acc", "val_acc", "wall_time_s", "job"]
    if several:
        cols[3:3] = ["n"]
        cols[5:5] = ["test_acc_std"]
        cols[7:7] = ["val_acc_std"]
    table = pd.DataFrame(rows, columns=cols)
    table["lr"] = [f"{v:g}" if v == v and v is not None else "" for v in table.lr]
    atomic_write(out / "ranking.csv", lambda tmp: table.to_csv(tmp, index=False))
    shown = table.astype(object).where(table.notna(), "")
    if several:  # "mean ± std" strings over the seeds
        for m in ("test_acc", "val_acc"):
            shown[m] = [pm(a, b) for a, b in zip(table[m], table[f"{m}_std"])]
        shown = shown.drop(columns=["test_acc_std", "val_acc_std"]).rename(columns={"job": "jobs"})
    what = "mean test accuracy over seeds (± sample std)" if several else "test accuracy"
    text = f"# Ranking by {what}{f' ({study})' if study else ''}\n\n" + to_markdown(shown)
    missing = [j for j in jobs if j["status"] not in ("completed",)]
    if missing:  # one line per distinct reason
        reasons = {}
        for j in missing:
            reasons.setdefault((j["status"], j["error"]), []).append(f"{j['job']} ({j['baseline']})")
        text += "\n## Not run\n\n" + "".join(f"- {status}: jobs {', '.join(jobs)}: {error}\n"
                                              for (status, error), jobs in reasons.items())
    atomic_write(out / "ranking.md", lambda tmp: tmp.write_text(text))


@register("image_grid")
def image_grid(df, paths, out, n=5, name="image_grid.png", study=None):
    """n test images the best job (test accuracy) classifies right and the worst gets wrong; with
    several seeds, the best and worst configuration by mean test accuracy, each by its first seed's
    predictions (the title says which seed)."""
    from PIL import Image

    from expkit.report import plots  # matplotlib: only when a grid is drawn
    from expkit.report.plots import plt

    done = _configs(_done(_jobs(df, paths)))
    if len(done) < 2:
        log.warning("image_grid: needs two completed configurations, found %d", len(done))
        return
    best, worst = max(done, key=lambda j: j["test_acc"]), min(done, key=lambda j: j["test_acc"])
    pb, pw = (pd.read_csv(j["path"] / "predictions.csv") for j in (best, worst))
    m = pb.merge(pw, on=["id", "label"], suffixes=("_best", "_worst"))
    pick = m[(m.pred_best == m.label) & (m.pred_worst != m.label)]
    pick = pick.assign(conf=(pick.prob_1_worst - pick.label).abs()).sort_values(["conf", "id"], ascending=[False, True])
    pick = pick.head(n)
    atomic_write(out / name.replace(".png", ".csv"), lambda tmp: pick.drop(columns="conf").to_csv(tmp, index=False))
    if pick.empty:
        log.warning("image_grid: no test image is right for the best job and wrong for the worst")
        return
    fig, axes = plt.subplots(1, len(pick), figsize=(3 * len(pick), 3.6), squeeze=False)
    names = {0: "real", 1: "fake"}
    for ax, r in zip(axes[0], pick.itertuples()):
        try:
            ax.imshow(Image.open(r.id).convert("RGB"))
        except (OSError, ValueError):
            ax.text(0.5, 0.5, "image not found", ha="center", va="center")
        ax.set_title(f"{names.get(r.label, r.label)}\nbest p(fake) {r.prob_1_best:.2f}\n"
                     f"worst p(fake) {r.prob_1_worst:.2f}", fontsize=8)
        ax.set_xlabel(Path(str(r.id)).name, fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])

    def label(j):
        acc = (f"mean test acc {pm(j['test_acc'], j['test_acc_std'], 3)} over {j['n']} seeds; images: seed {j['seed']}"
               if j["n"] > 1 else f"test acc {j['test_acc']:.3f}")
        return f"{j['baseline']}" + (f" lr {j['lr']:g}" if j["lr"] else "") + f" ({acc})"

    fig.suptitle(f"{study + ': ' if study else ''}{len(pick)} test images the best model gets right and the worst "
                 f"gets wrong\nright by best: {label(best)}\nwrong by worst: {label(worst)}", fontsize=9)
    plots.savefig(fig, out / name)
