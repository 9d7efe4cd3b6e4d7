"""`expkit [overrides]` and `expkit -m [sweep overrides]` (also `python -m expkit`), from any directory:
the same as `python train.py` in a checkout. Configs come with the package (expkit.conf); outputs go
under the current directory; a user's own presets and groups join through Hydra's search path
(`expkit --config-dir DIR experiment=mine` or `hydra.searchpath=[file://DIR]`)."""
import sys


def conf_dir() -> str:
    """The configs: conf/ beside the expkit package in a checkout, else the installed expkit.conf
    (expkit/conf/ of a wheel; conf/ of an editable install)."""
    from importlib.util import find_spec
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[1] / "conf"
    if (checkout / "config.yaml").is_file():
        return str(checkout)
    spec = find_spec("expkit.conf")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: expkit's configs (expkit/conf) are missing from this install; reinstall expkit")
    return list(spec.submodule_search_locations)[0]


def register_plugins():
    """expkit's sweeper and fused launcher register their configs on import. Hydra finds plugins by
    scanning the hydra_plugins namespace, which an editable install's import hook hides: import
    them by name so they are there however expkit was installed."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.expkit_plugins.fused_launcher import FusedLauncher
    from hydra_plugins.expkit_plugins.sweeper import ExpkitSweeper

    for plugin in (ExpkitSweeper, FusedLauncher):
        Plugins.instance().register(plugin)  # Hydra's documented manual registration

def main():
    import hydra

    from expkit.cli import exit_code, report_config_errors

    register_plugins()
    report_config_errors()  # Hydra config mistakes -> one line, exit 2

    def task(cfg):
        from expkit.runner import run_job  # heavy imports (torch) only once a job really runs

        return run_job(cfg)

    hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")(task)()
    sys.exit(exit_code())


if __name__ == "__main__":
    main()
