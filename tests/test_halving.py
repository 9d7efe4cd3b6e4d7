"""Synchronous successive halving (issue 22 item 1): at each rung every trial that reached it reports
before any is judged, and the best 1/3 go on, whatever the order of members in a fused group or of
groups across processes. The trainer's callbacks are driven here as the fused loop drives them (one
loop iteration per epoch, every active member's callback in member order); the end-to-end sweep is at
the bottom."""
import json
import multiprocessing
import random
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_cli, write_countries

optuna = pytest.importorskip("optuna", minversion="3", reason="pip install -e '.[hpo]'")

from expkit import hpo  # noqa: E402
from expkit.halving import KEY, SyncHalvingPruner  # noqa: E402

EPOCHS = 9
PRUNER = {"_target_": "expkit.halving.SyncHalvingPruner", "reduction_factor": 3, "min_resource": 1,
          "stall_s": 60, "poll_s": 0.02}


def curve(number, epoch, seed=None):
    """A trial's val accuracy after an epoch: its own level, a little better each epoch, and ties at
    epoch 1 between trials 2 and 3 (the lower number goes on) ; seeds spread around the level."""
    level = [0.50, 0.60, 0.70, 0.70, 0.55, 0.65, 0.40, 0.45, 0.62][number]
    late = 0.05 if number in (0, 4) and epoch >= 2 else 0.0  # slow starters: better after the first rung
    return round(level + late + 0.01 * epoch + (0.0 if seed is None else 0.01 * (seed - 2)), 6)


def make_study(tmp_path, n_trials, seeds=None, pruner=PRUNER):
    """A study of n_trials asked trials, each with run dirs and trial files as expkit's sweeper writes them."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    space = {"x": optuna.distributions.CategoricalDistribution(list(range(n_trials)))}
    members = []
    for _ in range(n_trials):
        t = study.ask(space)
        for seed in seeds or [None]:
            d = tmp_path / (f"trial_{t.number}" + (f"_seed{seed}" if seed else ""))
            (d / ".hydra").mkdir(parents=True)
            (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"epochs": EPOCHS}}))
            spec = {"storage": storage, "study_name": "s", "number": t.number, "trial_id": t._trial_id, "pruner": pruner}
            if seeds:
                spec.update(seed=seed, seeds=list(seeds))
            (d / hpo.TRIAL_FILE).write_text(json.dumps(spec))
            members.append((t.number, seed, d))
    return storage, members


def train_group(members, delay=None):
    """The fused loop's view of one group: callbacks made in member order, then per epoch every active
    member's callback in order; returns {(trial, seed): epochs trained}."""
    hpo._LOCAL.clear()
    callbacks = [(n, s, hpo.pruning_callback(d)) for n, s, d in members]
    ran = {}
    active = list(callbacks)
    for epoch in range(1, EPOCHS + 1):
        if delay:
            time.sleep(delay())
        still = []
        for n, s, cb in active:
            ran[(n, s)] = epoch
            row = {"epoch": epoch, "val_acc": curve(n, epoch, s), "train_loss": 1.0, "val_loss": 1.0}
            if not cb(row) and epoch < EPOCHS:
                still.append((n, s, cb))
        # as the trainer does once every member reported the epoch: verdicts reached since (a rung decided
        # by a later member) stop their members now
        active = [(n, s, cb) for n, s, cb in still if not cb.settle(epoch)]
    return ran


def decisions(storage):
    study = optuna.load_study(study_name="s", storage=storage)
    return {r: sorted(study.user_attrs[KEY.format(r)]["promoted"]) for r in (1, 3) if KEY.format(r) in study.user_attrs}


def _fresh_process_group(members, order_seed, out):
    hpo._STUDIES.clear()
    rng = random.Random(order_seed)
    members = list(members)
    rng.shuffle(members)
    out.put(train_group(members, delay=lambda: rng.uniform(0, 0.05)))


def test_rungs_and_ties():
    p = SyncHalvingPruner(reduction_factor=3, min_resource=1)
    assert p.rungs(100, epochs=9) == [1, 3] and p.rungs(2) == [1] and p.rungs(27) == [1, 3, 9, 27]
    assert SyncHalvingPruner(reduction_factor=2, min_resource=2).rungs(100, epochs=20) == [2, 4, 8, 16]


@pytest.mark.parametrize("order", [0, 1, 2])
def test_the_outcome_does_not_depend_on_member_order_in_a_fused_group(tmp_path, order):
    storage, members = make_study(tmp_path, 9)
    rng = random.Random(order)
    if order:
        rng.shuffle(members)
    ran = train_group(members)
    # rung 1 (epoch 1): 9 reached it, the best 3 go on: 2 and 3 tie at 0.71, 5 (0.66) next; slow starters out
    assert decisions(storage) == {1: [2, 3, 5], 3: [2]}
    assert {n for (n, _), e in ran.items() if e == EPOCHS} == {2}
    for (n, _), e in ran.items():  # a pruned member stopped at its rung, wherever it stood in the group
        assert e == (1 if n not in (2, 3, 5) else (3 if n != 2 else EPOCHS)), (n, e)  # (before: one epoch past it
        # when it was judged before the group's last member reported)
    study = optuna.load_study(study_name="s", storage=storage)
    for t in study.trials:  # every trial's reports are its own values, one per epoch trained
        assert t.intermediate_values == {e: curve(t.number, e) for e in range(1, ran[(t.number, None)] + 1)}
    # certainly-out members stop at the rung itself: 6 and 7 (the two worst) once three better ones reported
    if order == 0:
        assert ran[(6, None)] == 1 and ran[(7, None)] == 1


def test_the_outcome_does_not_depend_on_groups_across_processes(tmp_path):
    storage, members = make_study(tmp_path, 9)
    groups = [members[0:4], members[4:7], members[7:9]]
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_fresh_process_group, args=(g, k, out)) for k, g in enumerate(groups)]
    for p in procs:
        p.start()
    ran = {}
    for _ in procs:
        ran.update(out.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
    assert decisions(storage) == {1: [2, 3, 5], 3: [2]}  # the same as in one group, in any order
    assert {n for (n, _), e in ran.items() if e == EPOCHS} == {2}
    assert sum(ran.values()) == 6 * 1 + 2 * 3 + EPOCHS  # every pruned member stopped at its rung


def test_seeds_of_a_trial_report_their_mean_once_and_stop_together(tmp_path):
    """hydra.sweeper.seeds=3 in one fused group: the trial's report per epoch is its seeds' mean, made once
    (by its last seed); a verdict stops its seeds after the same epoch."""
    storage, members = make_study(tmp_path, 9, seeds=[1, 2, 3])
    ran = train_group(members)
    study = optuna.load_study(study_name="s", storage=storage)
    assert decisions(storage) == {1: [2, 3, 5], 3: [2]}  # the mean of seeds 1-3 is the one-seed curve
    for t in study.trials:
        epochs = {ran[(t.number, s)] for s in (1, 2, 3)}
        assert len(epochs) == 1  # together
        assert t.intermediate_values == pytest.approx({e: curve(t.number, e) for e in range(1, min(epochs) + 1)})


def test_median_pruner_sees_the_mean_of_the_seeds(tmp_path):
    """Any Optuna pruner: asked once per epoch with the seeds' mean; a pruned trial's seeds stop together."""
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.6}
    storage, members = make_study(tmp_path, 3, seeds=[1, 2], pruner=pruner)
    ran = train_group(members)
    # trial 0 (0.5 + 0.01 e) is under 0.6 at epoch 1: its seeds stop together after epoch 2 (the first seed
    # had passed epoch 1 when the last one reported); trials 1 and 2 (from 0.61) train on
    assert ran[(0, 1)] == ran[(0, 2)] == 2 and ran[(1, 1)] == ran[(2, 2)] == EPOCHS
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.trials[0].intermediate_values == pytest.approx({e: (curve(0, e, 1) + curve(0, e, 2)) / 2 for e in (1, 2)})


def test_a_pruner_of_another_kind_leaves_the_default_median_settings_out():
    p = hpo.build_pruner({"_target_": "optuna.pruners.SuccessiveHalvingPruner", "n_startup_trials": 5,
                          "n_warmup_steps": 2, "reduction_factor": 3})
    assert isinstance(p, optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(hpo.build_pruner(None), optuna.pruners.NopPruner)
    p = hpo.build_pruner({"_target_": "expkit.halving.SyncHalvingPruner", "n_startup_trials": 5, "n_warmup_steps": 2})
    assert isinstance(p, SyncHalvingPruner) and p.eta == 3


@pytest.mark.slow
def test_grid_halving_sweep_fused(tmp_path):
    """The preset on a smaller grid (3 lr x 2 widths, 3 epochs: one rung at epoch 1): all trials asked
    together, fused by width in two groups on two joblib workers; a third go on after epoch 1."""
    data = write_countries(tmp_path / "d", n=300)
    sweep = tmp_path / "s"
    r = run_cli("-m", "experiment=hpo/grid_halving", f"data.root={data}", "trainer.epochs=3",
                "optim.lr=choice(0.1,0.01,0.001)", "model.width=choice(8,16)", "hydra.sweeper.n_trials=6",
                "hydra.sweeper.n_jobs=6", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "fused: 6 job(s) train as 2 unit(s)" in out
    study = optuna.load_study(study_name="grid_halving", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE"] * 2 + ["PRUNED"] * 4
    rung = study.user_attrs[KEY.format(1)]
    assert rung["n"] == 6 and rung["k"] == 2 and not rung["missing"]
    by_value = sorted(study.trials, key=lambda t: (-t.intermediate_values[1], t.number))
    assert sorted(rung["promoted"]) == sorted(t.number for t in by_value[:2])
    for t in study.trials:
        s = json.loads((Path(t.user_attrs["dir"]) / "summary.json").read_text())
        assert s["status"] == ("completed" if t.state.name == "COMPLETE" else "pruned")
        assert s["epochs_run"] == (3 if t.state.name == "COMPLETE" else 1)  # pruned at its rung, wherever it stood
    assert "member-epochs trained:" in out and "of the full grid's 18" in out
    assert "pruned@" in out and (sweep / "best.json").exists()


def test_grid_halving_on_the_basic_launcher_decides_without_waiting(tmp_path):
    """The basic launcher trains the groups one after another: nobody trains beside the first group, so its
    rung is decided at once over its own members (it waited 120 s per rung before) and the second group is
    judged against that rung's cutoff; the log says halving is asynchronous here."""
    data = write_countries(tmp_path / "d", n=300)
    sweep = tmp_path / "s"
    r = run_cli("-m", "experiment=hpo/mlp_lr_width", f"data.root={data}", "trainer.epochs=3",
                "optim.lr=choice(0.1,0.01,0.001)", "model.width=choice(8,16)", "hydra.sweeper.n_trials=6",
                "hydra.sweeper.n_jobs=6", "hydra.sweeper.fuse=true", "hydra.sweeper.study_name=grid_halving",
                "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
                "++hydra.sweeper.pruner={_target_: expkit.halving.SyncHalvingPruner, reduction_factor: 3}",
                f"hydra.sweep.dir={sweep}")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "asynchronous, in effect" in out and "no report for" not in out
    study = optuna.load_study(study_name="grid_halving", storage=f"sqlite:///{sweep / 'optuna.db'}")
    rung = study.user_attrs[KEY.format(1)]
    assert rung["n"] == 3 and len(rung["missing"]) == 3  # decided over the first group, the others missing
    assert sum(t.state.name == "COMPLETE" for t in study.trials) >= 1
