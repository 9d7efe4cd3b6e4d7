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


def nested_sweeps(dirs):
    """Dirs below the given ones that hold run dirs of their own (sweeps, a name's single runs):
    their table is not this one."""
    from expkit.report.aggregate import job_dirs

    found = []
    for d in map(Path, dirs):
        runs = set(job_dirs(d))
        for sub in sorted(p for p in d.iterdir() if p.is_dir() and p not in runs and p.name != ".hydra"):
            found += ([sub] if job_dirs(sub) else []) + nested_sweeps([sub])
    return found


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
    deeper = nested_sweeps(args.dirs)
    if df.empty:
        hint = f"; run dirs found deeper, in: {', '.join(map(str, deeper[:5]))} (report each by its dir)" if deeper else ""
        sys.stderr.write(f"error: no runs found directly under {', '.join(map(str, args.dirs))}{hint}\n")
        return 2
    if deeper:  # never skip a sweep silently: say which were not part of this table
        print(f"not in this table (run dirs deeper down, report each dir on its own): {', '.join(map(str, deeper))}")
    out = args.out or args.dirs[0]
    print(f"{len(df)} job(s) -> {out / 'results.md'}")
    if (out / "results_by_config.md").exists():  # written when the jobs differ in seed
        print(f"mean ± std over seeds per configuration -> {out / 'results_by_config.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
