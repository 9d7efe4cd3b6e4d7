"""python -m expkit.compare: the config keys that differ, final and best metrics side by side, the
curves overlaid in one PNG; a sweep dir stands for its best and worst configuration; bad input is
one error line."""
import json

import numpy as np
import pytest

from conftest import run_cli, run_python
from expkit.compare import main
from expkit.report import plots
from test_report_seeds import make_job, make_sweep


@pytest.fixture
def figs(monkeypatch):
    saved = []

    def capture(fig, path):
        saved.append((path, fig))
        path.write_bytes(b"png")

    monkeypatch.setattr(plots, "savefig", capture)
    return saved


def _table(out, title):
    """{row name: [cells]} of the block under `title` in compare's output."""
    lines = out[out.index(title):].split("\n\n")[0].splitlines()[2:]
    return {ln.split("  ")[0].strip(): ln.split("  ", 1)[1].split() for ln in lines}


def test_two_real_runs_side_by_side(countries_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = [f"data.root={countries_root}", "trainer.checkpoint=false"]
    assert run_cli(*common, "trainer.epochs=2", f"hydra.run.dir={a}").returncode == 0
    assert run_cli(*common, "trainer.epochs=3", "model.width=32", "optim.lr=0.01", f"hydra.run.dir={b}").returncode == 0
    r = run_python("-m", "expkit.compare", a, b, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    diff = _table(r.stdout, "config keys that differ:")
    assert diff == {"model.width": ["16", "32"], "optim.lr": ["0.001", "0.01"], "trainer.epochs": ["2", "3"]}
    metrics = _table(r.stdout, "metrics")
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert metrics["final test_acc"] == [f"{sa['final']['test_acc']:.4f}", f"{sb['final']['test_acc']:.4f}"]
    assert metrics["best val_acc"] == [f"{sa['best']['val_acc']:.4f}", f"{sb['best']['val_acc']:.4f}"]
    assert metrics["epochs"] == ["2", "3"] and metrics["status"] == ["completed", "completed"]
    png = tmp_path / "compare.png"  # the default: the current dir
    assert png.read_bytes()[:4] == b"\x89PNG" and r.stdout.strip().endswith(str(png))


def test_a_sweep_dir_compares_its_best_and_worst_configuration(tmp_path, figs, capsys):
    root = tmp_path / "s"
    jobs = make_sweep(root, ["0.1", "0.01", "0.001"], [1, 2, 3])
    means = {lr: np.mean([jobs[3 * k + s].val_acc.iloc[-1] for s in range(3)])
             for k, lr in enumerate(["0.1", "0.01", "0.001"])}
    best, worst = max(means, key=means.get), min(means, key=means.get)
    assert main([str(root), "--out", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert f"A  {root} best: optim.lr={float(best)}  (val_acc {means[best]:.4f}, mean of 3 seeds)" in out
    assert f"B  {root} worst: optim.lr={float(worst)}" in out
    assert _table(out, "config keys that differ:")["optim.lr"] == [str(float(best)), str(float(worst))]
    k = ["0.1", "0.01", "0.001"].index(best)
    vals = [jobs[3 * k + s].test_acc.iloc[-1] for s in range(3)]
    assert _table(out, "metrics")["final test_acc"][:3] == [f"{np.mean(vals):.4f}", "±", f"{np.std(vals, ddof=1):.4f}"]
    (path, fig), = figs
    assert path == tmp_path / "c.png"
    val = next(ln for ln in fig.axes[1].get_lines() if ln.get_label() == "A val")
    assert val.get_ydata() == pytest.approx(np.mean([jobs[3 * k + s].val_acc for s in range(3)], axis=0))
    assert "A = " in plots.figure_title(fig) and "B = " in plots.figure_title(fig)


def test_a_run_and_a_sweep_together(tmp_path, figs, capsys):
    rng = np.random.default_rng(1)
    make_job(tmp_path / "run", ["optim.lr=0.5"], 42, rng)
    make_sweep(tmp_path / "s", ["0.1", "0.01"], [1])
    assert main([str(tmp_path / "run"), str(tmp_path / "s"), "--out", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert out.count("\nB  ") == 1 and out.count("\nC  ") == 1
    assert _table(out, "config keys that differ:")["optim.lr"][0] == "0.5"
    assert len([ln for ln in figs[0][1].axes[0].get_lines() if ln.get_label().endswith(" val")]) == 3


@pytest.mark.parametrize("case", ["missing", "empty dir", "failed run", "one run", "unfinished run"])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, case):
    rng = np.random.default_rng(2)
    good = tmp_path / "good"
    make_job(good, ["optim.lr=0.1"], 1, rng)
    bad = tmp_path / "bad"
    if case == "empty dir":
        bad.mkdir()
    elif case == "failed run":
        make_job(bad, ["optim.lr=-1"], 1, rng, status="failed")
    elif case == "unfinished run":
        (bad / ".hydra").mkdir(parents=True)
    args = [good] if case == "one run" else [good, bad]
    r = run_python("-m", "expkit.compare", *args, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "compare.png").exists()
    words = {"missing": "not a directory", "empty dir": "neither a run dir", "failed run": "run failed (boom)",
             "one run": "nothing to compare", "unfinished run": "not a finished run"}[case]
    assert words in lines[0], lines[0]
