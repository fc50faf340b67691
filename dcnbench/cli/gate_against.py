"""`dcnbench gate --against REV`: judge the working tree against a git revision built and timed in this job.

Correctness: the working tree's backends against their oracle (and against a stored baseline with
--baseline), hard. Performance: base and head timed in alternating short runs on this machine
(dcnbench.results.against), judged by the gate's statistics (dcnbench.results.gate); suspects are measured again
and the second measurement decides. Exit codes as `gate`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

from dcnbench import ops
from dcnbench.cli.common import console, err_console, stamp
from dcnbench.errors import UsageError

PERFORMANCE_MODES = ("gate", "report-only", "off")


def workload_args(shapes: list[str], presets: list[str], backends: list[str], dcn: str, default_shape: str) -> tuple[str, ...]:
    """The `speed` options both sides get (checked here with the head's grammar first)."""
    conv = ops.get("deform_conv2d")
    for s in shapes:
        conv.parse_shape(s)
    for p in presets:
        ops.preset(p)
    if dcn not in ("v1", "v2"):
        raise UsageError(f"unknown --dcn '{dcn}'", hint="use v1 (offset only) or v2 (offset and mask)")
    if not shapes and not presets:
        shapes = [default_shape]
    args = [a for s in shapes for a in ("--shape", s)] + [a for p in presets for a in ("--preset", p)]
    args += [a for b in backends for a in ("--backend", b)]
    return tuple(args + ["--dcn", dcn, "--dtype", "float32", "--direction", "fwdbwd", "--seed", "0"])


def gate_against(*, rev: str, shapes: list[str] | None, presets: list[str] | None, backends: list[str] | None,
                 impls: list[str] | None, settings, performance: str, correctness: bool, baseline: Path | None,
                 summary: Path | None, rounds: int, repeat: int, warmup_s: float, dcn: str, default_shape: str,
                 allow_missing: bool = False) -> int:
    if performance not in PERFORMANCE_MODES:
        raise UsageError(f"unknown --performance '{performance}'", hint=f"choose from: {', '.join(PERFORMANCE_MODES)}")
    if rounds < 2 or repeat < rounds or warmup_s < 0:
        raise UsageError(f"--rounds {rounds}, --repeat {repeat}, --warmup {warmup_s}: need at least 2 rounds, at least one "
                         "sample per round and a warm-up >= 0", hint="e.g. --rounds 5 --repeat 20 --warmup 1")
    args = workload_args(shapes or [], presets or [], backends or [], dcn, default_shape)
    from dcnbench.results import against as a
    root = a.project_root()
    commit = a.resolve(root, rev)
    uv = a.find_uv(root)

    import torch

    from dcnbench import backends as registry
    from dcnbench.results import gate as g
    from dcnbench import results
    from dcnbench.plugins import load_plugins
    from dcnbench.results.summary import gate_markdown

    def log(text: str) -> None:
        err_console.print(text, style="dim", highlight=False, soft_wrap=True)

    plugins = load_plugins(impls)  # a broken plugin is a usage error before anything is built
    baseline_docs = results.expand([results.load_json(baseline)]) if baseline else []
    scratch = (results.RESULTS_DIR / f"gate-against-{stamp()}").resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    env = results.environment(device="cpu", seed=0, backends=plugins)

    # Correctness first: the head's backends against their oracle, before any timing.
    regressions, not_run, checked = [], [], 0
    if correctness:
        regressions, not_run, checked = _head_correctness(backends, plugins, baseline_docs, scratch, log)

    plan = a.Plan(rounds=rounds, repeat=math.ceil(repeat / rounds), warmup_s=warmup_s, threads=torch.get_num_threads(),
                  workload_args=args, root=root)
    mxnet = next((b for b in registry.all_backends() if b.name == "mxnet"), None)
    wants_mxnet = mxnet is not None and not mxnet.unavailable and (("mxnet" in backends) if backends else not impls)
    perf, notes, base_env = [], [], {"git_commit": commit}
    if performance != "off":
        log(f"base: {rev} = {commit[:12]}")
        path = a.worktree(root, commit, log)
        base = a.Side("base", a.build_environment(path, uv, wants_mxnet, log), path, a.base_impls(impls or [], root, path))
        head = a.Side("head", (str(Path(sys.executable).parent / "dcnbench"),), root, a.head_impls(impls or []))
        log(f"timing base and head in {rounds} alternating runs each ({plan.repeat} samples per backend per run, "
            f"{plan.threads} threads)")
        base_doc, head_doc = a.measure(base, head, plan, scratch, log)
        a.fill_reference(base_doc, head_doc)
        perf = _judge(g, base_doc, head_doc, settings)
        again = g.suspects(g.Decision(performance=tuple(perf)))
        if again:
            log(f"re-measuring: {len(again)} suspect workload(s); the second measurement decides")
            base_doc, head_doc = a.measure(base, head, plan, scratch, log, tag="again-")
            a.fill_reference(base_doc, head_doc)
            redo = [p for p in _judge(g, base_doc, head_doc, settings) if p.case_id in again]
            merged = g.with_remeasured(g.Decision(performance=tuple(perf)), redo)
            perf, notes = list(merged.performance), list(merged.notes)
        results.save(scratch / "base.json", base_doc)
        results.save(scratch / "head.json", head_doc)
        env, base_env = head_doc["environment"], base_doc["environment"]
        notes.insert(0, f"base `{rev}` ({commit[:12]}) built in `{path}` and timed in this job: {rounds} runs per side of "
                        f"{plan.repeat} samples per backend, base and head alternating (ABBA); every run's results in `{scratch}`")
    decision = g.Decision(tuple(regressions), tuple(not_run), checked, tuple(perf), performance, tuple(notes), allow_missing)
    text = gate_markdown(decision, settings, f"{rev} @ {commit[:12]}", base_env, "the working tree", env,
                         oracle=correctness, correctness=correctness)
    if summary:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(text)
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    return decision.exit_code


def _judge(g, base_doc: dict, head_doc: dict, settings) -> list:
    """The gate's performance comparisons; a workload the base timed and the head did not (a backend
    the change removed, a workload defined otherwise at the base's revision) is `not comparable`
    here, not a run left incomplete."""
    found = g.compare_performance([base_doc], [head_doc], settings, same_job=True)
    return [replace(p, verdict="not comparable", reason="not timed by the head: removed, or defined otherwise at the base's "
                    "revision") if p.verdict == "not run" else p for p in found]


def _head_correctness(backends: list[str] | None, plugins: list, baseline_docs: list[dict], scratch: Path, log):
    """(regressions, not run, results checked): the head's failures against its oracle, and against
    the stored baseline when one is given."""
    from dcnbench import backends as registry
    from dcnbench.results import gate as g
    from dcnbench import results
    from dcnbench.checking.problems import FAILING, problems
    from dcnbench.checking.verify import default_suite, run_verify

    chosen = [b for b in registry.select(backends, plugins, ("deformable",))[0] if b.kind == "deformable"]
    log(f"correctness: the default suite on {', '.join(b.name for b in chosen)} against the oracle")
    found = run_verify(backends=chosen, cases=default_suite())
    doc = results.document("verify", results.environment(device="cpu", seed=0, backends=chosen), found)
    results.save(scratch / "verify.json", doc)
    details = {}
    for p in problems(found, FAILING):
        details.setdefault((p.case_id, p.backend), []).append(p.quantity or p.detail)
    regressions = [g.CorrectnessChange(r.case.case_id, r.backend, "oracle", r.status, ", ".join(details[(r.case.case_id, r.backend)]))
                   for r in found if r.status in FAILING]
    checked = sum(r.status != "unsupported" for r in found)
    not_run = []
    if baseline_docs:
        more, not_run, _ = g.compare_correctness(baseline_docs, [doc])
        regressions += more
    return regressions, not_run, checked
