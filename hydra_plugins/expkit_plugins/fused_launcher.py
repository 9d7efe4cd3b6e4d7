"""`hydra/launcher=fused`: the jobs of a batch that differ only in seed, optim.lr,
optim.weight_decay or optim.momentum train together as one run with K members
(expkit.runner.run_group -> expkit/trainers/torch.py, stacked by expkit/stack.py).

    python train.py -m optim.lr=1,0.01,0.001,0.0001 hydra/launcher=fused
    python train.py -m experiment=hw6/synth_kernels seed=1,2,3,4 hydra/launcher=fused

This launcher only groups: every member still gets its own run dir (the one the sweeper
assigned, with .hydra/ and log, made by Hydra's own run_job), and run_group writes the same
files a separate run writes. Jobs that cannot be fused run alone through the same path, with a
log line saying why. A member's metrics equal a separate run's up to float rounding, which
training amplifies (tests/test_fused.py states the tolerance).
"""
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import open_dict, read_write

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
        jobs = [self._compose(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        units = plan(jobs)
        log.info("fused launcher: %d job(s) in %d unit(s): %s", len(jobs), len(units),
                 ", ".join("+".join(str(j.num) for j in u) for u in units))
        returns = {}
        for unit in units:
            if len(unit) == 1:
                log.info("#%d runs alone: %s", unit[0].num, unit[0].why_alone)
            returns.update(self._run(unit))
        return [returns[j.num] for j in jobs]

    def _compose(self, num, overrides):
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = num
            config.hydra.job.num = num
        return Job(num, overrides, config)

    def _run(self, group):
        """Hydra's run_job makes each member's dir and files; the group then trains as one run."""
        if len(group) == 1 and group[0].cfg is None:  # invalid config: the normal path records why
            return {group[0].num: self._run_job(group[0], self.task_function)}
        rets, dirs = {}, {}
        for j in group:
            def mark(cfg, j=j):
                from hydra.core.hydra_config import HydraConfig

                dirs[j.num] = Path(HydraConfig.get().runtime.output_dir)
                return "pending"

            rets[j.num] = self._run_job(j, mark)
        if len(group) > 1:
            log.info("fused group of %d: jobs %s (%s)", len(group), [j.num for j in group],
                     "; ".join(" ".join(o for o in filter_overrides(j.overrides) if "hydra." not in o) for j in group))
        statuses = run_members(group, dirs)
        for j in group:
            rets[j.num].return_value, rets[j.num].status = statuses[j.num], JobStatus.COMPLETED
        from expkit.report.aggregate import write_table

        write_table(dirs[group[0].num].parent)
        return rets

    def _run_job(self, job, task):
        log.info("\t#%d : %s", job.num, " ".join(filter_overrides(job.overrides)))
        ret = run_job(hydra_context=self.hydra_context, task_function=task, config=job.config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret


def run_members(group, dirs):
    """expkit.runner.run_group on the group; any failure is recorded in every member's summary."""
    from expkit.errors import ForeignDir, Skipped, UserError
    from expkit.runner import SUMMARY, _finished, _write_json, run_group

    handlers = _member_logs(group, dirs)
    t0 = time.time()
    try:
        task = [[o for o in j.overrides if not o.lstrip("+~").startswith("hydra.")] for j in group]
        summaries = run_group([j.cfg for j in group], [dirs[j.num] for j in group], task,
                              job_num=group[0].num)  # one GPU slot for the whole group
        return {j.num: s["status"] for j, s in zip(group, summaries)}
    except Exception as ex:  # the whole group failed: record it in every member, as a sweep job would
        user = isinstance(ex, UserError)
        status = "skipped" if isinstance(ex, Skipped) else "failed"
        msg = str(ex) if user else f"{type(ex).__name__}: {ex}"
        log.error("job(s) %s %s: %s", [j.num for j in group], status, msg, exc_info=not user)
        if not isinstance(ex, ForeignDir):  # never write into a dir that holds another config
            for j in group:
                if _finished(dirs[j.num], j.cfg):  # a member that had finished keeps its results
                    continue
                _write_json(dirs[j.num] / SUMMARY, {"status": status, "error": msg, "overrides": j.overrides,
                                                     "wall_time_s": time.time() - t0})
        return {j.num: status for j in group}
    finally:
        for h in handlers:
            logging.getLogger().removeHandler(h)
            h.close()


def plan(jobs):
    """Units in job order: lists of jobs trained together, or single jobs (with why_alone)."""
    from expkit.config import validate
    from expkit.errors import UserError
    from expkit.runner import FUSIBLE, group_key, not_fusible

    groups = {}
    for j in jobs:
        try:
            j.cfg = validate(_task_cfg(j.config))
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

    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _member_logs(group, dirs):
    """While the group trains, its log lines also go to every member's own log file."""
    handlers = []
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for j in group:
        h = logging.FileHandler(dirs[j.num] / f"{j.config.hydra.job.name}.log")
        h.setFormatter(fmt)
        logging.getLogger().addHandler(h)
        handlers.append(h)
    return handlers
