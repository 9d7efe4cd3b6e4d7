"""Shared fixtures: compose configs as train.py would, tiny data in the real formats, subprocess runs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from expkit.cli import register_plugins

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
os.environ.setdefault("EXPKIT_CACHE", str(ROOT / ".cache" / "test"))
register_plugins()  # expkit's sweeper, fused launcher and group schemas, as every entrypoint does


def compose_cfg(overrides=(), name="config"):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def load_for(cfg):
    """A config's data as run.py loads it: with the model's own input transform."""
    from expkit.data import load
    from expkit.models import input_transform

    return load(cfg.data, input_transform(cfg.model))


def write_countries(root: Path, n=600, classes=4, seed=0):
    """Blobs in the real CSV format: header ',long,lat,country', first column = original row index."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    centers = rng.uniform([-5, 40], [30, 65], size=(classes, 2))
    for part, m in (("train", n), ("validation", n // 4), ("test", n // 4)):
        y = rng.integers(0, classes, m)
        x = centers[y] + rng.normal(0, 1.5, (m, 2))
        lines = [",long,lat,country"] + [f"{rng.integers(1e6)},{a},{b},{c}" for (a, b), c in zip(x, y)]
        (root / f"{part}.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def countries_root(tmp_path):
    return write_countries(tmp_path / "countries")


def run_cli(*args, cwd=ROOT, timeout=600):
    """`python train.py ARGS` as a user would type it (ARGS may start with -m for a sweep);
    if ARGS[0] is a script path ending in .py, that script instead. Returns the CompletedProcess."""
    script = () if str(args[0]).endswith(".py") else ("train.py",)
    return run_python(*script, *args, cwd=cwd, timeout=timeout)


def run_python(*args, cwd=ROOT, timeout=600):
    """`python ARGS`, e.g. run_python("-m", "expkit.report", DIR)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def killed_after_epoch_2(monkeypatch):
    """Make the next training raise KeyboardInterrupt during epoch 3, after the checkpoint of epoch 2 (with
    trainer.checkpoint_every_s=0), as a killed process would stop; returns the function that undoes it."""
    from expkit.trainers import torch as trainer

    real = trainer._stop_or_go

    def crash(m, row, epoch, t, k):
        if epoch == 2:
            raise KeyboardInterrupt
        real(m, row, epoch, t, k)

    monkeypatch.setattr(trainer, "_stop_or_go", crash)
    return lambda: monkeypatch.setattr(trainer, "_stop_or_go", real)
