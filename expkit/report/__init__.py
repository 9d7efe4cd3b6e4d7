"""Everything written after training: a run's files (outputs.py), sweep tables (aggregate.py), plots (plots.py).

Plots read only saved files, so any run or sweep can be re-plotted later without re-training.
"""
