"""The plot kinds a preset names in report.plots ({kind: NAME, ...options}), by name.

A kind is a function (df, paths, out, study=None, **options) in a plot module (sweep_plots.py,
study_plots.py, images.py) registered with @register("NAME"); kinds.draw() imports those modules and
runs one. This module imports nothing of expkit, so any plot module can import it."""
PLOTS = {}


def register(kind):
    """Decorator: the function draws plot kind `kind`."""
    def add(fn):
        old = PLOTS.get(kind)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"plot kind {kind!r} registered twice: {old.__module__}.{old.__qualname__} "
                             f"and {fn.__module__}.{fn.__qualname__}")
        PLOTS[kind] = fn
        return fn
    return add
