"""The regression gate: a candidate run against a baseline, decided the way a CI job needs.

Correctness is a hard gate: a case that passed in the baseline and does not now is a regression.
Performance is statistical: each backend's time is divided by a reference backend timed in the
same round of the same run (so the machine's speed cancels), and a workload is `worse` only when
that ratio moved beyond a factor AND a one-sided Mann-Whitney U test on the per-round ratios says
the move is significant. Figures from another environment, or from a workload whose definition
changed, are `not comparable`: never a pass and never a regression.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

import pandas as pd
from scipy.stats import mannwhitneyu

from dcnbench.timing.contention import oversubscribed
from dcnbench.errors import EXIT_FAILED, EXIT_NOISY, EXIT_OK, EXIT_PERFORMANCE
from dcnbench.results import expand, frame, partial_note
from dcnbench.status import PASSING
# What must match for times to be comparable across runs.
ENV_KEYS = ("device", "device_name", "cpu_model", "torch_version", "torchvision_version", "threads")
# Within one job on one machine (gate --against) only the machine must match: the versions are part
# of the change being judged.
MACHINE_KEYS = ("device", "device_name", "cpu_model", "threads")
BASELINE_KIND = "baseline"
# The verdict for a workload timed on an oversubscribed machine (contention.py): no ratio is judged.
UNTRUSTWORTHY = "untrustworthy"


@dataclass(frozen=True)
class Settings:
    # The backend every time is divided by; None: each workload's reference row (the backend its
    # speed record divided by: conv2d for convolution, roi_align for RoI pooling).
    reference: str | None = None
    factor: float = 1.10
    overrides: tuple[tuple[str, float], ...] = ()  # (text in the workload id, factor)
    alpha: float = 0.01
    # Largest relative uncertainty of a median ratio (boxplot notch: 1.57*IQR/sqrt(n)/median) at which
    # a run can still resolve the factor; above it the gate says `noisy` instead of guessing.
    noise: float = 0.10

    def factor_for(self, case_id: str) -> float:
        for text, factor in self.overrides:
            if text in case_id:
                return factor
        return self.factor


@dataclass(frozen=True)
class CorrectnessChange:
    case_id: str
    backend: str
    was: str
    now: str
    detail: str = ""  # failing quantities or the message


@dataclass(frozen=True)
class PerfComparison:
    case_id: str
    backend: str
    verdict: str  # improved | same | worse | noisy | untrustworthy | not comparable
    base_ratio: float | None = None
    now_ratio: float | None = None
    p_value: float | None = None
    factor: float | None = None
    reason: str = ""
    reference: str | None = None  # the backend both ratios divide by

    @property
    def change(self) -> float | None:
        return self.now_ratio / self.base_ratio if self.base_ratio and self.now_ratio else None


@dataclass(frozen=True)
class Decision:
    regressions: tuple[CorrectnessChange, ...] = ()
    # Cases that passed in the baseline and were not run (or not as the baseline defined them).
    correctness_not_run: tuple[CorrectnessChange, ...] = ()
    correctness_checked: int = 0
    performance: tuple[PerfComparison, ...] = ()
    performance_mode: str = "gate"  # gate | report-only | off
    notes: tuple[str, ...] = field(default_factory=tuple)
    allow_missing: bool = False  # a case not run is reported, not failed

    @property
    def missing(self) -> tuple:
        """What the baseline covered that this run did not: verify cases, and timed workloads when
        performance gates."""
        perf = tuple(p for p in self.performance if p.verdict == "not run") if self.performance_mode == "gate" else ()
        return self.correctness_not_run + perf

    @property
    def exit_code(self) -> int:
        if self.regressions or (self.missing and not self.allow_missing):
            return EXIT_FAILED
        if self.performance_mode == "gate":
            verdicts = {p.verdict for p in self.performance}
            if "worse" in verdicts:
                return EXIT_PERFORMANCE
            if verdicts & {"noisy", UNTRUSTWORTHY}:  # the measurements cannot decide
                return EXIT_NOISY
        return EXIT_OK

    @property
    def headline(self) -> str:
        if self.exit_code == EXIT_FAILED and not self.regressions:
            return "FAIL: the candidate did not run what the baseline covers"
        if self.exit_code == EXIT_NOISY and any(p.verdict == UNTRUSTWORTHY for p in self.performance):
            return "UNDECIDED: timed on an oversubscribed machine"
        return {EXIT_OK: "PASS", EXIT_FAILED: "FAIL: correctness regression",
                EXIT_PERFORMANCE: "FAIL: performance regression",
                EXIT_NOISY: "UNDECIDED: measurements too noisy"}[self.exit_code]


# ---- reading result documents ------------------------------------------------------------------


def _records(docs: list[dict], kind: str) -> list[tuple[dict, dict]]:
    """(record, environment) pairs of one kind across documents (shards merge here)."""
    return [(r, d["environment"]) for d in expand(docs) if d["kind"] == kind for r in d["records"]]


# ---- correctness ---------------------------------------------------------------------------------


def _verify_records(docs: list[dict]):
    """One frame row per verify record (shards merged), with its failing quantities."""
    rows = frame(expand(docs), exact=True)
    rows = rows[rows.kind == "verify"].reindex(columns=rows.columns.union(["case_digest", "message", "ok", "quantity"]))
    failing = rows[rows.ok.eq(False)].groupby("record").quantity.agg(", ".join)
    return rows.drop_duplicates("record").assign(failing=lambda d: d.record.map(lambda r: failing.get(r, "")))


def compare_correctness(baseline: list[dict], candidate: list[dict]) -> tuple[list[CorrectnessChange], list[CorrectnessChange], int]:
    """(regressions, not run, cases checked) over every case that passed in the baseline.

    A case the candidate did not run, or ran under another definition, is `not run`: it proves
    nothing either way, so it never counts as a pass.
    """
    base, now = _verify_records(baseline), _verify_records(candidate).drop_duplicates(["case_id", "backend"], keep="last")
    both = base[base.status.isin(PASSING)].merge(now, "left", on=["case_id", "backend"], suffixes=("", "_now"))
    ran = both[both.case_digest_now.eq(both.case_digest)]
    not_run = [CorrectnessChange(r.case_id, r.backend, r.status, "not run", "the candidate did not run this case"
                                 if pd.isna(r.status_now) else "the candidate ran it under another definition")
               for r in both[~both.case_digest_now.eq(both.case_digest)].itertuples()]
    regressions = [CorrectnessChange(r.case_id, r.backend, r.status, r.status_now, r.failing_now or r.message_now or "")
                   for r in ran[~ran.status_now.isin(PASSING)].itertuples()]
    return regressions, not_run, len(ran)


# ---- performance ---------------------------------------------------------------------------------


def _ratio_samples(backend: dict, reference: dict) -> list[float]:
    """Per-round ratios: sample i of each was taken in round i of the same interleaved run."""
    return [b / r for b, r in zip(backend["samples_ms"], reference["samples_ms"]) if r > 0]


def median_uncertainty(values: list[float]) -> float:
    """Relative half-width of the median's ~95% interval (McGill, Tukey and Larsen's notch)."""
    if len(values) < 4:
        return float("inf")
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return 1.57 * (q3 - q1) / (q2 * len(values) ** 0.5) if q2 > 0 else float("inf")


def _env_difference(a: dict, b: dict, backends: tuple[str, ...], same_job: bool = False) -> str:
    for key in MACHINE_KEYS if same_job else ENV_KEYS:
        if a.get(key) != b.get(key):
            return f"environment differs: {key} {a.get(key)!r} vs {b.get(key)!r}"
    for name in () if same_job else backends:
        va, vb = a.get("backend_versions", {}).get(name), b.get("backend_versions", {}).get(name)
        if va != vb:
            return f"environment differs: {name} {va!r} vs {vb!r}"
    return ""


def classify(base: list[float], now: list[float], factor: float, settings: Settings) -> tuple[str, float | None]:
    """Verdict for one workload from per-round ratio samples of the baseline and the candidate."""
    change = statistics.median(now) / statistics.median(base)
    if change > factor:
        p = float(mannwhitneyu(now, base, alternative="greater").pvalue)
        if p < settings.alpha:
            return "worse", p
    elif change < 1 / factor:
        p = float(mannwhitneyu(now, base, alternative="less").pvalue)
        if p < settings.alpha:
            return "improved", p
    else:
        p = float(mannwhitneyu(now, base, alternative="two-sided").pvalue)
    noisy = max(median_uncertainty(base), median_uncertainty(now)) > settings.noise
    if noisy or change > factor or change < 1 / factor:
        # A move beyond the factor that the test cannot confirm, or a spread too wide to resolve
        # the factor at all: not enough evidence either way.
        return "noisy", p
    return "same", p


def compare_performance(baseline: list[dict], candidate: list[dict], settings: Settings,
                        same_job: bool = False) -> list[PerfComparison]:
    def index(docs):
        return {(r["case_digest"], r["backend"]): (r, env) for r, env in _records(docs, "speed")}

    base, now = index(baseline), index(candidate)
    found = []
    for (digest, backend), (b, b_env) in base.items():
        ref = settings.reference or b.get("baseline")
        if backend == ref or b["status"] != "ok" or ref is None:
            continue
        case_id = b["case_id"]
        factor = settings.factor_for(case_id)
        c = now.get((digest, backend))
        b_ref, c_ref = base.get((digest, ref)), now.get((digest, ref))
        reason = ""
        if c is None:
            found.append(PerfComparison(case_id, backend, "not run", factor=factor,
                                        reason="not measured in the candidate (or its definition changed)"))
            continue
        elif b_ref is None or c_ref is None or b_ref[0]["status"] != "ok" or c_ref[0]["status"] != "ok":
            reason = f"no {ref} reference measured in the same run"
        elif c[0]["status"] != "ok":
            reason = f"the candidate's run of {backend} is {c[0]['status']}: {c[0].get('message', '')}"
        else:
            reason = _env_difference(b_env, c[1], (backend, ref), same_job)
        if reason:
            found.append(PerfComparison(case_id, backend, "not comparable", factor=factor, reason=reason))
            continue
        busy = [f"the {side} was timed on an oversubscribed machine ({why})"
                for side, why in (("baseline", oversubscribed(b_env)), ("candidate", oversubscribed(c[1]))) if why]
        if busy:  # its ratio would measure the competition as well: no verdict from it
            found.append(PerfComparison(case_id, backend, UNTRUSTWORTHY, factor=factor, reason="; ".join(busy),
                                        reference=ref))
            continue
        base_r, now_r = _ratio_samples(b, b_ref[0]), _ratio_samples(c[0], c_ref[0])
        verdict, p = classify(base_r, now_r, factor, settings)
        found.append(PerfComparison(case_id, backend, verdict, statistics.median(base_r), statistics.median(now_r), p, factor,
                                    reference=ref))
    return found


def decide(baseline: list[dict], candidate: list[dict], settings: Settings, performance_mode: str = "gate",
           correctness: bool = True, allow_missing: bool = False) -> Decision:
    regressions, not_run, checked = compare_correctness(baseline, candidate) if correctness else ([], [], 0)
    perf = compare_performance(baseline, candidate, settings) if performance_mode != "off" else []
    notes = tuple(f"the candidate holds a {n}" for n in [partial_note(candidate)] if n)
    return Decision(tuple(regressions), tuple(not_run), checked, tuple(perf), performance_mode, notes, allow_missing)


def suspects(decision: Decision) -> set[str]:
    """Workloads to measure once more before deciding."""
    return {p.case_id for p in decision.performance if p.verdict in ("worse", "noisy", UNTRUSTWORTHY)}


def with_remeasured(decision: Decision, remeasured: list[PerfComparison]) -> Decision:
    """The decision with the suspects' comparisons replaced by those from the second measurement."""
    again = {(p.case_id, p.backend): p for p in remeasured}
    merged = tuple(again.get((p.case_id, p.backend), p) for p in decision.performance)
    notes = decision.notes + (f"re-measured {len({p.case_id for p in remeasured})} suspect workload(s) once before deciding",)
    return replace(decision, performance=merged, notes=notes)
