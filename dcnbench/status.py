"""The statuses a result can have, once, for every stage that writes, counts or shows them."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PASS = "pass"
    # Agrees with the oracle in the boundary rule the backend declares, and with the paper's rule Z
    # at every output whose samples avoid the border bands; differs from rule Z only there.
    DIALECT = "dialect"
    FAIL = "fail"
    NONDETERMINISTIC = "nondeterministic"
    UNSUPPORTED = "unsupported"
    ERROR = "error"
    OK = "ok"  # a speed measurement that ran


# What `verify` can report, in display order.
VERIFY_STATUSES = (Status.PASS, Status.DIALECT, Status.FAIL, Status.NONDETERMINISTIC, Status.UNSUPPORTED, Status.ERROR)
# Results that count as correct (the gate keeps them correct).
PASSING = (Status.PASS, Status.DIALECT)
