"""`dcnbench speed`: time backends side by side on shapes and presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from dcnbench import registry, render, results
from dcnbench.cli.common import (OPS, BackendOpt, CsvOpt, DeviceOpt, DtypeOpt, ImplOpt, JsonOpt, SeedOpt, ShardOpt,
                                 check_device, check_ops, console, err_console, stamp, user_errors)
from dcnbench.errors import EXIT_OK, UsageError
from dcnbench.plugins import load_plugins
from dcnbench.roi_workloads import POOL_GRAMMAR, POOL_PRESETS, check_user_inputs, load_tensor, parse_pool_shape
from dcnbench.shard import parse_shard, take_shard
from dcnbench.speed import DIRECTIONS, SpeedCase, run_speed
from dcnbench.workloads import PRESETS, SHAPE_GRAMMAR, parse_dtype, parse_shape, preset_shapes

DEFAULT_PRESET = {"deform_conv2d": "dcn-56", "deform_roi_pool": "rfcn", "deform_psroi_pool": "rfcn"}


def _workloads(op: str | None, shapes: list[str], presets: list[str]) -> list:
    """Geometries from --shape (in --op's grammar) and --preset (filtered to --op when given)."""
    geometries = [parse_pool_shape(op, s) if op in POOL_GRAMMAR else parse_shape(s) for s in shapes]
    for p in presets or ([] if shapes else [DEFAULT_PRESET[op or "deform_conv2d"]]):
        if p in POOL_PRESETS:
            found = [g for g in POOL_PRESETS[p] if op in (None, g.op)]
        elif p in PRESETS:
            found = preset_shapes(p) if op in (None, "deform_conv2d") else []
        else:
            raise UsageError(f"unknown preset '{p}'", hint=f"choose from: {', '.join([*PRESETS, *POOL_PRESETS])}")
        if not found:
            raise UsageError(f"preset '{p}' has no {op} workload", hint=f"drop --op, or pick a preset for {op}")
        geometries += found
    return geometries


def speed(*, shapes: list[str] | None = None, presets: list[str] | None = None, backends: list[str] | None = None,
          impls: list[str] | None = None, dtypes: list[str] | None = None, device: str = "cpu",
          direction: str = "fwdbwd", baseline: str | None = None, repeat: int = 10, warmup_s: float = 0.5,
          threads: int | None = None, memory: bool = True, dcn: str = "v2", seed: int = 0,
          csv: Path | None = None, json: Path | None = None, shard: str | None = None, op: str | None = None,
          rois: Path | None = None, offset: Path | None = None) -> int:
    device = check_device(device)
    if direction not in DIRECTIONS:
        raise UsageError(f"unknown --direction '{direction}'", hint=f"choose from: {', '.join(DIRECTIONS)}")
    if dcn not in ("v1", "v2"):
        raise UsageError(f"unknown --dcn '{dcn}'", hint="use v1 (offset only) or v2 (offset and mask)")
    if repeat < 1 or warmup_s < 0:
        raise UsageError("--repeat must be >= 1 and --warmup >= 0", hint="e.g. --repeat 10 --warmup 0.5")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads {threads} is not a thread count", hint="give a positive integer")
        torch.set_num_threads(threads)
    check_ops([op] if op else None)
    geometries = _workloads(op, shapes or [], presets or [])
    if (rois or offset) and not all(g.op in POOL_GRAMMAR for g in geometries):
        raise UsageError("--rois and --offset apply to RoI pooling workloads only",
                         hint="add --op deform_roi_pool or --op deform_psroi_pool with a --shape")
    dtype_list = [parse_dtype(d) for d in dtypes or ["float32"]]
    plugins = load_plugins(impls, device, op)
    chosen, skipped = registry.select(backends, plugins, kinds=("deformable", "reference"))
    for note in skipped:
        err_console.print(f"note: {note}", style="yellow", highlight=False, soft_wrap=True)
    if plugins and not backends:
        chosen += registry.select(["conv2d", "roi_align"], [], kinds=("reference",))[0]  # keep the reference rows
    names = [b.name for b in chosen]
    if baseline and baseline not in names:
        raise UsageError(f"--baseline '{baseline}' is not among the backends run ({', '.join(names)})",
                         hint="add it with --backend, or pick one of those")
    files = {"rois_file": str(rois) if rois else None, "offset_file": str(offset) if offset else None}
    if rois:
        geometries = [_with_user_rois(g, rois) for g in geometries]
    cases = take_shard([SpeedCase(geometry=g, dtype=d, device=device, direction=direction, mask=dcn == "v2", seed=seed,
                                  **(files if g.op in POOL_GRAMMAR else {}))
                        for g in geometries for d in dtype_list], parse_shard(shard))
    for case in cases:
        if case.rois_file or case.offset_file:
            check_user_inputs(case.bench_case())
    if not cases:
        raise UsageError(f"shard {shard} has no workload: there are fewer workloads than shards", hint="use fewer shards")

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                  transient=True) as progress:
        task = progress.add_task("speed", total=None)
        found = run_speed(backends=chosen, cases=cases, repeat=repeat, warmup_s=warmup_s, baseline=baseline,
                          measure_memory=memory, threads=threads, plugin_specs=dict(zip([p.name for p in plugins], impls or [])),
                          on_progress=lambda text: progress.update(task, description=text))

    for table in render.speed_tables(found, baseline):
        console.print(table)
    for line in render.speed_warnings(found):
        err_console.print(line, style="yellow", highlight=False, soft_wrap=True)
    method = next((r.memory_method for r in found if r.memory_method), None)
    console.print(f"threads: {torch.get_num_threads()}; times are medians of {repeat} interleaved samples; "
                  f"GFLOP/s counts the plain convolution's FLOPs (none for RoI pooling); "
                  f"peak mem: {method or 'not measured'}", highlight=False)
    env = results.environment(device=device, seed=seed, backends=chosen)
    when = stamp()
    csv_path = csv or results.default_path("speed", "csv", when)
    json_path = json or results.default_path("speed", "json", when)
    results.write_csv(csv_path, results.speed_rows(found, env))
    results.write_json(json_path, "speed", env, found, {"baseline": baseline, "repeat": repeat, "warmup_s": warmup_s})
    console.print(f"wrote {csv_path} and {json_path}", highlight=False)
    return EXIT_OK


def _with_user_rois(geo, path: Path):
    """The workload with K taken from the user's RoI file (its shape is checked with the rest)."""
    import dataclasses

    t = load_tensor(str(path), "RoIs")
    return dataclasses.replace(geo, rois=t.shape[0]) if t.dim() == 2 else geo


@user_errors
def command(
    shape: Annotated[list[str] | None, typer.Option("--shape", help=f"Workload {SHAPE_GRAMMAR} for deform_conv2d; with --op "
                                                    f"deform_roi_pool {POOL_GRAMMAR['deform_roi_pool']}; with --op deform_psroi_pool "
                                                    f"{POOL_GRAMMAR['deform_psroi_pool']} (repeatable).")] = None,
    preset: Annotated[list[str] | None, typer.Option("--preset", help=f"Named workload: {', '.join([*PRESETS, *POOL_PRESETS])} (repeatable).")] = None,
    op: Annotated[str | None, typer.Option("--op", help=f"The op --shape describes, and the only op presets run: {', '.join(OPS)}.")] = None,
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
    seed: SeedOpt = 0,
    csv: CsvOpt = None,
    json: JsonOpt = None,
    shard: ShardOpt = None,
) -> None:
    """Time backends side by side (interleaved), with the conv2d reference row, GFLOP/s and peak memory.

    With neither --shape nor --preset, runs the dcn-56 preset (with --op for RoI pooling: rfcn).
    """
    raise typer.Exit(speed(shapes=shape, presets=preset, backends=backend, impls=impl, dtypes=dtype, device=device,
                           direction=direction, baseline=baseline or None, repeat=repeat, warmup_s=warmup,
                           threads=threads, memory=memory, dcn=dcn, seed=seed, csv=csv, json=json, shard=shard,
                           op=op, rois=rois, offset=offset))
