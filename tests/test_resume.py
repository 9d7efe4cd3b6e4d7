"""Surviving interruptions: SIGKILL + resume, tampered checkpoints, sweeps that fail in part and re-run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, run_cli, write_countries

# threads=1: the same float reductions in both runs, so "same metrics" can mean bit-identical;
# checkpoint_every_s=0: a checkpoint after every epoch (the default waits 30 s between saves)
SLOW = ["trainer.epochs=6", "trainer.batch_size=8", "trainer.threads=1", "optim.lr=0.01", "trainer.checkpoint_every_s=0"]


def _ckpt_epoch(path):
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:  # not there yet
        return 0


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tmp_path):
    data = write_countries(tmp_path / "d", n=8000)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    args = [sys.executable, "train.py", f"data.root={data}", *SLOW, f"hydra.run.dir={killed}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _ckpt_epoch(killed / "checkpoint.pt") < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    k = _ckpt_epoch(killed / "checkpoint.pt")
    assert 2 <= k < 6 and not (killed / "summary.json").exists(), "the kill must land mid-training"

    resumed = run_cli(f"data.root={data}", *SLOW, f"hydra.run.dir={killed}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {k}" in resumed.stderr + resumed.stdout  # it resumed, not restarted
    assert run_cli(f"data.root={data}", *SLOW, f"hydra.run.dir={whole}").returncode == 0

    cols = lambda d: pd.read_csv(d / "metrics.csv").drop(columns="time_s")
    pd.testing.assert_frame_equal(cols(killed), cols(whole), check_exact=True)
    assert json.loads((killed / "summary.json").read_text())["status"] == "completed"
    assert not (killed / "checkpoint.pt").exists()  # removed once the run finished


def test_checkpoint_of_another_config_is_neither_resumed_nor_overwritten(tmp_path):
    data = write_countries(tmp_path / "d", n=400)
    run_dir = tmp_path / "r"
    base = [f"data.root={data}", "trainer.epochs=3", "trainer.threads=1", f"hydra.run.dir={run_dir}"]
    run_dir.mkdir()
    # what a killed run of some other config leaves behind (its weights would not even fit)
    torch.save({"epoch": 1, "config": "{}", "model": {}, "rows": []}, run_dir / "checkpoint.pt")
    before = (run_dir / "checkpoint.pt").read_bytes()
    r = run_cli(*base, "optim.lr=0.01")
    assert r.returncode == 2 and "written by a different config" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # never overwritten: the other config's progress stays, and nothing of this run is written
    assert (run_dir / "checkpoint.pt").read_bytes() == before and not (run_dir / "metrics.csv").exists()


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # what a malicious pickle does: run code on load
        return (os.system, (f"touch {self.path}",))


def test_tampered_or_malicious_checkpoint_fails_cleanly(tmp_path):
    data = write_countries(tmp_path / "d", n=200)
    for i, write in enumerate([lambda p: p.write_bytes(b"\x80\x04garbage"),
                               lambda p: torch.save({"epoch": 1, "x": Payload(tmp_path / "PWNED")}, p)]):
        run_dir = tmp_path / f"r{i}"
        run_dir.mkdir()
        write(run_dir / "checkpoint.pt")
        r = run_cli(f"data.root={data}", "trainer.epochs=2", f"hydra.run.dir={run_dir}")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cannot resume"), r.stderr
        assert "checkpoint.pt" in lines[0] and "Traceback" not in r.stderr
        assert not (run_dir / "summary.json").exists() and not (run_dir / "metrics.csv").exists()
    assert not (tmp_path / "PWNED").exists()


def test_sweep_records_failed_and_diverged_jobs_then_rerun_skips_finished(tmp_path):
    good, late = write_countries(tmp_path / "good", n=200), tmp_path / "late"  # `late` appears later
    sweep = tmp_path / "sweep"
    args = ["-m", "trainer.epochs=2", "optim=sgd", f"data.root={good},{late}", "optim.lr=0.01,1e9",
            f"hydra.sweep.dir={sweep}"]
    r = run_cli(*args)
    assert r.returncode == 1, r.stderr  # something failed: the exit status says so
    table = pd.read_csv(sweep / "results.csv")
    assert len(table) == 4
    by = {(row["data.root"], row["optim.lr"]): row for row in table.to_dict("records")}
    assert by[(str(good), 0.01)]["status"] == "completed"
    assert by[(str(good), 1e9)]["status"] == "diverged"
    for lr in (0.01, 1e9):  # the table says which jobs failed and why
        assert by[(str(late), lr)]["status"] == "failed" and "missing data file" in by[(str(late), lr)]["error"]

    write_countries(late, n=200)
    done = {j: (sweep / str(j) / "summary.json").stat().st_mtime_ns for j in range(4)
            if json.loads((sweep / str(j) / "summary.json").read_text())["status"] != "failed"}
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(sweep / "results.csv")
    assert set(table.status) == {"completed", "diverged"}
    for j, mtime in done.items():  # finished jobs were skipped, not re-trained
        assert (sweep / str(j) / "summary.json").stat().st_mtime_ns == mtime


def _children(pid, marker):
    """PIDs of the live processes whose parent is pid and whose command line holds marker."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and marker in cmd:
            out.append(int(stat.parent.name))
    return out


def test_killed_parallel_worker_is_a_failed_row_and_the_rerun_resumes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'")
    data = write_countries(tmp_path / "d", n=8000)
    sweep = tmp_path / "sweep"
    args = ["train.py", "-m", f"data.root={data}", *SLOW, "optim.lr=0.01,0.02", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 150
    while min(_ckpt_epoch(sweep / j / "checkpoint.pt") for j in "01") < 1 and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    workers = _children(proc.pid, "popen_loky_posix")
    assert workers and proc.poll() is None, "both jobs must be mid-training"
    os.kill(workers[0], signal.SIGKILL)  # what the OOM killer does to a worker
    assert proc.wait(timeout=120) == 1  # the sweep ends, saying something failed
    table = pd.read_csv(sweep / "results.csv")
    lost = table[table.status == "failed"]
    assert len(table) == 2 and len(lost) >= 1 and lost.error.str.contains("launcher lost this job").all()

    r = run_cli(*args[1:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(pd.read_csv(sweep / "results.csv").status) == {"completed"}
    resumed = [j for j in lost.job.astype(str) if "resumed from" in (sweep / j / "expkit.log").read_text()]
    assert resumed  # a lost job goes on from its checkpoint


@pytest.mark.parametrize("every,saves", [(0, 3), (1e9, 0)])
def test_checkpoints_are_written_by_elapsed_time(tmp_path, monkeypatch, every, saves):
    """A checkpoint costs a write; it is made at the end of the first epoch that ends at least
    trainer.checkpoint_every_s after the last one (never after the last epoch)."""
    from conftest import compose_cfg
    from expkit.runner import run
    from expkit.trainers import checkpoint

    data = write_countries(tmp_path / "d", n=200)
    calls = []
    real = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda m, epoch, *a, **kw: calls.append(epoch) or real(m, epoch, *a, **kw))
    run(compose_cfg([f"data.root={data}", "trainer.epochs=4", f"trainer.checkpoint_every_s={every}"]), tmp_path / "r")
    assert len(calls) == saves and calls == sorted(calls)
