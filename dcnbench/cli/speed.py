"""`dcnbench speed`: time backends side by side on shapes and presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from dcnbench import registry, render, results
from dcnbench.cli.common import (BackendOpt, CsvOpt, DeviceOpt, DtypeOpt, ImplOpt, JsonOpt, SeedOpt, ShardOpt, check_device,
                                 console, err_console, stamp, user_errors)
from dcnbench.errors import EXIT_OK, UsageError
from dcnbench.plugins import load_plugins
from dcnbench.shard import parse_shard, take_shard
from dcnbench.speed import DIRECTIONS, SpeedCase, run_speed
from dcnbench.workloads import PRESETS, SHAPE_GRAMMAR, parse_dtype, parse_shape, preset_shapes

DEFAULT_PRESET = "dcn-56"


def speed(*, shapes: list[str] | None = None, presets: list[str] | None = None, backends: list[str] | None = None,
          impls: list[str] | None = None, dtypes: list[str] | None = None, device: str = "cpu",
          direction: str = "fwdbwd", baseline: str | None = "conv2d", repeat: int = 10, warmup_s: float = 0.5,
          threads: int | None = None, memory: bool = True, dcn: str = "v2", seed: int = 0,
          csv: Path | None = None, json: Path | None = None, shard: str | None = None) -> int:
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
    geometries = [parse_shape(s) for s in shapes or []]
    for p in presets or ([] if shapes else [DEFAULT_PRESET]):
        geometries += preset_shapes(p)
    dtype_list = [parse_dtype(d) for d in dtypes or ["float32"]]
    plugins = load_plugins(impls, device)
    chosen, skipped = registry.select(backends, plugins, kinds=("deformable", "reference"))
    for note in skipped:
        err_console.print(f"note: {note}", style="yellow", highlight=False, soft_wrap=True)
    if plugins and not backends:
        chosen += registry.select(["conv2d"], [], kinds=("reference",))[0]  # keep the reference row
    names = [b.name for b in chosen]
    if baseline and baseline not in names:
        raise UsageError(f"--baseline '{baseline}' is not among the backends run ({', '.join(names)})",
                         hint="add it with --backend, or pick one of those")
    cases = take_shard([SpeedCase(geometry=g, dtype=d, device=device, direction=direction, mask=dcn == "v2", seed=seed)
                        for g in geometries for d in dtype_list], parse_shard(shard))
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
                  f"GFLOP/s counts the plain convolution's FLOPs; peak mem: {method or 'not measured'}", highlight=False)
    env = results.environment(device=device, seed=seed, backends=chosen)
    when = stamp()
    csv_path = csv or results.default_path("speed", "csv", when)
    json_path = json or results.default_path("speed", "json", when)
    results.write_csv(csv_path, results.speed_rows(found, env))
    results.write_json(json_path, "speed", env, found, {"baseline": baseline, "repeat": repeat, "warmup_s": warmup_s})
    console.print(f"wrote {csv_path} and {json_path}", highlight=False)
    return EXIT_OK


@user_errors
def command(
    shape: Annotated[list[str] | None, typer.Option("--shape", help=f"Workload {SHAPE_GRAMMAR} (repeatable).")] = None,
    preset: Annotated[list[str] | None, typer.Option("--preset", help=f"Named workload: {', '.join(PRESETS)} (repeatable).")] = None,
    backend: BackendOpt = None,
    impl: ImplOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "cpu",
    direction: Annotated[str, typer.Option("--direction", help="fwd, bwd or fwdbwd.")] = "fwdbwd",
    baseline: Annotated[str, typer.Option("--baseline", help="Backend the ratio column divides by.")] = "conv2d",
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

    With neither --shape nor --preset, runs the dcn-56 preset.
    """
    raise typer.Exit(speed(shapes=shape, presets=preset, backends=backend, impls=impl, dtypes=dtype, device=device,
                           direction=direction, baseline=baseline or None, repeat=repeat, warmup_s=warmup,
                           threads=threads, memory=memory, dcn=dcn, seed=seed, csv=csv, json=json, shard=shard))
