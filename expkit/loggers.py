"""Experiment loggers (`logger=csv|tensorboard|mlflow`): replay a finished run's saved rows.

CSV is what every run writes anyway (metrics.csv, summary.json). TensorBoard and MLflow get
the same rows after training, so the hot loop stays clean and a logger can never change a
result. Every call opens and closes its own writer/client (no global "active run"), so jobs
that share a process (basic or joblib launcher) never see each other's state.
    tensorboard: <run dir>/tensorboard/     -> tensorboard --logdir <sweep dir>  (one run per job)
    mlflow:      sqlite db (default outputs/mlflow.db); experiment = `name`; a sweep is a parent
                 run, each job a child run   -> mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db
"""
import fcntl
import json
import logging
from pathlib import Path

from expkit.errors import UserError

log = logging.getLogger(__name__)
NEEDS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def check(conf):
    """Fail before training when the chosen logger is not installed."""
    module = NEEDS.get(conf.name)
    if module:
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"logger={conf.name} needs the {module} package: pip install -e \".[loggers]\" "
                            "(or use logger=csv)") from None


def log_run(cfg, run_dir: Path, rows, summary, sweep_dir=None):
    """Send one finished run to the configured logger. Never fails the run: its files are saved."""
    if cfg.logger.name == "csv":
        return
    if sweep_dir is None:
        sweep_dir = _sweep_dir()
    try:
        if cfg.logger.name == "tensorboard":
            _tensorboard(cfg, run_dir, rows, summary)
        elif cfg.logger.name == "mlflow":
            _mlflow(cfg, run_dir, rows, summary, sweep_dir)
    except Exception as ex:  # the results are on disk; a logging backend problem must not lose them
        log.warning("logger %s failed (%s: %s); the run's files in %s are complete",
                    cfg.logger.name, type(ex).__name__, ex, run_dir)


def _sweep_dir():
    """The sweep dir when this job is part of a Hydra multirun, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return Path(hc.sweep.dir).resolve() if hc.mode == RunMode.MULTIRUN else None
    except Exception:  # not under Hydra
        return None


def _params(cfg):
    """The config as flat key -> scalar (hyperparameters), without the logger's own settings."""
    from omegaconf import OmegaConf

    flat = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) else json.dumps(node)
    walk("", {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "logger"})
    return flat


def _final_metrics(summary):
    out = {f"final/{k}": v for k, v in summary.get("final", {}).items() if isinstance(v, (int, float))}
    out.update({f"best/{k}": v for k, v in summary.get("best", {}).items() if isinstance(v, (int, float))})
    return out


def _tensorboard(cfg, run_dir, rows, summary):
    from torch.utils.tensorboard import SummaryWriter

    logdir = Path(cfg.logger.dir) if cfg.logger.dir else run_dir / "tensorboard"
    writer = SummaryWriter(log_dir=str(logdir))
    try:
        for row in rows:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    writer.add_scalar(k.replace("_", "/", 1), v, global_step=int(row["epoch"]))
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in _params(cfg).items()}
        writer.add_hparams(hparams, _final_metrics(summary), run_name=".")  # the sweep comparison view
    finally:
        writer.close()


def _mlflow(cfg, run_dir, rows, summary, sweep_dir):
    uri = cfg.logger.tracking_uri or f"sqlite:///{Path('outputs').resolve() / 'mlflow.db'}"
    db_dir = Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///") else None
    # parallel jobs would race to create the tables of a new sqlite store: one writer at a time
    with _lock(db_dir):
        _mlflow_locked(cfg, run_dir, rows, summary, sweep_dir, uri, db_dir)


def _mlflow_locked(cfg, run_dir, rows, summary, sweep_dir, uri, db_dir):
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)  # its own client: no process-global active run
    name = cfg.logger.experiment or cfg.name
    exp = client.get_experiment_by_name(name)
    exp = exp.experiment_id if exp else client.create_experiment(
        name, artifact_location=str(db_dir / "mlartifacts" / name) if db_dir else None)
    tags = {"expkit.run_dir": str(run_dir), "expkit.status": summary["status"]}
    parent = _parent_run(client, exp, sweep_dir, uri) if sweep_dir is not None else None
    if parent:
        tags["mlflow.parentRunId"] = parent  # shows the job nested under its sweep
    run_id = client.create_run(exp, run_name=run_dir.name if parent else str(run_dir), tags=tags).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(row["epoch"])) for row in rows for k, v in row.items()
               if k != "epoch" and isinstance(v, (int, float))]
    metrics += [Metric(k.replace("/", "_"), float(v), now, 0) for k, v in _final_metrics(summary).items()]
    params = [Param(k, str(v)[:6000]) for k, v in _params(cfg).items()]
    for i in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    client.set_terminated(run_id, "FINISHED")
    if parent:
        client.set_terminated(parent, "FINISHED")  # its end time: the last job's


def _parent_run(client, exp, sweep_dir, uri):
    """One parent run per (sweep dir, tracking store), created by whichever job gets there first."""
    with _lock(sweep_dir):
        f = sweep_dir / ".mlflow_parents.json"
        known = json.loads(f.read_text()) if f.exists() else {}
        if uri not in known:
            run = client.create_run(exp, run_name=f"sweep {sweep_dir.name}", tags={"expkit.sweep_dir": str(sweep_dir)})
            known[uri] = run.info.run_id
            f.write_text(json.dumps(known))
        return known[uri]


class _lock:
    """An exclusive file lock on a directory (parallel jobs of one sweep), or nothing.
    Re-entrant within a process (the store may live in the sweep dir itself)."""
    held = set()

    def __init__(self, directory):
        self.path = (Path(directory) / ".expkit.lock").resolve() if directory else None
        self.f = None

    def __enter__(self):
        if self.path and self.path not in _lock.held:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "a")
            fcntl.flock(self.f, fcntl.LOCK_EX)
            _lock.held.add(self.path)

    def __exit__(self, *exc):
        if self.f:
            _lock.held.discard(self.path)
            self.f.close()  # releases the lock
