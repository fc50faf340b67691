"""How honest is `dcnbench gate --against` on this machine? (A benchmark, not a test: it takes long.)

In a fresh clone of this repository's HEAD (so it also proves the gate runs from a clean clone):
once `gate --against HEAD` with a 25 % slowdown planted in the working tree's copy of
benchmarks/slowable.py (uncommitted, so only the head has it), as a pull request that slows a
kernel would, then RUNS times on unchanged code (base and head identical: every `worse` is a false
alarm, every `noisy` an undecided run), with a running tally. The kernel is that plugin (torchvision's deform_conv2d, slowable),
timed next to REFERENCE on the gate's default workload.

    .venv/bin/python benchmarks/gate_against_false_alarms.py [RUNS] [REFERENCE] [-- extra gate options]
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPL = "kernel=benchmarks/slowable.py:deform_conv2d"
UV = os.environ.get("UV") or str(ROOT / ".tools" / "bin" / "uv")


def gate(clone: Path, reference: str, extra: list[str]) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("DCNBENCH_SLOWDOWN", "VIRTUAL_ENV")} | {"UV": UV}
    args = [str(clone / ".venv" / "bin" / "dcnbench"), "gate", "--against", "HEAD", "--impl", IMPL, "--backend", reference,
            "--reference", reference, "--no-correctness", *extra]
    t0 = time.monotonic()
    out = subprocess.run(args, cwd=clone, env=env, capture_output=True, text=True)
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "| kernel |" in line]
    return out.returncode, rows[0] if rows else out.stderr.strip()[-300:], time.monotonic() - t0


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    runs = int(argv[0]) if argv else 10
    reference = argv[1] if len(argv) > 1 else "conv2d"
    clone = Path(tempfile.mkdtemp(prefix="dcnbench-gate-")) / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    subprocess.run(["make", "-s", "env", f"UV={UV}"], cwd=clone, check=True)
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    slowable = clone / "benchmarks" / "slowable.py"
    text = slowable.read_text()
    planted = re.sub(r'os\.environ\.get\("DCNBENCH_SLOWDOWN", "0"\)', 'os.environ.get("DCNBENCH_SLOWDOWN", "0.25")', text)
    assert planted != text, "could not plant the slowdown"
    # The slowdown first (its verdict is the figure that matters most), then the unchanged runs.
    slowable.write_text(planted)
    print(f"clone of {head} in {clone}; reference {reference}; options {' '.join(extra) or '(defaults)'}", flush=True)
    print("one run of `gate --against HEAD` with the head's kernel 25% slower (forward and backward), uncommitted:", flush=True)
    slowed, row, took = gate(clone, reference, extra)
    print(f"  exit {slowed} in {took:.0f} s  {row}", flush=True)
    print(f"25% slowdown: {'caught (exit 3)' if slowed == 3 else f'NOT caught (exit {slowed})'}", flush=True)
    slowable.write_text(text)
    print(f"{runs} runs on unchanged code (base and head identical):", flush=True)
    codes = Counter()
    for i in range(runs):
        code, row, took = gate(clone, reference, extra)
        codes[code] += 1
        print(f"  run {i + 1}: exit {code} in {took:.0f} s  {row}", flush=True)
        print(f"  so far: {codes[3]} false alarm(s) (exit 3), {codes[4]} undecided (exit 4), {codes[0]} pass, "
              f"{sum(n for c, n in codes.items() if c not in (0, 3, 4))} other, out of {i + 1}", flush=True)


if __name__ == "__main__":
    main()
