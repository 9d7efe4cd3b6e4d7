"""Synchronous successive halving over the trials of a study, for fused groups (expkit's Optuna sweeper).

    hydra.sweeper.pruner: {_target_: expkit.halving.SyncHalvingPruner, reduction_factor: 3, min_resource: 1}

Rungs are at epochs min_resource * reduction_factor**k below the runs' trainer.epochs (1, 3 for 9
epochs; the last epoch is not a rung: nothing is left to save there). At a rung, every trial that
reached it reports (its val accuracy there; a trial of several seeds: their mean) before any is
judged; then the best 1/reduction_factor of them (at least one; ties go to the lower trial number) go
on and the others stop, whatever the order of members inside a stack or of groups across workers.
A trial "reached" a rung when it went on at every earlier rung and has not failed, diverged or
stopped before it. Optuna's SuccessiveHalvingPruner promotes the first to arrive instead
(asynchronous); this rule is decided over the study's reports, and each rung's decision is stored in
the study (user attr `expkit_halving_rung<epoch>`: who was judged, who went on, the cutoff).

How the reports come in, and who decides:
- Members of one fused group run their epoch callbacks one after another in one loop iteration, so a
  member cannot wait for the members after it. A member judged while trials of its own process have
  still to report the rung is *deferred*: it goes on for now; the last member of the process to report
  decides, and once every member reported the epoch the trainer asks each again (TrialMember.settle), so
  a pruned member stops at its rung wherever it stands in its group.
- Groups in other processes (joblib, SLURM): the deciding member waits, polling the study storage,
  while the study makes progress (any report or start marker); after `stall_s` seconds (at least 5 of
  its own epochs) without any, it decides over the reports that are in and says which trials were
  missing. A trial reporting a decided rung later is judged against the rung's cutoff (it goes on if
  it would have been among the promoted). So synchronous halving needs the rung's trials to train at
  the same time: a batch of trials asked together (n_jobs) and enough workers for its groups; with the
  basic launcher the groups train one after another: expkit's Optuna sweeper then sets stall_s=0, so
  the first decides each rung at once over the trials that reported and the later ones are judged
  against its cutoffs (asynchronous halving, in effect; it says so in the log).
"""
import logging
import time

import optuna

from expkit.hpo import retry, trial_state

log = logging.getLogger(__name__)
KEY = "expkit_halving_rung{}"


def _key(value, number):
    """Rank order: higher value first, then the lower trial number."""
    return (float(value), -int(number))


class SyncHalvingPruner(optuna.pruners.BasePruner):
    def __init__(self, reduction_factor: int = 3, min_resource: int = 1, stall_s: float = 120.0,
                 poll_s: float = 0.5, max_wait_s: float = None):
        if reduction_factor < 2 or min_resource < 1:
            raise ValueError(f"SyncHalvingPruner: reduction_factor >= 2 and min_resource >= 1, got "
                             f"{reduction_factor}, {min_resource}")
        self.eta, self.min_resource = int(reduction_factor), int(min_resource)
        self.stall_s, self.poll_s, self.max_wait_s = float(stall_s), float(poll_s), max_wait_s

    # ---- rungs ----

    def rungs(self, upto, epochs=None):
        """The rungs at or below epoch `upto` (and below `epochs`, the runs' last epoch)."""
        out, r = [], self.min_resource
        while r <= upto and (epochs is None or r < epochs):
            out.append(r)
            r *= self.eta
        return out

    @staticmethod
    def decision(study, rung):
        return study.user_attrs.get(KEY.format(rung))

    @staticmethod
    def promoted(trial, rung, decision):
        """Whether a trial that reported `rung` went on there: judged and among the best, or (reporting after
        the decision) at least as good as the cutoff."""
        if trial.number in decision["judged"]:
            return trial.number in decision["promoted"]
        value = trial.intermediate_values.get(rung)
        cutoff = decision.get("cutoff")
        return value is not None and (cutoff is None or _key(value, trial.number) >= tuple(cutoff))

    # ---- who stands where ----

    def standing(self, trials, rung, stored):
        """(reported {number: value}, pending {numbers}, n_reached) at a rung: the trials that went on at
        every earlier decided rung and have not failed; reported = a final report there; pending = neither
        that nor ended."""
        reported, pending, n = {}, set(), 0
        for t in trials:
            if t.state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING):
                continue
            out = False
            for p in self.rungs(rung - 1):
                d = stored.get(p)
                if d is not None and t.intermediate_values.get(p) is not None and not self.promoted(t, p, d):
                    out = True
                    break
            if out:
                continue
            value, final, ended = trial_state(t, rung)
            if ended:
                continue
            n += 1
            if value is not None and final:
                reported[t.number] = value
            else:
                pending.add(t.number)
        return reported, pending, n

    def _stored(self, study, upto):
        attrs = study.user_attrs
        return {r: attrs[KEY.format(r)] for r in self.rungs(upto) if KEY.format(r) in attrs}

    def _decide(self, study, rung, reported, missing=()):
        """Store the rung's decision over the reports (first writer wins); returns the stored one."""
        ranked = sorted(reported, key=lambda n: _key(reported[n], n), reverse=True)
        k = max(1, len(ranked) // self.eta)
        mine = {"judged": ranked, "promoted": ranked[:k], "k": k, "n": len(ranked),
                "cutoff": list(_key(reported[ranked[k - 1]], ranked[k - 1])) if ranked else None,
                "missing": sorted(missing)}
        found = self.decision(study, rung)
        if found is not None:
            return found
        retry(study.set_user_attr, KEY.format(rung), mine)
        log.info("halving rung (epoch %d): %d trial(s) judged, %d go on (%s)%s", rung, len(ranked), k,
                 ", ".join(f"#{n}" for n in ranked[:k]),
                 f"; decided without {len(missing)} that had not reported: {sorted(missing)}" if missing else "")
        return mine

    def settle(self, study, upto, epochs=None):
        """Decide every rung below `upto` whose trials have all reported (no waiting): a rung whose decider
        stopped without deciding it is decided by the next member that asks."""
        stored = self._stored(study, upto)
        for r in self.rungs(upto - 1, epochs):
            if r in stored:
                continue
            trials = study.get_trials(deepcopy=False)
            reported, pending, _ = self.standing(trials, r, stored)
            if pending or not reported:
                break
            stored[r] = self._decide(study, r, reported)
        return stored

    # ---- the verdicts ----

    def eliminated(self, study, number, step=None, epochs=None):
        """Whether a decided rung left this trial out (expkit.hpo asks at every epoch, before reporting)."""
        trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
        if trial is None:
            return False
        upto = max(trial.intermediate_values, default=0) + 1 if step is None else step
        stored = self.settle(study, upto, epochs)
        for r, d in sorted(stored.items()):
            if trial.intermediate_values.get(r) is not None and not self.promoted(trial, r, d):
                return True
        return False

    def judge(self, study, number, step, epochs=None, pending_here=(), epoch_s=0.0):
        """The verdict on a trial that just reported `step`: True (stop), False (go on, or not decided yet:
        asked again at its next epoch through `eliminated`)."""
        if self.eliminated(study, number, step, epochs):
            return True
        if step not in self.rungs(step, epochs):
            return False
        stall = max(self.stall_s, 5.0 * float(epoch_s or 0.0)) if self.stall_s > 0 else 0.0  # 0: nobody to wait for
        start = last = time.monotonic()
        seen = None
        while True:
            decision = self.decision(study, step)
            trials = study.get_trials(deepcopy=False)
            if decision is None:
                stored = self._stored(study, step)
                reported, pending, n = self.standing(trials, step, stored)
                if pending & set(pending_here):  # they report after this one, in this loop iteration
                    better = sum(_key(v, m) > _key(reported[number], number) for m, v in reported.items()
                                 if m != number) if number in reported else 0
                    return better >= max(1, n // self.eta)  # certainly out already, else deferred
                now = time.monotonic()
                signature = tuple((t.number, t.state.value, len(t.intermediate_values), len(str(t.user_attrs)))
                                  for t in trials)
                if signature != seen:
                    seen, last = signature, now
                waited_out = now - last > stall or (self.max_wait_s is not None and now - start > self.max_wait_s)
                if not pending or waited_out:
                    if pending and stall > 0:  # (stall 0: nobody to wait for; the decision line names them)
                        log.warning("halving rung (epoch %d): no report for %.0f s from trial(s) %s; deciding over "
                                    "the %d that reported (they are judged against its cutoff when they do)",
                                    step, now - last, sorted(pending), len(reported))
                    decision = self._decide(study, step, reported, pending)
                else:
                    time.sleep(self.poll_s)
                    continue
            trial = next(t for t in trials if t.number == number)
            return not self.promoted(trial, step, decision)

    def prune(self, study, trial):
        """Optuna's interface (trial.should_prune()): judge the trial's last report, knowing nothing of this
        process's other trials."""
        step = trial.last_step
        return False if step is None else bool(self.judge(study, trial.number, step))


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler for ask-and-tell (expkit's sweeper asks and tells; hydra.sweeper.sampler
    `_target_: optuna.samplers.GridSampler` becomes this, expkit.hpo.sampler_spec): after the grid's last
    point it does not call study.stop(), which works only inside study.optimize() and raises outside it.
    n_trials bounds the study."""

    def after_trial(self, study, trial, state, values):
        return None
