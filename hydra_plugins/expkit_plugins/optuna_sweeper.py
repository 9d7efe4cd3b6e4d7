"""expkit's Optuna sweeper (optuna >= 3): ask a batch of trials, run them as jobs, tell the results.

    python train.py -m experiment=hpo/mlp_lr_width [hydra.sweeper.n_trials=40]
        [hydra.sweeper.storage=sqlite:///study.db hydra.sweeper.study_name=NAME]

The search space is `hydra.sweeper.params`, in Hydra's sweep syntax: `interval(a, b)` (a float,
`tag(log, interval(a, b))` on a log scale, int bounds give an int), `choice(a, b, ...)` or a
comma list, `range(a, b[, step])`. A key given on the command line replaces the preset's.

The study lives in `storage` (default: sqlite `optuna.db` in the sweep dir) under `study_name`
(default: the run's `name`); `n_trials` is the study's total, so running again with a larger
n_trials adds the difference. Each trial is a normal run dir (`trial_<number>`), whose
`optuna_trial.json` lets the run report its validation accuracy after every epoch
(expkit/hpo.py) and stop when the pruner says so (MedianPruner by default; `pruner: null` off).
The objective is the run's best validation accuracy (the test set never steers the search); a
failed or diverged run is a FAIL trial, and the search goes on. The sweep dir gets the usual
results table, `optuna_trials.csv` (every trial of the study, with its state) and
`optimization_results.yaml` (the best params and value).

`hydra.sweeper.fuse=true` (or the `hydra/launcher=fused` shorthand) fuses each batch of n_jobs
trials as the grid sweeper fuses its batches (fusing.launch_batch): trials that differ only in seed,
lr, weight decay or momentum train as one group job (at most `max_group` each), every trial still in
its own run dir with its trial file, reporting to and told from its own summary.json.

`hydra.sweeper.seeds=N` makes each trial N runs, seeds 1..N, in dirs `trial_<n>_seed<s>` (fused by
default: a trial's seeds differ only in seed); the trial's objective is the mean of their best val
accuracies (optuna_trials.csv: value, value_std, seed_values), and a pruner sees the seeds' mean once
per epoch and stops them together (expkit/hpo.py says how, fused and apart). A GridSampler without a
search_space searches the grid of `params` (every key a choice); expkit.halving.SyncHalvingPruner is
synchronous successive halving over fused groups (the hpo/grid_halving preset).
"""
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

from expkit.errors import UserError
from expkit.hpo import TRIAL_FILE, check_seeds, pruner_spec, quiet_optuna, sampler_spec, trial_outcome
from hydra_plugins.expkit_plugins.fusing import fuses, launch_batch
from hydra_plugins.expkit_plugins.sweeper import _key, declare_job_counter, job_counter, record_lost_jobs, value_str

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.expkit_plugins.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False         # sampler and pruner are built in sweep(): a resumed study re-seeds its sampler
    direction: str = "maximize"      # of the objective, the best validation accuracy: only maximize makes sense
    study_name: Optional[str] = None  # default: the run's `name`
    storage: Optional[str] = None     # default: sqlite:///<sweep dir>/optuna.db
    n_trials: int = 20                # the study's total, trials from earlier sweeps included
    n_jobs: int = 1                   # trials asked and launched together (in parallel with hydra/launcher=joblib)
    fuse: Optional[bool] = None       # a batch's trials that differ only in seed/lr/wd/momentum train as one group
                                      # job; default (null): only with seeds > 1 (a trial's seeds fuse)
    max_group: Optional[int] = None   # trials per group (default: no bound; with GPUs, every GPU gets a group)
    seeds: int = 1                    # runs per trial, seeds 1..N (each its own run dir); objective: their mean
    sampler: Optional[Dict[str, Any]] = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    pruner: Optional[Dict[str, Any]] = field(  # null: no pruning
        default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5,
                                 "n_warmup_steps": 2})
    params: Dict[str, str] = field(default_factory=dict)


def store_config():
    ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="expkit")


store_config()


def distributions(params: Dict[str, str], arguments: List[str], parser):
    """({key: optuna distribution}, fixed overrides): the preset's space, the command line on top.
    A key given on the command line (with or without +/++) replaces the preset's search over it."""
    import optuna.distributions as D
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    space, fixed = {}, []
    parsed = [parser.parse_overrides([f"{k}={v}"])[0] for k, v in params.items()]
    cmd = parser.parse_overrides(list(arguments))
    given = {_key(o): o for o in cmd}
    for o in parsed:
        if _key(o) in given:
            log.info("command line replaces the preset's search over %s (%s) with %s", _key(o),
                     o.input_line.partition("=")[2], given[_key(o)].input_line)
    for o in [o for o in parsed if _key(o) not in given] + cmd:
        key, v = _key(o), o.value()
        if not o.is_sweep_override():
            fixed.append(o.input_line)
            continue
        if isinstance(v, IntervalSweep):
            log_scale = "log" in v.tags
            if isinstance(v.start, int) and isinstance(v.end, int):
                space[key] = D.IntDistribution(v.start, v.end, log=log_scale)
            else:
                space[key] = D.FloatDistribution(float(v.start), float(v.end), log=log_scale)
        elif isinstance(v, RangeSweep):
            values = list(o.sweep_iterator())
            if not values:
                raise UserError(f"{o.input_line}: an empty range")
            if all(isinstance(x, int) for x in values):
                space[key] = D.IntDistribution(values[0], values[-1], step=int(v.step))
            else:
                space[key] = D.CategoricalDistribution(values)
        elif isinstance(v, ChoiceSweep) or o.is_discrete_sweep():
            space[key] = D.CategoricalDistribution(list(o.sweep_iterator()))
        else:
            raise UserError(f"{o.input_line}: the optuna sweeper takes interval(), choice(), range() or a,b,c")
    if not space:
        raise UserError("the optuna sweeper has nothing to search: set hydra.sweeper.params (e.g. "
                        "optim.lr: tag(log, interval(1e-5, 1))) or give a choice on the command line")
    return space, fixed


class OptunaSweeper(Sweeper):
    def __init__(self, direction="maximize", study_name=None, storage=None, n_trials=20, n_jobs=1,
                 sampler=None, pruner=None, params=None, fuse=False, max_group=None, seeds=1):
        if seeds < 1:
            raise UserError(f"hydra.sweeper.seeds must be >= 1 (runs per trial, seeds 1..N), got {seeds}")
        self.seeds = int(seeds)
        if direction != "maximize":
            raise UserError(f"hydra.sweeper.direction={direction}: the objective is the best validation "
                            "accuracy, so only maximize is meaningful")
        if n_trials < 1 or n_jobs < 1:
            raise UserError(f"hydra.sweeper.n_trials ({n_trials}) and n_jobs ({n_jobs}) must be >= 1")
        if max_group is not None and max_group < 1:
            raise UserError(f"hydra.sweeper.max_group must be >= 1, got {max_group}")
        self.fuse, self.max_group = (self.seeds > 1 if fuse is None else fuse), max_group
        self.study_name, self.storage, self.n_trials, self.n_jobs = study_name, storage, n_trials, n_jobs
        self.sampler = OmegaConf.to_container(sampler) if sampler is not None else None
        self.pruner = pruner_spec(OmegaConf.to_container(pruner)) if pruner is not None else None
        self.params = dict(params or {})

    def setup(self, *, hydra_context, task_function, config):
        try:
            import optuna
        except ImportError:
            raise UserError("the optuna sweeper needs optuna >= 3: pip install 'expkit[hpo]'") from None
        if int(optuna.__version__.split(".")[0]) < 3:
            raise UserError(f"optuna {optuna.__version__} is installed; expkit's sweeper needs optuna >= 3: "
                            "pip install -U 'optuna>=3'")
        quiet_optuna()
        self.hydra_context, self.config = hydra_context, config
        declare_job_counter(config)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        self.fuse = fuses(self.launcher, self.fuse)
        __import__("expkit.scheduler").scheduler.watch_slurm_jobs(config.hydra.launcher.get("_target_"))

    def sweep(self, arguments: List[str]) -> Any:
        import optuna
        from hydra.utils import instantiate

        from expkit.session import mark_failed_jobs, preview_requested

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space, fixed = distributions(self.params, arguments, parser)
        check_seeds(self.seeds, space, fixed)  # seeds=N sets each run's seed: none searched or given
        # a searched key as the command line gave it (++key=choice(..) searches key, set by ++key=v)
        self.as_given = {_key(o): o.get_key_element() for o in parser.parse_overrides(list(arguments))}
        self._check_composes(fixed, space)  # a typo'd key or option: one line now, not n failed trials
        sweep_dir = Path(self.config.hydra.sweep.dir)
        if preview_requested():
            self._preview(space, fixed, sweep_dir)
            return []
        new_dir = not sweep_dir.exists()
        sweep_dir.mkdir(parents=True, exist_ok=True)  # the default storage lives in it
        storage = self.storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
        if storage.startswith("sqlite:///"):  # absolute: every job, wherever it runs, reports to this file
            storage = f"sqlite:///{Path(storage[len('sqlite:///'):]).resolve()}"
        name = self.study_name or self.config.get("name", "expkit")
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
        earlier = len(study.trials)
        try:
            _check_space(study, space, storage)
        except UserError:
            if new_dir and not any(sweep_dir.iterdir()):  # nothing of this sweep was written: leave no dir
                sweep_dir.rmdir()
            raise
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        sampler = sampler_spec(self.sampler, space)  # a GridSampler without search_space: the params' grid
        if sampler and sampler.get("seed") is not None and earlier:  # a resumed study must not redraw its trials
            sampler = dict(sampler, seed=int(sampler["seed"]) + earlier)
            log.info("sampler seed %s + %d earlier trials = %d (a resumed study draws new trials)",
                     self.sampler["seed"], earlier, sampler["seed"])
        study.sampler = instantiate(sampler) if sampler else optuna.samplers.TPESampler()
        finished = sum(t.state.is_finished() for t in study.trials)
        todo = max(0, self.n_trials - finished)
        log.info("optuna study %r in %s: %d trial(s) finished, %d to run (n_trials=%d total); searching %s",
                 name, storage, finished, todo, self.n_trials, ", ".join(space))
        failed, launched, returns, told = 0, 0, [], set()
        while launched < todo:
            batch = []
            try:
                for _ in range(min(self.n_jobs, todo - launched)):
                    batch.append(study.ask(space))
                returns.append(self._launch(batch, fixed, storage, name, sweep_dir, launched, todo))
                for trial in batch:
                    failed += _tell(study, trial)
                    told.add(trial.number)
            finally:  # an error here (e.g. the sampler's) must not leave trials RUNNING in the study for ever
                for trial in batch:
                    if trial.number not in told:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
            launched += len(batch)
        _write_results(study, sweep_dir)
        from expkit.report.choice import close_sweep  # best.json, outputs/<name>/latest, the command to resume

        print(close_sweep(sweep_dir), flush=True)
        mark_failed_jobs(failed)
        return returns

    def _check_composes(self, fixed, space):
        """Compose the search's corners (each choice; an interval's low end) before any trial exists."""
        from optuna.distributions import CategoricalDistribution

        from expkit.session import one_line

        base = {k: d.choices[0] if isinstance(d, CategoricalDistribution) else d.low for k, d in space.items()}
        probes = [base] + [dict(base, **{k: c}) for k, d in space.items()
                           if isinstance(d, CategoricalDistribution) for c in d.choices[1:]]
        for probe in probes:
            job = fixed + self._assignments(probe)
            try:
                self.hydra_context.config_loader.load_sweep_config(self.config, job)
            except Exception as ex:
                raise UserError(f"the search does not compose ({' '.join(job)}): {one_line(ex)}") from None

    def _assignments(self, params):
        """A trial's (or a probe's) values as overrides, each key with the +/++ it was given."""
        return [f"{self.as_given.get(k, k)}={value_str(v)}" for k, v in params.items()]

    def _preview(self, space, fixed, sweep_dir):
        """`-m ... --cfg job`: the search this sweep would run, not its trials (Optuna picks them)."""
        storage = self.storage or f"sqlite:///{sweep_dir / 'optuna.db'} (default: in the sweep dir)"
        name = self.study_name or self.config.get("name", "expkit")

        def built(spec):
            if not spec:
                return "none"
            args = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "_target_")
            return f"{str(spec.get('_target_', '?')).rpartition('.')[2]}({args})"

        print(f"\noptuna search preview (nothing runs, nothing is written): {sweep_dir}\n"
              f"study {name!r} in {storage}: n_trials={self.n_trials} in total (trials already in the study "
              f"count), {self.n_jobs} asked at a time\nsearch space (maximize the best epoch's val accuracy):")
        for key, dist in space.items():
            print(f"  {key}: {describe(dist)}")
        print(f"fixed: {' '.join(fixed) or '-'}\nsampler: {built(self.sampler)}\npruner: {built(self.pruner)}")
        print("fused: " + (f"each batch of {self.n_jobs} trial(s), groups of at most {self.max_group or 'any size'}"
                           if self.fuse else "no (hydra.sweeper.fuse=true fuses each batch's fusible trials)"))

    def _pruner_for_launcher(self):
        """The pruner spec the trials get. Synchronous halving under a launcher that runs its jobs one after
        another (basic, fused) has nobody to wait for: a rung is decided over the groups that reached it (the
        later ones are judged against its cutoff), where it waited stall_s (120 s) at every rung before."""
        spec = self.pruner
        target = str(self.config.hydra.launcher.get("_target_", ""))
        sequential = target.endswith(("BasicLauncher", "FusedLauncher"))
        if spec and sequential and str(spec.get("_target_", "")).endswith("SyncHalvingPruner") \
                and "stall_s" not in spec:
            if not getattr(self, "_said_sequential", False):
                log.info("halving: this launcher trains the groups one after another, so each rung is decided "
                         "over the groups that reached it first (asynchronous, in effect); a joblib worker per "
                         "group makes it synchronous")
                self._said_sequential = True
            spec = {**spec, "stall_s": 0.0}
        return spec

    def _launch(self, batch, fixed, storage, name, sweep_dir, launched, todo):
        """Run a batch of asked trials as jobs, each in its own run dir with its trial file."""
        jobs, names = [], []
        seeds = list(range(1, self.seeds + 1)) if self.seeds > 1 else [None]  # seeds=N: N runs per trial
        pruner = self._pruner_for_launcher()
        for trial in batch:
            dirs = []
            for seed in seeds:
                job_dir = _free_dir(sweep_dir, f"trial_{trial.number}" + (f"_seed{seed}" if seed else ""))
                job_dir.mkdir(parents=True)
                spec = {"storage": storage, "study_name": name, "number": trial.number,
                        "trial_id": trial._trial_id, "pruner": pruner}  # optuna.trial.Trial(study, trial_id)
                spec.update({"seed": seed, "seeds": seeds} if seed else {})
                (job_dir / TRIAL_FILE).write_text(json.dumps(spec, indent=2))
                dirs.append(str(job_dir.resolve()))
                names.append(job_dir.name)
                jobs.append(fixed + self._assignments(trial.params) + ([f"seed={seed}"] if seed else []) +
                            [f"hydra.sweep.subdir={job_dir.name}",
                             job_counter(launched * len(seeds) + len(jobs) + 1, todo * len(seeds))])
            trial.set_user_attr("dir", dirs[0])
            if seeds[0]:
                trial.set_user_attr("dirs", dirs)
        try:  # fused or not, as the grid sweeper's batches (a trial's seeds fuse: they differ only in seed)
            return launch_batch(self, jobs, launched * len(seeds))
        except Exception as ex:  # the launcher itself died: those trials fail, the study goes on
            record_lost_jobs(sweep_dir, [(j, n, None) for j, n in zip(jobs, names)], ex)
            return None


def describe(dist):
    """An Optuna distribution in words: 'float in [1e-05, 1.0], log scale', 'one of 8, 16'."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return "one of " + ", ".join(map(str, dist.choices))
    kind = "int" if type(dist).__name__.startswith("Int") else "float"
    step = f", step {dist.step}" if getattr(dist, "step", None) not in (None, 1) else ""
    return f"{kind} in [{dist.low}, {dist.high}]" + (", log scale" if dist.log else "") + step


def _check_space(study, space, storage):
    """A resumed study keeps its search space: Optuna refuses a changed choice list or scale mid-study."""
    from optuna.distributions import check_distribution_compatibility

    for t in study.trials:
        for key, dist in space.items():
            if key in t.distributions:
                try:
                    check_distribution_compatibility(t.distributions[key], dist)
                except ValueError:
                    raise UserError(
                        f"study {study.study_name!r} in {storage} searched {key} over {t.distributions[key]}; "
                        f"this sweep asks {dist}: keep the study's space, or start a new study "
                        f"(hydra.sweeper.study_name=NEW)") from None


def _free_dir(sweep_dir: Path, name: str) -> Path:
    """trial_<n>, or trial_<n>-2, ... when another study left that dir here: never written into."""
    d, k = sweep_dir / name, 1
    while d.exists():
        k += 1
        d = sweep_dir / f"{name}-{k}"
    return d


def _tell(study, trial):
    """Tell Optuna a trial's outcome from its runs' summary.json (seeds=N: the mean of their best val
    accuracies, expkit.hpo.trial_outcome); 1 if it failed."""
    import optuna

    summary = trial_outcome(trial.user_attrs.get("dirs") or [trial.user_attrs.get("dir", "")])
    status = summary.get("status")
    for key in ("status", "value_std", "seed_values"):
        if summary.get(key) is not None:
            trial.set_user_attr(key, summary[key])
    if status == "completed":
        study.tell(trial, summary["value"])
        return 0
    if status == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return 0
    if summary.get("error"):
        trial.set_user_attr("error", str(summary["error"])[:500])
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # diverged or failed: no value to learn from
    return int(status != "diverged")


def _write_results(study, sweep_dir: Path):
    """The sweep's results table and plots, the study's trials and its best params; print both."""
    import pandas as pd
    import yaml

    from expkit.cache import atomic_write
    from expkit.report.aggregate import build_report
    from expkit.report.tables import terminal_table

    table = build_report(sweep_dir)
    rows = [{"trial": t.number, "state": t.state.name.lower(), "value": t.value, **t.params,
             **({"value_std": t.user_attrs.get("value_std"), "seed_values": t.user_attrs.get("seed_values")}
                if any("seed_values" in u.user_attrs for u in study.trials) else {}),  # seeds=N: mean and std
             "status": t.user_attrs.get("status"), "dir": t.user_attrs.get("dir"),
             "error": t.user_attrs.get("error")} for t in study.trials]
    trials = pd.DataFrame(rows)
    atomic_write(sweep_dir / "optuna_trials.csv", lambda tmp: trials.to_csv(tmp, index=False))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    counts = ", ".join(f"{n} {s}" for s, n in trials.state.value_counts().items())
    print(f"\n{sweep_dir}\n{terminal_table(table)}\n", flush=True)
    if not done:
        log.warning("optuna study %r: %d trial(s) (%s), none completed: no best params", study.study_name,
                    len(trials), counts)
        return
    best = study.best_trial
    result = {"name": "optuna", "study_name": study.study_name, "best_trial": best.number,
              "best_params": dict(best.params), "best_value": best.value, "n_trials": len(trials),
              "states": dict(trials.state.value_counts()), "best_dir": best.user_attrs.get("dir")}
    atomic_write(sweep_dir / "optimization_results.yaml",
                 lambda tmp: tmp.write_text(yaml.safe_dump(json.loads(json.dumps(result, default=int)),
                                                          sort_keys=False)))
    params = " ".join(f"{k}={v}" for k, v in best.params.items())
    print(f"optuna study {study.study_name!r}: {len(trials)} trial(s) ({counts}); best trial {best.number}: {params}, "
          f"best-epoch val_acc {best.value:.4f}"
          + (f" ± {best.user_attrs['value_std']:.4f} (mean over {len(best.user_attrs['seed_values'])} seeds)"
             if best.user_attrs.get("value_std") is not None else "")
          + " (the objective; the table above shows final epochs)\n"
          f"every trial: {sweep_dir / 'optuna_trials.csv'}", flush=True)

