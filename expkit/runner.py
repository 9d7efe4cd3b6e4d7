"""One job: validate config, seed, pick device and threads, load data, build model, train, save.

Everything a run leaves is in its Hydra run dir:
  metrics.csv, summary.json, config.yaml (resolved), predictions.csv, model file, curves.png
  (+ steps.csv, boundary.npz when recorded). summary.json is written last: its presence
  means the run finished (status completed | diverged | pruned | failed).
"""
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from omegaconf import OmegaConf

from expkit import preempt, scheduler
from expkit.cache import atomic_write
from expkit.config import validate
from expkit.device import pick_device, pick_precision, set_determinism
from expkit.errors import ForeignDir, Skipped, UserError, full_error

log = logging.getLogger("expkit")
SUMMARY = "summary.json"
SMALL_MODEL = 1_000_000  # parameters; below this a torch job trains on 1 thread unless trainer.threads says


def run_job(cfg):
    """Hydra task function. A user error in a single run: one line, exit 2, nothing left behind.
    In a sweep every failure is recorded in the job's summary.json so the other jobs go on. A fused
    group's job (hydra.job.env_set.EXPKIT_GROUP, set by expkit's sweepers) trains its members, whose
    dirs the sweeper prepared beside this one, as one group."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    grid = hc.sweeper.get("params") or {}
    if not sweeping and grid:  # Hydra ignores a sweep without -m: say so instead of running one job quietly
        log.warning("this config declares a sweep over %s, but this is ONE run with the default values; "
                    "add -m to run the sweep (python train.py -m ...)", ", ".join(grid))
    others = [n for n in str(hc.job.env_set.get("EXPKIT_GROUP") or "").split(":") if n]
    dirs, cfgs, overs = [run_dir], [cfg], [overrides]
    for name in others:  # the other members: the .hydra/ files the sweeper wrote for them
        d = run_dir.parent / name
        dirs.append(d)
        cfgs.append(OmegaConf.load(d / ".hydra" / "config.yaml"))
        overs.append(list(OmegaConf.load(d / ".hydra" / "overrides.yaml")))
    t0 = time.time()
    # SIGTERM / SIGUSR2 (a scheduler's): a torch run checkpoints at the next step and stops; an
    # estimator has no step to stop at, so a signal stops it at once
    preempt.install(at_steps=not any(_is_estimator(c.model.get("name")) for c in cfgs))
    handlers = _member_logs(dirs[1:], hc.job.name)
    try:
        summaries = run_group(cfgs, dirs, overs, job_num=hc.job.num if sweeping else None)
    except Exception as ex:
        user = isinstance(ex, UserError)
        msg = str(ex) if user else f"{type(ex).__name__}: {ex}"
        if not sweeping:
            if not user or full_error():
                raise  # a programming error keeps its traceback (any error, with HYDRA_FULL_ERROR=1)
            _remove_partial(run_dir)
            sys.stderr.write(f"error: {msg}\n")
            sys.exit(2)
        status = "skipped" if isinstance(ex, Skipped) else "failed"
        (log.warning if status == "skipped" else log.error)("job %s: %s", status, msg)
        if not user:
            log.error(traceback.format_exc())
        summaries = []
        for d, c, o in zip(dirs, cfgs, overs):
            done = None if isinstance(ex, ForeignDir) else _finished_as(d, c)
            summaries.append(done or {"status": status, "error": msg, "overrides": o, "wall_time_s": time.time() - t0,
                                      "scheduler": scheduler.info()})
            if not done and not isinstance(ex, ForeignDir):  # never write over another config's or a finished run
                _write_json(d / SUMMARY, summaries[-1])
    finally:
        for h in handlers:
            logging.getLogger().removeHandler(h)
            h.close()
    from expkit.report.aggregate import build_report, write_table

    if sweeping:  # keep the sweep table current after every job (the sweep dir: where its multirun.yaml is)
        write_table(next((p for p in run_dir.parents if (p / "multirun.yaml").exists()), run_dir.parent))
    elif cfg.get("report") and cfg.report.get("plots"):
        build_report(run_dir)  # a single-run preset's own plots
    return summaries[0].get("status")  # expkit's optuna sweeper reads the objective from summary.json


def _is_estimator(model_name):
    from expkit.models import MODELS, model_kind

    return model_name in MODELS and model_kind(model_name) != "torch"  # an unknown name fails in run_group


def _member_logs(dirs, job_name):
    """While a group trains, its log lines also go to each other member's own log file."""
    handlers = []
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for d in dirs:
        h = logging.FileHandler(d / f"{job_name}.log")
        h.setFormatter(fmt)
        logging.getLogger().addHandler(h)
        handlers.append(h)
    return handlers


# keys whose values do not change tensor shapes: runs that differ only in these may train fused
FUSIBLE = ("seed", "optim.lr", "optim.weight_decay", "optim.momentum")


def not_fusible(cfg):
    """Why this validated config cannot train in a fused group, or None if it can."""
    from expkit.models import model_kind

    if model_kind(cfg.model.name) != "torch":
        return f"model={cfg.model.name} is an estimator (fitted once, not trained by steps)"
    if cfg.trainer.precision == "fp16-mixed":
        return "trainer.precision=fp16-mixed (its loss scaling is per run: not fused)"
    return None


def group_key(cfg):
    """Configs with equal keys differ only in FUSIBLE values and can train as one group."""
    c = OmegaConf.to_container(cfg)
    c.pop("seed")
    for k in FUSIBLE[1:]:
        c["optim"].pop(k.split(".")[1])
    for k in ("checkpoint", "checkpoint_every_s"):  # when to save progress: not a difference in the result
        c["trainer"].pop(k)
    return json.dumps(c, sort_keys=True)


def run(cfg, run_dir: Path, overrides=(), job_num=None):
    """One run: the K = 1 case of run_group. Returns its summary."""
    return run_group([cfg], [Path(run_dir)], [list(overrides)], job_num)[0]


def run_group(cfgs, run_dirs, overrides, job_num=None):
    """K >= 1 runs that differ only in FUSIBLE keys: validate, skip finished ones, load the data
    once, build each member under its own seed, train them together (K = 1: a plain run), then
    write each member's files. Returns each member's summary, in order. A sweep's job (job_num
    given) that trains on a GPU first takes a slot on one of the box's GPUs (expkit/placement.py)."""
    from expkit.errors import require

    started = time.perf_counter()  # each member's wall_time_s counts its share from here
    cfgs = [validate(c) for c in cfgs]
    require(len({group_key(c) for c in cfgs}) == 1, "a fused group's runs must differ only in " + ", ".join(FUSIBLE))
    summaries, todo = [None] * len(cfgs), []
    for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs)):
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_not_foreign(run_dir, cfg)
        summaries[i] = _finished(run_dir, cfg)
        if summaries[i]:
            log.info("already completed in %s; skipping (delete %s to re-run)", run_dir, SUMMARY)
        else:
            todo.append(i)
    if not todo:
        return summaries

    import numpy as np
    import torch

    from expkit import data as datasets, loggers, models

    first = cfgs[todo[0]]
    torch.set_num_threads(pick_threads(first.trainer.threads))
    loggers.check(first.logger)  # a missing logger package fails now, not after training
    np.random.seed(first.seed)
    torch.manual_seed(first.seed)
    transform = models.input_transform(first.model)  # the model's input transform, if it has one
    slot = _place(first, None, job_num)  # before the data: a job waiting for its GPU slot holds nothing
    try:
        splits = datasets.load(first.data, transform)
        log.info("data: %s (train %d, val %d, test %d, %d classes)", splits.description,
                 len(splits.train), len(splits.val), len(splits.test), splits.n_classes)
        built = []
        for i in todo:  # each member initialised exactly as its own run would be
            np.random.seed(cfgs[i].seed)
            torch.manual_seed(cfgs[i].seed)
            built.append(models.build(cfgs[i].model, splits))
        nets = [model for _, model in built]
        probe = models.frozen_backbone(first.model, nets[0])
        if slot is not None and not hasattr(slot, "device_id"):  # placement.LATER: the built model's size decides
            slot = _place(first, nets[0] if probe is None else probe[0], job_num)
        return _train_and_finish(cfgs, run_dirs, overrides, todo, summaries, splits, built, nets, probe, slot,
                                 started)
    finally:
        if slot is not None:
            slot.release()
        from expkit.device import free_cuda_cache

        free_cuda_cache()  # what this job's tensors held goes back to the driver (a reused worker's next job)


def _place(cfg, model, job_num):
    """A sweep job bound for a GPU waits for a free slot and is pinned to that GPU before CUDA
    starts (a fused group takes one slot: the whole group lives on one device). Called before the
    data is loaded (model=None: decided from the config) and, only when the config cannot tell (an
    MLP under trainer.device=auto: its input layer depends on the data), again with the built model.
    Returns the held Slot, None (no slot), or placement.LATER (ask again with the model)."""
    from expkit import placement
    from expkit.device import free_cuda_cache, set_placed, wants_gpu, wants_gpu_conf

    if model is None:  # a new job: nothing of an earlier one in this process stays placed or cached
        set_placed(None)
        free_cuda_cache()
    if job_num is None:
        return None
    name = cfg.trainer.device
    wants = wants_gpu_conf(name, cfg.model) if model is None else wants_gpu(name, model)
    if wants is None:
        return placement.LATER
    if not wants:
        return None
    scheduler = placement.scheduler_gpus()
    if scheduler:  # its GPUs are this job's alone: expkit's slots would only second-guess the scheduler
        log.info("%s was given GPU(s) %s by its scheduler (CUDA_VISIBLE_DEVICES): no expkit GPU slot", *scheduler)
        return None
    if name.startswith("cuda:"):
        return None  # a device the user named: used as named
    devices = placement.visible_devices()
    if not devices:
        if placement.hidden_gpus():
            log.warning("this job sees no GPU although the machine has some (CUDA_VISIBLE_DEVICES is empty, e.g. "
                        "hydra/launcher=submitit_local without hydra.launcher.gpus_per_node=N): it trains on the CPU")
        elif placement.blind():
            log.warning("GPU placement cannot see this machine's GPUs (no NVML library, no nvidia-smi, and the CUDA "
                        "driver did not list any): this job takes no GPU slot, so trainer.jobs_per_gpu is not "
                        "enforced, and it trains on cuda:0 if CUDA finds a GPU")
        return None
    tied = placement.cuda_tied(devices)
    if tied is not None:  # CUDA started earlier in this process and read CUDA_VISIBLE_DEVICES then, for good
        started = placement.cuda_started()
        if not tied:
            raise UserError(f"this process cannot reach any of GPU(s) {', '.join(devices)}: CUDA already started in "
                            f"it with {started.describe()}; run the job in a fresh process")
        if tied != devices:
            log.info("CUDA started earlier in this process (%s): this job can only run on GPU(s) %s, and waits for "
                     "a slot there", started.describe(), ", ".join(tied))
        devices = tied
    per = cfg.trainer.jobs_per_gpu or placement.default_per_device(placement.memory_gb(devices), cfg.model.name)
    try:
        from hydra.core.hydra_config import HydraConfig

        n_jobs = int(HydraConfig.get().launcher.get("n_jobs") or 0)
    except Exception:  # not under Hydra, or a launcher without n_jobs
        n_jobs = 0
    if n_jobs > len(devices) * per:
        placement.warn_once("contexts", "hydra.launcher.n_jobs=%d workers for %d GPU(s) x %d job(s) each: a worker "
                            "keeps its CUDA context (about 0.5 GB) on its GPU after a job, so up to %d contexts stay "
                            "resident; n_jobs=%d runs as many jobs at once", n_jobs, len(devices), per, n_jobs,
                            len(devices) * per)
    try:
        slot = placement.acquire(placement.SLOT_DIR, devices, per, prefer=job_num, job=str(job_num))
    except placement.LockingUnsupported as ex:
        log.warning("%s: no GPU placement for this job (it takes no slot, so trainer.jobs_per_gpu is not enforced); "
                    "set EXPKIT_GPU_SLOTS to a dir on a local file system", ex)
        return None
    try:
        torch_device = placement.pin(slot.device_id)
    except BaseException:
        slot.release()
        raise
    set_placed(torch_device)
    log.info("job %d placed on GPU %s%s (at most %d job(s) per GPU at once)", job_num, slot.device_id,
             "" if torch_device == "cuda:0" else f", {torch_device} in this process", per)
    return slot


def _train_and_finish(cfgs, run_dirs, overrides, todo, summaries, splits, built, nets, probe, slot, started):
    import torch

    from expkit import loggers, models
    from expkit.errors import require

    first = cfgs[todo[0]]
    kind = built[0][0]
    # where and in what precision: from the model that trains (a probe's backbone runs on the same)
    device, why = pick_device(first.trainer.device, nets[0] if probe is None else probe[0])
    precision, why_p = pick_precision(first.trainer.precision, device, nets[0] if probe is None else probe[0])
    kernels = set_determinism(first.trainer.deterministic, device)  # TF32 off, cudnn.benchmark: recorded
    log.info("device %s (%s); precision %s (%s)%s", device, why, precision, why_p,
             "; deterministic kernels" if first.trainer.deterministic else "")
    if probe is not None:  # a linear probe: the inputs become cached frozen features, only the head trains
        from expkit.features import with_features

        splits = with_features(probe[0], probe[1], splits, device, precision)
        nets = [models.frozen_backbone(cfgs[i].model, net)[2] for i, net in zip(todo, nets)]
    if kind == "torch" and not first.trainer.threads and sum(p.numel() for p in nets[0].parameters()) < SMALL_MODEL:
        # a small model's ops are too short to split across threads: 1 thread ran 0.37 s/epoch
        # against 2.66 s/epoch with 2 threads for the 6x16 countries MLP on a busy 2-core machine
        torch.set_num_threads(1)
    lives = [loggers.Live(cfgs[i], run_dirs[i]) for i in todo]  # tensorboard/mlflow: fed epoch by epoch
    if kind == "torch":
        from expkit.trainers import torch as trainer

        from expkit.hpo import pruning_callback

        members = [trainer.Member(cfgs[i], net, run_dirs[i], callbacks=[live.epoch] + [
            cb for cb in [pruning_callback(run_dirs[i])] if cb]) for i, net, live in zip(todo, nets, lives)]
        histories = trainer.fit(members, splits, device, precision, started)
    else:
        from expkit.trainers import estimator as trainer

        require(len(todo) == 1, f"model={first.model.name} is fitted once per run; it cannot be fused")
        device, precision = trainer.device_for(nets[0], device), "fp32"  # what really fits it (sklearn: CPU)
        t_fit = time.perf_counter()
        histories = [trainer.fit(nets[0], splits, first)]
        histories[0].train_s = time.perf_counter() - t_fit
        histories[0].wall_s = time.perf_counter() - started
        for row in histories[0].rows:
            lives[0].epoch(row)
    group_wall = time.perf_counter() - started
    for i, (_, model), hist, live in zip(todo, built, histories, lives):
        if len(todo) > 1:  # trained in one group: its times are this member's share, the group's beside them
            hist.extras.update(fused_with=[run_dirs[j].name for j in todo], group_size=len(todo),
                               group_wall_time_s=group_wall)
        hist.extras["precision"] = precision
        hist.extras["kernels"] = kernels
        if splits.extras.get("features"):  # a torch linear probe: where and how its features were computed
            hist.extras.setdefault("features", splits.extras["features"])
        if slot is not None:  # the box's GPU (its CUDA_VISIBLE_DEVICES id) this job was placed on
            hist.extras["gpu_slot"] = slot.device_id
        try:
            summaries[i] = finish(cfgs[i], run_dirs[i], hist, model, splits, device, overrides[i], live)
        except Exception as ex:  # this member's files failed: it alone is failed, the others keep their results
            if len(todo) == 1:
                raise
            msg = str(ex) if isinstance(ex, UserError) else f"{type(ex).__name__}: {ex}"
            log.error("writing the files of %s failed: %s", run_dirs[i], msg)
            summaries[i] = {"status": "failed", "error": msg, "overrides": overrides[i], "wall_time_s": hist.wall_s}
            _write_json(run_dirs[i] / SUMMARY, summaries[i])
            continue
        log.info("%s: test acc %.4f, val acc %.4f, %.1fs on %s -> %s", summaries[i]["status"],
                 summaries[i]["final"]["test_acc"], summaries[i]["final"]["val_acc"], summaries[i]["wall_time_s"],
                 device, run_dirs[i])
    return summaries


def finish(cfg, run_dir, history, model, splits, device, overrides, live=None):
    """Write a trained run's files, summary.json last; the one path for plain and fused runs. The time
    spent writing them is the member's own: wall_time_s includes it."""
    import torch

    from expkit.report import outputs

    t0 = time.perf_counter()
    summary = outputs.summarize(cfg, history, model, splits, device, overrides)
    summary["threads"] = torch.get_num_threads()
    outputs.save(run_dir, cfg, history, model, splits, summary)
    summary["wall_time_s"] += time.perf_counter() - t0
    _write_json(run_dir / SUMMARY, summary)  # last: marks the run finished
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    if live is not None:
        live.close(summary)  # tensorboard/mlflow had every epoch live; now the summary and status
    return summary


def pick_threads(threads):
    """This job's share of the cores. joblib runs n_jobs jobs at once on this machine and
    submitit_local all of them: each gets cores // parallel (1 on 2 cores). A SLURM job owns its
    allocation (cpus_per_task, else the cores it may run on). The basic launcher: all cores."""
    if threads:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
        target = str(launcher.get("_target_", ""))
    except Exception:  # not under Hydra (tests, library use)
        return cores
    if launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    if "n_jobs" in launcher:  # joblib: -1 = all cores, -2 = all but one, ...
        n = int(launcher.n_jobs or -1)
        parallel = n if n > 0 else max(1, cores + 1 + n)
    elif target.endswith("LocalLauncher"):
        parallel = cores
    else:
        parallel = 1
    return max(1, cores // parallel)


def _finished(run_dir, cfg):
    """The saved summary if this exact config already completed here (re-runs skip it)."""
    path = run_dir / SUMMARY
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        return None
    same = summary.get("config") == OmegaConf.to_container(cfg)
    return summary if same and summary.get("status") in ("completed", "diverged") else None


def _finished_as(run_dir, cfg):
    """_finished for a config that may not validate (then nothing finished as it)."""
    try:
        return _finished(run_dir, validate(cfg))
    except UserError:
        return None


def _check_not_foreign(run_dir, cfg):
    """A run dir that holds another config's results is never written into."""
    mine = OmegaConf.to_container(cfg)
    for name in (SUMMARY, "config.yaml"):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            theirs = json.loads(path.read_text()).get("config") if name == SUMMARY else OmegaConf.to_container(
                OmegaConf.load(path))
        except Exception:
            theirs = "unreadable"
        if theirs is not None and theirs != mine:
            raise ForeignDir(f"{run_dir} already holds the results of another config ({name}); "
                             "choose a new dir (hydra.run.dir=...) or delete that one")


def _write_json(path, obj):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str)))


def _remove_partial(run_dir):
    """Remove a run dir that holds nothing but Hydra's own files (the run never started)."""
    if not run_dir.exists():
        return
    ours = [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if not ours:
        shutil.rmtree(run_dir, ignore_errors=True)
