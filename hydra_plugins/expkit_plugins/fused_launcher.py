"""`hydra/launcher=fused`: a shorthand for the basic launcher with `hydra.sweeper.fuse=true`
(hydra_plugins/expkit_plugins/fusing.py): jobs run one after another in this process, and expkit's
sweepers hand it one job per fused group.

    python train.py -m optim.lr=1,0.01,0.001,0.0001 hydra/launcher=fused
    python train.py -m experiment=hw6/synth_kernels seed=1,2,3,4 hydra/launcher=fused

Under a sweeper that does not fuse (not expkit's) it stops with one line instead of running every
job unfused.
"""
import logging
from dataclasses import dataclass
from typing import Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from omegaconf import open_dict

from expkit.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.expkit_plugins.fused_launcher.FusedLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="expkit")


class NotFusingSweeper(UserError, CompactHydraException):
    """One line, whichever app runs it: expkit's entrypoint prints `error: ...` (exit 2), a plain Hydra
    app's handler prints a CompactHydraException's message alone."""


class FusedLauncher(Launcher):
    fusing_sweeper = False  # set by expkit's sweepers, which group the jobs before they reach a launcher

    def setup(self, *, hydra_context, task_function, config):
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        if not self.fusing_sweeper:
            raise NotFusingSweeper("hydra/launcher=fused needs expkit's sweeper (hydra/sweeper=expkit or optuna), which "
                            "groups the jobs; this sweeper would run every job unfused")
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        returns = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = idx
                config.hydra.job.num = idx
            returns.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                   config=config, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns
