"""Process-level glue for train.py: one-line config errors and the sweep's exit status."""
import sys

_state = {"failed_jobs": 0}


def mark_failed_jobs(n):
    _state["failed_jobs"] = n


def exit_code():
    return 1 if _state["failed_jobs"] else 0


def _one_line(ex):
    lines = [ln.strip() for ln in str(ex).splitlines() if ln.strip()]
    msg = lines[0] if lines else type(ex).__name__
    if msg.endswith(":") and len(lines) > 1:  # "… raised while composing config:" — the cause is next
        msg += " " + lines[1]
    # Hydra lists the valid choices on later lines: keep them, on the same line.
    opts = []
    for ln in lines[1:]:
        if ln.startswith("Available options"):
            opts = []
        elif lines and not ln.startswith(("Config search path", "provider=", "Set the environment")) and ":" not in ln:
            opts.append(ln)
    if "Could not find" in msg and opts:
        msg += f" (available: {', '.join(opts)})"
    if ("Could not find" in msg or "Could not load" in msg) and ("hydra/launcher/" in msg or "hydra/sweeper/" in msg):
        msg += "; the joblib/submitit launchers and the optuna sweeper are extras: pip install -e \".[launchers,hpo]\""
    if msg.startswith("Could not override"):
        key = msg.split("'")[1] if "'" in msg else "?"
        msg = (f"unknown config key {key!r}: check its spelling against `python train.py --cfg job` "
               f"(a key that is really new: +{key}=VALUE)")
    return msg


def report_config_errors():
    """Make Hydra's composition errors one line and exit code 2 (user error), not a traceback.

    Errors raised while a job runs are not touched here: expkit.run handles user errors
    itself, and programming errors propagate with their full traceback.
    """
    import hydra._internal.utils as hydra_utils
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    def run_and_report(func):
        try:
            return func()
        except (HydraException, OmegaConfBaseException) as ex:
            sys.stderr.write(f"error: {_one_line(ex)}\n")
            sys.exit(2)
        except OSError as ex:  # e.g. the output directory cannot be created
            sys.stderr.write(f"error: {ex.strerror or ex}: {ex.filename} "
                             "(choose a writable directory with hydra.run.dir=... or hydra.sweep.dir=...)\n")
            sys.exit(2)

    hydra_utils.run_and_report = run_and_report
