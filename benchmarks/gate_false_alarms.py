"""How honest is `dcnbench gate` on this machine? (A benchmark, not a test: it takes minutes.)

Writes a baseline for a plugin kernel, then runs the performance gate RUNS times on unchanged code
and once with the kernel 25% slower, and prints how many unchanged runs raised a false alarm
(exit 3) or could not decide (exit 4), and whether the slowdown was caught (exit 3).

    .venv/bin/python benchmarks/gate_false_alarms.py [RUNS] [REFERENCE]

REFERENCE is the backend every time is divided by (default conv2d; torchvision is a steadier one here).
"""

import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DCNBENCH = [str(Path(sys.executable).parent / "dcnbench")]
IMPL = f"kernel={HERE / 'slowable.py'}:deform_conv2d"


def gate(baseline: Path, slowdown: float, reference: str) -> int:
    env = dict(os.environ, DCNBENCH_SLOWDOWN=str(slowdown))
    out = subprocess.run(DCNBENCH + ["gate", "--baseline", str(baseline), "--impl", IMPL, "--no-correctness",
                                     "--reference", reference],
                         env=env, capture_output=True, text=True)
    verdicts = [line for line in out.stdout.splitlines() if line.startswith("| ") and "kernel" in line]
    print(f"  slowdown {slowdown:.0%}: exit {out.returncode}  {verdicts[0] if verdicts else out.stderr.strip()[-200:]}",
          flush=True)
    return out.returncode


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    reference = sys.argv[2] if len(sys.argv) > 2 else "conv2d"
    baseline = Path(tempfile.mkdtemp()) / "baseline.json"
    subprocess.run(DCNBENCH + ["gate", "--write-baseline", str(baseline), "--impl", IMPL, "--backend", reference],
                   check=True, env=dict(os.environ, DCNBENCH_SLOWDOWN="0"), capture_output=True)
    print(f"reference {reference}; baseline written; {runs} gate runs on unchanged code:", flush=True)
    unchanged = Counter(gate(baseline, 0.0, reference) for _ in range(runs))
    print("one gate run with the kernel 25% slower (forward and backward):", flush=True)
    slowed = gate(baseline, 0.25, reference)
    print(f"\nunchanged code: {unchanged[3]} false alarm(s) (exit 3), {unchanged[4]} undecided (exit 4), "
          f"{unchanged[0]} pass, out of {runs}")
    print(f"25% slowdown: {'caught (exit 3)' if slowed == 3 else f'NOT caught (exit {slowed})'}")


if __name__ == "__main__":
    main()
