"""What did not pass in a verify run, as plain records and one-line descriptions.

One wording for every place that reports a failure: `verify`'s failures section, the pytest API's
AssertionError (dcnbench.testing) and `dcnbench repro`. Torch-free: it reads results, it does not
compute them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dcnbench.status import Status

if TYPE_CHECKING:
    from dcnbench.checking.compare import QuantityError

# Display order: what fails a run first, then what is merely different, then what did not run.
    from dcnbench.checking.verify import VerifyResult
ORDER = (Status.FAIL, Status.ERROR, Status.NONDETERMINISTIC, Status.DIALECT)
FAILING = (Status.FAIL, Status.ERROR, Status.NONDETERMINISTIC)


@dataclass(frozen=True)
class Problem:
    """One line of a failures list: a failing quantity of a result, or a result that did not pass."""

    case_id: str
    backend: str
    status: str
    quantity: str  # the failing quantity; "" when the result as a whole is meant (error, nondeterministic, ...)
    detail: str  # the numbers that decided it, or the reason


@dataclass(frozen=True)
class Unsupported:
    """Results a backend did not run, grouped by their common reason."""

    backend: str
    reason: str
    case_ids: tuple[str, ...]


def quantity_detail(q: QuantityError) -> str:
    """`rel err 3.2e-02 > tol 1e-05, max abs 1.1e-01` (plus why, when it is not the size)."""
    against = "" if q.reference in ("Z", "") else f" vs {q.reference}"
    if q.rel_err is None:
        return f"{q.note.rstrip(',;: ') or 'failed'}{against} (tol {q.tolerance:.0e})"
    text = f"rel err {q.rel_err:.2e} > tol {q.tolerance:.0e}{against}"
    if q.max_abs_err is not None:
        text += f", max abs {q.max_abs_err:.2e}"
    return text + (f" ({q.note})" if q.note else "")


def problems(results: Iterable[VerifyResult], statuses: tuple[str, ...] = ORDER) -> list[Problem]:
    """Every result with one of `statuses`, failures first; a failed result gives a line per failing quantity."""
    found = []
    results = list(results)
    for status in statuses:
        for r in results:
            if r.status != status:
                continue
            if status == Status.FAIL and r.failing:
                found += [Problem(r.case.case_id, r.backend, status, q.quantity, quantity_detail(q)) for q in r.failing]
            else:
                found.append(Problem(r.case.case_id, r.backend, status, "", r.message))
    return found


def unsupported(results: Iterable[VerifyResult]) -> list[Unsupported]:
    """The `unsupported` results, one group per backend and reason: backends in order of first
    appearance, each backend's reasons likewise."""
    groups: dict[tuple[str, str], list[str]] = {}
    backends: dict[str, int] = {}
    for r in results:
        if r.status == Status.UNSUPPORTED:
            groups.setdefault((r.backend, r.message), []).append(r.case.case_id)
            backends.setdefault(r.backend, len(backends))
    ordered = sorted(groups.items(), key=lambda item: backends[item[0][0]])  # stable: reasons keep their order
    return [Unsupported(b, reason, tuple(ids)) for (b, reason), ids in ordered]


def one_line(p: Problem) -> str:
    """A problem as one line of plain text (for an AssertionError or a log)."""
    what = f"{p.quantity}: " if p.quantity else ""
    return f"{p.case_id} on {p.backend}: {p.status}: {what}{p.detail}"
