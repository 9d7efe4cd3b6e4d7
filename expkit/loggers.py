"""Experiment loggers (`logger=csv|tensorboard|mlflow`), live: each epoch's row as the epoch ends.

CSV is what every run writes anyway (metrics.csv, summary.json: the source of truth). A `Live`
logger is opened before training, gets each epoch's metrics row from the trainer's per-epoch
callback (so a long run can be watched, and a killed one keeps its finished epochs), and is
closed with the summary (hyper-parameters, final and best metrics, status). A logger can never
change a result or fail a run: a backend error is one warning and the logger switches itself
off. Each run has its own writer/client (no global "active run"), so jobs that share a process
(basic or joblib launcher) never see each other's state. A resumed run logs the epochs after
its checkpoint (TensorBoard: into the same folder; MLflow: a new run, the killed one stays
RUNNING with its epochs).
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


class Live:
    """One run's live logger (a no-op for logger=csv)."""

    def __init__(self, cfg, run_dir: Path, sweep_dir=None):
        self.cfg, self.run_dir, self.backend = cfg, Path(run_dir), None
        if cfg.logger.name == "csv":
            return
        self._safe("open", lambda: setattr(self, "backend", (_TensorBoard if cfg.logger.name == "tensorboard"
                                                              else _MLflow)(cfg, self.run_dir, sweep_dir or _sweep_dir())))

    def epoch(self, row):
        if self.backend is not None:
            self._safe("epoch", lambda: self.backend.epoch(row))

    def close(self, summary):
        if self.backend is not None:
            self._safe("close", lambda: self.backend.close(summary))
            self.backend = None

    def _safe(self, what, fn):
        try:
            fn()
        except Exception as ex:  # the results are on disk; a logging backend problem must not lose them
            log.warning("logger %s failed at %s (%s: %s); it is off for this run; the run's files in %s are "
                        "complete", self.cfg.logger.name, what, type(ex).__name__, ex, self.run_dir)
            self.backend = None


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


def _scalars(row):
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}


class _TensorBoard:
    def __init__(self, cfg, run_dir, sweep_dir):
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        self.writer = SummaryWriter(log_dir=str(Path(cfg.logger.dir) if cfg.logger.dir else run_dir / "tensorboard"))

    def epoch(self, row):
        for k, v in _scalars(row).items():
            self.writer.add_scalar(k.replace("_", "/", 1), v, global_step=int(row["epoch"]))
        self.writer.flush()  # on disk now: a killed run keeps its finished epochs

    def close(self, summary):
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in _params(self.cfg).items()}
        self.writer.add_hparams(hparams, _final_metrics(summary), run_name=".")  # the sweep comparison view
        self.writer.close()


class _MLflow:
    def __init__(self, cfg, run_dir, sweep_dir):
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):  # their own stderr lines at store creation: warnings only
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.cfg = cfg
        self.uri = cfg.logger.tracking_uri or f"sqlite:///{Path('outputs').resolve() / 'mlflow.db'}"
        self.db_dir = Path(self.uri[len("sqlite:///"):]).parent if self.uri.startswith("sqlite:///") else None
        with _lock(self.db_dir):  # parallel jobs would race to create the tables of a new sqlite store
            self.client = MlflowClient(tracking_uri=self.uri)  # its own client: no process-global active run
            name = cfg.logger.experiment or cfg.name
            exp = self.client.get_experiment_by_name(name)
            exp = exp.experiment_id if exp else self.client.create_experiment(
                name, artifact_location=str(self.db_dir / "mlartifacts" / name) if self.db_dir else None)
            tags = {"expkit.run_dir": str(run_dir), "expkit.status": "running"}
            self.parent = _parent_run(self.client, exp, sweep_dir, self.uri) if sweep_dir is not None else None
            if self.parent:
                tags["mlflow.parentRunId"] = self.parent  # shows the job nested under its sweep
            self.run_id = self.client.create_run(exp, run_name=run_dir.name if self.parent else str(run_dir),
                                                 tags=tags).info.run_id

    def _log(self, metrics=(), params=()):
        with _lock(self.db_dir):
            for i in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def epoch(self, row):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log(metrics=[Metric(k, v, now, int(row["epoch"])) for k, v in _scalars(row).items()])

    def close(self, summary):
        import time

        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self._log(metrics=[Metric(k.replace("/", "_"), float(v), now, 0) for k, v in _final_metrics(summary).items()],
                  params=[Param(k, str(v)[:6000]) for k, v in _params(self.cfg).items()])
        with _lock(self.db_dir):
            self.client.set_tag(self.run_id, "expkit.status", summary["status"])
            self.client.set_terminated(self.run_id, "FINISHED")
            if self.parent:
                self.client.set_terminated(self.parent, "FINISHED")  # its end time: the last job's


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
