"""expkit: config-driven experiment runner for classification studies.

Python API (expkit/api.py): expkit.run(overrides) -> Result(dir, summary, metrics);
expkit.sweep(overrides, sweep_dir=None) -> SweepResult(dir, table, by_config, best), streaming its
progress; expkit.load(path) -> a run's Result or a sweep's table. help(expkit.sweep) says more.
"""
from expkit.api import load, run, sweep  # noqa: F401  (light: pandas, hydra and torch load when called)
from expkit.version import __version__  # noqa: F401
