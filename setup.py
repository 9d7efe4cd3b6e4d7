"""Packaging glue pyproject.toml cannot express: the top-level conf/ ships inside the package as
`expkit.conf` (every subfolder a package of YAML files), so `pip install .` gives every preset."""
from pathlib import Path

from setuptools import find_packages, setup

conf = Path(__file__).parent / "conf"
conf_packages = ["expkit.conf"] + ["expkit.conf." + ".".join(p.relative_to(conf).parts)
                                   for p in sorted(conf.rglob("*")) if p.is_dir()]
setup(
    packages=find_packages(include=["expkit", "expkit.*"]) + ["hydra_plugins.expkit_plugins"] + conf_packages,
    package_dir={"expkit.conf": "conf"},
    package_data={p: ["*.yaml"] for p in conf_packages},
)
