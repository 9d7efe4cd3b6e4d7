"""Trust II: a config that changes nothing is refused; one notion of "the same configuration" for
jobs, tables and the merged report (compared by value); the seed column of an extended sweep; the
terminal table and results_by_config agree on which jobs count."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from conftest import compose_cfg, run_cli
from expkit.config import validate
from expkit.errors import UserError


# ---- optim: momentum only where it is read, every value in range ----

@pytest.mark.parametrize("overrides,words", [
    (["optim.momentum=0.9"], "optim.momentum=0.9 has no effect with optim=adam"),
    (["optim=sgd", "optim.momentum=-0.1"], "optim.momentum must be in [0, 1)"),
    (["optim=sgd", "optim.momentum=1"], "optim.momentum must be in [0, 1)"),
    (["optim=sgd", "optim.momentum=nan"], "optim.momentum must be in [0, 1)"),
    (["optim.lr=-0.1"], "optim.lr must be > 0 and finite"),
    (["optim.lr=inf"], "optim.lr must be > 0 and finite"),
    (["optim.weight_decay=-1e-4"], "optim.weight_decay must be >= 0 and finite"),
    (["optim=sgd", "optim.weight_decay=nan"], "optim.weight_decay must be >= 0 and finite"),
])
def test_optim_values_that_change_nothing_or_make_no_sense_are_refused(overrides, words):
    with pytest.raises(UserError) as info:
        validate(compose_cfg(overrides))
    assert words in str(info.value)


def test_sgd_momentum_and_the_defaults_validate():
    assert validate(compose_cfg(["optim=sgd", "optim.momentum=0.9"])).optim.momentum == 0.9
    assert validate(compose_cfg(["optim=sgd", "optim.momentum=0"])).optim.name == "sgd"
    assert validate(compose_cfg([])).optim.momentum == 0


def test_adam_momentum_on_the_command_line_is_one_error_line(countries_root, tmp_path):
    r = run_cli(f"data.root={countries_root}", "trainer.epochs=1", "optim.momentum=0.9", f"hydra.run.dir={tmp_path / 'r'}")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: optim.momentum=0.9"), r.stderr[-2000:]
    assert not (tmp_path / "r").exists()
