"""Peak memory of one call: the CUDA allocator's peak on a GPU, peak RSS growth of a fresh worker
process on the CPU (an in-process figure would include every earlier backend's caches).

Run as `python -m dcnbench.memory SPEC_JSON` it is that worker: it builds the inputs, resets the
kernel's peak-RSS counter (Linux `clear_refs`), makes one call and prints the growth as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

CPU_METHOD = "peak RSS growth over one call, fresh process"
CUDA_METHOD = "CUDA allocator peak over one call"


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure_cuda(call) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def measure_cpu_in_this_process(call) -> int | None:
    """Growth of VmHWM across `call`; None where the counter cannot be reset (not Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    base = _status_kib("VmRSS")
    call()
    peak = _status_kib("VmHWM")
    if base is None or peak is None:
        return None
    return max(0, peak - base) * 1024


def measure_cpu(spec: dict, timeout_s: float = 600) -> tuple[int | None, str]:
    """Run the worker in a fresh interpreter; (bytes or None, message)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, "-m", "dcnbench.memory", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return None, f"memory worker timed out after {timeout_s:.0f} s"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"memory worker failed: {tail}"
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    if answer["peak_bytes"] is None:
        return None, "peak RSS cannot be reset on this OS"
    return answer["peak_bytes"], ""


def worker_spec(*, backend: str | None, impl: str | None, case, direction: str, threads: int) -> dict:
    return {"backend": backend, "impl": impl, "case": asdict(case), "direction": direction, "threads": threads}


def _worker(spec: dict) -> None:
    from dcnbench.plugins import load_plugin
    from dcnbench.registry import get
    from dcnbench.speed import bench_case_from_dict, make_call

    torch.set_num_threads(spec["threads"])
    case = bench_case_from_dict(spec["case"])
    backend = load_plugin(spec["impl"], probe=False, op=case.op) if spec["impl"] else get(spec["backend"])
    setup, call = make_call(backend, case, spec["direction"], "cpu")
    setup()
    peak = measure_cpu_in_this_process(call)
    print(json.dumps({"peak_bytes": peak}))


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
