"""Sweep reports for image-classification baselines, from saved files only (summary.json,
predictions.csv): a ranking table, and a grid of test images the best job gets right and the
worst gets wrong. Named in a preset's report.plots as {kind: ranking} / {kind: image_grid}."""
import json
import logging
from pathlib import Path

import pandas as pd

from expkit.cache import atomic_write

log = logging.getLogger(__name__)


def _jobs(df, paths):
    """One record per job: baseline (model, or resnet mode), lr (torch models only), metrics, status."""
    out = []
    for row, p in zip(df.to_dict("records"), paths):
        s = json.loads((p / "summary.json").read_text()) if (p / "summary.json").exists() else {}
        cfg = s.get("config") or _hydra_config(p)
        model = cfg.get("model", {})
        mode = model.get("mode")
        out.append({
            "baseline": mode or model.get("name", "?"),
            "lr": cfg.get("optim", {}).get("lr") if mode else None,  # estimators have no lr
            "status": row["status"], "test_acc": row.get("test_acc"), "val_acc": row.get("val_acc"),
            "wall_time_s": row.get("wall_time_s"), "job": row["job"], "error": s.get("error", ""), "path": p,
        })
    return out


def _hydra_config(p: Path):
    import yaml

    f = p / ".hydra" / "config.yaml"
    return (yaml.safe_load(f.read_text()) or {}) if f.exists() else {}


def _done(jobs):
    return [j for j in jobs if j["status"] == "completed" and j["test_acc"] == j["test_acc"]
            and j["test_acc"] is not None and (j["path"] / "predictions.csv").exists()]


def ranking(df, paths, out, per_baseline=2):
    """ranking.csv / ranking.md: the best two jobs of each baseline by test accuracy, the worst
    job overall, and the jobs that did not run (skipped/failed, with the reason)."""
    jobs = _jobs(df, paths)
    done = _done(jobs)
    rows = []
    for base in dict.fromkeys(j["baseline"] for j in done):
        ranked = sorted((j for j in done if j["baseline"] == base), key=lambda j: -j["test_acc"])
        rows += [dict(j, rank=f"best {i + 1} of {base}") for i, j in enumerate(ranked[:per_baseline])]
    if done:
        rows.append(dict(min(done, key=lambda j: j["test_acc"]), rank="worst overall"))
    cols = ["rank", "baseline", "lr", "test_acc", "val_acc", "wall_time_s", "job"]
    table = pd.DataFrame(rows, columns=cols)
    table["lr"] = [f"{v:g}" if v == v and v is not None else "" for v in table.lr]
    atomic_write(out / "ranking.csv", lambda tmp: table.to_csv(tmp, index=False))
    from expkit.report.aggregate import to_markdown

    text = "# Ranking by test accuracy\n\n" + to_markdown(table.astype(object).where(table.notna(), ""))
    missing = [j for j in jobs if j["status"] not in ("completed",)]
    if missing:  # one line per distinct reason
        reasons = {}
        for j in missing:
            reasons.setdefault((j["status"], j["error"]), []).append(f"{j['job']} ({j['baseline']})")
        text += "\n## Not run\n\n" + "".join(f"- {status}: jobs {', '.join(jobs)}: {error}\n"
                                              for (status, error), jobs in reasons.items())
    atomic_write(out / "ranking.md", lambda tmp: tmp.write_text(text))


def image_grid(df, paths, out, n=5, name="image_grid.png"):
    """n test images the best job (test accuracy) classifies right and the worst gets wrong."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from expkit.report.plots import savefig

    done = _done(_jobs(df, paths))
    if len(done) < 2:
        log.warning("image_grid: needs two completed jobs, found %d", len(done))
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
        return f"{j['baseline']}" + (f" lr {j['lr']:g}" if j["lr"] else "") + f" (test acc {j['test_acc']:.3f})"

    fig.suptitle(f"right by best: {label(best)}\nwrong by worst: {label(worst)}", fontsize=9)
    savefig(fig, out / name)
