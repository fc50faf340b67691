"""Verification: run a backend on a case and compare output and every gradient with a reference.

References come from the case's operator (`ops.get(case.op)`): its float64 oracle, or an identity
its spec names. Each run is repeated on identical inputs to measure determinism bitwise, and the
caller's tensors (and the cotangent) are compared with snapshots to catch in-place writes. Nothing
here names an operator.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from functools import partial

from dcnbench import ops
from dcnbench.backends import Backend
from dcnbench.ops.case import Case
from dcnbench.status import Status
from dcnbench.checking.compare import QuantityError, compare, dtype_checked, tolerance
from dcnbench.checking.runs import Run, bitwise_equal, cotangents, reference, run_call
from dcnbench.checking.special import CannotCompile, compiled_errors, gradcheck_errors, knob_runs
from dcnbench.errors import one_line


def default_suite(seed: int = 0, op_names: list[str] | None = None, thorough: bool = False,
                  built: list | None = None) -> list[Case]:
    """Every registered operator's default cases (of `op_names` only, when given), in registry order,
    each op's hand-written cases followed by its covering array (pairs; triples when `thorough`).
    `built` collects each covering array's record (covering.Generated: count and build time)."""
    from dcnbench.checking import covering
    found = []
    for spec in ops.all_ops():
        if op_names and spec.name not in op_names:
            continue
        found += spec.suite(seed)
        if spec.options:
            generated = covering.generate(spec.options(), seed, covering.level_strength(thorough), spec.name)
            found += generated.cases
            if built is not None:
                built.append(generated)
    return found


def select_cases(cases: list[Case], patterns: list[str] | None, dtypes: list[str] | None,
                 op_names: list[str] | None = None) -> list[Case]:
    """Keep cases of the listed ops (all when none) whose id contains any pattern and whose dtype is listed."""
    kept = [c for c in cases if (not dtypes or c.dtype in dtypes) and (not op_names or c.op in op_names)]
    if patterns:
        kept = [c for c in kept if any(p in c.case_id for p in patterns)]
    return kept


@dataclass(frozen=True)
class DialectReport:
    """How a backend that declares a non-paper boundary rule relates to the paper's rule Z."""

    rule: str
    matches_rule: bool  # every quantity within tolerance of the oracle in `rule`
    interior_outputs: int  # outputs whose samples all avoid the border bands
    band_outputs: int
    interior_max_abs_vs_z: float | None  # divergence from rule Z there (~0 when the dialect holds)
    band_max_abs_vs_z: float | None
    interior_ok: bool


@dataclass(frozen=True)
class VerifyResult:
    case: Case
    backend: str
    status: Status
    quantities: tuple[QuantityError, ...] = ()
    message: str = ""
    elapsed_s: float = 0.0
    dialect: DialectReport | None = None

    @property
    def failing(self) -> tuple[QuantityError, ...]:
        """Quantities that decide a failure (for a dialect result: those against its own rule)."""
        if self.dialect is not None and self.status == Status.DIALECT:
            return ()
        if self.dialect is not None and self.dialect.matches_rule is False:
            return tuple(q for q in self.quantities if not q.ok and q.reference == self.dialect.rule)
        return tuple(q for q in self.quantities if not q.ok)


def _compare_runs(case: Case, run: Run, ref: Run, quantities: Iterable[str], label: str,
                  no_backward: str | None = None) -> list[QuantityError]:
    tol = tolerance(case.dtype, "output")
    # A case that plants NaN/Inf holds every quantity to the reference's non-finite entries.
    against = partial(compare, nonfinite=case.poison is not None)
    found = []
    for q in quantities:
        if q == "output":
            found.append(replace(dtype_checked(against(q, run.output, ref.output, case.dtype), run.output, case.dtype),
                                 reference=label))
        elif q in ref.grads and ref.grads[q] is not None:
            if no_backward:
                found.append(QuantityError(q, None, None, tolerance(case.dtype, q), True, reference=label, unsupported=no_backward))
            else:
                found.append(replace(against(q, run.grads.get(q), ref.grads[q], case.dtype), reference=label))
    for layout, grads in run.layout_grads.items():
        expected = ref.layout_grads["expanded"] if layout == "expanded" else ref.grads
        for q, got in grads.items():
            if q in quantities and expected.get(q) is not None:
                err = against(q, got, expected[q], case.dtype)
                found.append(replace(err, quantity=f"{q}@{layout}", reference=label))
    for name in run.mutated:
        found.append(QuantityError(f"unchanged:{name}", None, None, tol, False, f"the backend modified the caller's {name}", label))
    return found


def _dialect_report(case: Case, rule: str, run: Run, ref_z: Run, vs_rule: list[QuantityError]) -> DialectReport:
    band = ops.of(case).band_outputs(case, case.inputs("cpu")).expand_as(ref_z.output)
    diff = (run.output.double().cpu() - ref_z.output).abs()
    interior, in_band = diff[~band], diff[band]
    inner = compare("output", run.output.double().cpu()[~band], ref_z.output[~band], case.dtype)
    channels = max(1, ref_z.output.shape[1]) if ref_z.output.dim() > 1 else 1
    return DialectReport(
        rule=rule,
        matches_rule=all(q.ok for q in vs_rule),
        interior_outputs=int((~band).sum()) // channels,
        band_outputs=int(band.sum()) // channels,
        interior_max_abs_vs_z=float(interior.max()) if interior.numel() else None,
        band_max_abs_vs_z=float(in_band.max()) if in_band.numel() else None,
        interior_ok=inner.ok,
    )


def why_unsupported(backend: Backend, case: Case, device: str) -> str | None:
    """Why the backend declares that it does not run this case on `device` (verify, speed and fuzz
    ask alike), or None."""
    return (backend.support(case.op, device, case.dtype, case.geometry) or case.unsupported_by(backend.ops[case.op])
            or (backend.case_unsupported(case, device) if backend.case_unsupported else None)
            or (backend.unsupported_reasons.get("export") if case.check == "export" else None)
            # Dynamo took 5 s per case to find that out for mxnet and paddle.
            or (IN_WORKER_NOT_COMPILED if case.check == "compile" and backend.in_worker else None))


IN_WORKER_NOT_COMPILED = ("torch.compile cannot trace it: its kernel runs in a worker process, nothing in this one "
                          "for Dynamo to trace")


def verify_case(backend: Backend, case: Case, device: str, ref_cache: dict, knobs: bool = False) -> VerifyResult:
    start = time.perf_counter()
    reason = why_unsupported(backend, case, device)
    if reason:
        return VerifyResult(case, backend.name, Status.UNSUPPORTED, message=reason)
    if case.check == "export":  # the ONNX export check (onnx_export.py)
        return verify_export(backend, case, device, ref_cache)
    no_backward = backend.backward_unsupported(case, device) if backend.backward_unsupported else None
    fn = backend.ops[case.op]
    rule = backend.dialect(case) if case.check == "oracle" else "Z"
    try:
        if case.check == "compile":
            try:
                quantities = compiled_errors(fn, case, device, not no_backward)
            except CannotCompile as exc:
                return VerifyResult(case, backend.name, Status.UNSUPPORTED, message=str(exc),
                                    elapsed_s=time.perf_counter() - start)
            status = Status.PASS if all(q.ok for q in quantities) else Status.FAIL
            return VerifyResult(case, backend.name, status, tuple(quantities), _mode_note(backend, device),
                                time.perf_counter() - start)
        if case.check == "gradcheck":
            if no_backward:
                return VerifyResult(case, backend.name, Status.UNSUPPORTED, message=no_backward)
            quantities = gradcheck_errors(fn, case, device)
            status = Status.PASS if all(q.ok for q in quantities) else Status.FAIL
            return VerifyResult(case, backend.name, status, tuple(quantities), _mode_note(backend, device),
                                time.perf_counter() - start)
        for r in {"Z", rule}:
            cached_reference(ref_cache, case, r)
        inputs = case.inputs(device)
        cots = cotangents(case, next(iter(inputs.values())).device.type)
        first = run_call(fn, case, inputs, cots, backward=not no_backward, layouts=True)
        second = run_call(fn, case, inputs, {"random": cots["random"]}, backward=not no_backward)
        by_knob = knob_runs(backend, fn, case, inputs, cots["random"], first, device, not no_backward) if knobs else []
    except Exception as exc:  # a backend that raises becomes an error row; the run goes on
        return VerifyResult(case, backend.name, Status.ERROR, message=one_line(exc), elapsed_s=time.perf_counter() - start)
    except SystemExit as exc:  # a kernel run here (--in-process) that exits must not end the run with its code
        return VerifyResult(case, backend.name, Status.ERROR, message=f"the kernel called sys.exit({exc.code!r})",
                            elapsed_s=time.perf_counter() - start)
    ref_z, covered = ref_cache[(case, "Z")]
    label = "Z" if case.check == "oracle" else case.check
    vs_paper = _compare_runs(case, first, ref_z, covered, label, no_backward) + by_knob
    vs_rule, report = [], None
    if rule != "Z":
        vs_rule = _compare_runs(case, first, ref_cache[(case, rule)][0], covered, rule, no_backward)
        report = _dialect_report(case, rule, first, ref_z, vs_rule)
    quantities = vs_paper + vs_rule
    if all(q.ok for q in vs_paper):
        status = Status.PASS
    elif report and report.matches_rule and report.interior_ok:
        status = Status.DIALECT
    else:
        status = Status.FAIL
    if status in (Status.PASS, Status.DIALECT) and not bitwise_equal(first, second):
        status = Status.NONDETERMINISTIC
    message = {
        Status.NONDETERMINISTIC: "results differ bitwise between two runs on identical inputs",
        Status.DIALECT: f"matches rule {rule}; differs from the paper's rule Z only at outputs with a sample in a border band",
    }.get(status, "")
    if no_backward and status != Status.FAIL:
        message = "; ".join(filter(None, [message, f"gradients unsupported: {no_backward}"]))
    message = "; ".join(filter(None, [message, _mode_note(backend, device)]))
    return VerifyResult(case, backend.name, status, tuple(quantities), message, time.perf_counter() - start, report)


def verify_export(backend, case, device: str, ref_cache: dict):
    """One export case on one backend, as a VerifyResult (compared with the float64 oracle's output)."""
    from dcnbench.checking.onnx_export import NotExportable, RuntimeRejected, exporter

    start = time.perf_counter()
    if device != "cpu":
        return VerifyResult(case, backend.name, Status.UNSUPPORTED,
                            message="the export check runs the exported model with onnxruntime's CPU provider")
    if ops.of(case).export_layer is None:
        return VerifyResult(case, backend.name, Status.UNSUPPORTED, message=f"{case.op} has no export check")
    try:
        output, note = exporter(backend)(case)
    except (NotExportable, RuntimeRejected) as exc:
        status = Status.UNSUPPORTED if isinstance(exc, NotExportable) else Status.ERROR
        return VerifyResult(case, backend.name, status, message=str(exc), elapsed_s=time.perf_counter() - start)
    except Exception as exc:  # the kernel or the worker failed: an error row, and the run goes on
        return VerifyResult(case, backend.name, Status.ERROR, message=one_line(exc), elapsed_s=time.perf_counter() - start)
    ref, _ = cached_reference(ref_cache, case, "Z")
    err = dtype_checked(compare("output", output, ref.output, case.dtype), output, case.dtype)
    status = Status.PASS if err.ok else Status.FAIL
    return VerifyResult(case, backend.name, status, (err,), note, time.perf_counter() - start)


def _mode_note(backend: Backend, device: str) -> str:
    return f"mode: {backend.mode(device)}" if backend.mode else ""


_CACHE_LOCK = object()  # a cache's key for its lock


def cached_reference(cache: dict, case: Case, rule: str):
    """The case's reference under `rule`, computed once per cache (one case's, which run_verify's
    threads share: its lock makes the second wait for the first's instead of computing its own).
    dict.setdefault is atomic, so two threads get the same lock."""
    with cache.setdefault(_CACHE_LOCK, threading.Lock()):
        if (case, rule) not in cache:
            cache[(case, rule)] = reference(case, rule)
        return cache[(case, rule)]


class _Lane:
    """One daemon thread that runs the rows given to it in order, for the life of the process.

    Worker processes (mxnet's, paddle's, an isolated backend's, the export worker) are started on
    their first call and die with the thread that started them (their keeper's parent-death signal
    follows the thread), so each worker's calls go to one long-lived thread, never to a thread per
    call. A daemon: Ctrl-C does not wait for a call in flight (the workers are stopped at exit)."""

    def __init__(self, name: str):
        self._rows: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=f"dcnbench-lane-{name}", daemon=True)
        self.thread.start()

    def _serve(self):
        while (job := self._rows.get()) is not None:
            fn, row = job
            try:
                row.set_result(fn())
            except BaseException as exc:  # handed to the thread that waits on the row
                row.set_exception(exc)

    def stop(self) -> None:
        """End the thread once its queued rows are done."""
        self._rows.put(None)

    def submit(self, fn: Callable[[], VerifyResult]) -> Future:
        row: Future = Future()
        self._rows.put((fn, row))
        return row


_LANES: dict[str, _Lane] = {}  # made on first use: a run without worker rows starts no thread
_LANES_MADE = threading.Lock()


def _lane(name: str) -> _Lane:
    with _LANES_MADE:
        if not _LANES:
            atexit.register(_stop_lanes)
        if name not in _LANES:
            _LANES[name] = _Lane(name)
        return _LANES[name]


def _stop_lanes() -> None:
    """At exit, end the lane threads before the interpreter does: a thread that ran torch code and
    is still alive while the interpreter shuts down can crash it (measured: a segfault after a whole
    default run). A lane still in a call (Ctrl-C) has its workers stopped, which ends the call."""
    for lane in _LANES.values():
        lane.stop()
    busy = [lane for lane in _LANES.values() if _still_running(lane, 1.0)]
    if busy:
        from dcnbench.worker.client import close_all

        close_all()
        for lane in busy:
            _still_running(lane, 10.0)


def _still_running(lane: _Lane, timeout_s: float) -> bool:
    lane.thread.join(timeout_s)
    return lane.thread.is_alive()


def lane_of(backend: Backend, case: Case) -> str | None:
    """Which worker process runs this row, if any: the backend's own, or (an export case of a backend
    that runs here) the export worker (onnx_export.exporter); None for a row run in this process."""
    if backend.in_worker:
        return backend.name
    return "export" if case.check == "export" else None


# Cases whose worker rows may still be running while this process goes on: a bound on the memory
# their inputs and references hold (at 16 and 64, paddle's rows of the two large cases held this
# process back by 30 s; at 256 the default run peaked at 3.5 GB, measured).
BACKLOG = 256


def run_verify(*, backends: list[Backend], cases: list[Case], device: str = "cpu", knobs: bool = False,
               on_result: Callable[[VerifyResult], None] | None = None) -> list[VerifyResult]:
    """Every case on every backend, case-major so each reference is computed once and dropped;
    with `knobs`, each also under every knob setting (dcnbench.checking.knobs).

    Rows that wait on a worker process (mxnet's and paddle's, the ONNX exports) go to that worker's
    lane thread, while this process runs the other rows and goes on to the next cases: otherwise it
    would sit waiting on the workers, about a third of the default run's time. The results come
    (to `on_result` and in the list) in the order of the cases and of `backends` all the same."""
    results: list[VerifyResult] = []
    backlog: deque[list] = deque()  # per case, its rows in backend order: results, or rows on a lane

    def emit(rows: list) -> None:
        for row in rows:
            result = row.result() if isinstance(row, Future) else row
            results.append(result)
            if on_result:
                on_result(result)

    for case in cases:
        cache: dict = {}
        lanes = [lane_of(b, case) for b in backends]
        rows: list = [_lane(lane).submit(partial(verify_case, b, case, device, cache, knobs)) if lane else None
                      for b, lane in zip(backends, lanes)]
        rows = [row or verify_case(b, case, device, cache, knobs) for b, row in zip(backends, rows)]
        backlog.append(rows)
        while backlog and (len(backlog) > BACKLOG or all(not isinstance(r, Future) or r.done() for r in backlog[0])):
            emit(backlog.popleft())
    while backlog:
        emit(backlog.popleft())
    return results


def failed(results: Iterable[VerifyResult], allow_nondeterministic: bool = False) -> bool:
    """Whether the run failed: `pass`, `dialect` and `unsupported` do not fail it."""
    bad = {Status.FAIL, Status.ERROR} | (set() if allow_nondeterministic else {Status.NONDETERMINISTIC})
    return any(r.status in bad for r in results)
