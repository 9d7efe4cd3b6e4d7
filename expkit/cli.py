"""Process-level glue for the entrypoints (train.py, the expkit command, the Python API): expkit's
Hydra plugins, config errors as one line and exit 2, the sweep preview's command line, the exit
status. What the sweepers share with it (the config lookups, the preview request, the failed jobs)
lives below both, in expkit/session.py; the import order is core <- session <- plugins <- cli."""
import logging
import sys

from expkit.errors import full_error  # noqa: F401  (one switch for the core and the command line)
from expkit.session import (  # noqa: F401  (the entrypoints' and the tests' names for them)
    closest, conf_dir, exit_code, group_options, mark_failed_jobs, one_line, preview_requested, request_preview)


class LogLabel(logging.Filter):
    """The label of a line in the sweep's console log (conf/hydra/default.yaml, hydra_logging): HYDRA for
    Hydra's own lines, the logger's name for expkit's (its sweeper plugins as expkit.sweeper, expkit.fusing,
    ...), where Hydra's default format labelled every line HYDRA."""

    def filter(self, record):
        name = record.name
        if name.startswith("hydra_plugins.expkit_plugins."):
            record.label = "expkit." + name.rsplit(".", 1)[1]
        else:
            record.label = "HYDRA" if name.startswith("hydra") or name == "root" else name
        return True


def sweep_preview_argv(argv):
    """`-m ... --cfg job` (either order; Hydra refuses --cfg with -m): the arguments to run as a
    sweep preview (without --cfg, --resolve, --package), or None for any other command line."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return None
    out, i, cfg = [], 0, False
    while i < len(argv):
        a = argv[i]
        if a in ("--cfg", "-c", "--package", "-p"):
            has_value = i + 1 < len(argv) and (a in ("--package", "-p") or argv[i + 1] in ("job", "hydra", "all"))
            cfg, i = cfg or a in ("--cfg", "-c"), i + 1 + has_value  # the flag and its value
            continue
        if a.startswith(("--cfg=", "--package=")):
            cfg = cfg or a.startswith("--cfg=")
        elif a != "--resolve":
            out.append(a)
        i += 1
    return out if cfg else None


def register_plugins():
    """expkit's sweepers and fused launcher register their configs on import. Hydra finds them by
    scanning the hydra_plugins namespace (any Hydra app: setup.py keeps every install path-based, an
    editable one a static .pth); expkit's entrypoints also import and register them by name, so they
    are there even where an install hides the namespace (setuptools' import-hook editable mode, an old
    install of this checkout), and so that hydra/sweeper=optuna is expkit's own."""
    from hydra.core.plugins import Plugins

    from expkit.config import register_schemas

    register_schemas()  # the base schemas of the trainer/optim/logger/report groups

    from hydra_plugins.expkit_plugins.fused_launcher import FusedLauncher
    from hydra_plugins.expkit_plugins.optuna_sweeper import OptunaSweeper, store_config
    from hydra_plugins.expkit_plugins.sweeper import ExpkitSweeper

    for plugin in (ExpkitSweeper, FusedLauncher, OptunaSweeper):
        Plugins.instance().register(plugin)  # Hydra's documented manual registration
    store_config()  # after Hydra's plugin scan: hydra/sweeper=optuna is expkit's, even if hydra-optuna-sweeper is installed


def report_config_errors():
    """Make config and sweep-definition errors one line and exit code 2 (user error), not a traceback.

    Errors raised while a job runs are not touched here: expkit.runner handles user errors
    itself, and programming errors propagate with their full traceback. HYDRA_FULL_ERROR=1
    shows the traceback of everything.
    """
    import hydra._internal.utils as hydra_utils  # the one private Hydra hook: its error printer
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from expkit.errors import UserError

    original = hydra_utils.run_and_report

    def run_and_report(func):
        if full_error():
            return original(func)  # Hydra's own handler re-raises with the full traceback
        try:
            return func()
        except UserError as ex:  # e.g. a malformed sweep definition, found by the sweeper
            sys.stderr.write(f"error: {ex}\n")
            sys.exit(2)
        except (HydraException, OmegaConfBaseException) as ex:
            sys.stderr.write(f"error: {one_line(ex)}\n")
            sys.exit(2)
        except OSError as ex:  # e.g. the output directory cannot be created
            sys.stderr.write(f"error: {ex.strerror or ex}: {ex.filename} "
                             "(choose a writable directory with hydra.run.dir=... or hydra.sweep.dir=...)\n")
            sys.exit(2)

    hydra_utils.run_and_report = run_and_report
