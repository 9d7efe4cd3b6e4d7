"""Where built data, decoded images and features are kept between runs, and atomic writes."""
import hashlib
import json
import os
from pathlib import Path


def cache_dir(*parts) -> Path:
    root = Path(os.environ.get("EXPKIT_CACHE", Path.home() / ".cache" / "expkit"))
    d = root.joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    return d


def key(*things) -> str:
    """A short stable hash of JSON-able things (file lists, transform settings, versions)."""
    return hashlib.sha256(json.dumps(things, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write(path, write):
    """write(tmp_path) then rename: a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
