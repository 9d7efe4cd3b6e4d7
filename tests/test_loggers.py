"""Loggers: TensorBoard and MLflow get one run per job, nested under the sweep, no state shared between jobs."""
import pytest
from omegaconf import OmegaConf

from conftest import run_cli, write_countries
from expkit import loggers
from expkit.errors import UserError

SWEEP = ["-m", "optim.lr=0.01,0.001", "trainer.epochs=3", "trainer.batch_size=64"]


def test_tensorboard_one_run_per_job_in_one_process(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install -e '.[loggers]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_countries(tmp_path / "d", n=200)
    r = run_cli(*SWEEP, "logger=tensorboard", f"data.root={data}", f"hydra.sweep.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr[-2000:]
    losses = []
    for job in ("0", "1"):  # the basic launcher runs both jobs in one process
        acc = EventAccumulator(str(tmp_path / "s" / job / "tensorboard")).Reload()
        events = acc.Scalars("train/loss")
        assert [e.step for e in events] == [1, 2, 3]  # its own 3 epochs, nothing from the other job
        losses.append([e.value for e in events])
    assert losses[0] != losses[1]


def test_mlflow_sweep_is_a_parent_run_with_a_child_per_job(tmp_path):
    pytest.importorskip("mlflow", reason="pip install -e '.[loggers]'")
    from mlflow.tracking import MlflowClient

    data = write_countries(tmp_path / "d", n=200)
    uri = f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}"
    # joblib (when installed): jobs in parallel processes must still agree on one parent run
    launcher = ["hydra/launcher=joblib"] if _has("hydra_plugins.hydra_joblib_launcher") else []
    r = run_cli(*SWEEP, *launcher, "logger=mlflow", f"logger.tracking_uri={uri}", "name=mlt", f"data.root={data}",
                f"hydra.sweep.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr[-2000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("mlt").experiment_id])
    parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2  # one parent for the sweep, one child per job
    for p in parents.values():
        kids = [c for c in children if c.data.tags["mlflow.parentRunId"] == p.info.run_id]
        assert sorted(c.data.params["optim.lr"] for c in kids) == ["0.001", "0.01"]
    for c in children:
        history = client.get_metric_history(c.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == [1, 2, 3] and c.info.status == "FINISHED"
        assert c.data.tags["expkit.status"] == "completed" and 0 <= c.data.metrics["final_test_acc"] <= 1


def test_missing_logger_package_fails_before_training(monkeypatch):
    monkeypatch.setitem(loggers.NEEDS, "mlflow", "expkit_no_such_package")
    with pytest.raises(UserError, match=r"pip install -e \"\.\[loggers\]\""):
        loggers.check(OmegaConf.create({"name": "mlflow"}))


def test_unknown_logger_name_is_a_config_error(tmp_path):
    r = run_cli("logger.name=wandb", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 2 and "logger.name must be csv, tensorboard or mlflow" in r.stderr


def _has(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("backend", ["tensorboard", "mlflow"])
def test_a_run_killed_half_way_has_its_finished_epochs_in_the_logger(tmp_path, monkeypatch, backend):
    """Live: each epoch goes to the logger as it ends (the trainer's per-epoch callback)."""
    pytest.importorskip(backend, reason="pip install -e '.[loggers]'")
    from conftest import compose_cfg
    from expkit.runner import run
    from expkit.trainers import torch as trainer

    data = write_countries(tmp_path / "d", n=200)
    uri = f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}"
    cfg = compose_cfg([f"data.root={data}", "trainer.epochs=5", f"logger={backend}", f"logger.tracking_uri={uri}",
                       "name=live"] if backend == "mlflow" else [f"data.root={data}", "trainer.epochs=5", f"logger={backend}"])
    real = trainer._stop_or_go

    def killed(m, row, epoch, t, k):
        if epoch == 2:
            raise KeyboardInterrupt  # killed after its third epoch ended
        real(m, row, epoch, t, k)

    monkeypatch.setattr(trainer, "_stop_or_go", killed)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "r")
    if backend == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "r" / "tensorboard")).Reload()
        assert [e.step for e in acc.Scalars("val/acc")] == [1, 2, 3]
    else:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run_, = client.search_runs([client.get_experiment_by_name("live").experiment_id])
        assert sorted(m.step for m in client.get_metric_history(run_.info.run_id, "val_acc")) == [1, 2, 3]
        assert run_.info.status == "RUNNING" and run_.data.tags["expkit.status"] == "running"


def test_mlflow_run_prints_no_third_party_chatter(tmp_path):
    pytest.importorskip("mlflow", reason="pip install -e '.[loggers]'")
    data = write_countries(tmp_path / "d", n=200)
    r = run_cli("logger=mlflow", f"logger.tracking_uri=sqlite:///{tmp_path / 'ml.db'}", "trainer.epochs=1",
                f"data.root={data}", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr + (tmp_path / "r" / "expkit.log").read_text()
    # a new store: mlflow's "Creating initial MLflow database tables" and alembic's migrations stay quiet
    assert "mlflow.store" not in out and "alembic" not in out.lower() and "\x1b[" not in out
