"""expkit: config-driven experiment runner for classification studies.

Python API (expkit/api.py): expkit.run(overrides) -> Result(dir, summary, metrics),
expkit.sweep(overrides) -> pandas.DataFrame, expkit.load(path).
"""
from expkit.version import __version__  # noqa: F401


def run(overrides=(), dir=None):
    from expkit.api import run as _run

    return _run(overrides, dir)


def sweep(overrides, sweep_dir=None):
    from expkit.api import sweep as _sweep

    return _sweep(overrides, sweep_dir)


def load(path):
    from expkit.api import load as _load

    return _load(path)
