"""`hydra/launcher=fused`: sweep members that differ only in optim.lr, optim.weight_decay,
optim.momentum or seed train together as one grouped model (expkit/trainers/fused.py).

    python train.py -m optim.lr=1,0.01,0.001,0.0001 hydra/launcher=fused

Every member still gets its own run dir (the one the sweeper assigned, with .hydra/, made by
Hydra's own run_job), metrics, plots, summary.json and row in the sweep table, as a separate run
would. Its metrics equal a separate run's up to float rounding, which training amplifies (on the
real countries CSVs: within ~6e-3 after 2 epochs; see expkit/trainers/fused.py).
Jobs that cannot be fused run one after another through the normal path, with a log line saying why.
"""
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import open_dict

log = logging.getLogger(__name__)


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.expkit_plugins.fused_launcher.FusedLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="expkit")


@dataclass
class Job:
    num: int
    overrides: List[str]
    config: object            # the composed sweep config, hydra node included
    cfg: object = None        # the validated task config, when it validates
    why_alone: str = ""


class FusedLauncher(Launcher):
    def setup(self, *, hydra_context, task_function, config):
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = [self._compose(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        units = _plan(jobs)
        log.info("fused launcher: %d job(s) in %d unit(s): %s", len(jobs), len(units),
                 ", ".join("+".join(str(j.num) for j in u) for u in units))
        returns = {}
        for unit in units:
            if len(unit) == 1:
                log.info("#%d runs alone: %s", unit[0].num, unit[0].why_alone)
                returns[unit[0].num] = self._run_alone(unit[0])
            else:
                returns.update(self._run_group(unit, sweep_dir))
        return [returns[j.num] for j in jobs]

    def _compose(self, num, overrides):
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = num
            config.hydra.job.num = num
        return Job(num, overrides, config)

    def _run_alone(self, job):
        log.info("\t#%d : %s", job.num, " ".join(filter_overrides(job.overrides)))
        ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=job.config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def _run_group(self, group, sweep_dir):
        from expkit import data as datasets
        from expkit.errors import UserError

        nums = [j.num for j in group]
        try:  # one data load for the group; image data (prepare/augment hooks) is not fused
            splits = datasets.load(group[0].cfg.data, group[0].cfg.model)
            if splits.prepare is not None or splits.augment is not None:
                raise UserError(f"data={group[0].cfg.data.name} has image hooks")
        except UserError as ex:
            log.info("jobs %s run one after another: %s", nums, ex)
            return {j.num: self._run_alone(j) for j in group}
        log.info("fused group of %d: jobs %s (%s)", len(group), nums,
                 "; ".join(" ".join(filter_overrides(j.overrides)) for j in group))
        # Hydra's own run_job makes each member's run dir, .hydra/ files and log file
        rets, dirs = {}, {}
        for j in group:
            def mark(cfg, j=j):
                from hydra.core.hydra_config import HydraConfig

                dirs[j.num] = Path(HydraConfig.get().runtime.output_dir)
                log.info("job #%d trains fused with jobs %s; its results follow when the group ends", j.num, nums)
                return "pending"

            rets[j.num] = run_job(hydra_context=self.hydra_context, task_function=mark, config=j.config,
                                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        from expkit.run import _finished

        done = {j.num: s["status"] for j in group if (s := _finished(dirs[j.num], j.cfg))}
        if done:  # a re-run in the same sweep dir: as expkit.run.run, completed members are kept
            log.info("jobs %s already completed; skipping them (delete their summary.json to re-run)", sorted(done))
        todo = [j for j in group if j.num not in done]
        handlers = _member_logs(todo, dirs)
        try:
            statuses = {**done, **(_train_group(todo, splits, dirs) if todo else {})}
        finally:
            for h in handlers:
                logging.getLogger().removeHandler(h)
                h.close()
        for j in group:
            rets[j.num].return_value, rets[j.num].status = statuses[j.num], JobStatus.COMPLETED
        from expkit.report.aggregate import write_table

        write_table(sweep_dir)
        return rets


def _plan(jobs):
    """Units in job order: lists of jobs trained together, or single jobs (with why_alone)."""
    from expkit.config import validate
    from expkit.errors import UserError
    from expkit.trainers.fused import FUSIBLE, group_key, not_fusible

    groups = {}
    for j in jobs:
        task = _task_cfg(j.config)
        try:
            j.cfg = validate(task)
        except UserError as ex:
            j.why_alone = f"invalid config ({ex})"
            continue
        j.why_alone = not_fusible(j.cfg) or ""
        if not j.why_alone:
            groups.setdefault(group_key(j.cfg), []).append(j)
    for members in groups.values():
        if len(members) == 1:
            members[0].why_alone = f"no other job in this batch differs from it only in {', '.join(FUSIBLE)}"
    units, seen = [], set()
    for j in jobs:
        if j.num in seen:
            continue
        unit = groups.get(group_key(j.cfg)) if j.cfg is not None and not j.why_alone else None
        unit = unit or [j]
        seen.update(m.num for m in unit)
        units.append(unit)
    return units


def _task_cfg(config):
    import copy

    from omegaconf import read_write

    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _member_logs(group, dirs):
    """While the group trains, its log lines also go to every member's own log file."""
    handlers = []
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for j in group:
        name = j.config.hydra.job.name
        h = logging.FileHandler(dirs[j.num] / f"{name}.log")
        h.setFormatter(fmt)
        logging.getLogger().addHandler(h)
        handlers.append(h)
    return handlers


def _train_group(group, splits, dirs):
    """Train the group, then write each member's files as expkit.run.run does; returns statuses."""
    import torch

    from expkit import models
    from expkit.errors import UserError
    from expkit.run import SUMMARY, _write_json, finish, pick_device
    from expkit.trainers import fused

    cfgs = [j.cfg for j in group]
    t0 = time.time()
    try:
        device = pick_device(cfgs[0].trainer.device)
        # 1 thread unless asked: the group's small batched matmuls gain nothing from more, and on a
        # busy 2-core machine 2 threads made a fused ex4/lr epoch over 100x slower (README, Speed)
        torch.set_num_threads(cfgs[0].trainer.threads or 1)
        built = []
        for c in cfgs:  # each member initialised exactly as its own run would be
            torch.manual_seed(c.seed)
            built.append(models.build(c.model, splits)[1])
        hists = fused.fit(built, splits, cfgs, device)
    except Exception as ex:  # the whole group failed: record it in every member, as a sweep job would
        user = isinstance(ex, UserError)
        msg = str(ex) if user else f"{type(ex).__name__}: {ex}"
        log.error("fused group failed: %s", msg, exc_info=not user)
        for j in group:
            _write_json(dirs[j.num] / SUMMARY, {"status": "failed", "error": msg, "overrides": j.overrides,
                                                 "wall_time_s": time.time() - t0})
        return {j.num: "failed" for j in group}
    wall = time.time() - t0
    statuses = {}
    for j, model, hist in zip(group, built, hists):
        run_dir = dirs[j.num]
        hist.extras["fused_with"] = [m.num for m in group]  # trained in one group; wall time is the group's
        try:  # the same files, loggers included, as a plain run (expkit.run.finish)
            summary = finish(j.cfg, run_dir, hist, model, splits, wall, device, j.overrides)
        except Exception as ex:  # one member's files failing must not lose the others'
            log.exception("job #%d: saving failed", j.num)
            summary = {"status": "failed", "error": f"{type(ex).__name__}: {ex}", "overrides": j.overrides,
                       "wall_time_s": wall}
            _write_json(run_dir / SUMMARY, summary)
        statuses[j.num] = summary["status"]
        if summary["status"] != "failed":
                log.info("#%d %s: test acc %.4f, val acc %.4f -> %s", j.num, summary["status"],
                     summary["final"]["test_acc"], summary["final"]["val_acc"], run_dir)
    return statuses
