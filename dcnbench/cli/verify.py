"""`dcnbench verify`: the default suite on every backend, against the oracle and the identities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from dcnbench import ops
from dcnbench.cli.progress import LateProgress
from dcnbench.cli.repro import save_repro_bundles
from dcnbench.cli.common import (BackendOpt, CsvOpt, DeviceOpt, DtypeOpt, ImplOpt, InProcessOpt, IsolateOpt, JsonOpt, OpOpt,
                                 SeedOpt, ShardOpt, TimeoutOpt, check_count, check_device, check_dtype, check_isolation,
                                 check_seconds, check_seed, console, err_console, output_paths, plugin_op, run_writing,
                                 user_errors)
from dcnbench.errors import EXIT_FAILED, EXIT_OK, UsageError
from dcnbench.shard import parse_shard, take_shard

DEFAULT_FUZZ_TIME_S = 60.0


def check_show(show: str) -> str:
    from dcnbench.results.render import SHOW_CHOICES

    if show not in SHOW_CHOICES:
        raise UsageError(f"unknown --show '{show}'", hint=f"choose from: {', '.join(SHOW_CHOICES)}")
    return show


def verify(*, backends: list[str] | None = None, impls: list[str] | None = None, dtypes: list[str] | None = None,
           device: str = "cpu", cases: list[str] | None = None, op_names: list[str] | None = None, seed: int = 0, csv: Path | None = None,
           json: Path | None = None, allow_nondeterministic: bool = False, list_cases: bool = False,
           shard: str | None = None, knobs: bool = False, fuzz: int | None = None, fuzz_time: float | None = None,
           case_json: str | None = None, isolate: bool = False, in_process: bool = False,
           timeout: float | None = None, show: str = "failures", save_failures: Path | None = None,
           thorough: bool = False) -> int:
    """Run the suite (or `fuzz` random problems per operator, or the one case `case_json` names);
    returns the exit status (0 all passed, 1 something failed)."""
    device = check_device(device)
    isolate_plugins = check_isolation(isolate=isolate, in_process=in_process, timeout=timeout)
    show = check_show(show)
    if save_failures is not None and save_failures.exists() and not save_failures.is_dir():
        raise UsageError(f"--save-failures '{save_failures}' is a file, not a folder", hint="give a folder (created if missing)")
    for d in dtypes or []:
        check_dtype(d)
    ops.check_ops(op_names)
    shard_spec = parse_shard(shard)
    check_seed(seed)
    if fuzz is not None:
        check_count("--fuzz", fuzz, high=10**6)
        fuzz_time = check_seconds("--fuzz-time", DEFAULT_FUZZ_TIME_S if fuzz_time is None else fuzz_time, high=7 * 86400)
    elif fuzz_time is not None:
        raise UsageError("--fuzz-time bounds a --fuzz run, and no --fuzz was given",
                         hint="add --fuzz N (problems per operator and backend), or drop --fuzz-time")
    csv_path, json_path = (None, None) if list_cases else output_paths("verify", csv, json)
    if fuzz is not None:
        return run_fuzz_command(backends=backends, impls=impls, device=device, op_names=op_names, examples=fuzz,
                                seconds=fuzz_time, seed=seed, csv_path=csv_path, json_path=json_path,
                                isolate=isolate_plugins)

    from dcnbench import backends as registry
    from dcnbench import results
    from dcnbench.results import render
    from dcnbench.plugins import load_plugins
    from dcnbench.checking.verify import default_suite, failed, run_verify, select_cases

    if case_json:
        from dcnbench.checking.fuzz import case_from_json

        chosen_cases = [case_from_json(case_json)]
    else:
        built: list = []
        chosen_cases = take_shard(select_cases(default_suite(seed, op_names, thorough, built), cases, dtypes, op_names),
                                  shard_spec)
        for generated in built if not list_cases else ():  # --list prints only the cases
            console.print(generated.line, highlight=False)
    if not chosen_cases:
        raise UsageError("no case matches the --op/--case/--dtype filters", hint="run `dcnbench verify --list` to see the cases")
    if list_cases:
        for c in chosen_cases:
            console.print(f"{c.case_id}  [dim]{c.op}, {c.check}, {c.variant}, offsets {c.offsets}[/]", highlight=False)
        return EXIT_OK
    plugins = load_plugins(impls, device, plugin_op(op_names), isolate=isolate_plugins)
    chosen, skipped = registry.select(backends, plugins, kinds=("deformable",))
    if isolate:
        from dcnbench.worker.isolation import isolate as in_worker

        chosen = [in_worker(b) for b in chosen]
    for note in skipped:
        err_console.print(f"note: {note}", style="yellow", highlight=False, soft_wrap=True)
    if not chosen:
        raise UsageError("no backend to verify", hint="run `dcnbench backends` to see why each is unavailable")

    total = len(chosen_cases) * len(chosen)
    env = results.environment(device=device, seed=seed, backends=chosen)
    writer = results.ResultsWriter(kind="verify", env=env, csv_path=csv_path, json_path=json_path, expected=total)

    def run():
        with LateProgress(err_console, total, "verify") as bar:
            def done(r):
                writer.add(r)
                bar.advance(f"{r.backend} {r.case.case_id}")

            return run_verify(backends=chosen, cases=chosen_cases, device=device, knobs=knobs, on_result=done)

    found = run_writing(writer, run, "case x backend results")

    for part in render.verify_report(found, show):
        # A line of text is one line in a log however long (a terminal wraps it); tables fit the width.
        console.print(part, highlight=False, soft_wrap=isinstance(part, Text))
    for b in chosen:
        if b.mode:
            console.print(f"{b.name} ran its {device} kernels in mode: {b.mode(device)}", highlight=False)
    console.print(f"wrote {csv_path} and {json_path}", highlight=False)
    if save_failures is not None:
        save_repro_bundles(found, save_failures, device=device, env=env, impls=impls)
    return EXIT_FAILED if failed(found, allow_nondeterministic) else EXIT_OK


def run_fuzz_command(*, backends, impls, device, op_names, examples, seconds, seed, csv_path, json_path,
                     isolate: bool = True) -> int:
    """`verify --fuzz`: per operator and backend, how many problems ran and the smallest that failed."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from dcnbench import backends as registry
    from dcnbench import results
    from dcnbench.checking.fuzz import case_json, repro_command, run_fuzz
    from dcnbench.plugins import load_plugins

    plugins = load_plugins(impls, device, plugin_op(op_names), isolate=isolate)
    chosen, skipped = registry.select(backends, plugins, kinds=("deformable",))
    for note in skipped:
        err_console.print(f"note: {note}", style="yellow", highlight=False, soft_wrap=True)
    env = results.environment(device=device, seed=seed, backends=chosen)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                  transient=True) as progress:
        task = progress.add_task("fuzz", total=None)
        counts: dict[str, int] = {}

        def tick(label: str) -> None:
            counts[label] = counts.get(label, 0) + 1
            progress.update(task, description=f"fuzz {label}: problem {counts[label]}")

        findings = run_fuzz(backends=chosen, op_names=op_names, examples=examples, seconds=seconds, seed=seed,
                            device=device, on_problem=tick)
    table = Table(title=f"dcnbench verify --fuzz {examples} --seed {seed}", title_justify="left")
    for name, justify in (("op", "left"), ("backend", "left"), ("problems", "right"), ("seconds", "right"),
                          ("result", "left")):
        table.add_column(name, justify=justify)
    for f in findings:
        result = f"tested nothing: {f.nothing}" if f.tested_nothing else "no failure" if f.failure is None else \
            f"{f.failure.status}: {', '.join(q.quantity for q in f.failure.failing) or f.failure.message}"
        table.add_row(f.op, f.backend, str(f.tried), f"{f.seconds:.0f}", result)
    console.print(table)
    arg = {p.name: f"--impl {spec}" for p, spec in zip(plugins, impls or [])}
    for f in (f for f in findings if f.failure):
        console.print(f"\nsmallest failing {f.op} problem on {f.backend} ({f.failure.case.shape_text}, "
                      f"{f.failure.case.dtype}):\n  {case_json(f.failure.case)}\nre-run it with:\n  "
                      f"{repro_command(f, arg.get(f.backend, f'--backend {f.backend}'))}", highlight=False, soft_wrap=True)
    failures = [f.failure for f in findings if f.failure]
    fuzz_summary = [{"op": f.op, "backend": f.backend, "problems": f.tried, "seconds": f.seconds,
                     "failed": f.failure is not None, "tested_nothing": f.nothing or None} for f in findings]
    writer = results.ResultsWriter(kind="verify", env=env, csv_path=csv_path, json_path=json_path,
                                   expected=len(failures), extra={"fuzz": fuzz_summary})
    writer.results = failures
    writer.flush(partial=False)
    console.print(f"wrote {csv_path} and {json_path} (the smallest failing problems)", highlight=False)
    # A run that tested nothing is not a clean run: nothing it says about a backend was checked.
    empty = [f for f in findings if f.tested_nothing]
    if not findings:
        console.print("tested nothing: no selected backend implements a selected operator "
                      f"({', '.join(b.name for b in chosen) or 'no backend'}; ops {', '.join(op_names or ops.names())})",
                      style="bold red", highlight=False, soft_wrap=True)
        return EXIT_FAILED
    if empty:
        reasons = list(dict.fromkeys(f.nothing for f in empty))
        console.print(f"tested nothing on {len(empty)} of {len(findings)} operator x backend pair(s) (the table says "
                      f"why): {reasons[0]}" + (f"; and {len(reasons) - 1} other reason(s)" if len(reasons) > 1 else ""),
                      style="bold red", highlight=False, soft_wrap=True)
        return EXIT_FAILED
    return EXIT_FAILED if failures else EXIT_OK


@user_errors
def command(
    backend: BackendOpt = None,
    impl: ImplOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "cpu",
    op: OpOpt = None,
    case: Annotated[list[str] | None, typer.Option("--case", help="Run only cases whose id contains this text (repeatable).")] = None,
    seed: SeedOpt = 0,
    csv: CsvOpt = None,
    json: JsonOpt = None,
    allow_nondeterministic: Annotated[bool, typer.Option("--allow-nondeterministic", help="Do not fail the run on a nondeterministic backward.")] = False,
    list_cases: Annotated[bool, typer.Option("--list", help="List the cases and exit.")] = False,
    shard: ShardOpt = None,
    fuzz: Annotated[int | None, typer.Option("--fuzz", help="Instead of the suite: N random valid problems per operator and "
                                             "backend (hypothesis), each failure shrunk to the smallest failing problem.")] = None,
    fuzz_time: Annotated[float | None, typer.Option("--fuzz-time", help="With --fuzz: seconds per operator and backend before no "
                                                    f"new problem is drawn (default {DEFAULT_FUZZ_TIME_S:g}).")] = None,
    case_json: Annotated[str | None, typer.Option("--case-json", help="Run exactly this case (the JSON a --fuzz run prints "
                                                  "for a failure).")] = None,
    knobs: Annotated[bool, typer.Option("--knobs", help="Also re-run every case under each setting of the backends' knobs "
                                        "(thread count, batch chunking) and require the same results.")] = False,
    isolate: IsolateOpt = False,
    in_process: InProcessOpt = False,
    timeout: TimeoutOpt = None,
    show: Annotated[str, typer.Option("--show", help="After the summary: failures (every result that did not pass, one line "
                                      "each), all (and the full case x backend matrix) or none.")] = "failures",
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Same as --show all.")] = False,
    save_failures: Annotated[Path | None, typer.Option("--save-failures", help="Write a repro bundle per failing case x backend "
                                                       "into this folder (re-run one with `dcnbench repro FILE`).")] = None,
    thorough: Annotated[bool, typer.Option("--thorough", help="Cover every triple of each operator's option values "
                                           "instead of every pair (a larger covering array; minutes more).")] = False,
) -> None:
    """Check output and every gradient against the float64 oracle and exact identities.

    Exit status: 0 nothing failed, 1 a case failed, errored or was nondeterministic, 2 usage error.
    With --impl and no --backend, only the plugins run; a plugin implements the one --op given
    (or the op its function's `dcnbench_op` names; deform_conv2d otherwise). Plugins run in a
    worker process unless --in-process: a crash, hang or exit becomes that case's error row.
    """
    raise typer.Exit(verify(backends=backend, impls=impl, dtypes=dtype, device=device, cases=case, op_names=op, seed=seed, csv=csv,
                            json=json, allow_nondeterministic=allow_nondeterministic, list_cases=list_cases,
                            shard=shard, knobs=knobs, fuzz=fuzz, fuzz_time=fuzz_time, case_json=case_json,
                            isolate=isolate, in_process=in_process, timeout=timeout,
                            show="all" if verbose else show, save_failures=save_failures, thorough=thorough))
