"""Replay the probes of issue 20 (a careless or hostile user's inputs) against the installed `dcnbench`
and say, for each, whether it is now OK: the documented exit code, one `error:`/`hint:` pair where
the input is at fault, the culprit named, nothing lost, nothing left running. Most are also tests
(tests/test_cli_errors.py, test_outputs.py, test_repro.py, test_export.py, test_fuzz.py,
test_worker.py); this runs them end to end through the entry point, the slow ones included (a
hang bounded by --timeout, a real MXNet DCNv1 run). Prints one line per probe and exits 1 if any
is not OK. Takes a few minutes.

    .venv/bin/python benchmarks/replay_probes.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DCNBENCH = str(Path(sys.executable).parent / "dcnbench")
FAULTS = ROOT / "tests" / "plugins" / "faults.py"
MODELS = ROOT / "tests" / "plugins" / "faulty_models.py"
ESCAPES = ROOT / "tests" / "plugins" / "escapes.py"
results: list[tuple[str, bool, str]] = []


def run(*args, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([DCNBENCH, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})})


def usage(out) -> bool:
    lines = out.stderr.strip().splitlines()
    return out.returncode == 2 and [ln.split(":")[0] for ln in lines[-2:]] == ["error", "hint"] \
        and "Traceback" not in out.stderr and "╭" not in out.stderr


def probe(name: str, ok: bool, seen: str) -> None:
    results.append((name, ok, " ".join(seen.split())[:160]))
    print(f"{'OK ' if ok else 'BUG'}  {name}: {' '.join(seen.split())[:160]}", flush=True)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dcnbench-probes-"))
    null = ("--json", os.devnull, "--csv", os.devnull)

    # 1. user code in dcnbench's own process: repro and export-check
    out = run("verify", "--impl", f"{ROOT}/tests/plugins/planted_bugs.py:swapped_offsets", "--case", "asymmetric-2x3",
              "--dtype", "float64", "--save-failures", tmp / "b", *null)
    bundle = next((tmp / "b").glob("*.pt"))
    for fault, extra in (("sys_exits", ()), ("os_exits", ()), ("segfaults", ()), ("hangs", ("--timeout", "20"))):
        out = run("repro", bundle, "--impl", f"{FAULTS}:{fault}", *extra)
        probe(f"repro --impl {fault}", out.returncode == 1 and "now: error" in out.stdout, out.stdout.splitlines()[-1])
    for factory, code in (("factory_exits", 2), ("crashes_when_checked", 1), ("all_nan", 1)):
        out = run("export-check", f"{MODELS}:{factory}")
        probe(f"export-check {factory}", out.returncode == code, (out.stdout + out.stderr).strip().splitlines()[-1])

    # 3. a fuzz run that tests nothing
    out = run("verify", "--fuzz", "1", "--fuzz-time", "0", *null)
    probe("verify --fuzz 1 --fuzz-time 0", out.returncode == 1 and "tested nothing" in out.stdout, out.stdout.splitlines()[-1])
    out = run("verify", "--op", "dcnv3", "--backend", "pytorch", "--fuzz", "20", "--fuzz-time", "20", "--json",
              tmp / "f.json", "--csv", os.devnull)
    tried = json.loads((tmp / "f.json").read_text())["fuzz"][0]["problems"] if (tmp / "f.json").exists() else 0
    probe("verify --op dcnv3 --fuzz 20", out.returncode == 0 and tried > 0, f"{tried} problems, exit {out.returncode}")
    out = run("verify", "--fuzz-time", "5")
    probe("verify --fuzz-time 5 (no --fuzz)", usage(out), out.stderr)

    # 4. output paths
    out = run("verify", "--backend", "pytorch", "--case", "v2/float64", "--json", tmp / "x", "--csv", tmp / "x")
    probe("--json X --csv X", usage(out) and not (tmp / "x").exists(), out.stderr)
    (tmp / "existing").write_text("keep me")
    out = run("report", tmp / "f.json", "-o", tmp / "existing")
    probe("report -o EXISTING_FILE", usage(out) and (tmp / "existing").read_text() == "keep me", out.stderr)
    t0 = time.monotonic()
    out = run("export-check", f"{MODELS}:overflows_in_float32", "--onnx", tmp)
    probe("export-check --onnx FOLDER", usage(out) and time.monotonic() - t0 < 60, out.stderr)
    first = subprocess.Popen([DCNBENCH, "speed", "--shape", "1,4,8,8:4,3,3", "--backend", "pytorch", "--repeat", "400",
                              "--no-memory", "--json", str(tmp / "same.json"), "--csv", os.devnull], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp / ".same.json.dcnbench-lock"
    while first.poll() is None and not (lock.exists() and lock.read_text()):
        time.sleep(0.2)
    out = run("speed", "--shape", "1,4,8,8:4,3,3", "--backend", "pytorch", "--repeat", "2", "--json", tmp / "same.json",
              "--csv", os.devnull)
    first.kill()
    first.wait()
    probe("two runs writing one file", usage(out) and f"pid {first.pid}" in out.stderr, out.stderr)

    # 5. settings
    out = run("verify", "--backend", "ext", *null, env={"DCNBENCH_EXT_BUILD_DIR": str(tmp / "existing")})
    probe("DCNBENCH_EXT_BUILD_DIR=a file, verify --backend ext", usage(out) and "DCNBENCH_EXT_BUILD_DIR" in out.stderr,
          out.stderr)
    out = run("backends", env={"DCNBENCH_EXT_BUILD_DIR": "/proc/none/ext"})
    probe("DCNBENCH_EXT_BUILD_DIR uncreatable, backends", out.returncode == 0 and "cannot be created" in out.stdout,
          next((ln for ln in out.stdout.splitlines() if "│ ext " in ln), out.stderr))
    for value in ("0", "-5"):
        out = run("verify", "--backend", "ext", "--case", "v2/float64", *null, env={"DCNBENCH_EXT_COLUMN_BUDGET": value})
        probe(f"DCNBENCH_EXT_COLUMN_BUDGET={value}", usage(out), out.stderr)
    out = run("verify", "--case", "v2/float64", *null, env={"DCNBENCH_MXNET_PYTHON": "/nonexistent"})
    probe("DCNBENCH_MXNET_PYTHON=/nonexistent", usage(out) and "DCNBENCH_MXNET_PYTHON=/nonexistent" in out.stderr, out.stderr)
    out = run("verify", "--backend", "paddle", *null, env={"DCNBENCH_PADDLE_TIMEOUT": "0.01"})
    probe("worker start-up timeout", usage(out) and "DCNBENCH_PADDLE_TIMEOUT" in out.stderr, out.stderr)

    # 6. containment: a plugin's setsid child
    pids = tmp / "pids"
    out = run("verify", "--impl", f"{ESCAPES}:escapes", "--case", "asymmetric-2x3", "--dtype", "float64", *null,
              env={"DCNBENCH_TEST_ESCAPE_PIDS": str(pids)})
    time.sleep(0.5)
    left = [int(p) for p in pids.read_text().split() if alive(int(p))] if pids.exists() else ["no child started"]
    probe("plugin's setsid child after the run", out.returncode == 0 and not left, f"still running: {left}")
    for pid in left:
        if isinstance(pid, int):
            os.kill(pid, signal.SIGKILL)

    # 7. messages
    torch_bundle = tmp / "unknown-op.pt"
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import torch
        b = torch.load({str(bundle)!r}, weights_only=True)
        b["meta"]["op"] = "deform_conv3d"
        torch.save(b, {str(torch_bundle)!r})""")], check=True)
    out = run("repro", torch_bundle)
    probe("bundle naming an unknown op", usage(out) and "repro bundle" in out.stderr and "plugin" not in out.stderr,
          out.stderr)
    for args in (("verify", "--fuz", "3"), ("speed", "--repeat", "abc"), ("gate", "--factor", "x"), ("speed", "--warmup")):
        out = run(*args)
        probe(" ".join(args), usage(out), out.stderr)
    out = run("verify", "--impl", f"{FAULTS}:segfaults_always", "--case", "v2/float64", *null)
    probe("probe failure message", usage(out) and "fresh one" not in out.stderr, out.stderr)
    wrong = tmp / "wrong_dtype.py"
    wrong.write_text("from torchvision.ops import deform_conv2d as tv\n"
                     "def f(*a, **k):\n    return tv(*a, **k).float()\n")
    out = run("verify", "--impl", f"{wrong}:f", "--case", "v2/float64", "--in-process", *null)
    probe("a result of the wrong dtype", out.returncode == 1 and "dtype float32, expected float64" in out.stdout,
          next((ln for ln in out.stdout.splitlines() if "dtype" in ln), out.stdout[-200:]))
    run("speed", "--shape", "1,4,8,8:4,3,3", "--backend", "pytorch", "--repeat", "2", "--no-memory", "--json",
        tmp / "s.json", "--csv", os.devnull)
    text = (tmp / "s.json").read_text()
    sample = json.loads(text)["records"][0]["samples_ms"][0]
    for bad in ("NaN", '"fast"', "-1.5"):
        (tmp / "bad.json").write_text(text.replace(repr(sample), bad, 1))
        out = run("report", tmp / "bad.json", "-o", tmp / "r")
        probe(f"report with a sample {bad}", usage(out) and "damaged" in out.stderr, out.stderr)
    out = run("verify", "--backend", "pytorch", "--case", "v2/float64", *null, env={"COLUMNS": "10"})
    probe("summary at COLUMNS=10", out.returncode == 0 and out.stdout.splitlines()[1].startswith("backend: pytorch, pass:"),
          out.stdout.splitlines()[1])

    # 8. MXNet's DCNv1 with output channels the offset groups do not divide
    case = json.dumps({"op": "deform_conv2d", "name": "o3-og2", "geometry": {"n": 1, "c": 4, "h": 6, "w": 6, "o": 3,
                       "kh": 2, "kw": 2, "padding": [1, 1], "offset_groups": 2}, "mask": False, "offsets": "border",
                       "seed": 9})
    out = run("verify", "--backend", "mxnet", "--case-json", case, *null)
    probe("MXNet DCNv1, O=3, offset groups 2", out.returncode == 0 and "dialect" in out.stdout and "unsupported" not in
          out.stdout.split("not passing")[-1], out.stdout.split("not passing")[-1].strip().splitlines()[0])

    bad = [name for name, ok, _ in results if not ok]
    print(f"\n{len(results) - len(bad)} of {len(results)} probes OK" + (f"; not OK: {', '.join(bad)}" if bad else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
