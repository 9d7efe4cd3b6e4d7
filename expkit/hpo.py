"""An Optuna trial seen from its run (expkit's optuna sweeper writes TRIAL_FILE into the trial's
run dir): report the validation accuracy after every epoch, stop the run when the pruner says."""
import json
from pathlib import Path

TRIAL_FILE = "optuna_trial.json"


def pruning_callback(run_dir):
    """A trainer callback for this run's trial, or None when the run is not a trial."""
    path = Path(run_dir) / TRIAL_FILE
    if not path.exists():
        return None
    spec = json.loads(path.read_text())
    import optuna
    from hydra.utils import instantiate

    quiet_optuna()
    pruner = instantiate(spec["pruner"]) if spec.get("pruner") else optuna.pruners.NopPruner()
    study = optuna.load_study(study_name=spec["study_name"], storage=spec["storage"], pruner=pruner)
    trial = optuna.trial.Trial(study, spec["trial_id"])

    def report(row):
        value = row.get("val_acc")
        if value is None or value != value:  # no val accuracy this epoch (NaN): nothing to judge
            return None
        trial.report(float(value), int(row["epoch"]))
        return "pruned" if trial.should_prune() else None

    return report


def quiet_optuna():
    """Optuna's messages through expkit's logging (plain lines, no colour codes in log files); no
    alembic set-up chatter from the sqlite storage. Used by the trial's run and by expkit's optuna
    sweeper (which imports it from here: the core never imports the plugins)."""
    import logging

    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    logging.getLogger("alembic").setLevel(logging.WARNING)
