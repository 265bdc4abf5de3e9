"""Durations as the configuration writes them: `300ms`, `5s`, `10m`, `24h`, or seconds.

Owns the one parser every duration key goes through, so `grace_period: 10s` and
`cache_ttl: 60` mean the same thing everywhere. Units may be chained (`1h30m`) the way
Go and oauth2-proxy write them; a plain number (or a numeric string, which is what an
`${VAR}` substitution yields) is seconds. Booleans, NaN, infinities and negative values
are refused: a duration is always a finite, non-negative float of seconds, at most
ten years.
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_duration"]

# Beyond this no duration means anything here, and timers and gRPC deadlines start to
# misbehave with astronomically large values.
MAX_SECONDS = 10 * 365 * 24 * 3600.0
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_WHOLE = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h))+")
_PLAIN = re.compile(_NUMBER)


def parse_duration(value: object) -> float:
    """Return `value` as seconds; raise ValueError("invalid duration ...") otherwise."""
    # bool is an int subclass: `timeout: yes` must not become one second.
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range
            raise ValueError("invalid duration: too large") from None
    elif isinstance(value, str):
        text = value.strip()
        if _PLAIN.fullmatch(text):
            seconds = float(text)
        elif _WHOLE.fullmatch(text):
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
        else:
            raise ValueError(f"invalid duration {value!r} (use e.g. 300ms, 5s, 10m, 24h)")
    else:
        raise ValueError(f"invalid duration {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}")
    if seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    if seconds > MAX_SECONDS:
        raise ValueError("invalid duration: more than ten years")
    return seconds
