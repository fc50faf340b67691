"""A long seeded fuzz of the built-in backends (a benchmark, not a test: it takes an hour or more).

    .venv/bin/python benchmarks/fuzz_long.py [--problems N] [--seconds S] [--seed K] [--out DIR]

Runs `dcnbench verify --fuzz` for every operator and every available built-in backend and prints,
per operator and backend, how many problems ran and whether one failed (the smallest failing
problem and its one-line repro are in the command's own output, kept in DIR/fuzz.log).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DCNBENCH = str(Path(sys.executable).parent / "dcnbench")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=2000, help="problems per operator and backend")
    parser.add_argument("--seconds", type=float, default=600, help="time per operator and backend")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--out", type=Path, default=Path("results/fuzz-long"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = [DCNBENCH, "verify", "--fuzz", str(args.problems), "--fuzz-time", str(args.seconds), "--seed", str(args.seed),
           "--json", str(args.out / "fuzz.json"), "--csv", str(args.out / "fuzz.csv")]
    with (args.out / "fuzz.log").open("w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    doc = json.loads((args.out / "fuzz.json").read_text())
    total = 0
    for row in doc["fuzz"]:
        total += row["problems"]
        print(f"{row['op']:<20} {row['backend']:<12} {row['problems']:>6} problems {row['seconds']:>7.0f} s  "
              f"{'FAILED' if row['failed'] else 'no failure'}")
    print(f"{total} problems in all; exit status {code}; details in {args.out / 'fuzz.log'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
