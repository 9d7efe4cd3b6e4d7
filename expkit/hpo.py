"""An Optuna trial seen from its runs (expkit's optuna sweeper writes TRIAL_FILE into each run dir of
a trial): report the validation accuracy after every epoch, stop the runs when the pruner says.

A trial is one run, or, with `hydra.sweeper.seeds=N`, N runs (seeds 1..N, each in its own run dir).
The trial's report for an epoch is the mean val accuracy of its seeds at that epoch, made once all of
them have the epoch, and the pruner is asked once per report:

- **Fused** (the seeds train in one group, as they do when they fuse: they differ only in seed): the
  trainer runs every member's callbacks for an epoch in one loop iteration, in member order. Each
  seed records its value in this process; the trial's last seed in that order reports the mean to
  the study and asks the pruner. A verdict reached there stops every seed after the *next* epoch
  (the earlier seeds' callbacks for this epoch have already returned), so a trial's seeds stop
  together, at the same epoch. A one-seed trial stops at once.
- **Apart** (seeds in separate processes: not fused, or split over groups): each seed records its
  value in the study (a trial user attribute per seed), and each seed's report re-reports the trial's
  value for that epoch as the mean over the seeds that have it so far (the value is overwritten as
  seeds arrive; the pruner is asked each time). A verdict stops every seed at its next callback, so
  seeds that run ahead of the others may have trained further.

A seed that diverges, stops early or reaches its last epoch leaves the mean from the next epoch on.
The trial's objective (optuna_sweeper._tell) is the mean over its seeds of their best val accuracy.

A pruner with `judge(study, number, step, epochs, pending_here)` (expkit.halving.SyncHalvingPruner)
is asked through that, so that it knows which trials of this process still report this epoch (it
never waits for them: they report after it, in this loop iteration); `eliminated(study, number)` lets
it stop a trial whose rung was decided after its report. Any other Optuna pruner gets `prune(study,
frozen_trial)`, as `trial.should_prune()` calls it.
"""
import json
import logging
import math
import time
from pathlib import Path

log = logging.getLogger(__name__)
TRIAL_FILE = "optuna_trial.json"
STOP = "expkit_stop_after"       # trial user attr: every seed stops after this epoch (the trial's verdict)
VALUES = "expkit_val_seed{}"     # trial user attr: {epoch: val acc} of one seed (trials of several seeds)
END = "expkit_end_seed{}"        # trial user attr: the epoch after which that seed stopped on its own
STARTED = "expkit_started_seed{}"  # trial user attr: when that seed's run started training (progress marker)
SEEDS = "expkit_seeds"           # trial user attr: the trial's seeds (trials of several seeds)
# the settings of expkit's default pruner (MedianPruner, OptunaSweeperConf) that a preset's or the command
# line's pruner of another kind inherits when Hydra merges its `_target_` into the default's dict
MEDIAN_DEFAULTS = ("n_startup_trials", "n_warmup_steps")
SUMMARY = "summary.json"         # a run's summary (expkit.runner.SUMMARY; the runner imports this module)

_STUDIES = {}  # (storage, study name, pruner spec) -> (study, pruner): one per process
_LOCAL = []    # this process's trial members of the group in training, in member order


def pruning_callback(run_dir):
    """A trainer callback for this run's trial, or None when the run is not a trial."""
    path = Path(run_dir) / TRIAL_FILE
    if not path.exists():
        return None
    return TrialMember(Path(run_dir), json.loads(path.read_text()))


def pruner_spec(spec):
    """A pruner spec without the settings of expkit's default MedianPruner that a pruner of another kind
    inherited (Hydra merges a new `_target_` into the default's dict) and does not take."""
    import inspect

    from hydra.utils import get_class

    if not spec:
        return spec
    spec = dict(spec)
    try:
        params = inspect.signature(get_class(spec["_target_"])).parameters
    except Exception:  # instantiate reports it
        return spec
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        for key in MEDIAN_DEFAULTS:
            if key in spec and key not in params:
                del spec[key]
    return spec


def build_pruner(spec):
    """The pruner of a trial file's spec (pruner_spec); None/empty: NopPruner."""
    import optuna
    from hydra.utils import instantiate

    return instantiate(pruner_spec(spec)) if spec else optuna.pruners.NopPruner()


def sampler_spec(spec, space):
    """The sampler spec; Optuna's GridSampler becomes expkit.halving.GridSampler (the same, for ask-and-tell)
    and, without a search_space, searches the grid of the sweep's params (every searched key a choice)."""
    if not spec or not str(spec.get("_target_", "")).endswith("GridSampler"):
        return spec
    if spec.get("search_space"):
        return dict(spec, _target_="expkit.halving.GridSampler")
    from optuna.distributions import CategoricalDistribution

    from expkit.errors import UserError

    grid = {}
    for key, dist in space.items():
        if not isinstance(dist, CategoricalDistribution):
            raise UserError(f"GridSampler searches a grid: {key} must be choice(...) or a comma list, not {dist}")
        grid[key] = list(dist.choices)
    return dict(spec, search_space=grid, _target_="expkit.halving.GridSampler")


def check_seeds(seeds, space, fixed):
    """hydra.sweeper.seeds=N sets each run's seed (1..N): the seed is then neither searched nor given."""
    if seeds > 1 and ("seed" in space or any(o.partition("=")[0].lstrip("+~") == "seed" for o in fixed)):
        from expkit.errors import UserError

        raise UserError(f"hydra.sweeper.seeds={seeds} runs each trial with seeds 1..{seeds}: leave seed out of the "
                        "search and the command line")


def trial_outcome(dirs):
    """A trial's outcome from its runs' summary.json: {status, value, value_std, seed_values, error}.
    Every run completed: completed, value = the mean of their best val accuracies (std: sample std, ddof 1,
    with two or more); else the first of failed (also a missing or unreadable summary, or any other status),
    diverged, pruned that a run has, with the error of a failed one."""
    summaries = []
    for d in dirs:
        path = Path(d) / SUMMARY
        try:
            summaries.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            summaries.append({"status": "failed", "error": f"no readable {path}"})
    statuses = [s.get("status") for s in summaries]
    out = {"status": None, "value": None, "value_std": None, "seed_values": None, "error": None}
    if all(st == "completed" for st in statuses):
        values = [float(s["best"]["val_acc"]) for s in summaries]
        mean = sum(values) / len(values)
        out.update(status="completed", value=mean)
        if len(values) > 1:
            out.update(value_std=math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)),
                       seed_values=values)
        return out
    if len(statuses) == 1:
        out["status"] = statuses[0] or "failed"
    elif any(st not in ("completed", "diverged", "pruned") for st in statuses):
        out["status"] = "failed"
    else:
        out["status"] = "diverged" if "diverged" in statuses else "pruned"
    errors = [s.get("error") for s in summaries if s.get("error")]
    out["error"] = str(errors[0])[:500] if errors else None
    return out


def _study(spec):
    import optuna

    key = (spec["storage"], spec["study_name"], json.dumps(spec.get("pruner"), sort_keys=True, default=str))
    if key not in _STUDIES:
        quiet_optuna()
        pruner = build_pruner(spec.get("pruner"))
        study = optuna.load_study(study_name=spec["study_name"], storage=spec["storage"], pruner=pruner)
        _STUDIES[key] = (study, pruner)
    return _STUDIES[key]


def retry(fn, *args, tries=20):
    """A storage call, again while SQLite says another process holds the lock."""
    for k in range(tries):
        try:
            return fn(*args)
        except Exception as ex:  # sqlalchemy's OperationalError: database is locked
            if "locked" not in str(ex).lower() or k == tries - 1:
                raise
            time.sleep(0.05 * (k + 1))


def _finite(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _run_settings(run_dir):
    """(trainer.epochs, early-stop patience, min_delta) of a member's config (.hydra/config.yaml)."""
    import yaml

    try:
        trainer = (yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text()) or {}).get("trainer") or {}
    except (OSError, yaml.YAMLError):
        trainer = {}
    es = trainer.get("early_stop") or {}
    epochs = trainer.get("epochs")
    return (int(epochs) if isinstance(epochs, int) else None, int(es.get("patience") or 0),
            float(es.get("min_delta", 1e-4) or 0.0))


def seed_values(attrs, seed):
    """{epoch: val acc} a seed recorded in its trial's user attrs."""
    return {int(k): v for k, v in (attrs.get(VALUES.format(seed)) or {}).items()}


class TrialMember:
    """One run of a trial, as a trainer callback: called with each epoch's row, returns "pruned" to stop."""

    def __init__(self, run_dir, spec):
        self.study, self.pruner = _study(spec)
        self.storage = self.study._storage
        self.trial_id, self.number = spec["trial_id"], spec["number"]
        self.seed = spec.get("seed")
        self.seeds = list(spec.get("seeds") or [self.seed])
        self.epochs, self.patience, self.min_delta = _run_settings(run_dir)
        self.values = {}       # epoch -> val acc
        self.returned = 0      # the last epoch whose callback returned
        self.ended = None      # the epoch after which this member stops (its own reason or the verdict)
        self.best_loss, self.bad = math.inf, 0
        self.t_last = time.monotonic()
        self.epoch_s = 0.0     # wall seconds of this member's last epoch (its group's epoch)
        if any(m.returned for m in _LOCAL):  # the members of an earlier group trained in this process
            _LOCAL.clear()
        _LOCAL.append(self)
        retry(self.storage.set_trial_user_attr, self.trial_id, STARTED.format(self.seed), time.time())
        if len(self.seeds) > 1:
            retry(self.storage.set_trial_user_attr, self.trial_id, SEEDS, self.seeds)

    # ---- this process's members ----

    def co_seeds(self):
        return [m for m in _LOCAL if m.trial_id == self.trial_id and m is not self]

    def _gone(self, m, epoch):
        """Whether local member m will not report `epoch` (it stopped before it). Members before this one
        in member order that have not returned this epoch are no longer trained (callbacks run in order)."""
        if m.ended is not None and m.ended < epoch:
            return True
        if m.returned < epoch - 1:
            return True  # it skipped an epoch: it left the group
        return m.returned < epoch and _LOCAL.index(m) < _LOCAL.index(self)

    def pending_here(self, epoch):
        """Numbers of the other trials of this process that still report `epoch` in this loop iteration."""
        return {m.number for m in _LOCAL if m.trial_id != self.trial_id and m.returned < epoch
                and not self._gone(m, epoch)}

    # ---- the callback ----

    def __call__(self, row):
        epoch = int(row["epoch"])
        now = time.monotonic()
        self.epoch_s, self.t_last = now - self.t_last, now
        try:
            stop = self._epoch(epoch, row)
        except Exception as ex:  # the study's storage or the pruner failed: the run trains on, unpruned
            log.warning("optuna trial %d: reporting epoch %d failed (%s: %s); this run trains on without pruning",
                        self.number, epoch, type(ex).__name__, ex)
            stop = False
        finally:
            self.returned = epoch
        if stop:
            self.ended = epoch
        return "pruned" if stop else None

    def settle(self, epoch):
        """After every member of the group reported `epoch` (the trainer asks): "pruned" when a verdict on this
        trial was reached since its own report (a rung the group's last member decided), else None."""
        if self.ended is not None or self.returned != epoch:
            return None
        try:
            after = retry(self.storage.get_trial, self.trial_id).user_attrs.get(STOP)
            if after is not None:
                stop = epoch >= int(after)
            else:  # this trial's seeds of this process all stand at `epoch` now: they all stop here
                eliminated = getattr(self.pruner, "eliminated", None)
                stop = bool(eliminated and eliminated(self.study, self.number, epoch, self.epochs))
                if stop:
                    retry(self.storage.set_trial_user_attr, self.trial_id, STOP, epoch)
                    log.info("optuna trial %d: pruned at epoch %d (its rung was decided after its report)",
                             self.number, epoch)
        except Exception as ex:  # as in __call__: the run trains on, unpruned
            log.warning("optuna trial %d: checking epoch %d's verdict failed (%s: %s)", self.number, epoch,
                        type(ex).__name__, ex)
            return None
        if stop:
            self.ended = epoch
        return "pruned" if stop else None

    def _own_end(self, epoch, row):
        """Whether this member stops after this epoch for its own reasons (the trainer's rules)."""
        if self.epochs is not None and epoch >= self.epochs:
            return True
        if _finite(row.get("train_loss")) is None:
            return True  # diverged
        loss = _finite(row.get("val_loss"))
        if loss is not None:
            self.bad = self.bad + 1 if loss > self.best_loss - self.min_delta else 0
            self.best_loss = min(self.best_loss, loss)
        return bool(self.patience and self.bad >= self.patience)

    def _epoch(self, epoch, row):
        value = _finite(row.get("val_acc"))
        several = len(self.seeds) > 1
        if value is not None:
            self.values[epoch] = value
            if several:  # for the seeds that train in other processes
                retry(self.storage.set_trial_user_attr, self.trial_id, VALUES.format(self.seed),
                      {str(k): v for k, v in self.values.items()})
        if self._own_end(epoch, row):
            self.ended = epoch
            retry(self.storage.set_trial_user_attr, self.trial_id, END.format(self.seed), epoch)
        attrs = retry(self.storage.get_trial, self.trial_id).user_attrs
        mean = self._trial_value(epoch, attrs)
        if mean is not None:  # every epoch trained is reported, the one a verdict stops it after too
            retry(self.storage.set_trial_intermediate_value, self.trial_id, epoch, mean)
        if self._verdict(epoch, attrs):
            return True
        if mean is None or (self.epochs is not None and epoch >= self.epochs):
            return False  # not this member's report to judge; or its last epoch: nothing left to save
        if not self._ask(epoch):
            return False
        return self._stop_trial(epoch)

    def _stop_trial(self, epoch):
        """The trial's verdict: every seed stops after this epoch, or after the next one when a seed of it in
        this process has already passed this epoch (so that they stop together)."""
        after = epoch + 1 if any(m.returned >= epoch for m in self.co_seeds()) else epoch
        retry(self.storage.set_trial_user_attr, self.trial_id, STOP, after)
        log.info("optuna trial %d: pruned at epoch %d%s", self.number, epoch,
                 "" if after == epoch else f" (its seeds stop together after epoch {after})")
        return after <= epoch

    def _verdict(self, epoch, attrs):
        """A verdict reached earlier: the trial's (another seed's report), or a rung decided since (halving)."""
        after = attrs.get(STOP)
        if after is not None:
            return epoch >= int(after)
        eliminated = getattr(self.pruner, "eliminated", None)
        if eliminated is not None and eliminated(self.study, self.number, epoch, self.epochs):
            return self._stop_trial(epoch)
        return False

    def _trial_value(self, epoch, attrs):
        """The trial's value at this epoch, the mean over its seeds that have it, or None when a seed of it
        in this process still reports this epoch (it reports the trial then)."""
        if len(self.seeds) == 1:
            return self.values.get(epoch)
        local = {m.seed: m for m in _LOCAL if m.trial_id == self.trial_id}
        values = []
        for s in self.seeds:
            m = local.get(s)
            if m is not None:
                if epoch in m.values:
                    values.append(m.values[epoch])
                elif m is not self and not self._gone(m, epoch) and m.returned < epoch:
                    return None  # it reports after this one, in this loop iteration
                continue
            theirs = seed_values(attrs, s)
            if epoch in theirs and _finite(theirs[epoch]) is not None:
                values.append(float(theirs[epoch]))
        return sum(values) / len(values) if values else None

    def _ask(self, epoch):
        judge = getattr(self.pruner, "judge", None)
        if judge is not None:
            return bool(judge(self.study, self.number, epoch, epochs=self.epochs,
                              pending_here=self.pending_here(epoch), epoch_s=self.epoch_s))
        return bool(self.pruner.prune(self.study, retry(self.storage.get_trial, self.trial_id)))


def trial_state(trial, epoch):
    """How a trial (FrozenTrial) stands at an epoch, for a pruner over the study: (value, final, ended).
    value: its report for that epoch (None without one); final: the report holds every seed that trains
    that epoch (one seed: it exists); ended: without a report there, it will not make one (it finished,
    a verdict stopped it, or every seed stopped before that epoch)."""
    attrs = trial.user_attrs
    value = trial.intermediate_values.get(epoch)
    seeds = attrs.get(SEEDS) or [None]
    ends = [attrs.get(END.format(s)) for s in seeds]
    if value is None:
        after = attrs.get(STOP)
        ended = (trial.state.is_finished() or (after is not None and int(after) <= epoch)
                 or all(e is not None and int(e) < epoch for e in ends))
        return None, False, ended
    if len(seeds) == 1 or trial.state.is_finished():
        return value, True, False
    final = all(epoch in seed_values(attrs, s) or (e is not None and int(e) < epoch) for s, e in zip(seeds, ends))
    return value, final, False


def quiet_optuna():
    """Optuna's messages through expkit's logging (plain lines, no colour codes in log files); no
    alembic set-up chatter from the sqlite storage. Used by the trial's run and by expkit's optuna
    sweeper (which imports it from here: the core never imports the plugins)."""
    import logging

    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    logging.getLogger("alembic").setLevel(logging.WARNING)
