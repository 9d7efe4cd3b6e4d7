"""A scheduler's SIGTERM (preemption, requeue, scancel) or SIGUSR2 (time limit): the job
checkpoints at the next step boundary, mid-epoch, and stops; run again, it resumes from that step
and ends bit-equal to an uninterrupted run (the CPU run is deterministic). A fused group does the
same for every member. The real SLURM path is in tests/test_slurm.py."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import ROOT, run_cli, write_countries
from expkit import preempt


def start(args, log):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def signal_mid_epoch(proc, log_path, sig=signal.SIGTERM, after="epoch 1/"):
    """Send `sig` once the log shows `after` (a finished first epoch), i.e. during the second epoch."""
    deadline = time.time() + 120
    while after not in log_path.read_text() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, log_path.read_text()[-3000:]
    time.sleep(0.3)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return log_path.read_text()


def same_metrics(a, b):
    pd.testing.assert_frame_equal(pd.read_csv(a / "metrics.csv").drop(columns="time_s"),
                                  pd.read_csv(b / "metrics.csv").drop(columns="time_s"))


@pytest.mark.slow
def test_sigterm_checkpoints_mid_epoch_and_the_rerun_ends_equal(tmp_path):
    data = write_countries(tmp_path / "d", n=4000)
    args = [f"data.root={data}", "trainer.epochs=3", "trainer.batch_size=8", "trainer.threads=1",
            "trainer.checkpoint_every_s=3600", "trainer.record_steps=true"]  # no time-based checkpoint in 3 epochs
    assert run_cli(*args, f"hydra.run.dir={tmp_path / 'ref'}").returncode == 0
    run_dir = tmp_path / "run"
    with open(tmp_path / "log.txt", "w") as log:
        proc = start([*args, f"hydra.run.dir={run_dir}"], log)
        out = signal_mid_epoch(proc, tmp_path / "log.txt")
    assert proc.returncode == 143, out[-3000:]
    assert "SIGTERM received: checkpoint in epoch 2 at step" in out and "Traceback" not in out
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["partial"]["step"] < 500 and len(state["rows"]) == 1
    assert not (run_dir / "summary.json").exists()

    r = run_cli(*args, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"in epoch 2 after step {state['partial']['step']}" in r.stdout + r.stderr
    same_metrics(run_dir, tmp_path / "ref")
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "steps.csv"), pd.read_csv(tmp_path / "ref" / "steps.csv"))


@pytest.mark.slow
def test_a_fused_group_stops_and_resumes_every_member(tmp_path):
    data = write_countries(tmp_path / "d", n=4000)
    common = [f"data.root={data}", "trainer.epochs=3", "trainer.batch_size=8", "trainer.checkpoint_every_s=3600"]
    refs = {}
    for s in (1, 2):
        refs[s] = tmp_path / f"ref{s}"
        assert run_cli(*common, f"seed={s}", f"hydra.run.dir={refs[s]}").returncode == 0
    sweep = [*common, "seed=1,2", "hydra.sweeper.fuse=true", f"hydra.sweep.dir={tmp_path / 's'}"]
    with open(tmp_path / "log.txt", "w") as log:
        proc = start(["-m", *sweep], log)
        out = signal_mid_epoch(proc, tmp_path / "log.txt")
    assert proc.returncode == 143 and "Traceback" not in out, out[-3000:]
    for d in ("0", "1"):
        assert torch.load(tmp_path / "s" / d / "checkpoint.pt", weights_only=True)["partial"]["step"] > 0
    r = run_cli("-m", *sweep)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (r.stdout + r.stderr).count("in epoch 2 after step") == 2
    for d, s in (("0", 1), ("1", 2)):
        same_metrics(tmp_path / "s" / d, refs[s])


def test_sigusr2_is_handed_to_the_handler_it_replaced():
    """A time limit: after the checkpoint, submitit's own SIGUSR2 handler (here a stand-in) requeues the job."""
    called = []
    old_term, old_usr2 = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR2)
    try:
        signal.signal(signal.SIGUSR2, lambda s, f: called.append(s))
        assert preempt.install() and preempt.installed() and not preempt.requested()
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.1)
        assert preempt.requested() and not called  # the handler only set the flag
        with pytest.raises(preempt.Preempted):
            preempt.stop("checkpoint in epoch 1 at step 3/10")
        assert called == [signal.SIGUSR2] and not preempt.requested()
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGUSR2, old_usr2)
        preempt._state["previous"].clear()
