#!/usr/bin/env bash
# `make gpu-check`: on a machine with a GPU and a preinstalled torch (no network needed), build
# ext for CUDA, verify every backend present on CUDA (ext in both backward modes), and time the
# presets in float32 and bfloat16. CSV/JSON go to $OUT (default results/gpu-check).
# Exit status: 0 when every verify passed, 1 otherwise (the speed runs happen either way).
set -uo pipefail
PY=${GPU_PYTHON:-python3}
OUT=${OUT:-results/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
dcn() { "$PY" -m dcnbench "$@"; }
status=0
{ nvidia-smi || true; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } > "$OUT/environment.txt" 2>&1
dcn backends | tee "$OUT/backends.txt"
dcn build --verbose > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
dcn verify --device cuda --csv "$OUT/verify-cuda.csv" --json "$OUT/verify-cuda.json" | tee "$OUT/verify-cuda.txt" || status=1
DCNBENCH_EXT_DETERMINISTIC=1 dcn verify --device cuda --backend ext --csv "$OUT/verify-cuda-ext-deterministic.csv" \
    --json "$OUT/verify-cuda-ext-deterministic.json" | tee "$OUT/verify-cuda-ext-deterministic.txt" || status=1
for preset in dcn-56 resnet101-conv5 dcnv4-56 rfcn faster-rcnn; do
  for direction in fwd fwdbwd; do
    dcn speed --device cuda --preset "$preset" --direction "$direction" --dtype float32 --dtype bfloat16 --repeat 20 \
        --warmup 1 --csv "$OUT/speed-$preset-$direction.csv" --json "$OUT/speed-$preset-$direction.json" \
        | tee "$OUT/speed-$preset-$direction.txt"
  done
done
exit $status
