"""`dcnbench gate`: fail CI on a correctness regression or a significant slowdown against a baseline.

Exit codes: 0 pass, 1 correctness regression, 2 usage error, 3 performance regression,
4 measurement too noisy to decide.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from dcnbench import ops
from dcnbench.cli.common import (BackendOpt, ImplOpt, check_count, check_seconds, console, err_console, stamp,
                                 user_errors)
from dcnbench.errors import UsageError

# Its temporaries (~42 MB) stay above glibc's largest mmap threshold (32 MB), so every call
# allocates the same way; smaller shapes flip between heap and mmap and time bimodally.
DEFAULT_GATE_SHAPE = "8,64,48,48:64,3,3"
PERFORMANCE_MODES = ("gate", "report-only", "off")


def _backends(names: list[str] | None, plugins, kinds) -> list:
    from dcnbench import backends as registry

    if names:
        return registry.select(names, plugins, kinds)[0]
    return registry.select(None, [], kinds)[0] + plugins


def _measure_speed(cases: list, backends, repeat: int, warmup_s: float, reference: str | None) -> dict:
    from dcnbench import results
    from dcnbench.timing import contention
    from dcnbench.timing.speed import run_speed

    with contention.watch() as seen:
        found = run_speed(backends=backends, cases=cases, repeat=repeat, warmup_s=warmup_s, baseline=reference,
                          measure_memory=False, on_progress=lambda text: None)
    env = results.environment(device=cases[0].device if cases else "cpu", seed=0, backends=backends)
    env["contention"] = seen.result.to_dict()
    return results.document("speed", env, found, {"baseline": reference, "repeat": repeat, "warmup_s": warmup_s})


def write_baseline(*, path: Path, shapes: list[str] | None, presets: list[str] | None, backends: list[str] | None,
                   impls: list[str] | None, reference: str | None, repeat: int, warmup_s: float, dcn: str) -> int:
    # Every workload is parsed before anything runs, so a bad --shape/--preset costs nothing.
    conv = ops.get("deform_conv2d")
    geos = [conv.parse_shape(s) for s in shapes or []] + [geo for p in presets or [] for geo in ops.preset(p)]
    from dcnbench import backends as registry
    from dcnbench.results import gate as g
    from dcnbench import results
    from dcnbench.plugins import load_plugins
    from dcnbench.timing.speed import SpeedCase
    from dcnbench.checking.verify import default_suite, run_verify

    plugins = load_plugins(impls)
    verify_backends = [b for b in _backends(backends, plugins, ("deformable",)) if b.kind == "deformable"]
    cases = [SpeedCase(geo, mask=dcn == "v2") for geo in geos or [conv.parse_shape(DEFAULT_GATE_SHAPE)]]
    env = results.environment(device="cpu", seed=0, backends=verify_backends)
    verify_doc = results.document("verify", env, run_verify(backends=verify_backends, cases=default_suite()))
    speed_backends = verify_backends + registry.select(None, [], ("reference",))[0]
    speed_doc = _measure_speed(cases, speed_backends, repeat, warmup_s, reference)
    results.save(path, results.bundle(g.BASELINE_KIND, env, [verify_doc, speed_doc]))
    console.print(f"wrote baseline {path}: {len(verify_doc['records'])} verify and {len(speed_doc['records'])} speed records",
                  highlight=False)
    return 0


def run_gate(*, baseline: Path, candidates: list[Path], backends: list[str] | None, impls: list[str] | None,
             settings, performance: str, correctness: bool, summary: Path | None, allow_missing: bool = False) -> int:
    if performance not in PERFORMANCE_MODES:
        raise UsageError(f"unknown --performance '{performance}'", hint=f"choose from: {', '.join(PERFORMANCE_MODES)}")
    from dcnbench.results import gate as g
    from dcnbench import results
    from dcnbench.results.summary import gate_markdown

    base_doc = results.load_json(baseline, kinds=(g.BASELINE_KIND,))
    base_docs = results.expand([base_doc])
    speed_base = next((d for d in base_docs if d["kind"] == "speed"), None)
    if candidates:
        cand_docs = results.load_many(candidates, kinds=("verify", "speed", "gate-candidate"))
        cand_env = results.expand(cand_docs)[0]["environment"]
        decision = g.decide(base_docs, cand_docs, settings, performance, correctness, allow_missing)
        name = ", ".join(f"`{p}`" for p in candidates)
    else:
        # Run the baseline's own workloads now, with the backends it names.
        import torch

        from dcnbench import backends as registry
        from dcnbench.plugins import load_plugins
        from dcnbench.timing.speed import SpeedCase
        from dcnbench.checking.verify import default_suite, run_verify

        plugins = load_plugins(impls)
        wanted = {r["backend"] for d in base_docs for r in d["records"]}
        known = {b.name: b for b in registry.all_backends() if not b.unavailable} | {p.name: p for p in plugins}
        chosen = [known[n] for n in (backends or sorted(wanted)) if n in known]
        cand_docs = []
        if correctness:
            case_ids = {r["case_id"] for d in base_docs if d["kind"] == "verify" for r in d["records"]}
            cases = [c for c in default_suite() if c.case_id in case_ids]
            verify_backends = [b for b in chosen if b.kind == "deformable"]
            env = results.environment(device="cpu", seed=0, backends=verify_backends)
            cand_docs.append(results.document("verify", env, run_verify(backends=verify_backends, cases=cases)))
        speed_cases, repeat, warmup_s = [], 10, 0.5
        if speed_base is not None and performance != "off":
            speed_cases = list({r["case_digest"]: SpeedCase.from_dict(r["case"], r["op"]) for r in speed_base["records"]}.values())
            repeat, warmup_s = speed_base.get("repeat", repeat), speed_base.get("warmup_s", warmup_s)
            torch.set_num_threads(speed_base["environment"]["threads"])  # the timing mode is part of the workload
            cand_docs.append(_measure_speed(speed_cases, chosen, repeat, warmup_s, settings.reference))
        decision = g.decide(base_docs, cand_docs, settings, performance, correctness, allow_missing)
        again = g.suspects(decision)
        if again:
            err_console.print(f"re-measuring {len(again)} suspect workload(s) once", style="yellow")
            redo = _measure_speed([c for c in speed_cases if c.case_id in again], chosen, repeat, warmup_s, settings.reference)
            decision = g.with_remeasured(decision, g.compare_performance(base_docs, [redo], settings))
            cand_docs.append(redo)
        cand_env = cand_docs[0]["environment"] if cand_docs else {}
        saved = results.RESULTS_DIR / f"gate-{stamp()}.json"
        results.save(saved, results.bundle("gate-candidate", cand_env, cand_docs))
        name = f"this run (saved as `{saved}`)"
    text = gate_markdown(decision, settings, str(baseline), base_doc["environment"], name, cand_env, correctness=correctness)
    if summary:
        results.write_text(summary, text)
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    return decision.exit_code


def _check_settings(factor: float, alpha: float, noise: float) -> None:
    if not (math.isfinite(factor) and factor > 1 and 0 < alpha < 1 and math.isfinite(noise) and noise > 0):
        raise UsageError("--factor must be > 1, --alpha in (0, 1) and --noise > 0", hint="e.g. --factor 1.1 --alpha 0.01")


def _overrides(items: list[str] | None) -> tuple[tuple[str, float], ...]:
    found = []
    for item in items or []:
        text, eq, value = item.rpartition("=")
        try:
            found.append((text, float(value)))
        except ValueError:
            eq = ""
        if eq and not (math.isfinite(found[-1][1]) and found[-1][1] > 1):
            raise UsageError(f"--factor-for '{item}': the factor must be a number > 1", hint="e.g. --factor-for 8,64,56,56=1.2")
        if not eq or not text:
            raise UsageError(f"malformed --factor-for '{item}'", hint="write WORKLOAD_TEXT=FACTOR, e.g. 8,64,56,56=1.2")
    return tuple(found)


@user_errors
def command(
    candidates: Annotated[list[Path] | None, typer.Argument(help="Results files to judge (default: run the baseline's workloads now).")] = None,
    baseline: Annotated[Path | None, typer.Option("--baseline", help="Baseline file (from --write-baseline).")] = None,
    write_baseline_to: Annotated[Path | None, typer.Option("--write-baseline", help="Measure and write a baseline file instead of gating.")] = None,
    shape: Annotated[list[str] | None, typer.Option("--shape", help=f"With --write-baseline: workloads to time (default {DEFAULT_GATE_SHAPE}).")] = None,
    preset: Annotated[list[str] | None, typer.Option("--preset", help="With --write-baseline: preset workloads to time.")] = None,
    backend: BackendOpt = None,
    impl: ImplOpt = None,
    reference: Annotated[str | None, typer.Option("--reference", help="Backend every time is divided by, measured in the same "
                                                  "run (default: each workload's reference row, conv2d or roi_align).")] = None,
    factor: Annotated[float, typer.Option("--factor", help="A ratio must grow by more than this to be a regression.")] = 1.10,
    factor_for: Annotated[list[str] | None, typer.Option("--factor-for", help="Per-workload factor: TEXT=FACTOR (repeatable).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level of the Mann-Whitney U test.")] = 0.01,
    noise: Annotated[float, typer.Option("--noise", help="Largest relative uncertainty of a median ratio (1.57*IQR/sqrt(n)/median) that still decides.")] = 0.10,
    performance: Annotated[str, typer.Option("--performance", help="gate, report-only (print, never fail) or off.")] = "gate",
    correctness: Annotated[bool, typer.Option("--correctness/--no-correctness", help="Run the hard correctness gate.")] = True,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Do not fail when the candidate did not run a case (or "
                                                "time a workload) the baseline covers; list them instead.")] = False,
    summary: Annotated[Path | None, typer.Option("--summary", help="Also write the Markdown summary here (e.g. $GITHUB_STEP_SUMMARY).")] = None,
    repeat: Annotated[int, typer.Option("--repeat", help="With --write-baseline: timed samples per backend (gate runs reuse it); "
                                        "with --against: samples per backend per side, over all rounds.")] = 20,
    warmup: Annotated[float | None, typer.Option("--warmup", help="Warm-up seconds per backend: with --write-baseline (default 3, "
                                                 "gate runs reuse it), with --against per run (default 1).")] = None,
    dcn: Annotated[str, typer.Option("--dcn", help="With --write-baseline or --against: v2 or v1.")] = "v2",
    against: Annotated[str | None, typer.Option("--against", help="Build this git revision (branch, tag, commit) in a worktree "
                                                "with its own environment and time it against the working tree, "
                                                "interleaved, in this job.")] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="With --against: runs per side, base and head alternating.")] = 5,
) -> None:
    """Compare a run with a baseline, or the working tree with a git revision built and timed now (--against):
    hard correctness gate, statistical performance gate.

    Exit status: 0 pass, 1 correctness regression (or a baseline case the candidate did not run),
    2 usage error, 3 performance regression, 4 measurements too noisy to decide.
    """
    from dcnbench import outputs

    check_count("--repeat", repeat)
    if warmup is not None:
        check_seconds("--warmup", warmup)
    outputs.claim([("--write-baseline", write_baseline_to), ("--summary", summary)])
    if write_baseline_to:
        raise typer.Exit(write_baseline(path=write_baseline_to, shapes=shape, presets=preset, backends=backend, impls=impl,
                                        reference=reference, repeat=repeat, warmup_s=3.0 if warmup is None else warmup, dcn=dcn))
    if against is not None:
        if candidates:
            raise UsageError("--against measures both revisions now: it takes no results files",
                             hint="drop the files, or gate them with --baseline FILE instead")
        _check_settings(factor, alpha, noise)
        from dcnbench.results import gate as g
        from dcnbench.cli.gate_against import gate_against

        settings = g.Settings(reference=reference, factor=factor, overrides=_overrides(factor_for), alpha=alpha, noise=noise)
        raise typer.Exit(gate_against(rev=against, shapes=shape, presets=preset, backends=backend, impls=impl, settings=settings,
                                      performance=performance, correctness=correctness, baseline=baseline, summary=summary,
                                      rounds=rounds, repeat=repeat, warmup_s=1.0 if warmup is None else warmup, dcn=dcn,
                                      default_shape=DEFAULT_GATE_SHAPE, allow_missing=allow_missing))
    if baseline is None:
        raise UsageError("no --baseline given", hint="pass --baseline FILE, or create one with --write-baseline FILE")
    _check_settings(factor, alpha, noise)
    from dcnbench.results import gate as g
    settings = g.Settings(reference=reference, factor=factor, overrides=_overrides(factor_for), alpha=alpha, noise=noise)
    raise typer.Exit(run_gate(baseline=baseline, candidates=candidates or [], backends=backend, impls=impl,
                              settings=settings, performance=performance, correctness=correctness, summary=summary,
                              allow_missing=allow_missing))
