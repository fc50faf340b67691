"""Peak memory of one call: the CUDA allocator's peak on a GPU, peak RSS growth of a fresh worker
process on the CPU (an in-process figure would include every earlier backend's caches).

The worker is its own entry module, `python -m dcnbench.timing.memory_worker SPEC_JSON` (memory_worker.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    root = str(Path(__file__).resolve().parents[2])  # the checkout, above dcnbench/
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, "-m", "dcnbench.timing.memory_worker", json.dumps(spec)], capture_output=True,
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
    """What the worker needs to rebuild one call: the backend (or plugin), the case, the timing mode."""
    return {"backend": backend, "impl": impl, "op": case.op, "case": case.definition(), "direction": direction,
            "threads": threads}
