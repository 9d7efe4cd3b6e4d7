"""Everything written after training: a run's files (outputs.py), sweep tables (aggregate.py), plots.

Plots read only saved files, so any run or sweep can be re-plotted later without re-training.

Imports go one way (tests/test_imports.py checks it, imports inside functions included):
    tables.py     table helpers (swept keys, configurations, mean ± std, markdown); numpy/pandas only
    registry.py   PLOTS and @register(kind); imports nothing of expkit
    plots.py      plotting helpers (savefig, titles, groups, bands) + a run's curves/boundary -> tables
    sweep_plots.py, study_plots.py, images.py   the plot kinds -> plots, registry, tables
    kinds.py      imports the kind modules (filling PLOTS) and draw(spec, ...) runs one
    aggregate.py  results tables -> tables; build_report draws via kinds (imported when it draws),
                  so the tables never load matplotlib
    choice.py     the sweep's choice (best.json), its closing lines, outputs/<name>/latest -> tables,
                  aggregate
"""
