"""The gate's decision as a GitHub-flavoured Markdown summary (for a CI job summary or a PR comment)."""

from __future__ import annotations

from dcnbench.results.gate import UNTRUSTWORTHY, Decision, Settings

VERDICTS = ("improved", "same", "worse", "noisy", UNTRUSTWORTHY, "not comparable", "not run")
# How many not-run rows to list before summarising the rest.
LISTED = 20


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def _describe(env: dict) -> str:
    commit = (env.get("git_commit") or "no commit")[:10]
    return f"commit {commit}, {env.get('timestamp', '?')}, {env.get('device_name', '?')}, torch {env.get('torch_version', '?')}"


def _reference(settings: Settings) -> str:
    return f"`{settings.reference}`" if settings.reference else "the workload's reference row (`conv2d`, `roi_align`)"


def gate_markdown(decision: Decision, settings: Settings, baseline_name: str, baseline_env: dict,
                  candidate_name: str, candidate_env: dict, oracle: bool = False, correctness: bool = True) -> str:
    """`oracle`: correctness was judged against the oracle (gate --against), not only a stored baseline;
    `correctness`: whether it was judged at all (--no-correctness)."""
    lines = [f"## dcnbench gate: {decision.headline}", "",
             f"Baseline: `{baseline_name}` ({_describe(baseline_env)})  ",
             f"Candidate: {candidate_name} ({_describe(candidate_env)})", ""]
    perf = decision.performance
    lines += ["| | " + " | ".join(VERDICTS) + " |", "|---|" + "---:|" * len(VERDICTS),
              "| performance | " + " | ".join(str(sum(p.verdict == v for p in perf)) for v in VERDICTS) + " |", ""]

    lines.append("### Correctness (hard gate)")
    if not correctness:
        lines.append("Not checked (--no-correctness).")
    elif decision.regressions:
        what = "fail against the oracle, or passed in the stored baseline and do not now" if oracle else \
            "passed in the baseline and do not now"
        lines += [f"{len(decision.regressions)} case(s) {what}:", "",
                  "| case | backend | was | now | what fails |", "|---|---|---|---|---|"]
        lines += [f"| {c.case_id} | {c.backend} | {c.was} | **{c.now}** | {c.detail} |" for c in decision.regressions]
    else:
        lines.append(f"All {decision.correctness_checked} case×backend results that ran pass against the oracle." if oracle else
                     f"All {decision.correctness_checked} case×backend results that passed in the baseline still pass.")
    if decision.correctness_not_run:
        how = "allowed by --allow-missing" if decision.allow_missing else "**fails the gate** (pass --allow-missing to accept)"
        lines += ["", f"{len(decision.correctness_not_run)} case×backend result(s) that passed in the baseline were not run "
                      f"by the candidate, or not as the baseline defined them: {how}.", ""]
        lines += [f"- {c.case_id} · {c.backend}: {c.detail}" for c in decision.correctness_not_run[:LISTED]]
        if len(decision.correctness_not_run) > LISTED:
            lines.append(f"- … and {len(decision.correctness_not_run) - LISTED} more")
    lines.append("")

    if decision.performance_mode == "off":
        lines += ["### Performance (off)", "Not measured: the run was asked for correctness only (--performance off)."]
        return "\n".join(lines + [f"\n_{note}_" for note in decision.notes]) + "\n"
    mode = {"gate": "gate", "report-only": "report only, never fails"}[decision.performance_mode]
    lines += [f"### Performance ({mode})",
              f"Each backend's time divided by {_reference(settings)}'s in the same round of the same run. "
              f"`worse`: the ratio grew by more than the factor (default {settings.factor}) and a one-sided "
              f"Mann-Whitney U test on the per-round ratios gives p < {settings.alpha}; `noisy`: a move the test cannot "
              f"confirm, or a median known only to ±{settings.noise:.0%} (1.57·IQR/√n), too coarse to resolve the factor; "
              f"`{UNTRUSTWORTHY}`: timed on an oversubscribed machine (load above the cores, CPU steal, or a busy "
              "probe starved), so no ratio is judged.", ""]
    comparable = [p for p in perf if p.verdict not in ("not comparable", "not run", UNTRUSTWORTHY)]
    if comparable:
        lines += ["| workload | backend | reference | baseline ratio | now ratio | change | p | verdict |",
                  "|---|---|---|---:|---:|---:|---:|---|"]
        for p in comparable:
            verdict = f"**{p.verdict}**" if p.verdict in ("worse", "noisy") else p.verdict
            lines.append(f"| {p.case_id} | {p.backend} | {p.reference} | {_fmt(p.base_ratio)} | {_fmt(p.now_ratio)} | "
                         f"{_fmt(p.change, '.3f')} | {_fmt(p.p_value, '.2g')} | {verdict} (factor {p.factor}) |")
    for verdict in (UNTRUSTWORTHY, "not comparable", "not run"):
        rows = [p for p in perf if p.verdict == verdict]
        if rows:
            lines += ["", f"{verdict.capitalize()}:", ""] + [f"- {p.case_id} · {p.backend}: {p.reason}" for p in rows]
    for note in decision.notes:
        lines += ["", f"_{note}_"]
    return "\n".join(lines) + "\n"
