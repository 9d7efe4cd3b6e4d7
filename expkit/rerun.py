"""Re-run one finished job from the config it saved, afresh, and compare the metrics:

    python -m expkit.rerun outputs/ex4_lr/multirun_.../2 [--out DIR]

The job's config.yaml holds everything that made it (seed included). The re-run always
trains from scratch into a new dir (default JOB/rerun_<n>, never an existing one), then
compares every metrics.csv column but time_s: exit 0 if identical, 1 if not. Bit-identical
metrics are expected on the same machine, device and library versions (CPU; see README).
"""
import argparse
import logging
import sys
from pathlib import Path


def fresh_dir(job: Path) -> Path:
    n = 1
    while (job / f"rerun_{n}").exists():
        n += 1
    return job / f"rerun_{n}"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m expkit.rerun", description=__doc__.splitlines()[0])
    ap.add_argument("job", type=Path, help="a finished run dir holding config.yaml and metrics.csv")
    ap.add_argument("--out", type=Path, help="a new dir for the re-run (default: JOB/rerun_<n>)")
    args = ap.parse_args(argv)
    if not (args.job / "config.yaml").exists() or not (args.job / "metrics.csv").exists():
        sys.stderr.write(f"error: {args.job} has no config.yaml and metrics.csv; give a finished run dir\n")
        return 2
    out = args.out or fresh_dir(args.job)
    if out.exists() and any(out.iterdir()):
        sys.stderr.write(f"error: {out} is not empty; a re-run trains afresh into a new dir (omit --out)\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    import pandas as pd
    from omegaconf import OmegaConf

    from expkit.errors import UserError
    from expkit.runner import run

    cfg = OmegaConf.load(args.job / "config.yaml")
    try:
        summary = run(cfg, out)
    except UserError as ex:
        sys.stderr.write(f"error: {ex}\n")
        return 2
    old, new = pd.read_csv(args.job / "metrics.csv"), pd.read_csv(out / "metrics.csv")
    cols = [c for c in old.columns if c != "time_s"]
    missing = [c for c in cols if c not in new.columns]
    diff = [c for c in cols if c in new.columns and not old[c].equals(new[c])]
    same = not diff and not missing and len(old) == len(new)
    what = "identical metrics" if same else (
        f"metrics differ: {len(old)} vs {len(new)} epochs" if len(old) != len(new)
        else f"metrics differ in {diff + missing}")
    print(f"re-ran {args.job} afresh -> {out} ({summary['status']}): {what} ({len(cols)} columns compared, "
          f"{len(old)} epochs)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
