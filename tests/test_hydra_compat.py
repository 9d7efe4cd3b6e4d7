"""The one private Hydra call (expkit/cli.py wraps hydra._internal.utils.run_and_report to print
config errors as one line) is isolated, and checked against the installed hydra-core: this test
fails on a hydra-core outside the supported range or one whose error path moved.
Checked by hand on 2026-11-22 with hydra-core 1.3.2 (the lowest supported) and 1.3.8."""
import inspect
import re
from pathlib import Path

import hydra
import hydra._internal.utils as hydra_utils

from conftest import ROOT, run_cli


def _supported():
    text = (ROOT / "pyproject.toml").read_text()
    lo, hi = re.search(r'"hydra-core>=([\d.]+),<([\d.]+)"', text).groups()
    return tuple(map(int, lo.split("."))), tuple(map(int, hi.split(".")))


def test_installed_hydra_is_in_the_supported_range():
    lo, hi = _supported()
    have = tuple(int(x) for x in re.findall(r"\d+", hydra.__version__)[:3])
    assert lo <= have < hi, f"hydra-core {hydra.__version__} is outside >={lo},<{hi}: re-check expkit/cli.py's hook"


def test_private_hydra_use_is_in_cli_only():
    users = [str(p.relative_to(ROOT)) for d in ("expkit", "hydra_plugins") for p in (ROOT / d).rglob("*.py")
             if "hydra._internal" in p.read_text() or "._get_value_element_as_str" in p.read_text()]
    assert users == ["expkit/cli.py"]


def test_hydra_still_reports_errors_through_the_wrapped_function():
    from expkit.cli import report_config_errors

    original = hydra_utils.run_and_report
    try:
        report_config_errors()
        assert hydra_utils.run_and_report is not original
        # _run_hydra looks it up in its module at call time: so the wrapper is what runs
        assert "run_and_report(" in inspect.getsource(hydra_utils._run_hydra)
    finally:
        hydra_utils.run_and_report = original


def test_config_errors_are_one_line(tmp_path):
    for arg, says in (("experiment=ex4/lrr", "unknown experiment 'ex4/lrr'"),
                      ("trainer.epochs=abc", "could not be converted to Integer"),
                      ("trainer.epochz=3", "unknown config key 'trainer.epochz'")):
        r = run_cli(arg, f"hydra.run.dir={tmp_path / 'r'}")
        assert r.returncode == 2 and says in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert not (tmp_path / "r").exists()
