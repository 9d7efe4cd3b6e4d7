"""Packaging glue pyproject.toml cannot express.

- The packages sit in the project root as they are imported (package_dir {"": "."}: expkit and
  hydra_plugins.expkit_plugins), so an editable install (`pip install -e .`, any editable mode) puts
  the project root on sys.path with a static .pth file instead of setuptools' import hook, which
  hides the hydra_plugins namespace from Hydra's plugin scan: any Hydra app then finds
  hydra/sweeper=expkit, hydra/sweeper=optuna and hydra/launcher=fused, as it finds them in a wheel.
- The top-level conf/ ships inside built packages as expkit/conf/ (every preset; expkit.cli finds
  it there); an editable install reads conf/ in the checkout itself.
"""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).parent / "conf"


class build_py_with_conf(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the checkout's conf/ is read in place
        for f in sorted(CONF.rglob("*.yaml")):
            target = Path(self.build_lib, "expkit", "conf", f.relative_to(CONF))
            self.mkpath(str(target.parent))
            self.copy_file(str(f), str(target))


setup(
    package_dir={"": "."},
    packages=find_packages(include=["expkit", "expkit.*"]) + ["hydra_plugins.expkit_plugins"],
    cmdclass={"build_py": build_py_with_conf},
)
