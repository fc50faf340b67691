"""What running a kernel in a worker process costs, next to running it in dcnbench's process.

    .venv/bin/python benchmarks/isolation_cost.py [--repeat N]

Measures, on this machine: the start-up of a plugin's worker (interpreter, torch, the plugin,
the hello) and of an isolated built-in; the round trip of one forward+backward of a small verify
case (in-process vs through the worker); the deform_conv2d verify suite on one plugin (in-process
vs isolated, start-up included); and speed samples of torchvision on dcn-56 forward timed in
process vs inside the worker (self-timed: the pipe is outside the figure). Medians; the machine
is shared, so read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dcnbench.backends import get
from dcnbench.ops import preset
from dcnbench.ops.case import cotangent
from dcnbench.plugins import load_plugin
from dcnbench.timing.speed import SpeedCase, run_speed
from dcnbench.checking.runs import run_call as _run
from dcnbench.checking.verify import default_suite, run_verify, select_cases
from dcnbench.worker import isolation

PLUGIN = "tests/plugins/planted_bugs.py:swapped_offsets"


def median_s(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(repeat: int) -> None:
    torch.set_num_threads(1)
    print(f"torch threads: 1; medians of {repeat}")

    def start_plugin():
        isolation.close(load_plugin(PLUGIN, isolate=True, probe=False))

    def start_builtin():
        b = isolation.isolate(get("torchvision"))
        b.worker.start()
        isolation.close(b)

    print(f"start-up, plugin worker (torch + torchvision + plugin + hello): {median_s(start_plugin, repeat):.2f} s")
    print(f"start-up, isolated built-in (torchvision):                      {median_s(start_builtin, repeat):.2f} s")

    case = select_cases(default_suite(), ["v2/float64"], None)[0]
    inputs, cot = case.inputs(), cotangent(case)
    here = load_plugin(PLUGIN)
    there = load_plugin(PLUGIN, isolate=True)
    for name, b in (("in-process", here), ("isolated", there)):
        fn = b.ops["deform_conv2d"]
        _run(fn, case, inputs, cot)
        ms = median_s(lambda: _run(fn, case, inputs, cot), 20 * repeat) * 1e3
        print(f"one forward+backward, {case.case_id} ({case.shape_text}), {name}: {ms:.2f} ms")

    cases = select_cases(default_suite(), None, None, ["deform_conv2d"])
    cases = [c for c in cases if c.check != "export"]
    t = time.perf_counter()
    run_verify(backends=[here], cases=cases)
    inproc = time.perf_counter() - t
    isolation.close(there)
    t = time.perf_counter()
    fresh = load_plugin(PLUGIN, isolate=True)  # start-up and probe included
    run_verify(backends=[fresh], cases=cases)
    iso = time.perf_counter() - t
    isolation.close(fresh)
    print(f"verify, deform_conv2d suite ({len(cases)} cases) on one plugin: in-process {inproc:.1f} s, "
          f"isolated {iso:.1f} s (x{iso / inproc:.2f})")

    tv = get("torchvision")
    moved = isolation.isolate(tv)
    moved = type(moved)(**{**moved.__dict__, "name": "torchvision-isolated"})
    speed = [SpeedCase(g, direction="fwd") for g in preset("dcn-56", "deform_conv2d")]
    found = run_speed(backends=[get("conv2d"), tv, moved], cases=speed, repeat=max(5, repeat * 3), warmup_s=1.0,
                      measure_memory=False, threads=1)
    for r in found:
        print(f"speed dcn-56 fwd float32, {r.backend}: median {r.measurement.median_ms:.1f} ms "
              f"(x conv2d {r.ratio_to_baseline:.2f})")
    isolation.close(moved)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    main(parser.parse_args().repeat)
