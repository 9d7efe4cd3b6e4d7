"""expkit's sweeper: a grid, plus paired axes, jobs known by their config, a results table.

Paired axes: a `params` key naming several config keys, comma-separated, takes a list of
value tuples that vary together (not a Cartesian product):
    hydra.sweeper.params:
      model.depth,model.width: "[1,16],[2,16],[6,16]"     -> 3 jobs
A null in a tuple leaves that key unset for that job. Every other key is crossed as usual.

Precedence: a key given on the command line replaces what a preset or a `sweep=` group
sweeps for it, in the grid and inside paired tuples; jobs that become identical run once.
`-m experiment=a,b` (or `sweep=a,b`, or `glob(...)` over either group, nested options such as ex4/lr
included) runs each option's own sweep in its own sub-directory, with its report, and a merged
table on top. With `--cfg job` (set by the entrypoint: expkit.session.preview_requested) the sweeper
prints the jobs it would run, which finished already, and how they would fuse, and runs nothing.

A sweep dir knows its jobs by their config (.hydra/config.yaml, validated, compared on the values
that differ from the schema defaults: `canonical`): a job identical to
one that finished there is skipped, an unfinished identical one resumes in its own dir, and a
new config gets a new dir; no job ever writes into a dir holding another config. Jobs that
fail do not stop the sweep; the exit code is 1 if any failed.

A `hydra.sweep.subdir` the user sets (in a config or on the command line; Hydra's default is
${hydra.job.num}) wins: each job runs where it names, resolved with the job's number in the sweep,
and the config identity only decides skip and resume (a dir holding another config's expkit results
is still never written into: that job is refused, a failure). Any Hydra app may use this sweeper
(hydra/sweeper=expkit): a job that is not an expkit run has no table row; a job that failed without
leaving an expkit record (summary.json) fails the sweep once every job has run, as Hydra's sweepers
fail it.
"""
import copy
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

from expkit.errors import UserError
from expkit.session import job_pattern
from hydra_plugins.expkit_plugins.fusing import GROUP_KEY, Job, fuses, launch_batch, local_slots, plan, task_cfg

log = logging.getLogger(__name__)


@dataclass
class ExpkitSweeperConf:
    _target_: str = "hydra_plugins.expkit_plugins.sweeper.ExpkitSweeper"
    max_batch_size: Optional[int] = None
    fuse: bool = False                # jobs that differ only in seed/lr/wd/momentum train as one group job
    max_group: Optional[int] = None   # members per group (default: no bound; with GPUs, every GPU gets a group)
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
            log.info("command line replaces the preset's sweep of %s (%s)", _key(o), text.partition("=")[2])
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
    as sorted JSON; a config that does not validate (not an expkit run's) is known by its composed
    form, resolved where it resolves here."""
    from omegaconf.errors import OmegaConfBaseException

    from expkit.config import identity

    try:
        return identity(task_cfg)  # by value: optim.lr=1 and optim.lr=1.0 are one job, as in the tables
    except (UserError, OmegaConfBaseException, KeyError, TypeError, ValueError):
        try:
            ident = {"composed": OmegaConf.to_container(task_cfg, resolve=True)}
        except Exception:  # e.g. a ??? value or an interpolation only the job can resolve
            ident = {"composed": OmegaConf.to_container(task_cfg, resolve=False)}
    return json.dumps(ident, sort_keys=True, default=str)


def existing_jobs(sweep_dir: Path):
    """{config identity: (job dir name, finished?)} of the job dirs already in a sweep dir."""
    from expkit.runner import SUMMARY

    found = {}
    for f in sorted(sweep_dir.glob(f"{job_pattern(sweep_dir)}/.hydra/config.yaml")):
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
        finished = status in ("completed", "diverged")
        if ident not in found or (finished and not found[ident][1]):  # a finished dir beats an unfinished one
            found[ident] = (d.relative_to(sweep_dir).as_posix(), finished)
    return found


STUDY_GROUPS = ("experiment", "sweep")  # their options declare a sweep (hydra.sweeper.params) of their own
JOB_COUNTER = "hydra.job.env_set.EXPKIT_JOB"  # "#k/N" in each job's progress line (expkit/trainers/progress.py)


def declare_job_counter(config):
    """Declare EXPKIT_JOB and EXPKIT_GROUP among the sweep's Hydra overrides, so that each job can set them
    with a plain `hydra.` override, which Hydra's launchers leave out of their job lines (`++hydra...` they
    print): a job line shows the user's overrides only."""
    with read_write(config), open_dict(config):
        given = OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False)  # e.g. subdir=x_${hydra.job.num}
        for key in (JOB_COUNTER, GROUP_KEY):
            if f"++{key}=''" not in given:
                config.hydra.overrides.hydra.append(f"++{key}=''")


def job_counter(k, n):
    """The k-th (1-based) of n jobs: Hydra's launchers number their job lines from 0 (#k-1), and so does the
    progress line, so one job has one number in the log."""
    return f"{JOB_COUNTER}='#{k - 1}/{n}'"


HYDRA_SUBDIR = "${hydra.job.num}"  # Hydra's default hydra.sweep.subdir: expkit then names dirs by config


def user_subdir(config) -> Optional[str]:
    """The hydra.sweep.subdir the user set (a config or the command line), unresolved; None for Hydra's default."""
    raw = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    return None if raw is None or str(raw) == HYDRA_SUBDIR else str(raw)


def resolve_subdir(config, num) -> Optional[str]:
    """A job's hydra.sweep.subdir resolved with its job number, as its launcher would; None where only
    the job itself can resolve it."""
    config = copy.deepcopy(config)
    with read_write(config), open_dict(config):
        config.hydra.job.num = num
        config.hydra.job.id = str(num)
    try:
        return str(config.hydra.sweep.subdir)
    except Exception:
        return None


def holds_other_results(job_dir: Path, ident: str) -> bool:
    """Whether a dir holds another config's expkit results (its summary.json, config.yaml or checkpoint
    beside a .hydra/config.yaml of another identity). A plain Hydra app's job dir holds none."""
    from expkit.runner import SUMMARY

    f = job_dir / ".hydra" / "config.yaml"
    if not f.exists() or not any((job_dir / n).exists() for n in (SUMMARY, "config.yaml", "checkpoint.pt")):
        return False
    try:
        return canonical(OmegaConf.load(f)) != ident
    except Exception:  # unreadable: never overwritten
        return True


def job_failures(returns):
    """The launcher's JobReturns that failed without an expkit record of it (no summary.json in their dir:
    a plain Hydra app's task, or a crash outside expkit's run): [(dir, JobReturn)]."""
    from hydra.core.utils import JobStatus

    from expkit.runner import SUMMARY

    out = []
    for batch in returns:
        for r in batch or []:
            if getattr(r, "status", None) != JobStatus.FAILED:
                continue
            try:
                d = Path(str(r.hydra_cfg.hydra.runtime.output_dir))
            except Exception:
                d = None
            if d is None or not (d / SUMMARY).exists():
                out.append((d, r))
    return out


def user_overrides(overrides):
    """A job's overrides without Hydra's own (subdir, job counter): what the user's sweep varies."""
    return [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]


def check_valid(config, job):
    """An expkit run's config must validate (a typo'd value, Adam with a momentum, a negative lr):
    one line naming the job, before any job of the sweep runs. Other apps' configs pass as they are."""
    from expkit.config import validate

    task = task_cfg(config)
    if all(k in task for k in ("data", "model", "optim", "trainer")):
        try:
            validate(task)
        except UserError as ex:
            raise UserError(f"job {' '.join(user_overrides(job))}: {ex}") from None


def group_choices(override, loader):
    """The options a sweep over a config group names, and whether a glob named them. A glob matches
    every option of the group, nested ones (ex4/lr) too, which Hydra's own listing leaves out."""
    from expkit.session import group_options

    group = _key(override)
    pattern = override.value()
    if not isinstance(pattern, Glob):
        return list(dict.fromkeys(v.partition("=")[2] for v in _values(override))), False
    every = sorted(set(group_options(group)) | set(loader.get_group_options(group)))
    names = pattern.filter(every)
    if not names:
        raise UserError(f"{override.input_line} matches no {group} option (there are {len(every)}, e.g. "
                        f"{', '.join(every[:4])}; python train.py --help lists them)")
    return names, True


class ExpkitSweeper(Sweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 fuse: bool = False, max_group: Optional[int] = None):
        from expkit.errors import require

        require(max_group is None or max_group >= 1, f"hydra.sweeper.max_group must be >= 1, got {max_group}")
        self.max_batch_size, self.fuse, self.max_group = max_batch_size, fuse, max_group
        self.params = dict(params or {})

    def setup(self, *, hydra_context, task_function, config):
        self.hydra_context, self.config = hydra_context, config
        declare_job_counter(config)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        __import__("expkit.scheduler").scheduler.watch_slurm_jobs(config.hydra.launcher.get("_target_"))
        self.fuse = fuses(self.launcher, self.fuse)

    def sweep(self, arguments: List[str]) -> Any:
        from expkit.runner import SUMMARY
        from expkit.session import mark_failed_jobs, preview_requested

        def build_report(*args, **kwargs):  # pandas and the report code: only for expkit's runs
            from expkit.report.aggregate import build_report

            return build_report(*args, **kwargs)

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        root = Path(self.config.hydra.sweep.dir)
        studies = self.studies(arguments, parser)
        if preview_requested():
            for sweep_dir, cfg, jobs in studies:
                self._preview(jobs, sweep_dir, root)
            return []

        self.refused = 0
        todos = [self._assign(jobs, sweep_dir, root) for sweep_dir, _, jobs in studies]  # every job composes
        returns, failed, jobs_total, tables = [], self.refused, 0, 0
        for (sweep_dir, cfg, jobs), todo in zip(studies, todos):
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
            log.info("sweep: %d job(s), %d to run -> %s", len(jobs), len(todo), sweep_dir)
            ours = True
            try:
                returns += self._launch(todo, sweep_dir, root)
            finally:  # expkit's runs get their table; a plain Hydra app's jobs (no summary.json) none
                ours = any(sweep_dir.glob(f"{job_pattern(sweep_dir)}/{SUMMARY}"))
                table = build_report(sweep_dir) if ours else None
            if not ours:
                jobs_total += len(todo)
                continue
            from expkit.report.tables import terminal_table

            tables += 1
            failed += int((table.status == "failed").sum()) if len(table) and "status" in table else 0
            jobs_total += len(table)
            print(f"\n{sweep_dir}\n{terminal_table(table)}\n", flush=True)  # the results, best first
        if len(studies) > 1 and tables:
            build_report(root, roots=[s[0] for s in studies], plots=[])  # one merged table at the top
        unrecorded = job_failures(returns)
        failed += len(unrecorded)
        mark_failed_jobs(failed)
        msg = f"sweep done: {jobs_total} job(s), {failed} failed" + \
            (f"; table: {studies[0][0] / 'results.md'}" if tables else "")
        if len(studies) > 1:
            msg = f"sweep done: {jobs_total} job(s) in {len(studies)} studies, {failed} failed" + \
                (f"; tables: {root}/<study>/results.md, merged {root / 'results.md'}" if tables else "")
        (log.warning if failed else log.info)(msg)
        if tables:  # best.json per study, outputs/<name>/latest, and the command that re-runs this sweep in place
            from expkit.report.choice import close_sweep

            print(close_sweep(root, [s[0] for s in studies]), flush=True)
        if unrecorded:  # as Hydra's own sweepers do, once every job has run: the first such job's error
            d, first = unrecorded[0]
            log.error("%d job(s) failed without an expkit record; the first (%s) raises", len(unrecorded), d)
            _ = first.return_value
        return returns

    def studies(self, arguments, parser):
        """[(sweep dir, composed config, jobs)]: one study, or, when the command line sweeps the options
        of `experiment` or `sweep` (a list or a glob), one per option (per combination, when both),
        each with its own sweep in its own sub-dir. Options that bring another sweeper (hpo/*:
        hydra/sweeper=optuna) cannot join: a glob leaves them out and says so, a list is an error."""
        loader = self.hydra_context.config_loader
        root = Path(self.config.hydra.sweep.dir)
        parsed = parser.parse_overrides(list(arguments))
        over = [i for i, o in enumerate(parsed) if _key(o) in STUDY_GROUPS and o.is_sweep_override()]
        if not over:
            return [(root, self.config, expand(self.params, arguments, parser))]
        rest = [a for i, a in enumerate(arguments) if i not in over]
        choices = [group_choices(parsed[i], loader) for i in over]
        globbed = any(g for _, g in choices)
        options = [[f"{_key(parsed[i])}={n}" for n in names] for i, (names, _) in zip(over, choices)]
        studies, left_out = [], []
        for combo in itertools.product(*options):
            args = rest + list(combo)
            cfg = loader.load_configuration(config_name=self.config.hydra.job.config_name, run_mode=RunMode.MULTIRUN,
                                            overrides=list(self.config.hydra.overrides.hydra) + args)
            if cfg.hydra.sweeper.get("_target_") != ExpkitSweeperConf._target_:
                left_out.append(f"{' '.join(combo)} (hydra/sweeper={cfg.hydra.runtime.choices.get('hydra/sweeper')})")
                continue
            name = "+".join(c.partition("=")[2].replace("/", "_") for c in combo)
            studies.append((root / name, cfg, expand(dict(cfg.hydra.sweeper.params or {}), args, parser)))
        if left_out and not (globbed and studies):
            raise UserError(f"{', '.join(left_out)} brings another sweeper and cannot join a sweep over "
                            f"several options: run it alone (python train.py -m {left_out[0].split(' (')[0]})")
        if left_out:
            log.warning("left out of this sweep, each brings another sweeper (run it alone with -m): %s",
                        ", ".join(left_out))
        log.info("sweep over %d studies, each with its own sweep and report under %s: %s",
                 len(studies), root, ", ".join(s[0].name for s in studies))
        return studies

    def _identify(self, jobs, sweep_dir, root):
        """Each job's place in the sweep dir, by its config: [(overrides, dir name, composed config,
        state)], state "finished" (an identical config finished there: skipped), "resume" (an
        identical unfinished one: its dir) or "new" (a new dir). Jobs identical to an earlier one of
        this sweep are left out. Reads the sweep dir only."""
        loader = self.hydra_context.config_loader
        known = existing_jobs(sweep_dir)
        used = {p.name for p in sweep_dir.iterdir() if p.is_dir()} if sweep_dir.is_dir() else set()
        next_num = max([int(n) for n in used if n.isdigit()], default=-1) + 1
        out, queued = [], set()
        for job in jobs:
            config = loader.load_sweep_config(self.config, list(job))  # also checks it composes
            check_valid(config, job)  # a job that cannot run stops the sweep before anything is launched
            ident = canonical(task_cfg(config))
            if ident in known:
                name, finished = known[ident]
                state = "finished" if finished else "resume"
            else:
                name, state = str(next_num), "new"
                next_num += 1
                known[ident] = (name, False)
            if name in queued:  # identical to a job already in this sweep
                continue
            queued.add(name)
            out.append((list(job), name, config, state))
        return out

    def _place(self, jobs, sweep_dir, root):
        """_identify, with the user's hydra.sweep.subdir applied: each job that runs goes where that
        names (resolved with its number among the jobs to run), "refused" where that dir holds another
        config's expkit results. [(overrides, dir name relative to sweep_dir or None, composed config,
        state)]"""
        entries = self._identify(jobs, sweep_dir, root)
        own = user_subdir(self.config)
        if own is None:
            return entries
        out, num = [], 0
        for job, name, config, state in entries:
            if state != "finished":
                sub = resolve_subdir(config, num)
                num += 1
                name, state = sub, "new" if sub is None else state
                if sub is not None and holds_other_results(sweep_dir / sub, canonical(task_cfg(config))):
                    state = "refused"
            out.append((job, name, config, state))
        return out

    def _assign(self, jobs, sweep_dir, root):
        """The jobs to run, each with its dir (by its config, or the user's subdir): skip finished
        identical jobs, reuse unfinished ones. [(overrides, dir name, task config, composed config)]"""
        todo = []
        for job, name, config, state in self._place(jobs, sweep_dir, root):
            if state == "finished":
                log.info("skipping %s: this exact config already finished in %s", " ".join(job), sweep_dir / name)
                continue
            if state == "refused":
                log.error("refused %s: hydra.sweep.subdir names %s, which holds another config's results "
                          "(expkit never writes there; choose another hydra.sweep.subdir or dir)",
                          " ".join(job) or "(no overrides)", sweep_dir / name)
                self.refused += 1
                continue
            if name is None:  # the user's subdir, resolved by the job itself (its launcher)
                todo.append((list(job), None, task_cfg(config), config))
                continue
            sub = (sweep_dir / name).relative_to(root).as_posix()
            sub = value_str(sub) if user_subdir(self.config) is not None else sub  # expkit's names: plain
            todo.append((job + [f"hydra.sweep.subdir={sub}"], name, task_cfg(config), config))
        for k, (overrides, *_) in enumerate(todo, 1):  # "job k/N" in each job's progress line
            overrides.append(job_counter(k, len(todo)))
        return todo

    def _preview(self, jobs, sweep_dir, root):
        """`-m ... --cfg job`: the jobs this sweep would run (numbered as `job k/N` in its log), those
        already finished in its dir, and how they would fuse (fusing.plan, in batches of
        max_batch_size); nothing is written."""

        entries = self._place(jobs, sweep_dir, root)
        todo = [e for e in entries if e[3] not in ("finished", "refused")]
        print(f"\nsweep preview (nothing runs, nothing is written): {sweep_dir}\n"
              f"{len(entries)} job(s): {len(todo)} to run, {len(entries) - len(todo)} already finished there")
        k = 0
        for job, name, _, state in entries:
            if state == "finished":
                head = f"done  (finished in {name})"
            elif state == "refused":
                head = f"refused ({name} holds another config)"
            else:
                k += 1
                head = f"#{k:<3} -> {name}" + (" (resumes)" if state == "resume" else "")
            print(f"  {head:<24} {' '.join(user_overrides(job)) or '(no overrides)'}")
        if not todo:
            return
        n = self.max_batch_size or len(todo)
        units = []
        for i in range(0, len(todo), n):
            units += plan([Job(i + k, job, copy.deepcopy(config))
                           for k, (job, _, config, _) in enumerate(todo[i:i + n], 1)],
                          self.max_group, local_slots(self.config.hydra.launcher))
        print(f"fused ({'this sweep' if self.fuse else 'were it fused: sweeper.fuse=true'}): "
              f"{len(todo)} job(s) train as {len(units)} unit(s)")
        for u in units:
            if len(u) > 1:
                print(f"  together: {' + '.join(f'#{j.num}' for j in u)}")
            else:
                print(f"  alone:    #{u[0].num}: {u[0].why_alone}")

    def _launch(self, todo, sweep_dir, root):
        """The jobs to run, in batches of max_batch_size, numbered across the sweep; each batch fused
        or not (fusing.launch_batch, which the Optuna sweeper's batches go through too)."""
        returns, idx = [], 0
        n = self.max_batch_size or len(todo) or 1
        for i in range(0, len(todo), n):
            batch = todo[i:i + n]
            try:
                returns.append(launch_batch(self, [j for j, *_ in batch], idx, [c for *_, c in batch]))
            except Exception as ex:  # the launcher itself died (e.g. a killed worker): record, go on
                record_lost_jobs(sweep_dir, [b for b in batch if b[1] is not None], ex)
            idx += len(batch)
        return returns


def record_lost_jobs(sweep_dir: Path, batch, ex):
    """Jobs of a batch that the launcher lost without a summary: failed rows saying why (the sweep
    exits 1); re-running the sweep re-runs them, resuming from their checkpoints."""
    from expkit.runner import SUMMARY, _write_json

    msg = f"launcher lost this job: {type(ex).__name__}: {(str(ex).splitlines() or [''])[0][:200]}"
    log.error("%s (jobs %s)", msg, ", ".join(name for _, name, *_ in batch))
    for overrides, name, config, *_ in batch:
        job_dir = sweep_dir / name
        if not (job_dir / SUMMARY).exists():
            (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
            if config is not None and not (job_dir / ".hydra" / "config.yaml").exists():  # so a re-run finds this job by its config
                OmegaConf.save(config, job_dir / ".hydra" / "config.yaml")
            task = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
            _write_json(job_dir / SUMMARY, {"status": "failed", "error": msg, "overrides": task})
