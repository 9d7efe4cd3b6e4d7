"""A fused member is its separate run whatever happens to its group: members leaving (the stack
shrinks, down to K = 1), checkpoints written at one K and resumed at another, and its times are
its own share of the group's.

Tolerance: that of tests/test_one_path.py (rounding only: losses 1e-4, accuracies one sample).
Before the optimizer state travelled per member in its own shapes, a survivor of a group read its
Adam moments / momentum buffer in the wrong layout after the stack shrank: val loss 1.374 vs
1.420 at epoch 2 for the issue's SGD example, far outside this tolerance.
"""
import json

import pandas as pd
import pytest
import torch

from conftest import compose_cfg, killed_after_epoch_2, load_for
from expkit.config import validate
from expkit.models import build
from expkit.runner import run, run_group
from expkit.trainers.stacked import Scaler
from expkit.trainers import checkpoint, torch as trainer
from test_one_path import close

SETUPS = {
    "mlp-adam": ["optim.lr=0.01", "optim.weight_decay=0.001"],
    "mlp-sgd-momentum": ["optim=sgd", "optim.lr=0.05", "optim.momentum=0.9"],
    "cnn-sgd-momentum": ["data=synth_edges", "data.n=300", "model=cnn",
                         "model.convs=[{filters: 3, kernel: 5, pool: 2}]", "optim=sgd", "optim.lr=0.0003",
                         "optim.momentum=0.9"],
    "cnn-adam": ["data=synth_edges", "data.n=300", "model=cnn", "model.convs=[{filters: 3, kernel: 5, pool: 2}]",
                 "optim.lr=0.003"],
}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def configs(setup, root, seeds, *extra):
    data = [] if setup.startswith("cnn") else [f"data.root={root}"]
    return [validate(compose_cfg([*data, *SETUPS[setup], "trainer.batch_size=32", f"seed={s}", *extra]))
            for s in seeds]


def built(c, splits):
    torch.manual_seed(c.seed)
    return build(c.model, splits)[1]


def leave_after(epoch):
    """A callback that stops its member after `epoch` (as a pruner would)."""
    return lambda row: "pruned" if row["epoch"] == epoch else None


@pytest.mark.parametrize("setup", list(SETUPS))
def test_members_that_stay_after_others_leave_equal_their_separate_runs(setup, countries_root, tmp_path):
    """A group of 3 shrinks to 2 after epoch 1 and to 1 after epoch 2; a group of 2 loses one after epoch 1.
    Every member, the survivors included, equals its own run to rounding at every epoch."""
    cfgs = configs(setup, countries_root, (1, 2, 3), "trainer.epochs=4", "trainer.checkpoint=false")
    splits = load_for(cfgs[0])
    for leaves in ([1, 2, None], [1, None]):
        members = [trainer.Member(c, built(c, splits), tmp_path / f"g{k}",
                                  callbacks=[leave_after(e)] if e else [])
                   for k, (c, e) in enumerate(zip(cfgs, leaves))]
        group = trainer.fit(members, splits, torch.device("cpu"))
        for k, (c, e) in enumerate(zip(cfgs, leaves)):
            alone, = trainer.fit([trainer.Member(c, built(c, splits), tmp_path / f"a{k}",
                                                 callbacks=[leave_after(e)] if e else [])],
                                 splits, torch.device("cpu"))
            assert len(group[k].rows) == (e or 4)
            close(pd.DataFrame(group[k].rows), pd.DataFrame(alone.rows), len(splits.val))
        assert group[-1].rows[-1]["train_loss"] != group[0].rows[-1]["train_loss"]


@pytest.mark.parametrize("setup", ["mlp-adam", "mlp-sgd-momentum", "cnn-adam"])
@pytest.mark.parametrize("first,then", [("alone", "group"), ("group", "alone")])
def test_checkpoints_resume_at_another_group_size(setup, first, then, countries_root, tmp_path, monkeypatch):
    """Separate runs killed and resumed as a group of 2, and a group of 2 killed and resumed as separate runs:
    each equals its uninterrupted run. The checkpoint holds the member's own state: it does not depend on K."""
    cfgs = configs(setup, countries_root, (1, 2), "trainer.epochs=4", "trainer.checkpoint_every_s=0")
    ref = [tmp_path / f"ref{k}" for k in range(2)]
    for c, d in zip(cfgs, ref):
        run(c, d)
    dirs = [tmp_path / f"run{k}" for k in range(2)]

    def train(how):
        if how == "group":
            return run_group(cfgs, dirs, [[], []])
        return [run(c, d) for c, d in zip(cfgs, dirs)]

    restore = killed_after_epoch_2(monkeypatch)
    for c, d in ([(None, None)] if first == "group" else zip(cfgs, dirs)):
        with pytest.raises(KeyboardInterrupt):
            run_group(cfgs, dirs, [[], []]) if first == "group" else run(c, d)
    assert all((d / "checkpoint.pt").exists() and not (d / "summary.json").exists() for d in dirs)
    restore()
    summaries = train(then)
    for d, r, s in zip(dirs, ref, summaries):
        assert s["status"] == "completed"
        ours, theirs = (pd.read_csv(p / "metrics.csv").drop(columns="time_s") for p in (d, r))
        assert len(ours) == 4
        close(ours, theirs, s["n_val"])


def test_times_are_the_members_own_share(countries_root, tmp_path, monkeypatch):
    """wall_time_s is everything the member cost (set-up to files), time_per_epoch_s its epochs only; in a
    group each is its share (a member that left after epoch 1 is not charged the epochs after it); a resumed
    run adds the time of the process before it and averages only the epochs it trained."""
    import time

    cfgs = configs("mlp-adam", countries_root, (1, 2), "trainer.epochs=6", "trainer.checkpoint=false")
    splits = load_for(cfgs[0])
    started = time.perf_counter()
    members = [trainer.Member(c, built(c, splits), tmp_path / f"m{k}", callbacks=[leave_after(e)] if e else [])
               for k, (c, e) in enumerate(zip(cfgs, (1, None)))]
    short, long = trainer.fit(members, splits, torch.device("cpu"), started=started)
    total = time.perf_counter() - started
    assert len(short.rows) == 1 and len(long.rows) == 6
    assert short.train_s == pytest.approx(short.rows[0]["time_s"])
    assert long.train_s == pytest.approx(sum(r["time_s"] for r in long.rows))
    assert short.wall_s < long.wall_s and short.wall_s + long.wall_s == pytest.approx(total, rel=0.01)
    assert long.wall_s > long.train_s  # set-up and the final evaluation are counted

    s = run_group(cfgs, [tmp_path / "a", tmp_path / "b"], [[], []])
    assert [x["group_size"] for x in s] == [2, 2]
    assert sum(x["wall_time_s"] for x in s) >= s[0]["group_wall_time_s"]
    for x, d in zip(s, ("a", "b")):
        assert x["time_per_epoch_s"] == pytest.approx(pd.read_csv(tmp_path / d / "metrics.csv").time_s.mean())

    # a resumed run: the first process's time is added, its epochs' times kept
    c = validate(compose_cfg([f"data.root={countries_root}", "trainer.epochs=4", "trainer.checkpoint_every_s=0"]))
    restore = killed_after_epoch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(c, tmp_path / "resumed")
    first_wall = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["wall_s"]
    assert first_wall > 0
    restore()
    t0 = __import__("time").perf_counter()
    resumed = run(c, tmp_path / "resumed")
    second = __import__("time").perf_counter() - t0
    assert second < resumed["wall_time_s"] <= first_wall + second + 0.01
    m = pd.read_csv(tmp_path / "resumed" / "metrics.csv")
    assert resumed["time_per_epoch_s"] == pytest.approx(m.time_s.mean())
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["wall_time_s"] == resumed["wall_time_s"]


def test_an_fp16_checkpoint_keeps_the_loss_scale(countries_root, tmp_path, monkeypatch):
    """fp16-mixed: the loss scaler's state (scale, clean steps) is saved and restored with the run."""
    c = validate(compose_cfg([f"data.root={countries_root}", "trainer.epochs=3", "trainer.checkpoint_every_s=0"]))
    splits = load_for(c)
    m = trainer.Member(c, built(c, splits), tmp_path / "r")
    m.run_dir.mkdir()
    m.hist = trainer.History()
    m.shuffle, m.draws = torch.Generator(), torch.Generator()
    scaler = Scaler(scale=1024.0)
    scaler.good = 17
    m.fingerprint = checkpoint.fingerprint(c, torch.device("cpu"), "fp16-mixed")
    checkpoint.save(m, 1, scaler)
    loop = trainer.Loop(c, splits, torch.device("cpu"), False, "fp16-mixed")
    assert (loop.scaler.value, loop.scaler.good) == (2.0 ** 16, 0)
    fresh = trainer.Member(c, built(c, splits), tmp_path / "r")
    fresh.hist, fresh.shuffle, fresh.draws = trainer.History(), torch.Generator(), torch.Generator()
    fresh.fingerprint = m.fingerprint
    checkpoint.resume(fresh, loop.scaler)
    assert (loop.scaler.value, loop.scaler.good) == (1024.0, 17)
