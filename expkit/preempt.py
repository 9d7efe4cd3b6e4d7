"""Stopping a job cleanly when its scheduler asks: SLURM sends SIGTERM when it preempts, requeues
or cancels a job, and (submitit's `--signal=USR2@<delay>`) SIGUSR2 before its time limit.

`install()` (expkit.runner.run_job, in the job's main thread) replaces the handlers of both with
one that only sets a flag: a signal handler that saved or exited itself would do so mid-step.
The training loop checks `requested()` at every step boundary; when set, it writes each member's
checkpoint with the epoch's batch order and running sums (trainers/checkpoint.py) and calls
`stop()`, which hands SIGUSR2 to the handler it replaced (submitit's: requeue the job, so that
`max_num_timeout` counts) and otherwise raises `Preempted` (SLURM requeues a preempted job
itself). The restarted job resumes from that step and ends as an uninterrupted run would.

Under SLURM + submitit (tested on a real cluster: tests/test_slurm.py): slurmstepd signals the job
step's tasks, so the Python process gets SIGTERM and SIGUSR2 itself, not only srun. submitit's
process_job installs its handlers (SIGTERM/SIGCONT: log and ignore; SIGUSR2: checkpoint_and_try_
requeue) before it runs Hydra's launcher call, so these, installed by run_job, come after and win;
SIGCONT stays submitit's. On SIGUSR2 submitit's handler calls Hydra's BaseSubmititLauncher.checkpoint
(the same call again: it resumes from expkit's checkpoint), `scontrol requeue`s the job and
sys.exit(-1)s, or raises UncompletedJobError once max_num_timeout is spent (an Exception: the job
becomes a failed row, its checkpoint kept). Preempted is a SystemExit(143): submitit's job process
does not catch it, so the job exits 143 without a traceback, and SLURM requeues it if it was
preempted or requeued.
"""
import logging
import os
import signal
import threading

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
_state = {"signal": None, "previous": {}, "at_steps": True}


class Preempted(SystemExit):
    """The job stopped at a scheduler's request after saving its checkpoint. A SystemExit with code
    143 (128 + SIGTERM), not an Exception: no sweep records it as a failure, nothing after it runs,
    and a process that does not catch it (submitit's job process under SLURM) exits 143 without a
    traceback. str() is where it stopped."""

    def __init__(self, where):
        super().__init__(143)
        self.where = where

    def __str__(self):
        return self.where


def _flag(signum, frame):
    name = signal.Signals(signum).name
    if not _state["at_steps"]:  # nothing will check the flag (an estimator's fit): act now, as without expkit
        os.write(2, f"expkit: {name} received: this job cannot stop at a step boundary; stopping now\n".encode())
        previous = _state["previous"].get(signum)
        if signum == signal.SIGUSR2 and callable(previous):
            previous(signum, frame)  # submitit: requeue (counts toward max_num_timeout), exit
        raise Preempted(f"{name}: stopped without a checkpoint")
    _state["signal"] = signum
    # no logging in a signal handler (its lock may be held by the interrupted code): one raw line
    os.write(2, f"expkit: {name} received: stopping at the next step boundary\n".encode())


def install(at_steps=True):
    """Route SIGTERM and SIGUSR2 to the flag (main thread only, where Python runs handlers).
    `at_steps=False`: this job has no loop that checks `requested()` (an estimator): a signal stops
    it at once instead (SIGUSR2 through the handler it replaced, submitit's requeue)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    _state["at_steps"] = at_steps
    for sig in SIGNALS:
        previous = signal.signal(sig, _flag)
        if previous is not _flag:
            _state["previous"][sig] = previous
    return True


def installed():
    return signal.getsignal(signal.SIGTERM) is _flag


def requested():
    return _state["signal"] is not None


def stop(where):
    """After the checkpoint: hand a time-limit signal to the handler it replaced, else raise Preempted."""
    sig = _state["signal"]
    name = signal.Signals(sig).name
    log.warning("%s received: %s; the job resumes from there when it runs again", name, where)
    previous = _state["previous"].get(sig)
    _state["signal"] = None
    if sig == signal.SIGUSR2 and callable(previous):
        previous(sig, None)  # submitit: requeue this job (counts toward max_num_timeout), then exit
    raise Preempted(f"{name}: {where}")
