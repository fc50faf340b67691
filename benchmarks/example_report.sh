#!/usr/bin/env bash
# reports/example/ from one current run: `dcnbench verify` (every operator's default suite) and one
# `dcnbench speed` run (every operator's default preset, float32 forward+backward), both with every
# available backend; then the HTML page opened in headless Chromium (images decode, no request
# leaves the file) with a screenshot in results/example-report.png. Run through `make example-report`.
set -euo pipefail
cd "$(dirname "$0")/.."
DCNBENCH=.venv/bin/dcnbench
out=results/example
mkdir -p "$out"
presets=$(.venv/bin/python -c 'from dcnbench import ops; print(" ".join(dict.fromkeys(f"--preset {s.default_preset}" for s in ops.all_ops())))')
threads=$(.venv/bin/python -c 'import torch; print(torch.get_num_threads())')
$DCNBENCH verify --json "$out/verify.json" --csv "$out/verify.csv" --show none || true  # failures belong in the report
# shellcheck disable=SC2086
$DCNBENCH speed $presets --repeat 10 --warmup 1 --json "$out/speed.json" --csv "$out/speed.csv"
rm -rf reports/example
$DCNBENCH report "$out/verify.json" "$out/speed.json" -o reports/example --title "dcnbench example report (CPU, $threads threads)"
.venv/bin/python -m tests.report_browser reports/example/report.html --screenshot results/example-report.png
