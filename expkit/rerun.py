"""Re-run one finished job from the config it saved and check the metrics match:

    python -m expkit.rerun outputs/ex4_lr/multirun_.../2 [--out DIR]

The job's config.yaml holds everything that made it (seed included), so a re-run on the
same machine and device reproduces metrics.csv; the command prints any column that differs.
"""
import argparse
import logging
import sys
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m expkit.rerun", description=__doc__.splitlines()[0])
    ap.add_argument("job", type=Path, help="a run dir holding config.yaml and metrics.csv")
    ap.add_argument("--out", type=Path, help="where the re-run writes (default: JOB/rerun)")
    args = ap.parse_args(argv)
    if not (args.job / "config.yaml").exists():
        sys.stderr.write(f"error: {args.job} has no config.yaml; give a finished run dir\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    import pandas as pd
    from omegaconf import OmegaConf

    from expkit.errors import UserError
    from expkit.run import run

    cfg = OmegaConf.load(args.job / "config.yaml")
    out = args.out or args.job / "rerun"
    try:
        run(cfg, out)
    except UserError as ex:
        sys.stderr.write(f"error: {ex}\n")
        return 2
    old, new = pd.read_csv(args.job / "metrics.csv"), pd.read_csv(out / "metrics.csv")
    cols = [c for c in old.columns if c != "time_s" and c in new.columns]
    diff = [c for c in cols if not old[c].equals(new[c])]
    print(f"re-ran {args.job} -> {out}: " + ("identical metrics" if not diff and len(old) == len(new)
                                           else f"metrics differ in {diff or 'length'}"))
    return 0 if not diff else 1


if __name__ == "__main__":
    sys.exit(main())
