"""Sweeps on a real one-node SLURM cluster (scripts/slurm_local.sh): hydra/launcher=slurm
submits through sbatch, jobs record their SLURM job in summary.json, a failed job is a failed row,
scancel + the same command again resumes; preemption (`scontrol requeue`) and a time limit's SIGUSR2
stop a job, and a fused group, at the next step with a checkpoint, SLURM or submitit runs it again
and it ends exactly as an uninterrupted run (expkit/preempt.py).

Needs root and Debian's slurm-wlm and munge (.ci/run installs them); skipped otherwise, with the
reason. The cluster is started once per session and stopped at the end if this session started
it; a cluster already running from the script is used as it is."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import ROOT, run_cli, write_countries
from expkit import scheduler

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
KILL_WAIT = 5  # the test cluster's SIGTERM-to-SIGKILL grace (SLURM's default is 30 s): scancel takes effect fast
LAUNCH = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
          "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
NODE = socket.gethostname().split(".")[0]


def _why_no_cluster():
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (scripts/slurm_local.sh start)"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"  # the daemons (the script looks there too)
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol") if not shutil.which(c, path=path)]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install slurm-wlm munge"
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        return "pip install -e '.[launchers]' (hydra-submitit-launcher)"
    return None


def _script(*args, env=None, timeout=120):
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


@pytest.fixture(scope="session")
def slurm_cluster():
    """{SLURM_CONF: ...} of a running one-node cluster (partition debug, this host)."""
    why = _why_no_cluster()
    if why:
        pytest.skip(why)
    was_running = _script("status").returncode == 0
    # requeued jobs run again within seconds: cred_expire=10 (+ sched_interval=1, the script's)
    r = _script("start", env={"EXPKIT_SLURM_KILL_WAIT": str(KILL_WAIT), "EXPKIT_SLURM_CRED_EXPIRE": "10"})
    if r.returncode == 2:  # this machine has a SLURM of its own: never touched
        pytest.skip((r.stderr.strip().splitlines() or ["refused"])[-1])
    assert r.returncode == 0, r.stdout + r.stderr
    conf = re.search(r"SLURM_CONF=(\S+)", r.stdout).group(1)
    try:
        yield {"SLURM_CONF": conf}
    finally:
        if not was_running:
            r = _script("stop")
            assert r.returncode == 0 and "stopped" in r.stdout, r.stdout + r.stderr


@pytest.fixture
def cluster(slurm_cluster, monkeypatch):
    """The cluster's SLURM_CONF in this test's environment: sbatch and squeue, called by submitit
    from `python train.py`, and the jobs (sbatch exports the environment) find the cluster by it."""
    for k, v in slurm_cluster.items():
        monkeypatch.setenv(k, v)
    return slurm_cluster


def _slurm(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=True).stdout


def _config(key):
    """An integer setting of the running cluster (scontrol show config), e.g. KillWait."""
    m = re.search(rf"^{key}\s*=\s*(\d+)", _slurm("scontrol", "show", "config"), re.M)
    return int(m.group(1))


def _summaries(out):
    return {d.name: json.loads((d / "summary.json").read_text()) for d in out.iterdir()
            if (d / "summary.json").exists()}


def _quiet(log):
    """One line says the cluster has no accounting; no line per poll."""
    assert log.count("job states come from squeue") == 1, log[-3000:]
    assert "Bypassing sacct error" not in log and "accounting storage is disabled\n" not in log, log[-3000:]


def _popen(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    return subprocess.Popen([sys.executable, "train.py", *map(str, args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(pred, timeout, what, proc):
    """Until pred() holds; fails at once if `proc` (the sweep) ended before that."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{_slurm('squeue')}")


@pytest.mark.slow
def test_the_issue_sweep_runs_on_slurm_and_each_row_names_its_job(cluster, countries_root, tmp_path):
    out = tmp_path / "sweep"
    r = run_cli("-m", "optim.lr=0.01,0.001", "seed=1,2", "trainer.epochs=2", *LAUNCH, f"data.root={countries_root}",
                f"hydra.sweep.dir={out}", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _quiet(r.stdout + r.stderr)
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and set(table.status) == {"completed"}
    sums = _summaries(out)
    scheds = {job: s["scheduler"] for job, s in sums.items()}
    assert sorted(scheds) == ["0", "1", "2", "3"]
    assert {s["name"] for s in scheds.values()} == {"slurm"}
    assert len({s["array_job_id"] for s in scheds.values()}) == 1  # one array, a task per job
    assert sorted(s["array_task_id"] for s in scheds.values()) == ["0", "1", "2", "3"]
    assert len({s["job_id"] for s in scheds.values()}) == 4 and {s["node"] for s in scheds.values()} == {NODE}
    assert {s["restarts"] for s in scheds.values()} == {0}
    for job, s in scheds.items():  # the row's job, traced to SLURM's record and to its log
        task = f"{s['array_job_id']}_{s['array_task_id']}"
        record = _slurm("scontrol", "show", "job", task)
        assert f"JobId={s['job_id']} " in record and "JobState=COMPLETED" in record, record
        assert f"StdOut={s['stdout']}" in record and f"StdErr={s['stderr']}" in record, record
        assert s["stdout"].startswith(str(out / ".submitit" / task) + "/")
        logs = open(s["stdout"]).read() + open(s["stderr"]).read()
        assert str(out / job) in logs  # the job's own log lines, naming its run dir


@pytest.mark.slow
def test_a_failed_job_is_a_failed_row_and_the_sweep_exits_1(cluster, countries_root, tmp_path):
    """Through Hydra's own hydra/launcher=submitit_slurm (not the preset): expkit's sweeper gives it the
    squeue job watcher too (one line, no sacct warning per poll)."""
    out = tmp_path / "sweep"
    missing = tmp_path / "missing"  # fails in the job, on the node (an invalid value stops the sweep before)
    plain = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.mem_gb=1"]
    r = run_cli("-m", f"data.root={countries_root},{missing}", "trainer.epochs=1", *plain,
                f"hydra.sweep.dir={out}", timeout=300)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    _quiet(r.stdout + r.stderr)
    table = pd.read_csv(out / "results.csv")
    assert sorted(table.status) == ["completed", "failed"]
    assert "missing data file" in table.error[table.status == "failed"].iloc[0]
    assert "2 job(s), 1 failed" in r.stdout + r.stderr


@pytest.mark.slow
def test_scancel_half_a_sweep_then_the_same_command_resumes_the_cancelled_jobs(cluster, countries_root, tmp_path):
    """Two short jobs finish; the two long ones are cancelled mid-training (after a checkpoint):
    the sweep ends with them as failed rows and exit 1 instead of waiting forever; the same
    command again skips the finished jobs and resumes the cancelled ones from their checkpoints."""
    if _config("KillWait") > KILL_WAIT:  # a cluster started by hand: its jobs may finish within the grace
        pytest.skip(f"this cluster's KillWait is {_config('KillWait')} s: a cancelled job may finish in that "
                    f"grace; restart it with EXPKIT_SLURM_KILL_WAIT={KILL_WAIT} scripts/slurm_local.sh start")
    out = tmp_path / "sweep"
    args = ["-m", "trainer.epochs=2,300", "seed=1,2", "trainer.checkpoint_every_s=0", *LAUNCH,
            f"data.root={countries_root}", f"hydra.sweep.dir={out}"]
    first = _popen(*args)
    try:
        # jobs 0, 1 (2 epochs) run first; 2 and 3 (300 epochs) once a CPU is free
        _wait_for(lambda: (out / "0" / "summary.json").exists() and
                  all((out / j / "checkpoint.pt").exists() for j in ("2", "3")), 150,
                  "the short jobs' results and the long jobs' first checkpoints", first)
        s = json.loads((out / "0" / "summary.json").read_text())["scheduler"]
        array = s["array_job_id"]
        _slurm("scancel", f"{array}_2", f"{array}_3")
        log, _ = first.communicate(timeout=150)
    finally:
        first.kill()
    assert first.returncode == 1, log[-3000:]
    _quiet(log)
    sums = _summaries(out)
    assert [sums.get(j, {}).get("status") for j in "0123"] == ["completed", "completed", "failed", "failed"], log[-3000:]
    for j in "23":  # the row names the SLURM array that lost it (the first lost task of the batch)
        assert f"Job {array}_" in sums[j]["error"] and (out / j / "checkpoint.pt").exists()

    again = run_cli(*args, timeout=300)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert log.count("this exact config already finished") == 2
    sums2 = _summaries(out)
    assert [sums2[j]["status"] for j in "0123"] == ["completed"] * 4
    assert sums2["0"] == sums["0"] and sums2["1"] == sums["1"]  # skipped: untouched
    for j in "23":
        jl = (out / j / "expkit.log").read_text()
        # SLURM's SIGTERM: a checkpoint at the step it was in (expkit/preempt.py)
        k = int(re.search(r"resumed from \S+checkpoint\.pt in epoch (\d+) after step \d+", jl).group(1))
        assert 1 <= k < 300  # it went on from where the cancelled run stopped
        assert list(pd.read_csv(out / j / "metrics.csv").epoch) == list(range(1, 301))
        assert sums2[j]["scheduler"]["array_job_id"] != array  # run by the second submission


# --- preemption and time limits (expkit/preempt.py under srun and submitit) -----------------------------
# 150 epochs of 38 steps (300 points, batch 8): 6-40 s of training here, depending on the load. Only a
# scheduler's signal checkpoints (checkpoint_every_s=3600): each resume below is from the step it stopped at.
LONG = ["trainer.epochs=150", "trainer.batch_size=8", "trainer.checkpoint_every_s=3600"]
STOP = re.compile(r"(SIGTERM|SIGUSR2) received: checkpoint in epoch (\d+) at step (\d+)/(\d+)")
RESUME = re.compile(r"resumed from (\S+)/checkpoint\.pt in epoch (\d+) after step (\d+)")


class _Uninterrupted:
    """Plain local runs (basic launcher, no SLURM) of the LONG config, started in the background
    while a SLURM job waits to run again; the preempted jobs must end exactly as they do."""

    def __init__(self, root):
        self.root, self.data, self.procs = root, write_countries(root / "data", n=300), {}

    def args(self, *extra):
        return [*LONG, f"data.root={self.data}", *extra]

    def start(self, name):
        if name not in self.procs:
            args = {"seed1": ["seed=1", f"hydra.run.dir={self.root / 'seed1'}"],
                    "fused": ["-m", "seed=1,2", "hydra.sweeper.fuse=true", f"hydra.sweep.dir={self.root / 'fused'}"]}[name]
            args = args[:1] + self.args() + args[1:] if args[0] == "-m" else self.args(*args)
            log = open(self.root / f"{name}.log", "w")
            self.procs[name] = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=log,
                                                stderr=subprocess.STDOUT, env=dict(os.environ, HYDRA_FULL_ERROR="0"))
        return self

    def dir(self, name, member="0"):
        p = self.start(name).procs[name]
        assert p.wait(timeout=300) == 0, (self.root / f"{name}.log").read_text()[-3000:]
        return self.root / name / member if name == "fused" else self.root / name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    u = _Uninterrupted(tmp_path_factory.mktemp("uninterrupted"))
    yield u
    for p in u.procs.values():
        p.kill()


def _same_metrics(a, b):
    """Every column but the time, exactly (the CPU run is deterministic)."""
    pd.testing.assert_frame_equal(pd.read_csv(a / "metrics.csv").drop(columns="time_s"),
                                  pd.read_csv(b / "metrics.csv").drop(columns="time_s"), check_exact=True)


def _epochs_done(log):
    return max(map(int, re.findall(r"epoch (\d+)/150 ", log.read_text())), default=0)


def _stopped_and_resumed(run_dir, signal_name):
    """[(epoch, step)] where the job stopped, each followed by a resume from that very step in its own dir."""
    text = (run_dir / "expkit.log").read_text()
    stops = [(int(e), int(s)) for sig, e, s, n in STOP.findall(text) if sig == signal_name]
    resumes = [(int(e), int(s)) for d, e, s in RESUME.findall(text) if d == str(run_dir)]
    assert stops and stops == resumes, text[-3000:]
    assert all(0 <= s < 38 for _, s in stops) and not (run_dir / "checkpoint.pt").exists()
    return stops


def _no_traceback(summary):
    err = open(summary["scheduler"]["stderr"]).read()
    assert "Traceback" not in err, err[-3000:]


def _requeue_mid_training(out, p, uninterrupted, *refs):
    """Once the job has trained 3 epochs: `scontrol requeue` (what preemption does). Returns the epochs it
    had finished, the job id and how long SLURM took to run it again; the uninterrupted runs start meanwhile."""
    log = out / "0" / "expkit.log"
    _wait_for(lambda: log.exists() and _epochs_done(log) >= 3, 120, "the job's third epoch", p)
    job = _slurm("squeue", "-h", "-o", "%i").split()[0]
    seen = _epochs_done(log)
    _slurm("scontrol", "requeue", job)
    t0 = time.monotonic()
    for name in refs:
        uninterrupted.start(name)
    _wait_for(lambda: re.search(r"Restarts=1 .*JobState=RUNNING|JobState=RUNNING .*Restarts=1",
                                _slurm("scontrol", "show", "job", "-o", job)), 90, "the requeued job to run", p)
    return seen, job, time.monotonic() - t0


def _restart_bound():
    """Killed after KillWait (the job stops at once; the bound allows for one that does not), eligible
    cred_expire + 1 s later, started by the next scheduling pass (sched_interval=1 here); with SLURM's
    defaults that is 30 + 121 + up to 60 s."""
    cred = re.search(r"cred_expire=(\d+)", _slurm("scontrol", "show", "config"))
    return _config("KillWait") + (int(cred.group(1)) if cred else 120) + 1 + 15


@pytest.mark.slow
def test_a_requeued_job_stops_within_an_epoch_restarts_and_ends_equal_to_an_uninterrupted_run(
        cluster, uninterrupted, tmp_path):
    """`scontrol requeue` (preemption): SLURM's SIGTERM reaches the python under srun past submitit's
    bypass; the job checkpoints at the next step boundary and exits (143, no traceback); SLURM runs it
    again, it resumes from that step and ends exactly as the uninterrupted run; restarts=1."""
    out = tmp_path / "sweep"
    p = _popen("-m", *uninterrupted.args("seed=1"), *LAUNCH, f"hydra.sweep.dir={out}")
    try:
        seen, job, restarted_after = _requeue_mid_training(out, p, uninterrupted, "seed1")
        log, _ = p.communicate(timeout=240)
    finally:
        p.kill()
    assert p.returncode == 0, log[-3000:]
    _quiet(log)
    assert restarted_after < _restart_bound(), restarted_after
    [(epoch, step)] = _stopped_and_resumed(out / "0", "SIGTERM")
    assert seen < epoch <= seen + 2  # within the epoch it was in (one may have ended before the signal landed)
    s = json.loads((out / "0" / "summary.json").read_text())
    assert s["status"] == "completed" and s["scheduler"]["restarts"] == 1 and s["scheduler"]["job_id"] == job
    _no_traceback(s)
    _same_metrics(out / "0", uninterrupted.dir("seed1"))


@pytest.mark.slow
def test_a_fused_group_requeued_mid_epoch_resumes_every_member(cluster, uninterrupted, tmp_path):
    """seed=1,2 with hydra.sweeper.fuse=true: one SLURM job trains both; requeued, every member
    checkpoints in its own dir at the same step and resumes from it, and each ends exactly as in the
    uninterrupted fused run (a fused member equals its separate run only up to float rounding, which
    150 epochs amplify: docs/performance.md)."""
    out = tmp_path / "sweep"
    p = _popen("-m", *uninterrupted.args("seed=1,2", "hydra.sweeper.fuse=true"), *LAUNCH, f"hydra.sweep.dir={out}")
    try:
        _, job, _ = _requeue_mid_training(out, p, uninterrupted, "fused")
        log, _ = p.communicate(timeout=240)
    finally:
        p.kill()
    assert p.returncode == 0, log[-3000:]
    sums = _summaries(out)
    assert sorted(sums) == ["0", "1"] and {s["scheduler"]["job_id"] for s in sums.values()} == {job}  # one job
    assert {s["status"] for s in sums.values()} == {"completed"}
    assert {s["scheduler"]["restarts"] for s in sums.values()} == {1}
    assert _stopped_and_resumed(out / "0", "SIGTERM") == _stopped_and_resumed(out / "1", "SIGTERM")
    _no_traceback(sums["0"])
    for m in ("0", "1"):
        _same_metrics(out / m, uninterrupted.dir("fused", m))


@pytest.mark.slow
def test_a_job_at_its_time_limit_is_requeued_by_submitit_and_ends_equal(cluster, uninterrupted, tmp_path):
    """The time limit: SLURM sends SIGUSR2 (`--signal=USR2@<signal_delay_s>`) to the job's tasks; the job
    checkpoints at the next step boundary and hands the signal to submitit's handler, which counts a
    time-out (max_num_timeout), requeues the job (`scontrol requeue`) and exits; it resumes and ends
    exactly as the uninterrupted run.

    SLURM checks time limits every 30 s (PERIODIC_TIMEOUT, compiled in) and signals at the first check
    with at most signal_delay_s + 30 s left, so with the smallest limit (1 min) a real warning comes
    25-55 s into the job here (signal_delay_s=5): a job would have to outlast that on any machine,
    and a minute per run is more than CI has. So the test sends the same signal the same way SLURM
    does at the limit (`scancel --signal=USR2`: slurmctld -> slurmstepd -> the step's tasks, not the
    batch shell; what submitit's own tests do) while the job runs under a real 1-minute limit, so that
    submitit counts it as a time-out; a real warning that comes too (a slow machine) is one more requeue.
    The real limit end to end: docs/scaling.md ("Preemption and time limits")."""
    out = tmp_path / "sweep"
    p = _popen("-m", *uninterrupted.args("seed=1"), *LAUNCH, "hydra.launcher.timeout_min=1",
               "hydra.launcher.signal_delay_s=5", f"hydra.sweep.dir={out}")
    try:
        log = out / "0" / "expkit.log"
        _wait_for(lambda: log.exists() and _epochs_done(log) >= 3, 120, "the job's third epoch", p)
        job = _slurm("squeue", "-h", "-o", "%i").split()[0]
        _slurm("scancel", "--signal=USR2", job)
        uninterrupted.start("seed1")
        out_log, _ = p.communicate(timeout=300)
    finally:
        p.kill()
    assert p.returncode == 0, out_log[-3000:]
    stops = _stopped_and_resumed(out / "0", "SIGUSR2")
    jl = (out / "0" / "expkit.log").read_text()
    # submitit's handler ran after the checkpoint: a time-out, counted (max_num_timeout: 3 in the preset)
    assert jl.count("this job is timed-out") == len(stops) and f"Requeued job {job} (2 remaining timeouts)" in jl, jl
    assert "Job not requeued" not in jl
    s = json.loads((out / "0" / "summary.json").read_text())
    assert s["status"] == "completed" and s["scheduler"]["restarts"] == len(stops) and s["scheduler"]["job_id"] == job
    _no_traceback(s)
    _same_metrics(out / "0", uninterrupted.dir("seed1"))


def test_start_is_idempotent_and_a_second_cluster_is_refused(slurm_cluster, tmp_path):
    r = _script("start")
    assert r.returncode == 0 and "already running" in r.stdout, r.stdout + r.stderr
    assert _script("status").returncode == 0
    other = tmp_path / "other"  # a second cluster's files: its slurmctld would be a foreign one's rival
    r = _script("start", env={"EXPKIT_SLURM_DIR": str(other), "SLURM_CONF": ""})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert "a slurmctld this script did not start is running" in r.stderr and not other.exists()


def test_the_script_refuses_another_clusters_configuration(tmp_path):
    """SLURM_CONF naming another cluster's file: one line, exit 2, nothing started or written."""
    other = tmp_path / "slurm.conf"
    other.write_text("ClusterName=theirs\n")
    d = tmp_path / "state"
    r = _script("start", env={"SLURM_CONF": str(other), "EXPKIT_SLURM_DIR": str(d)})
    if os.geteuid() != 0 or _why_no_cluster():
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        return
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert "nothing was changed" in r.stderr and not d.exists()


def test_scheduler_info_comes_from_slurms_environment(tmp_path):
    assert scheduler.info({}) is None  # no scheduler: summary.json says null
    env = {"SLURM_JOB_ID": "107", "SLURM_ARRAY_JOB_ID": "104", "SLURM_ARRAY_TASK_ID": "3", "SLURMD_NODENAME": "n7",
           "SLURM_RESTART_COUNT": "2", "SUBMITIT_EXECUTOR": "slurm", "SUBMITIT_FOLDER": str(tmp_path / "%j")}
    info = scheduler.info(env)
    assert {k: info[k] for k in ("name", "job_id", "array_job_id", "array_task_id", "node", "restarts")} == {
        "name": "slurm", "job_id": "107", "array_job_id": "104", "array_task_id": "3", "node": "n7", "restarts": 2}
    if "stdout" in info:  # submitit installed: the log files it gives this array task
        assert info["stdout"] == str(tmp_path / "104_3" / "104_3_0_log.out")
        assert info["stderr"] == str(tmp_path / "104_3" / "104_3_0_log.err")


def test_a_job_that_cannot_stop_at_a_step_stops_at_once():
    """install(at_steps=False) (an estimator's fit: no loop checks the flag): SIGUSR2 goes straight to the
    handler it replaced (submitit's requeue) and SIGTERM stops the job, as they would without expkit."""
    from expkit import preempt

    called = []
    old = {s: signal.getsignal(s) for s in preempt.SIGNALS}
    try:
        signal.signal(signal.SIGUSR2, lambda s, f: called.append(s))
        assert preempt.install(at_steps=False)
        for sig in preempt.SIGNALS:
            with pytest.raises(preempt.Preempted) as stopped:
                os.kill(os.getpid(), sig)
                time.sleep(1)
            assert stopped.value.code == 143 and "stopped without a checkpoint" in str(stopped.value)
        assert called == [signal.SIGUSR2] and not preempt.requested()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        preempt._state["previous"].clear()
        preempt._state["at_steps"] = True


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EXPKIT_SLURM_TIME_LIMIT"),
                    reason="SLURM's own time-limit warning: 3-4 minutes (EXPKIT_SLURM_TIME_LIMIT=1 runs it)")
def test_slurms_own_time_limit_warning_requeues_and_the_job_ends_equal(cluster, uninterrupted, tmp_path):
    """No signal from the test: hydra.launcher.timeout_min=1 and signal_delay_s=5 on a job sized from this
    machine's speed to train about a minute. SLURM sends USR2 at its first 30-s time-limit check with
    <= 35 s left: 25-55 s into the first run, and about 45 s into each requeued one (which starts ~15 s
    after a check), so every run trains 15-45 s and the job needs 1-3 requeues (max_num_timeout=6 here:
    the preset's 3 could run out on a slow, busy machine). Each run checkpoints, submitit counts a
    time-out and requeues it; the job ends exactly as an uninterrupted run."""
    speed = pd.read_csv(uninterrupted.dir("seed1") / "metrics.csv").time_s.median()
    epochs = max(150, int(60 / speed))
    args = [f"trainer.epochs={epochs}", "trainer.batch_size=8", "trainer.checkpoint_every_s=3600",
            f"data.root={uninterrupted.data}", "seed=1"]
    out = tmp_path / "sweep"
    t0 = time.monotonic()
    p = _popen("-m", *args, *LAUNCH, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=5",
               "hydra.launcher.max_num_timeout=6", f"hydra.sweep.dir={out}")
    ref = subprocess.Popen([sys.executable, "train.py", *args, f"hydra.run.dir={tmp_path / 'ref'}"], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log, _ = p.communicate(timeout=600)
        assert ref.wait(timeout=300) == 0
    finally:
        p.kill()
        ref.kill()
    assert p.returncode == 0, log[-3000:]
    jl = (out / "0" / "expkit.log").read_text()
    stops = [(int(e), int(s)) for sig, e, s, n in STOP.findall(jl) if sig == "SIGUSR2"]
    resumes = [(int(e), int(s)) for d, e, s in RESUME.findall(jl)]
    assert 1 <= len(stops) and stops == resumes, jl[-3000:]
    assert jl.count("this job is timed-out") == len(stops) and "Job not requeued" not in jl
    s = json.loads((out / "0" / "summary.json").read_text())
    assert s["status"] == "completed" and s["scheduler"]["restarts"] == len(stops)
    _no_traceback(s)
    _same_metrics(out / "0", tmp_path / "ref")
    starts = re.findall(r"\((\S+ \S+)\) - Starting with", open(s["scheduler"]["stdout"]).read())
    signals = re.findall(r"\[(\S+ \S+)\]\[expkit.preempt\]", jl)
    print(f"\n{epochs} epochs; runs started {starts}; SIGUSR2 at {signals}; {time.monotonic() - t0:.0f} s in all")
