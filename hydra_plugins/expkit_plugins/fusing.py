"""Fusing, a policy of expkit's sweepers (`hydra.sweeper.fuse=true`, or the `hydra/launcher=fused`
shorthand): the jobs of a batch that differ only in seed, optim.lr, optim.weight_decay or
optim.momentum become one *group job* each, which any launcher runs like any job (basic,
joblib, submitit_local, SLURM): groups spread over cores, GPUs and nodes.

A group job is its first member's own Hydra job plus `hydra.job.env_set.EXPKIT_GROUP`, naming
the other members' dirs (siblings in the sweep dir). Before launching, the sweeper writes each
other member's `.hydra/` (config.yaml, hydra.yaml, overrides.yaml) as Hydra's run_job writes a
job's; the job's task function (expkit.runner.run_job) reads them and trains all members as one
stacked model (run_group). Each member keeps its own run dir, log and files; a re-run of the
sweep finds every member by its config wherever its group ran.

Both of expkit's sweepers (sweeper.py's grid, optuna_sweeper.py's batches of trials) launch their
batches through `launch_batch`: fused or not, the one way a batch reaches the launcher. A job whose
config is not an expkit run (a plain Hydra app's) runs alone, as it would unfused.
"""
import copy
import heapq
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)
GROUP_KEY = "hydra.job.env_set.EXPKIT_GROUP"  # the other members' dir names, ':'-separated


@dataclass
class Job:
    num: int                  # its number in this sweep ("job k/N")
    overrides: List[str]      # as launched (user's overrides + hydra.sweep.subdir, ...)
    config: object            # the composed sweep config, hydra node included
    cfg: object = None        # the validated task config, when it validates
    why_alone: str = ""


def task_cfg(config):
    """A composed sweep config without its hydra node: what the task function receives."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def plan(jobs, max_group: Optional[int] = None, devices: int = 0):
    """The units a batch trains as: lists of jobs that train as one group, or single jobs (with
    why_alone). Groups hold at most max_group members; without a bound and with `devices` slots (GPUs or
    parallel workers: local_slots), the largest groups split until every slot has a unit (ex4/lr's 12 jobs
    on joblib n_jobs=2: two groups of 6, not one of 12 beside an idle core). Costliest units first (dispatched first, so
    the last worker does not run alone: longest-processing-time-first), by `cost`."""
    from expkit.config import validate
    from expkit.errors import UserError
    from expkit.runner import FUSIBLE, group_key, not_fusible

    groups = {}
    for j in jobs:
        task = task_cfg(j.config)
        if not all(k in task for k in ("data", "model", "optim", "trainer")):
            j.why_alone = "not an expkit run (its config has no data/model/optim/trainer)"
            continue
        try:
            j.cfg = validate(task)
        except UserError as ex:
            j.why_alone = f"invalid config ({ex})"
            continue
        j.why_alone = not_fusible(j.cfg) or ""
        if not j.why_alone:
            groups.setdefault(group_key(j.cfg), []).append(j)
    units = [[j] for j in jobs if j.why_alone]
    for members in groups.values():
        if len(members) == 1:
            members[0].why_alone = f"no other job in this batch differs from it only in {', '.join(FUSIBLE)}"
        size = max_group or len(members)
        units += [members[i:i + size] for i in range(0, len(members), size)]
    if not max_group and devices > 1:
        units = _spread(units, devices)
    order = {j.num: i for i, j in enumerate(jobs)}
    return sorted(units, key=lambda u: (-cost(u), order[u[0].num]))


def cost(unit):
    """A unit's expected training cost: members x epochs x the model's cost of a batch-256 step
    (expkit.models.relative_cost) x the steps an epoch takes relative to batch 256, of which half is taken
    to be a fixed cost per step (ex4/batch_size: 1 epoch at batch 1 outlasts 50 at batch 1024 by far);
    a job that is not an expkit run costs 1. Only the order matters."""
    from expkit.models import relative_cost

    cfg = getattr(unit[0], "cfg", None)
    if cfg is None:
        return 1.0
    steps = 0.5 * (1 + 256 / cfg.trainer.batch_size)
    return len(unit) * cfg.trainer.epochs * steps * relative_cost(cfg.model)


def _spread(units, devices):
    """Split the largest groups in halves until there are `devices` units (or nothing left to split)."""
    heap = [(-len(u), i, u) for i, u in enumerate(units)]
    heapq.heapify(heap)
    n = len(units)
    while len(heap) < devices and heap and -heap[0][0] > 1:
        _, _, u = heapq.heappop(heap)
        half = (len(u) + 1) // 2
        for part in (u[:half], u[half:]):
            heapq.heappush(heap, (-len(part), n, part))
            n += 1
    return [u for _, _, u in sorted(heap, key=lambda e: e[1])]


def _numbered(job: Job):
    """The job's composed config with its job number (what its launcher would set)."""
    config = copy.deepcopy(job.config)
    with read_write(config), open_dict(config):
        config.hydra.job.num = job.num
        config.hydra.job.id = str(job.num)
    return config


def job_dir(job: Job) -> Path:
    """Where the job runs: hydra.sweep.dir / hydra.sweep.subdir, as its launcher resolves them."""
    config = _numbered(job)
    return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def write_job_files(job: Job):
    """A member's .hydra/ (config.yaml, hydra.yaml, overrides.yaml) as Hydra's run_job writes a job's,
    with its job number and output dir; its dir is made."""
    config = _numbered(job)
    out = job_dir(job)
    with read_write(config), open_dict(config):
        config.hydra.runtime.output_dir = str(out.absolute())
    hydra_dir = out / str(config.hydra.output_subdir)
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(task_cfg(config), hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": config.hydra}), hydra_dir / "hydra.yaml")
    OmegaConf.save(config.hydra.overrides.task, hydra_dir / "overrides.yaml")
    return out


def group_overrides(unit):
    """The overrides of a unit's job: a single job's own, or a group's first member's plus the others'
    dirs, relative to the first member's parent (siblings: their names), their .hydra/ files written now."""
    lead = unit[0]
    if len(unit) == 1:
        return lead.overrides
    parent = job_dir(lead).absolute().parent
    names = [os.path.relpath(write_job_files(j).absolute(), parent) for j in unit[1:]]
    return lead.overrides + [f"{GROUP_KEY}='{':'.join(names)}'"]  # declared by declare_job_counter


def local_slots(launcher_cfg) -> int:
    """Units of a batch that run at once on this machine, for groups to spread over: its visible GPUs, or
    the joblib launcher's workers (n_jobs; -1: one per core) when there are more of those; 0 when the
    launcher sends jobs to other machines (SLURM gives each its own) or runs them one after another."""
    target = str(launcher_cfg.get("_target_", "")).lower()
    if "slurm" in target:
        return 0
    workers = 0
    if "joblib" in target:
        n = int(launcher_cfg.get("n_jobs") or 1)
        workers = len(os.sched_getaffinity(0)) if n < 0 else n
    from expkit.placement import visible_devices

    try:
        gpus = len(visible_devices())
    except Exception:  # no driver, no NVML: nothing to spread over
        gpus = 0
    return max(gpus, workers)


def fused_batch(jobs, max_group, devices):
    """A batch of jobs -> (the launcher's overrides per unit, the units), logging how they group."""
    units = plan(jobs, max_group, devices)
    together = [u for u in units if len(u) > 1]
    log.info("fused: %d job(s) train as %d unit(s)%s", len(jobs), len(units),
             f" ({len(together)} group(s) of {', '.join(str(len(u)) for u in together)})" if together else "")
    for u in units:
        if len(u) == 1:
            log.info("#%d runs alone: %s", u[0].num, u[0].why_alone)
    return [group_overrides(u) for u in units], units


def fuses(launcher, fuse) -> bool:
    """Whether a sweep fuses: hydra.sweeper.fuse, or the hydra/launcher=fused shorthand (which then
    knows its jobs arrive grouped)."""
    from hydra_plugins.expkit_plugins.fused_launcher import FusedLauncher

    if isinstance(launcher, FusedLauncher):
        launcher.fusing_sweeper = True
        return True
    return bool(fuse)


def launch_batch(sweeper, overrides, idx, configs=None):
    """One batch of a sweep's jobs (their override lists, numbered from idx) through the sweeper's
    launcher: as they are, or, when the sweeper fuses, one job per fused group, each job's config
    composed as its launcher would compose it (or `configs`: each job's config composed without its
    hydra.* overrides, which are applied here instead of composing again: a compose costs ~0.4 s).
    Returns the launcher's JobReturns (one per unit). The sweeper brings launcher, hydra_context,
    config, fuse and max_group."""
    jobs = [list(j) for j in overrides]
    if sweeper.fuse:
        compose = sweeper.hydra_context.config_loader.load_sweep_config
        composed = [with_hydra_overrides(c, j) if c is not None else compose(sweeper.config, j)
                    for j, c in zip(jobs, configs or [None] * len(jobs))]
        jobs, _ = fused_batch([Job(idx + k, j, c) for k, (j, c) in enumerate(zip(jobs, composed))],
                              sweeper.max_group, local_slots(sweeper.config.hydra.launcher))
    return sweeper.launcher.launch(jobs, initial_job_idx=idx)


def with_hydra_overrides(config, overrides):
    """A copy of a composed config with the job's plain hydra.* value overrides (its subdir, its job
    counter) applied and recorded, as composing with them would."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config = copy.deepcopy(config)
    parser = OverridesParser.create()
    # unresolved: an override may hold an interpolation only the job resolves (subdir=x_${hydra.job.num})
    given = OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False)
    with read_write(config), open_dict(config):
        for text in overrides:
            o = parser.parse_overrides([text])[0]
            key = o.get_key_element().lstrip("+~")
            if key.startswith("hydra.") and text not in given:
                OmegaConf.update(config, key, o.value(), force_add=True)
                config.hydra.overrides.hydra.append(text)
    return config
