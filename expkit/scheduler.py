"""The cluster scheduler a job runs under (SLURM), and quiet, truthful job states for submitit.

`info()` is what summary.json records under `scheduler` (None outside a scheduler): which SLURM
job ran the run, on which node, after how many requeues, and where its log is, so a table row can
be traced to the scheduler's records (`scontrol show job`, `sacct -j`, the log file).

`watch_slurm_jobs()` runs in the process that submits a sweep (hydra/launcher=slurm calls it
through `SlurmCallback`, a Hydra callback in conf/hydra/launcher/slurm.yaml; expkit's sweepers call
it in their setup for any SLURM launcher, Hydra's own submitit_slurm too). submitit learns job
states from `sacct`; on a cluster without an accounting database (a small or local cluster:
scripts/slurm_local.sh) every poll fails with one warning (`Bypassing sacct error ... status may
be inaccurate`), and a job that died without writing its result (scancel, a node failure) stays
"UNKNOWN" forever, so the sweep never ends. The watcher installed here asks sacct first; once it
fails, it says so in one line and takes the states from `squeue` (which keeps a finished job's
state for MinJobAge, 300 s by default; a job gone from squeue has ended).

Nothing here imports submitit unless a SLURM sweep is being watched.
"""
from __future__ import annotations

import logging
import os
import subprocess

log = logging.getLogger(__name__)

SQUEUE_POLL_S = 5  # at most this long between squeue calls while jobs run (submitit's sacct cap: 600 s)
GONE = "NOT_IN_SQUEUE"  # a job squeue no longer lists: it ended (more than MinJobAge ago) or never was
# states in which a job may still run or run again (submitit's list, plus SLURM's other transient ones)
INCOMPLETE = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING",
              "SUSPENDED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


def info(environ=None) -> dict | None:
    """The SLURM job this process runs in, from SLURM's environment variables, or None.

    {name: slurm, job_id (SLURM_JOB_ID: unique, also for an array task), array_job_id and
    array_task_id (None outside an array; squeue/sacct name the task `<array_job_id>_<array_task_id>`),
    node (SLURMD_NODENAME), restarts (SLURM_RESTART_COUNT: how often it was requeued), and when
    submitit launched it, stdout and stderr: its log files, <sweep dir>/.submitit/<array_job_id>_<task>/
    <array_job_id>_<task>_<rank>_log.out/.err (expkit's log lines are in .err; both are appended to
    across requeues)}."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    out = {"name": "slurm", "job_id": job, "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
           "array_task_id": env.get("SLURM_ARRAY_TASK_ID"), "node": env.get("SLURMD_NODENAME"),
           "restarts": _int(env.get("SLURM_RESTART_COUNT"))}
    out.update(_submitit_logs(env))
    return out


def _int(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def _submitit_logs(env) -> dict:
    """{stdout, stderr}: the log files submitit gave this job (sbatch/srun --output/--error), when
    submitit launched it; {} otherwise."""
    folder = env.get("SUBMITIT_FOLDER")
    if not folder or env.get("SUBMITIT_EXECUTOR") != "slurm":
        return {}
    try:
        from submitit.core.utils import JobPaths
    except ImportError:
        return {}
    arr, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{arr}_{task}" if arr and task is not None else env["SLURM_JOB_ID"]
    paths = JobPaths(folder, job_id=job_id, task_id=_int(env.get("SLURM_PROCID")))
    return {"stdout": str(paths.stdout), "stderr": str(paths.stderr)}


def watch_slurm_jobs(launcher_target: str | None = None) -> bool:
    """Make submitit's SLURM jobs learn their states from squeue when sacct fails (once, quietly).
    With `launcher_target` (hydra.launcher._target_), only for a SLURM launcher. Idempotent;
    returns whether the watcher is installed. A caller without submitit installed gets False."""
    if launcher_target is not None and not str(launcher_target).endswith(".SlurmLauncher"):
        return False
    try:
        from submitit.slurm import slurm
    except ImportError:
        return False
    if not isinstance(slurm.SlurmJob.watcher, _watcher_class()):
        slurm.SlurmJob.watcher = _watcher_class()(delay_s=600)
    return True


_WATCHER = None


def _watcher_class():
    global _WATCHER
    if _WATCHER is None:
        from submitit.slurm.slurm import SlurmInfoWatcher

        class SqueueFallbackWatcher(SlurmInfoWatcher):
            """submitit's sacct watcher that turns to squeue, with one log line, when sacct fails."""

            use_squeue = False
            _squeue_failing = False

            def update(self) -> None:
                if not self.use_squeue:
                    command = self._make_command()
                    if command is None:
                        return
                    self._num_calls += 1
                    r = _call(command)
                    if r.returncode == 0:
                        self._info_dict.update(self.read_info(r.stdout))
                        self._after_update()
                        return
                    why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[0]
                    log.info("SLURM accounting is off on this cluster (sacct: %s): job states come from squeue", why)
                    self.use_squeue = True
                    self._delay_s = min(self._delay_s, SQUEUE_POLL_S)
                self._update_from_squeue()

            def _update_from_squeue(self) -> None:
                todo = self._registered - self._finished
                if not todo:
                    return
                self._num_calls += 1
                mains = sorted({j.split("_")[0] for j in todo})
                r = _call(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%N", "-j", ",".join(mains)])
                if r.returncode != 0 and "Invalid job id" not in r.stderr:
                    if not self._squeue_failing:  # one line per outage, not per poll
                        log.warning("squeue failed (%s); job states unknown until it answers",
                                    (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[0])
                    self._squeue_failing = True
                    self._last_status_check = _now()
                    return
                self._squeue_failing = False
                seen = {}
                for line in r.stdout.splitlines():
                    parts = line.strip().split("|")
                    if len(parts) == 3 and parts[0]:
                        seen[parts[0]] = {"JobID": parts[0], "State": parts[1], "NodeList": parts[2]}
                for job_id in todo:
                    self._info_dict[job_id] = seen.get(job_id, {"JobID": job_id, "State": GONE, "NodeList": ""})
                self._after_update()

            def _after_update(self) -> None:
                self._last_status_check = _now()
                for job_id in self._registered - self._finished:
                    if self.is_done(job_id, mode="cache"):
                        self._finished.add(job_id)

            def is_done(self, job_id: str, mode: str = "standard") -> bool:
                state = self.get_state(job_id, mode=mode)
                return (state.upper().split() or ["UNKNOWN"])[0] not in INCOMPLETE

        _WATCHER = SqueueFallbackWatcher
    return _WATCHER


def _call(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as ex:
        return subprocess.CompletedProcess(command, 127, "", f"{type(ex).__name__}: {ex}")


def _now():
    import time

    return time.time()


try:  # a Hydra callback, for hydra.callbacks (conf/hydra/launcher/slurm.yaml)
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    _Callback = object


class SlurmCallback(_Callback):
    """hydra.callbacks entry of the slurm launcher preset: before a sweep submits anything, job
    states switch to squeue when the cluster has no accounting (`watch_slurm_jobs`)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        watch_slurm_jobs(config.hydra.launcher.get("_target_"))
