"""The CPU performance report of issue 23, in one command:

    .venv/bin/python benchmarks/cpu_perf.py [--out reports/cpu-perf] [--repeat 15] [--only dcn-56]

For each preset (dcn-56 and resnet101-conv5: ext, onnxruntime, openvino beside conv2d; dcnv4-bench:
ext's DCNv3 and DCNv4 beside the depthwise conv2d; rfcn: ext's RoI pooling beside roi_align), at 1
and 2 threads, forward and forward+backward, one `dcnbench speed --roofline` run (interleaved rounds,
idle OpenMP threads sleeping), its JSON in OUT/<preset>-t<threads>-<direction>.json. The roofline is
probed afresh into OUT/roofline/ first. Then OUT/README.md: one table of ratios and % of the roofline
per run, the machine's load before and after each, and where ext's time goes on dcn-56 (a profile by
phase from `perf record`, where perf is installed). Run it on a quiet machine: a busy one reorders
the backends (DCN.md section 8).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "dcnbench"
CONV = ["--backend", "ext", "--backend", "onnxruntime", "--backend", "openvino", "--backend", "conv2d"]
RUNS = {  # preset -> (extra arguments, directions)
    "dcn-56": (CONV, ("fwd", "fwdbwd")),
    "resnet101-conv5": (CONV, ("fwd", "fwdbwd")),
    "dcnv4-bench": (["--backend", "ext", "--backend", "conv2d"], ("fwd", "fwdbwd")),  # DCNv3 and DCNv4
    "rfcn": (["--backend", "ext", "--backend", "roi_align"], ("fwd", "fwdbwd")),  # both RoI pooling ops
}
THREADS = (1, 2)
# ext's phases on dcn-56, by the symbols perf samples (the kernels keep each phase in its own function),
# first match wins: the offset/mask gradients' task lambda names Plan<float> in its type, and the plan
# is inlined into the gather.
PHASES = (("offset/mask gradients", ("offset_mask_grad",)), ("input-gradient scatter", ("col2im<",)),
          ("sampling plan + gather (im2col)", ("gather<", "im2col<", "Plan<")),
          ("GEMM (MKL; oneDNN's JIT code)", ("mkl_blas", "sgemm", "[JIT]")),
          ("layout copies (NCHW <-> NHWC)", ("VectorizedLoop2d", "copy_kernel")))


def load() -> float:
    return os.getloadavg()[0]


def run_speed(out: Path, key: str, threads: int, direction: str, repeat: int) -> dict:
    extra, _ = RUNS[key]
    stem = f"{key}-t{threads}-{direction}"
    cmd = [str(EXE), "speed", "--preset", key, *extra, "--direction", direction, "--threads", str(threads),
           "--repeat", str(repeat), "--warmup", "1", "--no-memory", "--roofline", "--json", str(out / f"{stem}.json"),
           "--csv", str(out / f"{stem}.csv")]
    before = load()
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env())
    shown = " ".join(["dcnbench", *cmd[1:]]).replace(str(out), "OUT")
    (out / f"{stem}.txt").write_text(f"$ {shown}\n{done.stdout}{done.stderr}")
    print(f"{stem}: exit {done.returncode}, {time.time() - t0:.0f} s, load {before:.2f} -> {load():.2f}", flush=True)
    return {"stem": stem, "command": shown, "load_before": before, "load_after": load(), "exit": done.returncode}


def env(**more) -> dict:
    return dict(os.environ, OMP_WAIT_POLICY="PASSIVE", COLUMNS="200", NO_COLOR="1", **more)


def table(out: Path, runs: list[dict]) -> str:
    """One markdown row per workload x threads x direction: each backend's ratio and % of the bound."""
    from dcnbench.timing import roofline
    from dcnbench.results import load_json
    from dcnbench.timing.speed import SpeedCase, SpeedResult
    from dcnbench.status import Status
    from dcnbench.timing.measure import Measurement

    lines = ["| workload | threads | direction | load | backend: × reference (% of roofline) |", "|---|---|---|---|---|"]
    for run in runs:
        path = out / f"{run['stem']}.json"
        if not path.exists():
            continue
        doc = load_json(path, kinds=("speed",))
        machine = roofline.Machine(**doc["roofline"]) if doc.get("roofline") else None
        by_case: dict[str, list] = {}
        for r in doc["records"]:
            by_case.setdefault(r["case_id"], []).append(r)
        for case_id, records in by_case.items():
            cells = []
            for r in records:
                if r["status"] != "ok":
                    continue
                case = SpeedCase.from_dict(r["case"], r.get("op", "deform_conv2d"))
                result = SpeedResult(case, r["backend"], Status.OK, Measurement(tuple(r["samples_ms"]), 0))
                pct = roofline.percent_of_bound(result, machine) if machine else None
                ratio = r.get("ratio_to_baseline")
                cells.append(f"{r['backend']} {ratio:.2f}" + (f" ({pct:.0f} %)" if pct is not None else "")
                             if ratio is not None else r["backend"])
            shape = case_id.split("/")[0]
            lines.append(f"| `{shape}` | {run['stem'].split('-t')[-1].split('-')[0]} | {case_id.split('/')[-1]} | "
                         f"{run['load_before']:.1f}–{run['load_after']:.1f} | {', '.join(cells)} |")
    return "\n".join(lines)


def profile(out: Path) -> str:
    """ext's time on dcn-56 (1 thread) by phase, from perf's samples of a loop of forward+backward calls."""
    if shutil.which("perf") is None:
        return "(perf is not installed: no profile by phase)"
    script = ("import torch; torch.set_num_threads(1)\n"
              "from dcnbench.backends import get\nfrom dcnbench import ops\nfrom dcnbench.timing.speed import SpeedCase, make_call\n"
              "case = SpeedCase(ops.preset('dcn-56', None)[0], direction='fwdbwd')\n"
              "setup, call = make_call(get('ext'), case.bench_case(), 'fwdbwd', 'cpu')\n"
              "[call() for _ in range(3)]\nimport time\nt = time.time()\nwhile time.time() - t < 20: call()\n")
    data = out / "perf.data"
    subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", str(data), sys.executable, "-c", script],
                   capture_output=True, env=env())
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio"],
                            capture_output=True, text=True).stdout
    data.unlink(missing_ok=True)
    shares = {name: 0.0 for name, _ in PHASES}
    for line in report.splitlines():
        parts = line.split()
        if not parts or not parts[0].endswith("%") or line.lstrip().startswith("#"):
            continue
        for name, keys in PHASES:
            if any(k in line for k in keys):
                shares[name] += float(parts[0].rstrip("%"))
                break
    total = sum(shares.values()) or 1.0
    rows = [f"| {name} | {100 * v / total:.0f} % |" for name, v in shares.items()]
    return "\n".join(["| phase (ext, dcn-56 forward+backward, 1 thread) | share of ext's samples |", "|---|---|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "cpu-perf")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", action="append", choices=sorted(RUNS), help="run only these presets (repeatable)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "roofline", ignore_errors=True)  # probe this machine now, not reuse an old probe
    os.environ["DCNBENCH_ROOFLINE_DIR"] = str(out / "roofline")
    runs = [run_speed(out, key, t, d, args.repeat) for key in (args.only or RUNS) for t in THREADS
            for d in RUNS[key][1]]
    (out / "runs.json").write_text(json.dumps(runs, indent=1))
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    text = ["# CPU performance (issue 23)", "",
            f"Written by `python benchmarks/cpu_perf.py` on {time.strftime('%Y-%m-%d %H:%M')}, {cpu}, "
            f"{os.cpu_count()} cores; each row one `dcnbench speed` run (its command in the `.txt` beside the JSON). "
            "Ratios divide by the reference row of the same run (conv2d, the depthwise conv2d for DCNv3/DCNv4, "
            "roi_align); % is the row's share of this machine's roofline for the op's least work.", "",
            table(out, runs), "", profile(out), ""]
    (out / "README.md").write_text("\n".join(text))
    print(f"wrote {out / 'README.md'}")


if __name__ == "__main__":
    main()
