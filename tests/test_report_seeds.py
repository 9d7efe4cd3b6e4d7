"""Results over seeds: results_by_config (mean ± std per configuration), plots that draw each
configuration's mean with a ±1 std band, and plot titles that say what they show for which study.

Most tests build small sweep dirs by hand (what a run writes: .hydra/overrides.yaml, summary.json,
metrics.csv, steps.csv, boundary.npz, config.yaml) so they take well under a second; one runs the CLI."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.collections import PolyCollection

from conftest import run_cli
from expkit.report import plots
from expkit.report.aggregate import build_report, by_config, collect

PARTS = ("train", "val", "test")


def _metrics(rng, epochs, grad_layers=()):
    m = pd.DataFrame({"epoch": np.arange(1, epochs + 1)})
    for part in PARTS:
        m[f"{part}_loss"] = rng.uniform(0.2, 2.0, epochs)
        m[f"{part}_acc"] = rng.uniform(0.3, 0.99, epochs)
    m["time_s"] = 0.01
    for i in grad_layers:
        m[f"grad_sq_layer{i}"] = rng.uniform(1e-6, 1e-2, epochs)
        m[f"grad_sq_bias_layer{i}"] = rng.uniform(1.0, 2.0, epochs)  # must not be drawn
    return m


def make_job(d, overrides, seed, rng, status="completed", epochs=3, grad_layers=(), steps=False,
             boundary=False, name="ex4_lr", metrics=None):
    """One job dir as a run leaves it; returns its metrics frame (None when failed)."""
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (d / "config.yaml").write_text(yaml.safe_dump({"name": name, "seed": seed, "model": {"name": "mlp"}}))
    if status == "failed":
        (d / "summary.json").write_text(json.dumps({"status": "failed", "error": "boom", "overrides": overrides}))
        return None
    m = metrics if metrics is not None else _metrics(rng, epochs, grad_layers)
    m.to_csv(d / "metrics.csv", index=False)
    final = m.iloc[-1].to_dict()
    b = m.loc[m.val_acc.idxmax()]
    summary = {"status": status, "final": final, "epochs_run": len(m), "wall_time_s": float(rng.uniform(1, 2)),
               "best": {k: float(b[c]) for k, c in (("epoch", "epoch"), ("val_acc", "val_acc"),
                                                    ("val_loss", "val_loss"), ("test_acc", "test_acc"),
                                                    ("train_acc", "train_acc"))},
               "seed": seed, "overrides": list(overrides)}
    (d / "summary.json").write_text(json.dumps(summary))
    if steps:
        n = 40
        pd.DataFrame({"step": np.arange(1, n + 1), "train_loss": rng.uniform(0.1, 1, n),
                      "epoch": np.arange(n) // 10 + 1}).to_csv(d / "steps.csv", index=False)
    if boundary:
        g = np.linspace(0, 1, 5, dtype=np.float32)
        x = rng.uniform(0, 1, (10, 2)).astype(np.float32)
        y = rng.integers(0, 2, 10)
        np.savez_compressed(d / "boundary.npz", gx=g, gy=g, pred=rng.integers(0, 2, (5, 5)).astype(np.int16),
                            x=x, y=y, test_pred=y)
    return m


def make_sweep(root, configs, seeds, key="optim.lr", name="ex4_lr", plot_specs=(), failed=(), **job):
    """Jobs in Hydra's order (config-major); `failed` = {(config, seed)}. Returns {job: metrics}."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"name": name, "report": {"plots": list(plot_specs)}}))
    out, i = {}, 0
    for c in configs:
        keys = dict(zip(key.split(","), c if isinstance(c, tuple) else (c,)))
        for s in seeds:
            over = [f"{k}={v}" for k, v in keys.items()] + ["data.root=/x"] + ([f"seed={s}"] if len(seeds) > 1 else [])
            status = "failed" if (c, s) in failed else "completed"
            out[i] = make_job(root / str(i), over, s, rng, status=status, name=name, **job)
            i += 1
    return out


@pytest.fixture
def figs(monkeypatch):
    """Every figure a report kind would save, with its file name (not written: faster)."""
    saved = []

    def capture(fig, path):
        saved.append((path.name, fig))
        plots.plt.close(fig)

    monkeypatch.setattr(plots, "savefig", capture)
    return saved


def title_of(fig):
    return " ".join(plots.figure_title(fig).split())  # wrapped titles: one line


def bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


# ---- Task 1: results_by_config ----

def test_by_config_means_stds_counts_and_order(tmp_path):
    root = tmp_path / "s"
    # "0.1" before "0.01": first-appearance order, not sorted; one failed seed of 0.01
    jobs = make_sweep(root, ["0.1", "0.01"], [1, 2, 3], failed={("0.01", 3)})
    df = build_report(root, plots=[])
    t = pd.read_csv(root / "results_by_config.csv", dtype={"optim.lr": str, "seeds": str})
    assert list(t["optim.lr"]) == ["0.1", "0.01"] and len(t) == 2
    assert list(t.n) == [3, 2] and list(t.failed) == [0, 1] and list(t.seeds) == ["1,2,3", "1,2"]
    md = (root / "results_by_config.md").read_text()
    for row, idx in zip(t.itertuples(), ([0, 1, 2], [3, 4])):
        for metric in ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss"):
            v = np.array([jobs[i][metric].iloc[-1] for i in idx])
            assert getattr(row, f"{metric}_mean") == pytest.approx(v.mean())
            assert getattr(row, f"{metric}_std") == pytest.approx(v.std(ddof=1))
            assert f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" in md
        best = [jobs[i].loc[jobs[i].val_acc.idxmax()] for i in idx]
        assert row.best_val_acc_mean == pytest.approx(np.mean([b.val_acc for b in best]))
        assert row.best_test_acc_mean == pytest.approx(np.mean([b.test_acc for b in best]))
        assert row.best_test_acc_std == pytest.approx(np.std([b.test_acc for b in best], ddof=1))
    assert len(df) == 6 and "seed" in df  # results.csv keeps one row per job


def test_diverged_seed_counts_in_n_and_nonfinite_values_are_left_out(tmp_path):
    root = tmp_path / "s"
    make_sweep(root, ["1"], [1, 2, 3])
    s = json.loads((root / "2" / "summary.json").read_text())
    s["status"], s["final"]["val_loss"] = "diverged", float("nan")
    (root / "2" / "summary.json").write_text(json.dumps(s))
    t = by_config(collect([root]))
    assert t.n[0] == 3 and t.diverged[0] == 1
    vals = [json.loads((root / str(i) / "summary.json").read_text())["final"]["val_loss"] for i in (0, 1)]
    assert t.val_loss_mean[0] == pytest.approx(np.mean(vals))
    build_report(root, plots=[])
    assert "(2/3)" in (root / "results_by_config.md").read_text()


def test_no_seed_sweep_writes_no_by_config_and_drops_stale_ones(tmp_path):
    root = tmp_path / "s"
    make_sweep(root, ["0.1", "0.01"], [1])  # seed not swept
    (root / "results_by_config.csv").write_text("stale\n")
    (root / "results_by_config.md").write_text("stale\n")
    assert by_config(collect([root])) is None
    build_report(root, plots=[])
    assert (root / "results.csv").exists()
    assert not (root / "results_by_config.csv").exists() and not (root / "results_by_config.md").exists()


def test_merged_sweeps_pool_seeds_per_config(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ja = make_sweep(a, ["0.1"], [1, 2])
    jb = make_sweep(b, ["0.1"], [3, 4])
    from expkit.report.__main__ import main

    assert main([str(a), str(b), "--out", str(tmp_path / "m")]) == 0
    t = pd.read_csv(tmp_path / "m" / "results_by_config.csv")
    v = [j.test_acc.iloc[-1] for j in (*ja.values(), *jb.values())]
    assert len(t) == 1 and t.n[0] == 4 and t.test_acc_mean[0] == pytest.approx(np.mean(v))


# ---- Task 2: the mean over seeds with a band, helpers written once ----

def test_mean_curve_aligns_on_epoch_with_unequal_lengths(tmp_path):
    rng = np.random.default_rng(1)
    m1 = make_job(tmp_path / "0", ["seed=1"], 1, rng, epochs=4)
    m2 = make_job(tmp_path / "1", ["seed=2"], 2, rng, epochs=2)  # stopped early
    members = [({"job": 0}, tmp_path / "0"), ({"job": 1}, tmp_path / "1")]
    x, mean, std = plots.mean_curve(members, "val_loss")
    assert list(x) == [1, 2, 3, 4]
    assert mean[:2] == pytest.approx((m1.val_loss[:2].to_numpy() + m2.val_loss.to_numpy()) / 2)
    assert std[:2] == pytest.approx(np.std([m1.val_loss[:2], m2.val_loss], axis=0, ddof=1))
    assert mean[2:] == pytest.approx(m1.val_loss[2:]) and np.isnan(std[2:]).all()  # one seed: no std


def test_groups_are_configs_without_seed_in_first_appearance_order(tmp_path):
    root = tmp_path / "s"
    make_sweep(root, [("6", "16"), ("1", "8")], [1, 2], key="model.depth,model.width", failed={(("1", "8"), 2)})
    df = collect([root])
    from expkit.report.aggregate import job_dirs

    g = plots.groups(df, job_dirs(root))
    assert [label for label, _ in g] == ["depth=6, width=16", "depth=1, width=8"]
    assert [[r["seed"] for r, _ in m] for _, m in g] == [[1, 2], [1]]  # by value; the failed job is left out


def test_epochs_draws_mean_line_and_band_per_config(tmp_path, figs):
    root = tmp_path / "s"
    jobs = make_sweep(root, ["0.1", "0.01"], [1, 2, 3])
    build_report(root, plots=[{"kind": "epochs", "metrics": ["val_loss"], "logy": True}])
    (name, fig), = figs
    ax = fig.axes[0]
    assert name == "val_loss_vs_epoch.png"
    assert len(bands(ax)) == 2
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "lr=0.01")
    expect = np.mean([jobs[i].val_loss for i in (3, 4, 5)], axis=0)
    assert line.get_ydata() == pytest.approx(expect)
    lo = np.mean([jobs[i].val_loss for i in (3, 4, 5)], axis=0) - np.std([jobs[i].val_loss for i in (3, 4, 5)],
                                                                           axis=0, ddof=1)
    verts = bands(ax)[1].get_paths()[0].vertices
    assert min(verts[:, 1]) == pytest.approx(lo.min())
    assert title_of(fig) == ("ex4_lr: val_loss vs epoch (log y), one line per optim.lr "
                             "(mean ± 1 std over 3 seeds, shaded)")


def test_one_seed_per_config_draws_no_band(tmp_path, figs):
    root = tmp_path / "s"
    jobs = make_sweep(root, ["0.1", "0.01"], [1])
    build_report(root, plots=[{"kind": "epochs", "metrics": ["val_loss", "val_acc"]}])
    (_, fig), = figs
    assert not any(bands(ax) for ax in fig.axes)
    assert fig.axes[1].get_lines()[0].get_ydata() == pytest.approx(jobs[0].val_acc)
    assert title_of(fig) == "ex4_lr: val_loss, val_acc vs epoch, one line per optim.lr"


def test_best_worst_ranks_configs_by_mean_and_says_which_seed(tmp_path, figs):
    root = tmp_path / "s"
    rng = np.random.default_rng(2)
    m = lambda acc: _metrics(rng, 3).assign(val_acc=acc)  # noqa: E731
    # config A has the single best job (0.99) but the lower mean; B is best by mean
    accs = {("1", "16"): [0.99, 0.10], ("6", "64"): [0.90, 0.80], ("2", "16"): [0.3, 0.2]}
    (root).mkdir()
    (root / "multirun.yaml").write_text(yaml.safe_dump({"name": "ex4_depth_width"}))
    i = 0
    for (depth, width), vals in accs.items():
        for seed, acc in zip((5, 7), vals):
            make_job(root / str(i), [f"model.depth={depth}", f"model.width={width}", f"seed={seed}"], seed, rng,
                     metrics=m(acc), boundary=True, name="ex4_depth_width")
            i += 1
    build_report(root, plots=[{"kind": "best_worst", "by": "val_acc"}])
    titles = {name: title_of(fig) for name, fig in figs}
    assert "best configuration by mean val_acc: depth=6, width=64 (val_acc 0.8500 ± 0.0707 over 2 seeds)" \
        in titles["best_loss_curves.png"]
    assert "worst configuration by mean val_acc: depth=2, width=16" in titles["worst_loss_curves.png"]
    assert titles["best_boundary.png"].startswith("ex4_depth_width: decision boundary of the best configuration")
    assert "seed 5 (the first of its 2 seeds)" in titles["best_boundary.png"]
    best = dict(figs)["best_loss_curves.png"]
    assert len(bands(best.axes[0])) == 3  # train, val, test


def test_vs_param_mean_and_band(tmp_path, figs):
    root = tmp_path / "s"
    jobs = make_sweep(root, [("1", "16"), ("6", "16"), ("6", "64")], [1, 2], key="model.depth,model.width",
                      name="ex4_depth_width")
    build_report(root, plots=[{"kind": "vs_param", "x": "model.depth", "where": {"model.width": 16}}])
    (name, fig), = figs
    ax = fig.axes[0]
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "test_acc")
    assert list(line.get_xdata()) == [1, 6]
    expect = [np.mean([jobs[i].test_acc.iloc[-1] for i in ij]) for ij in ((0, 1), (2, 3))]
    assert line.get_ydata() == pytest.approx(expect)
    assert len(bands(ax)) == 3
    assert title_of(fig).startswith("ex4_depth_width: final train_acc, val_acc, test_acc vs model.depth at "
                                    "model.width=16 (mean ± 1 std over 2 seeds")


def test_losses_grad_norms_steps_boundaries_with_seeds(tmp_path, figs):
    root = tmp_path / "s"
    jobs = make_sweep(root, ["raw", "sines"], [3, 4], key="model.encoding", name="ex4_gradients",
                      grad_layers=(0, 30), steps=True, boundary=True)
    build_report(root, plots=[{"kind": "losses"}, {"kind": "grad_norms"}, {"kind": "steps"}, {"kind": "boundaries"}])
    f = dict(figs)
    assert set(f) == {"loss_curves.png", "grad_norms.png", "train_loss_vs_step.png", "boundary_encoding=raw.png",
                      "boundary_encoding=sines.png"}
    for ax in f["loss_curves.png"].axes:
        assert len(bands(ax)) == 3
    assert [ax.get_title() for ax in f["loss_curves.png"].axes] == ["encoding=raw", "encoding=sines"]
    g = f["grad_norms.png"].axes[0]
    assert [ln.get_label() for ln in g.get_lines()] == ["layer 0", "layer 30"]  # no bias columns
    assert g.get_lines()[1].get_ydata() == pytest.approx(np.mean([jobs[i].grad_sq_layer30 for i in (0, 1)], axis=0))
    assert g.get_ylabel() == "mean ‖∇W‖² (weight matrix)" and len(bands(g)) == 2
    assert title_of(f["grad_norms.png"]).startswith(
        "ex4_gradients: mean ‖∇W‖² of each layer's weight matrix per epoch")
    assert len(bands(f["train_loss_vs_step.png"].axes[0])) == 2
    assert "seed 3 (the first of its 2 seeds)" in title_of(f["boundary_encoding=sines.png"])
    assert plots.grad_columns(["grad_sq_bias_layer2", "grad_sq_layer10", "grad_sq_layer2", "grad_sq_layer2x"]) == \
        ["grad_sq_layer2", "grad_sq_layer10"]


def test_single_run_grad_norms_title_is_not_the_job_number(tmp_path, figs):
    rng = np.random.default_rng(3)
    run = tmp_path / "run"
    make_job(run, [], 42, rng, grad_layers=(0, 99), name="ex4_gradients")
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"name": "ex4_gradients",
                                                                "report": {"plots": [{"kind": "grad_norms"}]}}))
    build_report(run)
    (_, fig), = figs
    assert title_of(fig) == ("ex4_gradients: mean ‖∇W‖² of each layer's weight matrix per epoch "
                             "(averaged over the epoch's batches; log y)")
    assert not bands(fig.axes[0])


# ---- Task 3: titles ----

def test_title_helper():
    one, three = [("a", [1])], [("a", [1, 2, 3]), ("b", [1, 2])]
    assert plots.title("ex4_lr", "val_loss vs epoch", one, "one line per optim.lr") == \
        "ex4_lr: val_loss vs epoch, one line per optim.lr"
    assert plots.title("ex4_lr", "val_loss vs epoch", three, "one line per optim.lr") == \
        "ex4_lr: val_loss vs epoch, one line per optim.lr (mean ± 1 std over 2-3 seeds, shaded)"


EX4_KINDS = [{"kind": "epochs", "metrics": ["val_loss"]}, {"kind": "steps"}, {"kind": "losses"},
             {"kind": "best_worst", "by": "val_acc"}, {"kind": "vs_param", "x": "model.depth"},
             {"kind": "boundaries"}, {"kind": "grad_norms"}]


@pytest.mark.parametrize("seeds", [[1], [1, 2]])
def test_every_figure_names_the_study_from_the_sweep_config(tmp_path, figs, seeds):
    root = tmp_path / "s"
    make_sweep(root, ["1", "6"], seeds, key="model.depth", name="my_study", plot_specs=EX4_KINDS,
               grad_layers=(0,), steps=True, boundary=True)
    build_report(root)  # the plots and the name from multirun.yaml
    assert len(figs) == 11  # epochs, steps, losses, vs_param, grad_norms, 2 boundaries, best_worst 4
    for name, fig in figs:
        assert title_of(fig).startswith("my_study: "), name


# ---- hw6/pset10 and deepfake kinds with several seeds ----

def test_study_kinds_with_seeds(tmp_path, figs):
    import torch

    root = tmp_path / "s"
    jobs = make_sweep(root, ["500", "1000"], [1, 2], key="data.train_size", name="hw6_mnist_sizes")
    for i, n in zip(range(4), (500, 500, 1000, 1000)):
        s = json.loads((root / str(i) / "summary.json").read_text())
        (root / str(i) / "summary.json").write_text(json.dumps(dict(s, n_train=n)))
        torch.save({"conv.weight": torch.randn(2, 1, 5, 5)}, root / str(i) / "model.pt")
    build_report(root, plots=[{"kind": "vs_n_train", "metrics": ["test_acc"]}, {"kind": "kernels"}])
    md = (root / "vs_n_train.md").read_text()
    v = [jobs[i].test_acc.iloc[-1] for i in (2, 3)]
    assert f"| 1000 | 2 | {np.mean(v):.4f} ± {np.std(v, ddof=1):.4f} |" in md
    f = dict(figs)
    assert len(bands(f["test_acc_vs_n_train.png"].axes[0])) == 1
    assert title_of(f["test_acc_vs_n_train.png"]).startswith("hw6_mnist_sizes: test accuracy vs training-set size")
    assert "one row per job (data.train_size, seed)" in title_of(f["first_layer_kernels.png"])


def test_smallest_width_with_seeds_uses_the_mean(tmp_path, figs):
    root = tmp_path / "s"
    rng = np.random.default_rng(4)
    root.mkdir()
    (root / "multirun.yaml").write_text(yaml.safe_dump({"name": "pset10_deep2d"}))
    accs = {"deep2d/logreg": (0.5, 0.52), "deep2d/w2": (0.995, 0.97), "deep2d/w4": (0.99, 0.995)}
    i = 0
    for model, vals in accs.items():
        for seed, acc in zip((1, 2), vals):
            make_job(root / str(i), [f"model={model}", f"seed={seed}"], seed, rng,
                     metrics=_metrics(rng, 2).assign(test_acc=acc), name="pset10_deep2d")
            cfg = {"model": {"name": "mlp", "hidden": [int(model[-1])]}} if "/w" in model else \
                {"model": {"name": "logreg", "_target_": "sklearn.linear_model.LogisticRegression"}}
            (root / str(i) / "config.yaml").write_text(yaml.safe_dump(cfg))
            i += 1
    build_report(root, plots=[{"kind": "smallest_width", "threshold": 0.99}])
    md = (root / "smallest_width.md").read_text()
    assert "smallest width with mean test_acc >= 0.99: 4" in md  # w2's mean 0.9825 < 0.99 though one seed >
    assert f"| 1 hidden layer, width 2 | {0.9825:.4f} ± {np.std([0.995, 0.97], ddof=1):.4f} |" in md
    (_, fig), = figs
    assert len(bands(fig.axes[0])) == 1 and title_of(fig).startswith("pset10_deep2d: test_acc vs hidden width")


def test_ranking_and_image_grid_with_seeds(tmp_path, figs):
    root = tmp_path / "s"
    rng = np.random.default_rng(5)
    root.mkdir()
    (root / "multirun.yaml").write_text(yaml.safe_dump({"name": "ex4_scratch"}))
    accs = {"0.01": (0.9, 0.7), "0.001": (0.85, 0.83)}  # 0.01 has the best job, 0.001 the best mean
    labels = np.array([0, 1] * 5)
    i = 0
    for lr, vals in accs.items():
        for seed, acc in zip((1, 2), vals):
            d = root / str(i)
            make_job(d, [f"optim.lr={lr}", f"seed={seed}"], seed, rng, metrics=_metrics(rng, 1).assign(test_acc=acc))
            s = json.loads((d / "summary.json").read_text())
            s["config"] = {"model": {"name": "resnet18", "mode": "scratch"}, "optim": {"lr": float(lr)}}
            (d / "summary.json").write_text(json.dumps(s))
            pred = labels if lr == "0.001" else 1 - labels  # best config right, worst wrong
            pd.DataFrame({"id": [f"/nope/{k}.jpg" for k in range(10)], "label": labels, "pred": pred,
                          "prob": 0.9, "prob_1": np.where(pred == 1, 0.9, 0.1)}).to_csv(d / "predictions.csv",
                                                                                        index=False)
            i += 1
    build_report(root, plots=[{"kind": "ranking"}, {"kind": "image_grid", "n": 3}])
    ranking = pd.read_csv(root / "ranking.csv")
    assert list(ranking["rank"]) == ["best 1 of scratch", "best 2 of scratch", "worst overall"]
    assert ranking.test_acc[0] == pytest.approx(0.84) and ranking.n[0] == 2
    assert ranking.test_acc_std[0] == pytest.approx(np.std([0.85, 0.83], ddof=1))
    md = (root / "ranking.md").read_text()
    assert f"0.8400 ± {np.std([0.85, 0.83], ddof=1):.4f}" in md and "mean test accuracy" in md
    (name, fig), = figs
    t = title_of(fig)
    assert name == "image_grid.png" and t.startswith("ex4_scratch: 3 test images the best model gets right")
    assert re.search(r"right by best: scratch lr 0\.001 \(mean test acc 0\.840 ± 0\.014 over 2 seeds; "
                     r"images: seed 1\)", t), t


# ---- end to end: the CLI ----

def test_cli_seed_sweep_writes_results_by_config_and_banded_plot(countries_root, tmp_path):
    out = tmp_path / "sweep"
    r = run_cli("-m", "experiment=ex4/lr", f"data.root={countries_root}", "trainer.epochs=2", "seed=1,2",
                f"hydra.sweep.dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = pd.read_csv(out / "results.csv")
    t = pd.read_csv(out / "results_by_config.csv")
    assert len(jobs) == 8 and len(t) == 4 and (t.n == 2).all() and (t.failed == 0).all()
    for row in t.to_dict("records"):
        mine = jobs[jobs["optim.lr"] == row["optim.lr"]]
        assert sorted(mine.seed) == [1, 2]
        assert row["test_acc_mean"] == pytest.approx(mine.test_acc.mean())
        assert row["val_loss_std"] == pytest.approx(mine.val_loss.std(ddof=1))
    assert (out / "val_loss_vs_epoch.png").stat().st_size > 0
    assert "±" in (out / "results_by_config.md").read_text()


def test_without_a_swept_seed_every_job_is_its_own_group(tmp_path):
    rng = np.random.default_rng(6)
    for i in range(2):  # two runs with no swept key at all (e.g. run by hand into one folder)
        make_job(tmp_path / "s" / str(i), [], 42, rng)
    df = collect([tmp_path / "s"])
    from expkit.report.aggregate import job_dirs

    g = plots.groups(df, job_dirs(tmp_path / "s"))
    assert [(label, len(m)) for label, m in g] == [("job 0", 1), ("job 1", 1)]


# ---- parallel coordinates: every sweep varying two or more keys ----

def _config_lines(ax, n_axes):
    return [ln for ln in ax.get_lines() if len(ln.get_xdata()) == n_axes and ln.get_marker() == "o"]


def test_parallel_coordinates_one_line_per_config_log_and_category_axes(tmp_path, figs):
    root = tmp_path / "s"
    rng = np.random.default_rng(7)
    root.mkdir()
    (root / "multirun.yaml").write_text(yaml.safe_dump({"name": "my_study"}))  # no report.plots: drawn anyway
    accs, i = {}, 0
    for lr in ("0.1", "0.01", "0.001"):
        for act in ("relu", "tanh"):
            for seed in (1, 2):
                acc = {"0.1": 0.5, "0.01": 0.9, "0.001": 0.7}[lr] + (0.05 if act == "relu" else 0) + seed / 100
                accs.setdefault((lr, act), []).append(acc)
                make_job(root / str(i), [f"optim.lr={lr}", f"model.activation={act}", f"seed={seed}"], seed, rng,
                         metrics=_metrics(rng, 2).assign(val_acc=acc), name="my_study")
                i += 1
    build_report(root)
    (name, fig), = figs
    assert name == "parallel_coordinates.png"
    ax, bar = fig.axes  # the plot and its colour bar
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["optim.lr\n(log)", "model.activation\n(categories)", "val_acc (mean)"]
    lines = _config_lines(ax, 3)
    assert len(lines) == 6  # one per configuration, not per job
    means = {k: np.mean(v) for k, v in accs.items()}
    lo, hi = min(means.values()), max(means.values())
    by_end = {round(float(ln.get_ydata()[2]), 6): ln for ln in lines}
    for (lr, act), m in means.items():
        ln = by_end[round((m - lo) / (hi - lo), 6)]
        assert ln.get_ydata()[0] == pytest.approx({"0.1": 1.0, "0.01": 0.5, "0.001": 0.0}[lr])  # log10 axis
        assert ln.get_ydata()[1] == pytest.approx({"relu": 0.0, "tanh": 1.0}[act])
    best = max(lines, key=lambda ln: ln.get_linewidth())
    assert best.get_ydata()[2] == 1.0 and best is lines[-1]  # the best: thickest, drawn last
    assert "mean val_acc over seeds" in bar.get_ylabel()
    assert title_of(fig).startswith("my_study: parallel coordinates: one line per configuration (6), coloured by val_acc")


def test_parallel_coordinates_only_with_two_keys_unless_asked(tmp_path, figs):
    one = tmp_path / "one"
    make_sweep(one, ["0.1", "0.01"], [1, 2])
    build_report(one)
    assert figs == []
    build_report(one, plots=[{"kind": "parallel_coordinates"}])
    (name, fig), = figs
    assert name == "parallel_coordinates.png" and len(_config_lines(fig.axes[0], 2)) == 2
    two = tmp_path / "two"
    make_sweep(two, [("1", "16"), ("6", "16"), ("6", "64")], [1], key="model.depth,model.width")
    build_report(two, plots=[])  # plots given: exactly those
    assert len(figs) == 1
    build_report(two)
    assert [n for n, _ in figs] == ["parallel_coordinates.png", "parallel_coordinates.png"]
    labels = [t.get_text() for t in figs[1][1].axes[0].get_xticklabels()]
    assert labels == ["model.depth", "model.width", "val_acc"]  # one seed: no mean


def test_a_sweep_without_jobs_reports_an_empty_table(tmp_path, figs):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "multirun.yaml").write_text(yaml.safe_dump({"name": "x", "report": {"plots": [{"kind": "epochs"}]}}))
    assert build_report(tmp_path / "s").empty and figs == [] and not (tmp_path / "s" / "results.csv").exists()
