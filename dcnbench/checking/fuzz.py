"""`verify --fuzz N`: random valid problems per operator, drawn by hypothesis, run on every
selected backend against the float64 oracle; a failure is shrunk to the smallest failing problem
and printed as a reproducible case with a one-line command that re-runs exactly it.

Each operator's spec names a strategy of its cases (`OpSpec.fuzz`, e.g. ops/deform_conv2d/fuzz.py);
nothing here names an operator. Time is bounded: once `seconds` have passed no new problem is
drawn, and a shrink that runs past twice that keeps the smallest failing problem found so far.
A run that tested nothing (no problem drawn, or every one declared unsupported) says why: it is
never reported clean.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from dcnbench import ops
from dcnbench.backends import Backend
from dcnbench.status import Status

FAILING = (Status.FAIL, Status.ERROR, Status.NONDETERMINISTIC)
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class Finding:
    """One (operator, backend) fuzz run: how many problems ran, and the smallest failing one."""

    op: str
    backend: str
    tried: int
    seconds: float
    failure: object | None = None  # the VerifyResult of the smallest failing problem, or None
    nothing: str = ""  # when no problem ran: why

    @property
    def tested_nothing(self) -> bool:
        return self.tried == 0


def case_json(case) -> str:
    """A case as one JSON line that `verify --case-json` reads back."""
    return json.dumps({"op": case.op} | case.definition(), sort_keys=True, default=str, separators=(",", ":"))


def case_from_json(text: str):
    from dcnbench.errors import UsageError

    try:
        d = json.loads(text)
        return ops.get(d.pop("op")).case_from_dict(d)
    except UsageError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"--case-json is not a case: {type(exc).__name__}: {exc}",
                         hint="paste the JSON a --fuzz run printed for its failing case") from None


class _TimeUp(BaseException):
    """The time bound: hypothesis stops at once (a BaseException is not a failure it would shrink).
    `assume(False)` after the deadline did not stop it: it went on drawing problems to reject, up
    to its limit of invalid examples (108 s of a 15 s bound, measured)."""


def fuzz_backend(backend: Backend, spec, *, examples: int, seconds: float, seed: int, device: str = "cpu",
                 on_problem: Callable[[], None] | None = None) -> Finding:
    from hypothesis import HealthCheck, Phase, Verbosity, assume, given, settings
    from hypothesis import errors as hypothesis_errors
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from dcnbench.checking.verify import verify_case, why_unsupported

    start = time.monotonic()
    state = {"tried": 0, "failure": None, "unsupported": Counter(), "no_inputs": 0, "time_up": False}

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, print_blob=False, report_multiple_bugs=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    @given(case=spec.fuzz(), dtype=st.sampled_from(DTYPES))
    def problem(case, dtype):
        # No new problem after `seconds`; shrinking may take as long again, then it keeps what it has.
        if time.monotonic() - start >= (2 if state["failure"] else 1) * seconds:
            state["time_up"] = True
            raise _TimeUp
        case = replace(case, dtype=dtype)
        reason = why_unsupported(backend, case, device)
        if reason:
            state["unsupported"][reason] += 1
            assume(False)  # a dtype or shape this backend declares unsupported proves nothing
        try:
            case.inputs("cpu")
        except RuntimeError:  # no RoIs could keep their samples off the kinks: not a valid problem
            state["no_inputs"] += 1
            assume(False)
        state["tried"] += 1
        if on_problem:
            on_problem()
        result = verify_case(backend, case, device, {})
        if result.status in FAILING:
            state["failure"] = result  # each later failure is a smaller one: hypothesis only shrinks
            raise AssertionError(result.status)

    try:
        problem()
    except (_TimeUp, AssertionError, hypothesis_errors.Flaky, hypothesis_errors.Unsatisfiable,
            hypothesis_errors.FailedHealthCheck):
        pass
    return Finding(spec.name, backend.name, state["tried"], time.monotonic() - start, state["failure"],
                   "" if state["tried"] else _why_nothing(state, seconds))


def _why_nothing(state: dict, seconds: float) -> str:
    """Why a fuzz run of one operator on one backend ran no problem."""
    if state["unsupported"]:
        reason, _ = state["unsupported"].most_common(1)[0]
        return f"all {sum(state['unsupported'].values())} problems drawn were unsupported by the backend (e.g. {reason})"
    if state["no_inputs"]:
        return f"no valid inputs could be drawn for the {state['no_inputs']} problems drawn"
    if state["time_up"]:
        return f"the time bound (--fuzz-time {seconds:g}) passed before the first problem"
    return "hypothesis drew no problem"


def run_fuzz(*, backends: list[Backend], op_names: list[str] | None, examples: int, seconds: float, seed: int,
             device: str = "cpu", on_problem: Callable[[str], None] | None = None) -> list[Finding]:
    """Every selected backend on every operator it implements (every registered operator has a
    fuzz strategy; tests/test_fuzz.py holds the registry to it)."""
    found = []
    for spec in ops.all_ops():
        if op_names and spec.name not in op_names:
            continue
        for backend in backends:
            if spec.name in backend.ops and spec.fuzz is None:
                found.append(Finding(spec.name, backend.name, 0, 0.0, nothing="the operator has no fuzz strategy (OpSpec.fuzz)"))
            elif spec.name in backend.ops:
                found.append(fuzz_backend(backend, spec, examples=examples, seconds=seconds, seed=seed, device=device,
                                          on_problem=(lambda: on_problem(f"{spec.name} {backend.name}")) if on_problem else None))
    return found


def repro_command(finding: Finding, backend_arg: str) -> str:
    """The one line that re-runs exactly the failing case on the same backend."""
    return f"dcnbench verify {backend_arg} --case-json '{case_json(finding.failure.case)}'"
