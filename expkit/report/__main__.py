"""Rebuild the results table and plots of one or more sweep/run dirs:

    python -m expkit.report outputs/ex4_lr/multirun_...            # in place
    python -m expkit.report SWEEP_A SWEEP_B --out merged/           # merge sweeps

When the jobs differ in seed, results_by_config.csv/.md (mean ± std over seeds per configuration)
are written too, and the plots draw each configuration's mean with a ±1 std band.
"""
import argparse
import sys
from pathlib import Path

from expkit.report.aggregate import build_report


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m expkit.report", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories")
    ap.add_argument("--out", type=Path, help="where to write (default: the first dir)")
    args = ap.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        sys.stderr.write(f"error: not a directory: {missing[0]} (give sweep or run directories)\n")
        return 2
    df = build_report(args.dirs[0], roots=args.dirs, out=args.out)
    if df.empty:
        sys.stderr.write(f"error: no runs found under {', '.join(map(str, args.dirs))}\n")
        return 2
    out = args.out or args.dirs[0]
    print(f"{len(df)} job(s) -> {out / 'results.md'}")
    if (out / "results_by_config.md").exists():  # written when the jobs differ in seed
        print(f"mean ± std over seeds per configuration -> {out / 'results_by_config.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
