"""The limits a run sets for its workers, validated before any work: `--timeout` and the
`DCNBENCH_<NAME>_TIMEOUT` variables. Standard library only, so the CLI checks them without
importing numpy or torch (a usage error answers at once)."""

from __future__ import annotations

import math

from dcnbench.errors import UsageError

# The longest limit that may be set (a week): beyond it a typo is likelier than intent.
MAX_TIMEOUT_S = 7 * 24 * 3600.0

_override_timeout_s: float | None = None  # --timeout, for every worker this run starts


def check_limit(value, name: str) -> float:
    """A finite, positive number of seconds no larger than MAX_TIMEOUT_S, else a usage error naming `name`."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise UsageError(f"{name}={value!s} is not a number of seconds in (0, {MAX_TIMEOUT_S:.0f}]",
                         hint=f"set {name} to a positive number of seconds, e.g. 300" +
                              (", or unset it" if name.startswith("DCNBENCH_") else ""))
    return seconds


def set_timeout(seconds: float | None) -> None:
    """The limit on every wait for every worker started from now on (`--timeout`); None: each backend's own."""
    global _override_timeout_s
    _override_timeout_s = None if seconds is None else check_limit(seconds, "--timeout")


def timeout_override() -> float | None:
    return _override_timeout_s
