"""`dcnbench speed`: time backends side by side on shapes and presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dcnbench import ops
from dcnbench.cli.common import (BackendOpt, CsvOpt, DeviceOpt, DtypeOpt, ImplOpt, InProcessOpt, IsolateOpt, JsonOpt,
                                 SeedOpt, ShardOpt, TimeoutOpt, check_count, check_device, check_dtype, check_isolation,
                                 check_seconds, check_seed, console, err_console, output_paths, run_writing, user_errors)
from dcnbench.errors import EXIT_FAILED, EXIT_OK, UsageError
from dcnbench.timing.limits import DEFAULT_MAX_SAMPLES_PER_BIN, Limits, default_max_bytes, parse_size
from dcnbench.timing.limits import check as check_limits
from dcnbench.status import Status
from dcnbench.shard import parse_shard, take_shard
from dcnbench.timing.measure import DIRECTIONS

DEFAULT_OP = "deform_conv2d"


def workloads(op: str | None, shapes: list[str], presets: list[str]) -> list:
    """Geometries from --shape (in --op's grammar, deform_conv2d's without --op) and --preset (of
    --op only, when given); with neither, the op's default preset."""
    grammar = ops.get(op or DEFAULT_OP)
    geometries = [grammar.parse_shape(s) for s in shapes]
    for name in presets or ([] if shapes else [grammar.default_preset]):
        geometries += ops.preset(name, op)
    return geometries


def speed(*, shapes: list[str] | None = None, presets: list[str] | None = None, backends: list[str] | None = None,
          impls: list[str] | None = None, dtypes: list[str] | None = None, device: str = "cpu",
          direction: str = "fwdbwd", baseline: str | None = None, repeat: int = 10, warmup_s: float = 0.5,
          threads: int | None = None, memory: bool = True, dcn: str = "v2", seed: int = 0,
          csv: Path | None = None, json: Path | None = None, shard: str | None = None, op: str | None = None,
          rois: Path | None = None, offset: Path | None = None, max_memory: str | None = None,
          max_samples_per_bin: int = DEFAULT_MAX_SAMPLES_PER_BIN, isolate: bool = False, in_process: bool = False,
          timeout: float | None = None, roofline: bool = False) -> int:
    device = check_device(device)
    isolate_plugins = check_isolation(isolate=isolate, in_process=in_process, timeout=timeout)
    if direction not in DIRECTIONS:
        raise UsageError(f"unknown --direction '{direction}'", hint=f"choose from: {', '.join(DIRECTIONS)}")
    if dcn not in ("v1", "v2"):
        raise UsageError(f"unknown --dcn '{dcn}'", hint="use v1 (offset only) or v2 (offset and mask)")
    check_count("--repeat", repeat)
    check_seconds("--warmup", warmup_s)
    if threads is not None:
        check_count("--threads", threads, high=4096)
    check_seed(seed)
    if max_memory:
        parse_size(max_memory)
    check_count("--max-samples-per-bin", max_samples_per_bin)
    ops.check_ops([op] if op else None)
    geometries = workloads(op, shapes or [], presets or [])
    files = {"rois": str(rois) if rois else None, "offset": str(offset) if offset else None}
    given = [name for name, path in files.items() if path]
    if given and not all(set(given) <= set(ops.of(g).file_inputs) for g in geometries):
        takers = [s.name for s in ops.all_ops() if set(given) <= set(s.file_inputs)]
        raise UsageError(f"--rois/--offset apply only to {', '.join(takers)} workloads",
                         hint=f"add --op {takers[0] if takers else '...'} with a --shape")
    dtype_list = [check_dtype(d) for d in dtypes or ["float32"]]
    shard_spec = parse_shard(shard)
    csv_path, json_path = output_paths("speed", csv, json)

    import torch
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from dcnbench import backends as registry
    from dcnbench import results
    from dcnbench.timing import contention
    from dcnbench.results import render
    from dcnbench.plugins import load_plugins
    from dcnbench.timing.speed import SpeedCase, run_speed

    if threads is not None:
        torch.set_num_threads(threads)
    plugins = load_plugins(impls, device, op, isolate=isolate_plugins)
    chosen, skipped = registry.select(backends, plugins, kinds=("deformable", "reference"))
    for note in skipped:
        err_console.print(f"note: {note}", style="yellow", highlight=False, soft_wrap=True)
    if plugins and not backends:  # keep the reference rows
        chosen += registry.select(None, [], kinds=("reference",))[0]
    if isolate:
        from dcnbench.worker.isolation import isolate as in_worker

        chosen = [in_worker(b) for b in chosen]
    names = [b.name for b in chosen]
    if baseline and baseline not in names:
        raise UsageError(f"--baseline '{baseline}' is not among the backends run ({', '.join(names)})",
                         hint="add it with --backend, or pick one of those")
    if given:
        geometries = [ops.of(g).geometry_for_files(g, files) for g in geometries]
    cases = take_shard([SpeedCase(geometry=g, dtype=d, device=device, direction=direction, mask=dcn == "v2", seed=seed,
                                  rois_file=files["rois"], offset_file=files["offset"])
                        for g in geometries for d in dtype_list], shard_spec)
    limits = Limits(max_bytes=parse_size(max_memory) if max_memory else default_max_bytes(),
                    max_samples_per_bin=max_samples_per_bin)
    for case in cases:  # every workload is checked before any runs
        if given:
            ops.of(case).check_files(case.bench_case())
        if ops.of(case).cost:
            check_limits(case.case_id, ops.of(case).cost(case.bench_case()), limits)
    if not cases:
        raise UsageError(f"shard {shard} has no workload: there are fewer workloads than shards", hint="use fewer shards")

    env = results.environment(device=device, seed=seed, backends=chosen)
    roof = None
    if roofline:  # probed before the run (or read from the cache), so the results file records it
        if device != "cpu":
            raise UsageError("--roofline probes the CPU only", hint="drop --roofline for --device cuda")
        from dataclasses import asdict

        from dcnbench.timing import roofline as roofline_module
        roof = roofline_module.machine(torch.get_num_threads())
    writer = results.ResultsWriter(kind="speed", env=env, csv_path=csv_path, json_path=json_path,
                                   expected=len(cases) * len(chosen),
                                   extra={"baseline": baseline, "repeat": repeat, "warmup_s": warmup_s}
                                   | ({"roofline": asdict(roof)} if roof else {}))

    def run():
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                      transient=True) as progress, contention.watch() as seen:
            task = progress.add_task("speed", total=None)
            found = run_speed(backends=chosen, cases=cases, repeat=repeat, warmup_s=warmup_s, baseline=baseline,
                              measure_memory=memory, threads=threads,
                              plugin_specs=dict(zip([p.name for p in plugins], impls or [])),
                              on_progress=lambda text: progress.update(task, description=text), on_result=writer.add)
        env["contention"] = seen.result.to_dict()  # in the final write of the results files
        return found, seen.result

    found, machine = run_writing(writer, run, "workload x backend results")

    bound = None
    if roof:
        bound = {(r.case.case_id, r.backend): roofline_module.percent_of_bound(r, roof) for r in found}
    for table in render.speed_tables(found, baseline, bound):
        console.print(table)
    for line in render.speed_warnings(found):
        err_console.print(line, style="yellow", highlight=False, soft_wrap=True)
    method = next((r.memory_method for r in found if r.memory_method), None)
    console.print(f"threads: {torch.get_num_threads()}; times are medians of {repeat} interleaved samples; "
                  f"GFLOP/s counts the plain convolution's FLOPs (none for RoI pooling); "
                  f"peak mem: {method or 'not measured'}", highlight=False)
    if roof:
        console.print(f"{roof.line()}; % bound: the least time the op's work takes at those rates over the median",
                      highlight=False)
    (err_console if machine.oversubscribed else console).print(
        machine.line(), style="bold yellow" if machine.oversubscribed else None, highlight=False)
    console.print(f"wrote {csv_path} and {json_path}", highlight=False)
    # A row that raised is a failure of the run, as in verify (the others' figures still stand).
    return EXIT_FAILED if any(r.status == Status.ERROR for r in found) else EXIT_OK


@user_errors
def command(
    shape: Annotated[list[str] | None, typer.Option("--shape", help="Workload in the --op's grammar (repeatable): " + "; ".join(
        f"{s.name}: {s.shape_grammar}" for s in ops.all_ops()) + ".")] = None,
    preset: Annotated[list[str] | None, typer.Option("--preset", help=f"Named workload: {', '.join(ops.preset_names())} (repeatable).")] = None,
    op: Annotated[str | None, typer.Option("--op", help=f"The op --shape describes, and the only op presets run: {', '.join(ops.names())}.")] = None,
    rois: Annotated[Path | None, typer.Option("--rois", help="RoI pooling: time on these RoIs, a (K, 5) .npy, .pt or .csv file.")] = None,
    offset: Annotated[Path | None, typer.Option("--offset", help="RoI pooling: time with these offsets (.npy, .pt or .csv).")] = None,
    backend: BackendOpt = None,
    impl: ImplOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "cpu",
    direction: Annotated[str, typer.Option("--direction", help="fwd, bwd or fwdbwd.")] = "fwdbwd",
    baseline: Annotated[str | None, typer.Option("--baseline", help="Backend the ratio column divides by (default: the reference "
                                                 "row, conv2d or roi_align).")] = None,
    repeat: Annotated[int, typer.Option("--repeat", help="Timed samples per backend.")] = 10,
    warmup: Annotated[float, typer.Option("--warmup", help="Warm-up seconds per backend.")] = 0.5,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads (default: torch's).")] = None,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure peak memory per backend.")] = True,
    dcn: Annotated[str, typer.Option("--dcn", help="v2 (offset and mask) or v1 (offset only).")] = "v2",
    max_memory: Annotated[str | None, typer.Option("--max-memory", help="Refuse a workload estimated to need more memory "
                                                   "for one call (e.g. 8G; default: half this machine's memory).")] = None,
    max_samples_per_bin: Annotated[int, typer.Option("--max-samples-per-bin", help="RoI pooling: refuse a workload whose "
                                                     "bins average more sampling points than this.")] = DEFAULT_MAX_SAMPLES_PER_BIN,
    seed: SeedOpt = 0,
    csv: CsvOpt = None,
    json: JsonOpt = None,
    shard: ShardOpt = None,
    isolate: IsolateOpt = False,
    in_process: InProcessOpt = False,
    timeout: TimeoutOpt = None,
    roofline: Annotated[bool, typer.Option("--roofline", help="Add each row's % of this machine's roofline (memory bandwidth "
                                           "and float32 peak, probed once and cached per machine).")] = False,
) -> None:
    """Time backends side by side (interleaved), with the conv2d reference row, GFLOP/s and peak memory.

    With neither --shape nor --preset, runs the dcn-56 preset (with --op, that op's own: rfcn for RoI
    pooling, dcnv4-bench for DCNv3/DCNv4).
    """
    raise typer.Exit(speed(shapes=shape, presets=preset, backends=backend, impls=impl, dtypes=dtype, device=device,
                           direction=direction, baseline=baseline or None, repeat=repeat, warmup_s=warmup,
                           threads=threads, memory=memory, dcn=dcn, seed=seed, csv=csv, json=json, shard=shard,
                           op=op, rois=rois, offset=offset, max_memory=max_memory,
                           max_samples_per_bin=max_samples_per_bin, isolate=isolate, in_process=in_process,
                           timeout=timeout, roofline=roofline))
