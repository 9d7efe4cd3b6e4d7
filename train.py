"""The one entrypoint: `python train.py [overrides]` or `python train.py -m [sweep overrides]`."""
import hydra

from expkit.cli import exit_code, report_config_errors

report_config_errors()  # Hydra config mistakes -> one line, exit 2


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    from expkit.run import run_job  # heavy imports (torch) only once a job really runs

    return run_job(cfg)


if __name__ == "__main__":
    main()
    raise SystemExit(exit_code())
