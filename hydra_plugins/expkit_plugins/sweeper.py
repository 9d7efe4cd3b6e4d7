"""expkit's sweeper: a grid, plus paired axes, jobs known by their config, a results table.

Paired axes: a `params` key naming several config keys, comma-separated, takes a list of
value tuples that vary together (not a Cartesian product):
    hydra.sweeper.params:
      model.depth,model.width: "[1,16],[2,16],[6,16]"     -> 3 jobs
A null in a tuple leaves that key unset for that job. Every other key is crossed as usual.

Precedence: a key given on the command line replaces what a preset or a `sweep=` group
sweeps for it, in the grid and inside paired tuples; jobs that become identical run once.
`-m experiment=a,b` runs each preset's own sweep in its own sub-directory, with its report.

A sweep dir knows its jobs by their config (.hydra/config.yaml, validated, compared on the values
that differ from the schema defaults: `canonical`): a job identical to
one that finished there is skipped, an unfinished identical one resumes in its own dir, and a
new config gets a new dir; no job ever writes into a dir holding another config. Jobs that
fail do not stop the sweep; the exit code is 1 if any failed.
"""
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

from expkit.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class ExpkitSweeperConf:
    _target_: str = "hydra_plugins.expkit_plugins.sweeper.ExpkitSweeper"
    max_batch_size: Optional[int] = None
    params: Dict[str, str] = field(default_factory=dict)  # {} not None: a command-line dict merges into it


ConfigStore.instance().store(group="hydra/sweeper", name="expkit", node=ExpkitSweeperConf, provider="expkit")


def value_str(v) -> str:
    """A Python value as Hydra override text (the inverse of the override parser's values)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(value_str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{value_str(x)}" for k, x in v.items()) + "}"
    s = str(v)
    if s and all(c.isalnum() or c in "_-./:" for c in s) and s not in ("null", "true", "false") \
            and not s[0].isdigit() and not s.startswith(("-", ".")):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _key(override):
    return override.get_key_element().lstrip("+~")


def _values(override):
    """Each value of a parsed override as a command-line string (`k=v`)."""
    key = override.get_key_element()
    if override.is_sweep_override():
        if not override.is_discrete_sweep():
            raise UserError(f"{override.input_line}: expkit's sweeper takes lists (a,b,c) and ranges, not "
                            f"{override.value_type.name}")
        return [f"{key}={v}" for v in override.sweep_string_iterator()]
    return [f"{key}={override.get_value_element_as_str()}"]


def _tuples(keys, values, parser):
    """The value tuples of one paired axis, as parsed Python values."""
    names = [k.strip() for k in keys.split(",")]
    try:
        sweep = parser.parse_overrides([f"paired={values}"])[0]
    except Exception as ex:
        raise UserError(f"paired sweep {keys}: cannot parse {values!r} ({str(ex).splitlines()[0]}); "
                        f"write tuples like \"[1,16],[2,16]\"") from None
    tuples = list(sweep.sweep_iterator()) if sweep.is_sweep_override() else [sweep.value()]
    for tup in tuples:
        if not isinstance(tup, (list, tuple)) or len(tup) != len(names):
            raise UserError(f"paired sweep {keys}: each value must be a list of {len(names)} "
                            f"([{', '.join(names)}]), got {tup!r}")
    return names, tuples


def expand(params: Dict[str, str], arguments: List[str], parser) -> List[List[str]]:
    """The jobs (override lists) of a sweep: the grid of params and the command line crossed with
    the paired axes. A command-line key replaces the preset's values for it, also inside a tuple."""
    cmd = parser.parse_overrides(list(arguments))
    given = {_key(o) for o in cmd}
    grid = {}
    for text in [f"{k}={v}" for k, v in params.items() if "," not in k]:
        o = parser.parse_overrides([text])[0]
        if _key(o) in given:
            log.info("command line replaces the preset's sweep of %s (%s)", _key(o), params[_key(o)])
        grid[_key(o)] = _values(o)
    for o in cmd:  # after the preset's: the command line wins, in the preset's position
        grid[_key(o)] = _values(o)
    axes = []
    for keys, values in ((k, v) for k, v in params.items() if "," in k):
        names, tuples = _tuples(keys, values, parser)
        keep = [i for i, n in enumerate(names) if n not in given]
        if len(keep) < len(names):
            log.info("command line replaces %s in the paired sweep %s",
                     ", ".join(names[i] for i in range(len(names)) if i not in keep), keys)
        # null leaves that key at its default for this job (e.g. no lr for an estimator)
        axes.append([[f"{names[i]}={value_str(t[i])}" for i in keep if t[i] is not None]
                     for t in tuples])
    jobs, seen = [], set()
    for combo in itertools.product(*grid.values(), *axes):
        job = [c for part in combo for c in ([part] if isinstance(part, str) else part)]
        sig = tuple(sorted(job))
        if sig in seen:
            continue
        seen.add(sig)
        jobs.append(job)
    n_all = len(list(itertools.product(*grid.values(), *axes)))
    if n_all > len(jobs):
        log.info("%d job(s) became identical once the command line applied: each runs once", n_all - len(jobs))
    return jobs


def canonical(task_cfg) -> str:
    """A job's identity: its validated config without schema defaults (expkit.config.essential),
    as sorted JSON; a config that does not validate is known by its composed form."""
    from omegaconf.errors import OmegaConfBaseException

    from expkit.config import essential

    try:
        ident = essential(task_cfg)
    except (UserError, OmegaConfBaseException, KeyError, TypeError, ValueError):
        ident = {"composed": OmegaConf.to_container(task_cfg, resolve=True)}
    return json.dumps(ident, sort_keys=True, default=str)


def existing_jobs(sweep_dir: Path):
    """{config identity: (job dir name, finished?)} of the job dirs already in a sweep dir."""
    from expkit.runner import SUMMARY

    found = {}
    for f in sorted(sweep_dir.glob("*/.hydra/config.yaml")):
        d = f.parent.parent
        try:
            ident = canonical(OmegaConf.load(f))
        except Exception:  # unreadable: never reused, never overwritten
            continue
        status = None
        if (d / SUMMARY).exists():
            try:
                status = json.loads((d / SUMMARY).read_text()).get("status")
            except ValueError:
                pass
        found.setdefault(ident, (d.name, status in ("completed", "diverged")))
    return found


class ExpkitSweeper(Sweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None):
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})

    def setup(self, *, hydra_context, task_function, config):
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from expkit.cli import mark_failed_jobs
        from expkit.report.aggregate import build_report
        from expkit.report.tables import terminal_table

        loader = self.hydra_context.config_loader
        parser = OverridesParser.create(config_loader=loader)
        root = Path(self.config.hydra.sweep.dir)
        presets = [o for o in parser.parse_overrides(list(arguments)) if _key(o) == "experiment"]
        studies = []  # (sweep dir, its composed config, its jobs)
        if presets and presets[0].is_sweep_override():
            rest = [a for a, o in zip(arguments, parser.parse_overrides(list(arguments))) if _key(o) != "experiment"]
            names = list(dict.fromkeys(v.partition("=")[2] for v in _values(presets[0])))
            log.info("sweep over %d presets, each with its own sweep and report under %s: %s",
                     len(names), root, ", ".join(names))
            for name in names:
                args = rest + [f"experiment={name}"]
                cfg = loader.load_configuration(config_name=self.config.hydra.job.config_name, run_mode=RunMode.MULTIRUN,
                                                overrides=list(self.config.hydra.overrides.hydra) + args)
                studies.append((root / name.replace("/", "_"), cfg, expand(dict(cfg.hydra.sweeper.params or {}),
                                                                           args, parser)))
        else:
            studies.append((root, self.config, expand(self.params, arguments, parser)))

        returns, failed, jobs_total = [], 0, 0
        for sweep_dir, cfg, jobs in studies:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
            todo = self._assign(jobs, sweep_dir, root)
            log.info("sweep: %d job(s), %d to run -> %s", len(jobs), len(todo), sweep_dir)
            try:
                returns += self._launch(todo, sweep_dir, root)
            finally:
                table = build_report(sweep_dir)
            failed += int((table.status == "failed").sum()) if len(table) else 0
            jobs_total += len(table)
            print(f"\n{sweep_dir}\n{terminal_table(table)}\n", flush=True)  # the results, best first
        if len(studies) > 1:
            build_report(root, roots=[s[0] for s in studies], plots=[])  # one merged table at the top
        mark_failed_jobs(failed)
        msg = f"sweep done: {jobs_total} job(s), {failed} failed; table: {studies[0][0] / 'results.md'}"
        if len(studies) > 1:
            msg = f"sweep done: {jobs_total} job(s) in {len(studies)} presets, {failed} failed; tables: " \
                  f"{root}/<preset>/results.md, merged {root / 'results.md'}"
        (log.warning if failed else log.info)(msg)
        return returns

    def _assign(self, jobs, sweep_dir, root):
        """Each job's dir, by its config: skip finished identical jobs, reuse unfinished ones."""
        loader = self.hydra_context.config_loader
        known = existing_jobs(sweep_dir)
        used = {p.name for p in sweep_dir.iterdir() if p.is_dir()}
        next_num = max([int(n) for n in used if n.isdigit()], default=-1) + 1
        todo = []
        for job in jobs:
            config = loader.load_sweep_config(self.config, list(job))  # also checks it composes
            with read_write(config), open_dict(config):
                del config["hydra"]
            ident = canonical(config)
            if ident in known:
                name, finished = known[ident]
                if finished:
                    log.info("skipping %s: this exact config already finished in %s", " ".join(job), sweep_dir / name)
                    continue
                if name in {t[1] for t in todo}:  # already queued in this sweep
                    continue
            else:
                name = str(next_num)
                next_num += 1
                known[ident] = (name, False)
            sub = str((sweep_dir / name).relative_to(root))
            todo.append((list(job) + [f"hydra.sweep.subdir={sub}"], name, config))
        for k, (overrides, _, _) in enumerate(todo, 1):  # "job k/N" in each job's progress line
            overrides.append(f"++hydra.job.env_set.EXPKIT_JOB='{k}/{len(todo)}'")
        return todo

    def _launch(self, todo, sweep_dir, root):
        returns, idx = [], 0
        n = self.max_batch_size or len(todo) or 1
        for i in range(0, len(todo), n):
            batch = todo[i:i + n]
            try:
                returns.append(self.launcher.launch([j for j, *_ in batch], initial_job_idx=idx))
            except Exception as ex:  # the launcher itself died (e.g. a killed worker): record, go on
                record_lost_jobs(sweep_dir, batch, ex)
            idx += len(batch)
        return returns


def record_lost_jobs(sweep_dir: Path, batch, ex):
    """Jobs of a batch that the launcher lost without a summary: failed rows saying why (the sweep
    exits 1); re-running the sweep re-runs them, resuming from their checkpoints."""
    from expkit.runner import SUMMARY, _write_json

    msg = f"launcher lost this job: {type(ex).__name__}: {(str(ex).splitlines() or [''])[0][:200]}"
    log.error("%s (jobs %s)", msg, ", ".join(name for _, name, _ in batch))
    for overrides, name, config in batch:
        job_dir = sweep_dir / name
        if not (job_dir / SUMMARY).exists():
            (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
            if config is not None and not (job_dir / ".hydra" / "config.yaml").exists():  # so a re-run finds this job by its config
                OmegaConf.save(config, job_dir / ".hydra" / "config.yaml")
            task = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
            _write_json(job_dir / SUMMARY, {"status": "failed", "error": msg, "overrides": task})
