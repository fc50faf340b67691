"""Does a `speed` figure depend on whether other processes compete for the cores? (Not a test: it takes
minutes, and its figures are quoted in the README, "Timing on a busy machine".)

The same kernel (torchvision's deform_conv2d on `--shape 1,4,8,8:4,3,3`, float64, 2 threads, with
its conv2d reference row) is timed by `dcnbench speed` in dcnbench's own process and in a worker
(`--isolate`, self-timed there), on the machine as it is and with BUSY processes spinning beside it;
and once more in-process with OMP_WAIT_POLICY=ACTIVE, which is what dcnbench's own process ran with
before it set a passive policy (only its workers had one). Each configuration is one `dcnbench
speed` run (a fresh process, so the policy applies from the start); configurations take turns for
--rounds rounds. Prints one row per configuration: the median of the rounds' medians (ms), the
worst IQR/median seen, and what `speed` said about the machine.

    .venv/bin/python benchmarks/busy_timing.py [--rounds 3] [--repeat 30] [--busy 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DCNBENCH = str(Path(sys.executable).parent / "dcnbench")
SHAPE = "1,4,8,8:4,3,3"
BACKENDS = ("torchvision", "conv2d")


def run(mode: str, policy: str | None, repeat: int, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    args = [DCNBENCH, "speed", "--shape", SHAPE, "--dtype", "float64", "--threads", "2", "--direction", "fwd",
            "--repeat", str(repeat), "--warmup", "0.5", "--no-memory", "--json", str(out), "--csv", os.devnull]
    args += [a for b in BACKENDS for a in ("--backend", b)] + (["--isolate"] if mode == "worker" else [])
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return json.loads(out.read_text())


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--busy", type=int, default=2, help="busy loops competing in the loaded runs")
    args = parser.parse_args()
    configs = [(load, mode, policy) for load in ("as is", f"+{args.busy} busy") for mode, policy in
               (("in-process", None), ("worker", None), ("in-process", "ACTIVE"))]
    found: dict[tuple, list[dict]] = {c: [] for c in configs}
    loads: dict[tuple, list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            for c in configs if r % 2 == 0 else reversed(configs):
                load, mode, policy = c
                loops = busy_loops(args.busy) if load != "as is" else []
                try:
                    loads[c].append(os.getloadavg()[0])
                    found[c].append(run(mode, policy, args.repeat, Path(scratch) / "s.json"))
                finally:
                    for p in loops:
                        p.kill()
                        p.wait()
    print(f"{'machine':<10} {'where':<11} {'OMP policy':<11} {'load before':>11} "
          + " ".join(f"{b + ' ms':>15}" for b in BACKENDS) + f" {'worst IQR':>9}  speed's verdict")
    for c in configs:
        load, mode, policy = c
        medians = {b: statistics.median(r["median_ms"] for d in found[c] for r in d["records"] if r["backend"] == b)
                   for b in BACKENDS}
        spread = max(r["iqr_ms"] / r["median_ms"] for d in found[c] for r in d["records"] if r["median_ms"])
        said = sorted({"oversubscribed" if d["environment"]["contention"]["oversubscribed"] else "not oversubscribed"
                       for d in found[c]})
        print(f"{load:<10} {mode:<11} {(policy or 'passive'):<11} {statistics.median(loads[c]):>11.1f} "
              + " ".join(f"{medians[b]:>15.3f}" for b in BACKENDS) + f" {spread:>9.0%}  {', '.join(said)}")
    print(f"cores: {os.cpu_count()}; rounds: {args.rounds}; samples per run: {args.repeat}; "
          "medians of the rounds' medians; load: 1-minute average before each run")


if __name__ == "__main__":
    main()
