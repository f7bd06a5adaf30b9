"""The run figures `visualize` can draw, by the names `--what` takes: light, so that the command line
and the jobs check a `--what` before anything loads TensorFlow or matplotlib."""

from __future__ import annotations

from typing import Iterable

from ..errors import ConfigError

WHAT = ("grid", "filters", "guided", "confusion")


def parse_what(what: Iterable[str] | str) -> list[str]:
    """`"grid, confusion"` (or a list) -> ["grid", "confusion"]: lower case, duplicates dropped, each
    checked against WHAT; an unknown name or none at all is a one-line ConfigError."""
    items = what.split(",") if isinstance(what, str) else list(what)
    names = [w.strip().lower() for w in items if w.strip()]
    unknown = [w for w in names if w not in WHAT]
    if unknown or not names:
        bad = unknown[0] if unknown else "(none)"
        raise ConfigError(f"--what {','.join(items)}: unknown figure {bad!r}; choose from {','.join(WHAT)}")
    return list(dict.fromkeys(names))
