"""What expkit's entrypoints (expkit/cli.py: train.py, the expkit command, the Python API) and its
sweepers (hydra_plugins/expkit_plugins) share, below both: where the configs are and their options,
a config error as one line, the preview a command line asks for, the failed jobs a sweep reports
(the exit status) and where a sweep dir's jobs are. Imports nothing of the entrypoints or the plugins,
so both can import it."""
import difflib
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


def conf_dir() -> str:
    """The configs: conf/ beside the expkit package in a checkout, else the installed expkit.conf
    (expkit/conf/ of a wheel; conf/ of an editable install)."""
    from importlib.util import find_spec

    checkout = Path(__file__).resolve().parents[1] / "conf"
    if (checkout / "config.yaml").is_file():
        return str(checkout)
    spec = find_spec("expkit.conf")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: expkit's configs (expkit/conf) are missing from this install; reinstall expkit")
    return list(spec.submodule_search_locations)[0]


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


def job_pattern(sweep_dir) -> str:
    """The glob, relative to a sweep dir, of its job dirs: `*`, or one `*` per level of the user's
    hydra.sweep.subdir as its multirun.yaml records it (`lr${optim.lr}/s${seed}`: `*/*`)."""
    import yaml

    f = Path(sweep_dir) / "multirun.yaml"
    try:
        sub = str(((yaml.safe_load(f.read_text()) or {}).get("hydra") or {}).get("sweep", {}).get("subdir") or "")
    except (OSError, yaml.YAMLError, AttributeError):
        sub = ""
    return "/".join(["*"] * max(1, len([part for part in sub.split("/") if part])))
