"""A fused member is its separate run whatever happens to its group: members leaving (the stack
shrinks, down to K = 1), checkpoints written at one K and resumed at another, and its times are
its own share of the group's.

Tolerance: that of tests/test_one_path.py (rounding only: losses 1e-4, accuracies one sample).
Before the optimizer state travelled per member in its own shapes, a survivor of a group read its
Adam moments / momentum buffer in the wrong layout after the stack shrank: val loss 1.374 vs
1.420 at epoch 2 for the issue's SGD example, far outside this tolerance.
"""
import copy
import json

import pandas as pd
import pytest
import torch

from conftest import compose_cfg, killed_after_epoch_2, load_for
from expkit.config import validate
from expkit.models import build
from expkit.runner import run, run_group
from expkit.trainers.stacked import Scaler, Stack
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


@pytest.mark.parametrize("setup", ["mlp-adam", "mlp-sgd-momentum"])
def test_a_member_steps_bit_for_bit_in_groups_of_any_size(setup, countries_root):
    """Same batches, one lr: member 1 of a group of 2 (the last member: its last elements end the flat
    tensors) and of a group of 3 take 1500 steps and end with the same bits. Before the flat tensors were
    padded (stacked.Stack._flatten), the vectorised update's scalar tail rounded the last member's last elements
    differently now and then (the ex4 10x16 MLP alone vs fused: 1 ulp at step 183, 0.09 val acc apart after
    5 epochs). A member alone runs the plain model, whose matmuls round differently from the stacked ones:
    equal to rounding only (the tests above)."""
    cfgs = configs(setup, countries_root, (1, 2, 3), "model.depth=2", "model.width=15")
    splits = load_for(cfgs[0])
    models = [built(c, splits) for c in cfgs]
    two, three = (Stack([trainer.Member(c, copy.deepcopy(m), None) for c, m in zip(cfgs[:k], models)],
                        torch.device("cpu")) for k in (2, 3))
    assert two.n % 8 and three.n % 8  # a tail to round differently, were it not padded
    g = torch.Generator().manual_seed(0)
    for _ in range(1500):
        xb = torch.randn(32, splits.train.x.shape[1], generator=g)
        yb = torch.randint(0, int(splits.train.y.max()) + 1, (32,), generator=g)
        for run in (two, three):
            loss, _ = trainer.loss_and_hits(run(xb, per_member=False), yb)
            run.zero_grad()
            loss.sum().backward()
            run.step()
    two.write_back(), three.write_back()
    for (name, a), b in zip(two.members[1].model.state_dict().items(), three.members[1].model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("model", [["model.width=15"], ["model.batchnorm=true", "model.width=16"]])
def test_members_train_bit_for_bit_whatever_their_group(model, countries_root, tmp_path):
    """Whole runs through trainer.fit (per-member shuffles, evaluation): seeds 1 and 2 trained in a group of 2
    and in a group of 3 have exactly the same rows (not just to rounding). BatchNorm's statistics are vectorised
    over the stack's K x width channels: bit for bit where the width is a multiple of 8, else to rounding."""
    cfgs = configs("mlp-adam", countries_root, (1, 2, 3), "trainer.epochs=3", "trainer.checkpoint=false", *model)
    splits = load_for(cfgs[0])
    rows = [trainer.fit([trainer.Member(c, built(c, splits), tmp_path / f"{k}{j}") for j, c in enumerate(cfgs[:k])],
                        splits, torch.device("cpu")) for k in (2, 3)]
    for j in (0, 1):
        a, b = (pd.DataFrame(r[j].rows).drop(columns=["time_s"]) for r in rows)
        pd.testing.assert_frame_equal(a, b, check_exact=True)


class LateVerdict:
    """A callback whose verdict on epoch `at` comes only after every member reported it (a halving rung
    decided by the group's last member): settle() gives it."""

    def __init__(self, at):
        self.at = at

    def __call__(self, row):
        return None

    def settle(self, epoch):
        return "pruned" if epoch == self.at else None


def test_a_verdict_reached_after_a_members_report_stops_it_in_the_same_epoch(countries_root, tmp_path):
    cfgs = configs("mlp-adam", countries_root, (1, 2, 3), "trainer.epochs=4", "trainer.checkpoint=false")
    splits = load_for(cfgs[0])
    members = [trainer.Member(c, built(c, splits), tmp_path / f"g{k}", callbacks=[LateVerdict(2)] if k == 0 else [])
               for k, c in enumerate(cfgs)]
    out = trainer.fit(members, splits, torch.device("cpu"))
    assert [len(h.rows) for h in out] == [2, 4, 4] and out[0].stopped_by == "pruned"
