"""Process-level glue for the entrypoints (train.py, the expkit command, the Python API): where the
configs are, expkit's Hydra plugins, one-line config errors and the sweep's exit status."""
import difflib
import os
import re
import sys
from pathlib import Path

_state = {"failed_jobs": 0, "preview": False}


def mark_failed_jobs(n):
    _state["failed_jobs"] = n


def exit_code():
    return 1 if _state["failed_jobs"] else 0


def request_preview():
    """`-m ... --cfg job`: the sweeper prints what it would run and runs nothing."""
    _state["preview"] = True


def preview_requested():
    return _state["preview"]


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


from expkit.errors import full_error  # noqa: E402,F401  (one switch for the core and the command line)


def conf_dir() -> str:
    """The configs: conf/ beside the expkit package in a checkout, else the installed expkit.conf
    (expkit/conf/ of a wheel; conf/ of an editable install)."""
    from importlib.util import find_spec
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[1] / "conf"
    if (checkout / "config.yaml").is_file():
        return str(checkout)
    spec = find_spec("expkit.conf")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: expkit's configs (expkit/conf) are missing from this install; reinstall expkit")
    return list(spec.submodule_search_locations)[0]


def register_plugins():
    """expkit's sweeper and fused launcher register their configs on import. Hydra finds plugins by
    scanning the hydra_plugins namespace, which an editable install's import hook hides: import
    them by name so they are there however expkit was installed."""
    from hydra.core.plugins import Plugins

    from expkit.config import register_schemas

    register_schemas()  # the base schemas of the trainer/optim/logger/report groups

    from hydra_plugins.expkit_plugins.fused_launcher import FusedLauncher
    from hydra_plugins.expkit_plugins.optuna_sweeper import OptunaSweeper, store_config
    from hydra_plugins.expkit_plugins.sweeper import ExpkitSweeper

    for plugin in (ExpkitSweeper, FusedLauncher, OptunaSweeper):
        Plugins.instance().register(plugin)  # Hydra's documented manual registration
    store_config()  # after Hydra's plugin scan: hydra/sweeper=optuna is expkit's, even if hydra-optuna-sweeper is installed

def group_options(group):
    """The options of a config group, nested ones as 'ex4/lr', from expkit's conf/."""
    root = Path(conf_dir()) / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")) if root.is_dir() else []


def closest(group, option, n=3):
    opts = group_options(group)
    near = difflib.get_close_matches(option, opts, n=n, cutoff=0.5)
    return near or opts[:n]


def one_line(ex):
    """A Hydra or OmegaConf error as one line, with the closest options or the fix."""
    lines = [ln.strip() for ln in str(ex).splitlines() if ln.strip()]
    msg = lines[0] if lines else type(ex).__name__
    if msg.endswith(":") and len(lines) > 1:  # "… raised while composing config:" — the cause is next
        msg += " " + lines[1]
    missing = re.search(r"Could not find '([^']+)'", msg)
    if missing and "/" in missing.group(1) and not missing.group(1).startswith("hydra/"):
        group, _, option = missing.group(1).partition("/")
        if group in ("experiment", "data", "model", "optim", "trainer", "sweep", "report", "logger"):
            return (f"unknown {group} {option!r}: no conf/{group}/{option}.yaml; closest: "
                    f"{', '.join(closest(group, option))} (python train.py --help lists them all)")
    # Hydra lists the valid choices on later lines: keep them, on the same line.
    opts = []
    for ln in lines[1:]:
        if ln.startswith("Available options"):
            opts = []
        elif not ln.startswith(("Config search path", "provider=", "Set the environment")) and ":" not in ln:
            opts.append(ln)
    if "Could not find" in msg and opts:
        msg += f" (available: {', '.join(opts)})"
    if ("Could not find" in msg or "Could not load" in msg) and ("hydra/launcher/" in msg or "hydra/sweeper/" in msg):
        msg += "; the joblib/submitit launchers are an extra: pip install -e \".[launchers]\""
    if msg.startswith("Error merging override") and ex.__cause__ is not None:  # the schema says why
        cause = str(ex.__cause__).splitlines()[0]
        msg = f"{msg}: {cause} (`python train.py --cfg job` shows every key and its type)"
    if msg.startswith("Could not override"):
        key = msg.split("'")[1] if "'" in msg else "?"
        msg = f"unknown config key {key!r}{_did_you_mean(key, ex.__cause__)} (`python train.py --cfg job` shows every key)"
    if msg.startswith("Ambiguous value for argument"):  # Hydra's numbered hints are on the next lines
        arg = msg.split("'")[1] if "'" in msg else "key=a,b"
        msg += f": to sweep over these values add -m (python train.py -m {arg}); a list is key=[a,b], a string key='a,b'"
    return msg


def _did_you_mean(key, cause):
    """'; did you mean model.width?' from the keys of the node the typo'd key was looked up in (the
    composed config, as OmegaConf's error holds it), or else the keys that node has."""
    node = getattr(cause, "parent_node", None)
    full = getattr(cause, "full_key", None) or key
    if node is None or not hasattr(node, "keys"):
        return ""
    prefix, _, last = full.rpartition(".")
    keys = [str(k) for k in node.keys() if k != "hydra"]
    near = difflib.get_close_matches(last, keys, n=2, cutoff=0.6)
    name = (lambda k: f"{prefix}.{k}" if prefix else k)
    if near:
        return f"; did you mean {' or '.join(map(name, near))}?"
    return f"; {prefix or 'the top level'} has {', '.join(keys)}"


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
