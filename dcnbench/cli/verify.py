"""`dcnbench verify`: the default suite on every backend, against the oracle and the identities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dcnbench import ops
from dcnbench.cli.common import (BackendOpt, CsvOpt, DeviceOpt, DtypeOpt, ImplOpt, InProcessOpt, IsolateOpt, JsonOpt, OpOpt,
                                 SeedOpt, ShardOpt, TimeoutOpt, check_device, check_dtype, check_isolation, check_seed,
                                 console, err_console, output_paths, plugin_op, run_writing, user_errors)
from dcnbench.errors import EXIT_FAILED, EXIT_OK, UsageError
from dcnbench.shard import parse_shard, take_shard


def verify(*, backends: list[str] | None = None, impls: list[str] | None = None, dtypes: list[str] | None = None,
           device: str = "cpu", cases: list[str] | None = None, op_names: list[str] | None = None, seed: int = 0, csv: Path | None = None,
           json: Path | None = None, allow_nondeterministic: bool = False, list_cases: bool = False,
           shard: str | None = None, isolate: bool = False, in_process: bool = False,
           timeout: float | None = None) -> int:
    """Run the suite; returns the exit status (0 all passed, 1 something failed)."""
    device = check_device(device)
    isolate_plugins = check_isolation(isolate=isolate, in_process=in_process, timeout=timeout)
    for d in dtypes or []:
        check_dtype(d)
    ops.check_ops(op_names)
    shard_spec = parse_shard(shard)
    check_seed(seed)
    csv_path, json_path = (None, None) if list_cases else output_paths("verify", csv, json)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dcnbench import backends as registry
    from dcnbench import render, results
    from dcnbench.plugins import load_plugins
    from dcnbench.verify import default_suite, failed, run_verify, select_cases

    chosen_cases = take_shard(select_cases(default_suite(seed, op_names), cases, dtypes, op_names), shard_spec)
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
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err_console, transient=True) as progress:
            task = progress.add_task("verify", total=total)

            def done(r):
                writer.add(r)
                progress.update(task, advance=1, description=f"{r.backend} {r.case.case_id}")

            return run_verify(backends=chosen, cases=chosen_cases, device=device, on_result=done)

    found = run_writing(writer, run, "case x backend results")

    console.print(render.verify_table(found))
    for extra in (render.dialect_table(found), render.problems_table(found)):
        if extra is not None:
            console.print(extra)
    console.print(render.verify_summary(found))
    for b in chosen:
        if b.mode:
            console.print(f"{b.name} ran its {device} kernels in mode: {b.mode(device)}", highlight=False)
    console.print(f"wrote {csv_path} and {json_path}", highlight=False)
    return EXIT_FAILED if failed(found, allow_nondeterministic) else EXIT_OK


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
    isolate: IsolateOpt = False,
    in_process: InProcessOpt = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Check output and every gradient against the float64 oracle and exact identities.

    Exit status: 0 nothing failed, 1 a case failed, errored or was nondeterministic, 2 usage error.
    With --impl and no --backend, only the plugins run; a plugin implements the one --op given
    (or the op its function's `dcnbench_op` names; deform_conv2d otherwise). Plugins run in a
    worker process unless --in-process: a crash, hang or exit becomes that case's error row.
    """
    raise typer.Exit(verify(backends=backend, impls=impl, dtypes=dtype, device=device, cases=case, op_names=op, seed=seed, csv=csv,
                            json=json, allow_nondeterministic=allow_nondeterministic, list_cases=list_cases,
                            shard=shard, isolate=isolate, in_process=in_process, timeout=timeout))
