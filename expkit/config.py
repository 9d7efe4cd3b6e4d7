"""Config schemas: every key a run reads is declared here or in expkit/schemas.py (data, model).

Every group takes its defaults from these dataclasses and nowhere else: its YAML files start from
a schema registered in Hydra's ConfigStore (base_<group> for trainer/optim/logger/report,
base_data_<name> and base_model_<name> for the data and model options; see register_schemas)
and set only what differs, so a wrong type or an unknown key fails when Hydra composes the config
(`--cfg job` included), with one line naming the key. `validate` then checks values and how keys
go together, before anything runs.
"""
import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from expkit.errors import UserError, require
from expkit.schemas import DATA_SCHEMAS, MODEL_SCHEMAS


@dataclass
class OptimConf:
    name: str = "adam"         # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2, added to the gradient (torch's Adam/SGD weight_decay)
    momentum: float = 0.0      # sgd only


@dataclass
class EarlyStopConf:
    patience: int = 0          # 0 = off; else stop after this many epochs improving val loss by < min_delta
    min_delta: float = 1e-4


@dataclass
class TrainerConf:
    epochs: int = 50
    batch_size: int = 256
    eval_batch_size: int = 1024
    device: str = "auto"                 # auto | cpu | cuda | cuda:N (expkit/device.py: auto keeps small MLPs on the CPU)
    precision: str = "auto"              # auto | fp32 | bf16 | fp16-mixed (auto: bf16 for large conv models on CUDA)
    deterministic: bool = False          # deterministic cuDNN/cuBLAS kernels on CUDA (CPU runs are deterministic anyway)
    data_on_device_share: float = 0.5    # data larger than this share of free device memory streams from the host
    jobs_per_gpu: Optional[int] = None   # a sweep's jobs at once per GPU (null: mlp 4, cnn 2, resnet18 1)
    threads: Optional[int] = None        # torch threads; null = this job's share of the cores (1 below 1M parameters)
    record_steps: bool = False           # also save the train loss of every step (steps.csv)
    grad_layers: List[int] = field(default_factory=list)  # MLP Linear layers whose mean ||dW||^2 per epoch is saved
    compile: Any = False                 # false | true: the whole step compiled | auto: compiled when the run is
                                         # expected to gain (expkit/trainers/compiled.py)
    checkpoint: bool = True              # a re-run in the same dir resumes from checkpoint.pt
    checkpoint_every_s: float = 30.0     # save at the first epoch end this long after the last save (0: every epoch)
    save_model: bool = True
    early_stop: EarlyStopConf = field(default_factory=EarlyStopConf)


@dataclass
class ReportConf:
    plots: List[Any] = field(default_factory=list)  # the plots a sweep's report draws: {kind: NAME, ...options}


@dataclass
class LoggerConf:
    name: str = "csv"                   # csv (always written) | tensorboard | mlflow (expkit/loggers.py)
    dir: Optional[str] = None           # tensorboard: default <run dir>/tensorboard
    tracking_uri: Optional[str] = None  # mlflow: default sqlite:///outputs/mlflow.db
    experiment: Optional[str] = None    # mlflow experiment: default `name`


def register_schemas():
    """The groups' base schemas in Hydra's ConfigStore (Hydra's documented structured-config
    pattern: conf/trainer/default.yaml starts with `defaults: [base_trainer, _self_]`,
    conf/model/mlp.yaml with `defaults: [base_model_mlp, _self_]`)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, node in (("trainer", TrainerConf), ("optim", OptimConf), ("logger", LoggerConf),
                        ("report", ReportConf)):
        cs.store(group=group, name=f"base_{group}", node=node, provider="expkit")
    for group, schemas in (("data", DATA_SCHEMAS), ("model", MODEL_SCHEMAS)):
        for name, node in schemas.items():
            cs.store(group=group, name=f"base_{group}_{name}", node=node, provider="expkit")


TOP_LEVEL = {"data", "model", "optim", "trainer", "report", "seed", "name", "logger"}


def _check(section, schema, node):
    if isinstance(node, DictConfig):  # as plain data: a composed node is typed already, and merging it
        node = OmegaConf.to_container(node)  # as it is would let a key added by `+group.key=...` through
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as ex:
        key = f"{section}.{ex.full_key}" if getattr(ex, "full_key", None) else section
        msg = str(ex).splitlines()[0]
        keys = list(OmegaConf.structured(schema).keys())  # the schema's keys (conf/<group>/ lists none)
        bad = str(getattr(ex, "key", "") or "")
        near = difflib.get_close_matches(bad, keys, n=1, cutoff=0.6) if bad not in keys else []
        hint = f"did you mean {section}.{near[0]}? " if near else ""
        raise UserError(f"config {key}: {msg}; {hint}{section} has {', '.join(keys)}") from None


def validate(cfg: DictConfig) -> DictConfig:
    """Return a typed copy of cfg, or raise UserError on the first bad key or value."""
    from expkit.data import data_schema
    from expkit.models import model_schema

    unknown = set(cfg.keys()) - TOP_LEVEL
    require(not unknown, f"unknown top-level config key(s) {sorted(unknown)}; valid: {sorted(TOP_LEVEL)}")
    out = OmegaConf.create({"seed": cfg.get("seed", 42), "name": cfg.get("name", "default")})
    require(isinstance(out.seed, int), f"seed must be an integer, got {out.seed!r}")
    out.data = _check("data", data_schema(cfg.data.get("name")), cfg.data)
    out.model = _check("model", model_schema(cfg.model.get("name")), cfg.model)
    out.optim = _check("optim", OptimConf, cfg.optim)
    out.trainer = _check("trainer", TrainerConf, cfg.trainer)
    out.report = _check("report", ReportConf, cfg.get("report", {}))
    out.logger = _check("logger", LoggerConf, cfg.get("logger", {}))
    require(out.logger.name in ("csv", "tensorboard", "mlflow"),
            f"logger.name must be csv, tensorboard or mlflow, got {out.logger.name!r} (logger=csv|tensorboard|mlflow)")
    o, t = out.optim, out.trainer
    require(o.name in ("adam", "sgd"), f"optim.name must be adam or sgd, got {o.name!r}")
    require(math.isfinite(o.lr) and o.lr > 0, f"optim.lr must be > 0 and finite, got {o.lr} (e.g. optim.lr=0.001)")
    require(math.isfinite(o.weight_decay) and o.weight_decay >= 0,
            f"optim.weight_decay must be >= 0 and finite, got {o.weight_decay}")
    require(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1) (0 = none), got {o.momentum}")
    # Adam has no momentum term (its betas are fixed): a momentum it never reads would make a new job
    # identity, and a sweep rows that differ only by noise
    require(o.name == "sgd" or o.momentum == 0,
            f"optim.momentum={o.momentum} has no effect with optim={o.name} (only SGD reads it): add optim=sgd, "
            f"or leave optim.momentum at 0")
    require(isinstance(t.compile, bool) or t.compile == "auto",
            f"trainer.compile must be true, false or auto, got {t.compile!r}")
    require(t.epochs >= 1, f"trainer.epochs must be >= 1, got {t.epochs}")
    require(t.batch_size >= 1, f"trainer.batch_size must be >= 1, got {t.batch_size}")
    require(t.checkpoint_every_s >= 0, f"trainer.checkpoint_every_s must be >= 0, got {t.checkpoint_every_s}")
    require(t.eval_batch_size >= 1, f"trainer.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    require(t.device in ("auto", "cpu", "cuda") or (t.device.startswith("cuda:") and t.device[5:].isdigit()),
            f"trainer.device must be auto, cpu, cuda or cuda:N, got {t.device!r}")
    from expkit.device import PRECISIONS

    require(t.precision in PRECISIONS, f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    require(0 <= t.data_on_device_share <= 1, f"trainer.data_on_device_share must be 0..1, got {t.data_on_device_share}")
    if t.grad_layers:  # the MLP's Linear layers: hidden ones, then the output layer
        require(out.model.name == "mlp", f"trainer.grad_layers needs model=mlp (numbered Linear layers); "
                                         f"model={out.model.name} has none: use trainer.grad_layers=[]")
        n = (len(out.model.hidden) if out.model.hidden is not None else out.model.depth) + 1
        bad = [i for i in t.grad_layers if not -n <= i < n]
        require(not bad, f"trainer.grad_layers {bad} out of range: this MLP has {n} Linear layers, 0..{n - 1} "
                         f"(hidden layers, then the output layer; -1 = the output layer)")
    OmegaConf.set_readonly(out, True)
    return out


def essential(cfg) -> dict:
    """What makes a run this run: its validated config without the values equal to their schema's
    default (names and seed always kept). A key added to a schema later, at its default, leaves
    the identity of older runs unchanged; a changed value or a changed default does not."""
    return _essential(OmegaConf.to_container(validate(_as_config(cfg))))


def _essential(v: dict) -> dict:
    from expkit.data import data_schema
    from expkit.models import model_schema

    schemas = {"data": data_schema(v["data"]["name"]), "model": model_schema(v["model"]["name"]),
               "optim": OptimConf, "trainer": TrainerConf, "report": ReportConf, "logger": LoggerConf}
    out = {"seed": v["seed"], "name": v["name"]}
    for section, schema in schemas.items():
        out[section] = _differs(v[section], OmegaConf.to_container(OmegaConf.structured(schema)))
    out["data"]["name"], out["model"]["name"] = v["data"]["name"], v["model"]["name"]
    return out


# what a config that does not validate raises (a job that failed on its config, a partial or old config file)
INVALID = (UserError, OmegaConfBaseException, KeyError, TypeError, ValueError, AttributeError)


def settled(cfg):
    """(the config as plain data, validated?): validated (typed, every default filled in) when it
    validates, else as composed (resolved where it can be). cfg: a DictConfig or a dict, e.g. a run's
    .hydra/config.yaml or summary.json's config."""
    cfg = _as_config(cfg)
    try:
        return OmegaConf.to_container(validate(cfg)), True
    except INVALID:
        try:
            return OmegaConf.to_container(cfg, resolve=True), False
        except OmegaConfBaseException:
            return OmegaConf.to_container(cfg), False


def identity(cfg, seed=True, settled_cfg=None) -> str:
    """The one notion of "the same configuration", for the jobs of a sweep dir (the sweeper's
    canonical), the rows of the tables and the merged report: the validated config without schema
    defaults (`essential`), compared by value (optim.lr=1 and optim.lr=1.0 are one config), as sorted
    JSON. seed=False: the configuration a seed sweep repeats (its seeds pooled). A config that does
    not validate is known by its composed form. settled_cfg: settled(cfg), if already computed."""
    v, valid = settled_cfg if settled_cfg is not None else settled(cfg)
    ident = _essential(v) if valid else {"composed": dict(v)}
    if not seed:
        (ident if valid else ident["composed"]).pop("seed", None)
    return json.dumps(by_value(ident), sort_keys=True, default=str)


def by_value(x):
    """Plain data to compare by value: an integral float is its int (1.0 == 1), numpy scalars are
    Python's, containers recursively (tuples as lists)."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, float):
        return int(x) if x.is_integer() else x
    if isinstance(x, int):
        return x
    if isinstance(x, dict):
        return {str(k): by_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [by_value(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # a numpy scalar
        try:
            return by_value(x.item())
        except (TypeError, ValueError):
            pass
    return x


def _as_config(cfg):
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg or {})


def _differs(value: dict, default: dict) -> dict:
    out = {}
    for k, x in value.items():
        d = default.get(k, _MISSING)
        if isinstance(x, dict) and isinstance(d, dict):
            sub = _differs(x, d)
            if sub:
                out[k] = sub
        elif x != d:
            out[k] = x
    return out


_MISSING = object()
