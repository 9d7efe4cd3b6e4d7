"""Every plot kind of report.plots: importing this module registers them all (registry.PLOTS);
draw() runs one. Only the sweep report (aggregate.build_report) imports it, when it draws."""
from expkit.report import images, parallel, study_plots, sweep_plots  # noqa: F401  (each registers its kinds)
from expkit.report.registry import PLOTS


def draw(spec, df, paths, out, study=None):
    """One plot kind of a preset's report.plots; `study` (the study's name) goes into every title."""
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind not in PLOTS:
        raise ValueError(f"unknown plot kind {kind!r}; known: {sorted(PLOTS)}")
    PLOTS[kind](df, paths, out, study=study, **spec)
