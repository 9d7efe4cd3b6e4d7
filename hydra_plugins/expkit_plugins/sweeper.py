"""expkit's sweeper: Hydra's basic grid, plus paired axes, plus a results table at the end.

Paired axes: a `params` key naming several config keys, comma-separated, takes a list of
value tuples that vary together (not a Cartesian product):
    hydra.sweeper.params:
      model.depth,model.width: "[1,16],[2,16],[6,16]"     -> 3 jobs
A null in a tuple leaves that key unset for that job. Every other key is crossed as usual. Jobs that fail do not stop the sweep; when it ends the
sweep dir holds results.csv/results.md and the preset's plots, and the exit code is 1 if
any job failed.
"""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class ExpkitSweeperConf:
    _target_: str = "hydra_plugins.expkit_plugins.sweeper.ExpkitSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="expkit", node=ExpkitSweeperConf, provider="expkit")


def paired_jobs(params: Dict[str, str], parser) -> List[List[List[str]]]:
    """One axis per paired key: each axis is a list of override groups that go together."""
    axes = []
    for keys, values in params.items():
        names = [k.strip() for k in keys.split(",")]
        sweep = parser.parse_overrides([f"paired={values}"])[0]
        tuples = list(sweep.sweep_iterator()) if sweep.is_sweep_override() else [sweep.value()]
        axis = []
        for tup in tuples:
            if not isinstance(tup, (list, tuple)) or len(tup) != len(names):
                raise ValueError(f"paired sweep {keys}: each value must be a list of {len(names)}, got {tup}")
            # null leaves that key at its default for this job (e.g. no lr for an estimator)
            axis.append([f"{k}={Override._get_value_element_as_str(v)}" for k, v in zip(names, tup) if v is not None])
        axes.append(axis)
    return axes


def record_lost_jobs(sweep_dir: Path, batch, first_idx, ex):
    """Jobs of a batch that the launcher lost without a summary: failed rows saying why (the sweep
    exits 1); re-running the sweep re-runs them, resuming from their checkpoints."""
    from expkit.run import SUMMARY, _write_json

    msg = f"launcher lost this job: {type(ex).__name__}: {(str(ex).splitlines() or [''])[0][:200]}"
    log.error("%s (jobs %d-%d)", msg, first_idx, first_idx + len(batch) - 1)
    for num, overrides in enumerate(batch, first_idx):
        job_dir = sweep_dir / str(num)  # hydra.sweep.subdir is ${hydra.job.num} (conf/hydra/default.yaml)
        if not (job_dir / SUMMARY).exists():
            job_dir.mkdir(parents=True, exist_ok=True)
            _write_json(job_dir / SUMMARY, {"status": "failed", "error": msg, "overrides": list(overrides)})


class ExpkitSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None):
        params = dict(params or {})
        self.paired = {k: v for k, v in params.items() if "," in k}
        super().__init__(max_batch_size, {k: v for k, v in params.items() if "," not in k})

    def sweep(self, arguments: List[str]) -> Any:
        from expkit.cli import mark_failed_jobs
        from expkit.report.aggregate import build_report

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        grid = BasicSweeper.split_arguments(parser.parse_overrides(self._parse_config() + arguments), None)[0]
        jobs = [list(job) for job in grid]
        for axis in paired_jobs(self.paired, parser):
            jobs = [job + extra for job in jobs for extra in axis]
        n = self.max_batch_size or len(jobs)
        self.overrides = [jobs[i:i + n] for i in range(0, len(jobs), n)]

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("sweep: %d job(s) -> %s", len(jobs), sweep_dir)
        returns, idx = [], 0
        try:
            while not self.is_done():
                batch = self.get_job_batch()
                self.validate_batch_is_legal(batch)
                try:
                    returns.append(self.launcher.launch(batch, initial_job_idx=idx))
                except Exception as ex:  # the launcher itself died (e.g. a killed worker): record, go on
                    record_lost_jobs(sweep_dir, batch, idx, ex)
                idx += len(batch)
        finally:
            table = build_report(sweep_dir)
        failed = int((table.status == "failed").sum()) if len(table) else 0
        mark_failed_jobs(failed)
        msg = f"sweep done: {len(table)} job(s), {failed} failed; table: {sweep_dir / 'results.md'}"
        (log.warning if failed else log.info)(msg)
        return returns
