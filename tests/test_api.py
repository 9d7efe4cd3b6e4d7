"""expkit as a tool: the Python API, and `pip install .` giving the `expkit` command with every preset."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import expkit
from conftest import ROOT


def test_run_from_python_writes_under_the_current_dir_and_can_repeat(countries_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = expkit.run([f"data.root={countries_root}", "trainer.epochs=2"])
    second = expkit.run([f"data.root={countries_root}", "trainer.epochs=1", "optim.lr=0.01"])
    assert os.getcwd() == str(tmp_path)  # never changes the working directory
    assert first.summary["status"] == second.summary["status"] == "completed"
    assert first.dir != second.dir and str(first.dir).startswith("outputs/default/")
    assert list(first.metrics.epoch) == [1, 2] and len(second.metrics) == 1
    again = expkit.load(tmp_path / first.dir)
    assert again.summary == first.summary and again.metrics.equals(first.metrics)


def test_sweep_from_python_returns_the_table(countries_root, tmp_path):
    lines = []
    s = expkit.sweep([f"data.root={countries_root}", "trainer.epochs=1", "optim.lr=0.1,0.01"],
                     sweep_dir=tmp_path / "s", echo=lines.append)
    assert s.dir == tmp_path / "s" and s.returncode == 0
    assert list(s["optim.lr"]) == [0.1, 0.01] and (s.status == "completed").all()  # the table's columns
    assert expkit.load(tmp_path / "s").equals(s.table) and s.by_config is None
    assert s.best == json.loads((tmp_path / "s" / "best.json").read_text())
    assert any(line.startswith("best: optim.lr=") for line in lines)  # its progress and closing lines
    with pytest.raises(RuntimeError, match="unknown experiment"):
        expkit.sweep(["experiment=ex4/lrr"], sweep_dir=tmp_path / "bad", progress=None)
    with pytest.raises(FileNotFoundError):
        expkit.load(tmp_path / "bad")


def test_sweep_writes_where_the_command_line_does_streams_progress_and_extends_in_place(countries_root, tmp_path,
                                                                                          monkeypatch, capsys):
    """The command line's folder (outputs/<name>/multirun_<time>, latest linked), its lines as they come (no
    epoch lines by default), the result printable with its dir, per-config table and choice; sweep_dir= of an
    earlier sweep skips its finished jobs; help(expkit.sweep) documents it all."""
    monkeypatch.chdir(tmp_path)
    args = [f"data.root={countries_root}", "trainer.epochs=2", "seed=1,2"]
    s = expkit.sweep(args + ["optim.lr=0.1,0.01"])
    out = capsys.readouterr().out
    assert s.dir.parent == Path("outputs/default") and s.dir.name.startswith("multirun_")
    assert Path("outputs/default/latest").resolve() == s.dir.resolve()
    assert "Launching 4 jobs" in out and "completed: test acc" in out and " epoch 1/2 " not in out
    assert f"mean ± std over seeds per configuration: {s.dir / 'results_by_config.md'}" in out
    assert len(s) == 4 and list(s.by_config.n) == [2, 2] and s.best["best_val_acc"]["n"] == 2
    shown = repr(s)
    assert str(s.dir) in shown and "optim.lr  status" in shown and shown.splitlines()[-2].startswith("best: optim.lr=")
    lines = []
    again = expkit.sweep(args + ["optim.lr=0.1,0.01,0.001"], sweep_dir=s.dir, echo=lines.append, progress="epochs")
    assert again.dir == s.dir and len(again) == 6 and sum("already finished" in ln for ln in lines) == 4
    assert any(" epoch 2/2 " in ln for ln in lines)  # progress="epochs": every line
    doc = expkit.sweep.__doc__
    assert "sweep_dir" in doc and "multirun_" in doc and "finished jobs are skipped" in doc and "progress" in doc


def venv_over_this_environment(venv):
    """A fresh venv that sees, after its own packages, this interpreter's: its site-packages dirs (a
    venv's too, where --system-site-packages would reach the base interpreter's instead) added as
    site dirs by a .pth file, their own .pth files processed, as --system-site-packages does. Returns
    its python. Nothing is downloaded."""
    import site

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    lines = [f"import site; site.addsitedir({d!r})\n" for d in dict.fromkeys(ours) if os.path.isdir(d)]
    (Path(purelib) / "_this_environment.pth").write_text("".join(lines))
    return python


def test_the_inner_venv_sees_this_environment_after_its_own_packages(tmp_path):
    python = venv_over_this_environment(tmp_path / "venv")
    code = "import sys, hydra; print(sys.prefix); print([p for p in sys.path if p.endswith('-packages')][0])"
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr[-2000:]  # hydra: from this environment, wherever it is installed
    prefix, first = r.stdout.split()
    assert prefix == str(tmp_path / "venv") and first.startswith(prefix)  # the venv's own packages come first


@pytest.mark.slow
def test_pip_install_gives_the_expkit_command_with_every_preset(countries_root, tmp_path):
    """A non-editable install into a fresh venv (torch and friends from this environment, a venv
    included; nothing downloaded), then the command from an unrelated directory: one run, a sweep
    with its table, a user's own preset."""
    venv = tmp_path / "venv"
    python = venv_over_this_environment(venv)
    src = tmp_path / "src"  # built from a copy: the build leaves nothing in the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "outputs", "multirun", ".cache", "build",
                                                              "*.egg-info", "__pycache__", ".pytest_cache"))
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        str(src)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / "elsewhere"
    (work / "mine" / "experiment").mkdir(parents=True)
    (work / "mine" / "experiment" / "narrow.yaml").write_text("# @package _global_\nname: narrow\nmodel:\n  width: 8\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    expkit_cmd = str(venv / "bin" / "expkit")

    def cli(*args):  # flags (-m, --config-dir DIR) first, as Hydra's command line wants them
        return subprocess.run([expkit_cmd, *args, f"data.root={countries_root}", "trainer.epochs=1"], cwd=work, env=env,
                              capture_output=True, text=True)

    r = cli()
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((work / "outputs" / "default").glob("*/summary.json"))) == 1
    r = cli("-m", "optim.lr=0.1,0.01", f"hydra.sweep.dir={work / 's'}")
    assert r.returncode == 0 and "optim.lr  status" in r.stdout, r.stderr[-2000:]
    assert len(pd.read_csv(work / "s" / "results.csv")) == 2
    r = cli("-m", "experiment=ex4/lr", f"hydra.sweep.dir={work / 'lr'}")  # a packaged preset
    assert r.returncode == 0 and len(pd.read_csv(work / "lr" / "results.csv")) == 4, r.stderr[-2000:]
    r = cli("--config-dir", str(work / "mine"), "experiment=narrow")  # the user's own preset
    assert r.returncode == 0 and list((work / "outputs" / "narrow").glob("*/summary.json")), r.stderr[-2000:]
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import expkit; print(expkit.__file__)"],
                               cwd=work, env=env, capture_output=True, text=True).stdout
    assert str(venv) in installed  # the command ran the installed package, not this checkout
