"""Results files: CSV (one row per case x backend x quantity) and JSON (with raw samples).

Both carry the schema version and the environment, so a file read months later says what produced
it; `load_json` refuses a schema it does not know rather than misreading it, and brings files of
an older version it does know up to date (`_upgrade`), so every reader sees one shape of record.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path

from typing import TYPE_CHECKING

from dcnbench import __version__
from dcnbench.errors import ResultsFileError

if TYPE_CHECKING:
    from dcnbench.backends import Backend
    from dcnbench.speed import SpeedResult
    from dcnbench.verify import VerifyResult

SCHEMA = "dcnbench-results"
# 2: speed records name their operator (`op`). Version 1 files are still read (see _upgrade).
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
RESULTS_DIR = Path("results")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment(*, device: str, seed: int, backends: list[Backend]) -> dict:
    import torch

    try:
        import torchvision
        tv = torchvision.__version__
    except ImportError:
        tv = None
    return {
        "dcnbench_version": __version__,
        "git_commit": _git_commit(),
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "torchvision_version": tv,
        "backend_versions": {b.name: b.version for b in backends},
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else _cpu_model(),
        "cpu_model": _cpu_model(),
        "threads": torch.get_num_threads(),
        "seed": seed,
    }


def default_path(kind: str, suffix: str, stamp: str) -> Path:
    return RESULTS_DIR / f"{kind}-{stamp}.{suffix}"


def _env_columns(env: dict) -> dict:
    keep = ("dcnbench_version", "git_commit", "timestamp", "torch_version", "torchvision_version",
            "device", "device_name", "cpu_model", "threads", "seed")
    return {f"env_{k}": env[k] for k in keep}


def verify_rows(results: list[VerifyResult], env: dict) -> list[dict]:
    rows = []
    for r in results:
        common = {"schema_version": SCHEMA_VERSION, "kind": "verify", "case_id": r.case.case_id,
                  "case_digest": verify_digest(r), "check": r.case.check, "op": r.case.op, "shape": r.case.shape_text,
                  "dcn": r.case.variant, "dtype": r.case.dtype, "backend": r.backend,
                  "status": r.status, "message": r.message}
        for q in r.quantities or (None,):
            rows.append(common | {
                "quantity": q.quantity if q else "", "ok": q.ok if q else "",
                "rel_err": q.rel_err if q else "", "max_abs_err": q.max_abs_err if q else "",
                "tolerance": q.tolerance if q else "", "note": q.note if q else "",
            } | _env_columns(env))
    return rows


def speed_rows(results: list[SpeedResult], env: dict) -> list[dict]:
    rows = []
    for r in results:
        m = r.measurement
        rows.append({
            "schema_version": SCHEMA_VERSION, "kind": "speed", "case_id": r.case.case_id,
            "op": r.case.op, "shape": r.case.bench_case().shape_text, "dcn": r.case.bench_case().variant, "dtype": r.case.dtype,
            "device": r.case.device, "backend": r.backend, "quantity": r.case.direction, "status": r.status,
            "median_ms": m.median_ms if m else "", "iqr_ms": m.iqr_ms if m else "", "min_ms": m.min_ms if m else "",
            "samples": len(m.samples_ms) if m else "", "ratio_to_baseline": r.ratio_to_baseline if r.ratio_to_baseline is not None else "",
            "gflops": r.gflops if r.gflops is not None else "", "peak_bytes": r.peak_bytes if r.peak_bytes is not None else "",
            "memory_method": r.memory_method or "", "message": r.message or "; ".join(r.warnings()),
        } | _env_columns(env))
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        if not rows:
            fh.write("schema_version\n")
            return
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def verify_digest(r: VerifyResult) -> str:
    """A verify workload: the case and the tolerances it is judged by."""
    from dcnbench.verify import TOLERANCES

    return r.case.digest(tolerances=TOLERANCES[r.case.dtype])


def _verify_record(r: VerifyResult) -> dict:
    return {"case_id": r.case.case_id, "case": r.case.definition(), "case_digest": verify_digest(r),
            "backend": r.backend, "status": r.status, "message": r.message, "elapsed_s": r.elapsed_s,
            "quantities": [asdict(q) for q in r.quantities], "dialect": asdict(r.dialect) if r.dialect else None}


def _speed_record(r: SpeedResult, threads: int) -> dict:
    m = r.measurement
    return {"case_id": r.case.case_id, "op": r.case.op, "case": asdict(r.case), "case_digest": r.case.digest(threads),
            "backend": r.backend, "status": r.status,
            "message": r.message, "samples_ms": list(m.samples_ms) if m else [], "warmup_runs": m.warmup_runs if m else 0,
            "median_ms": m.median_ms if m else None, "iqr_ms": m.iqr_ms if m else None,
            "ratio_to_baseline": r.ratio_to_baseline, "baseline": r.baseline, "gflops": r.gflops, "flops": r.case.flops(),
            "peak_bytes": r.peak_bytes, "memory_method": r.memory_method, "warnings": r.warnings()}


def document(kind: str, env: dict, results: list, extra: dict | None = None) -> dict:
    """A results document: verify or speed records with the schema and the environment."""
    if kind == "verify":
        records = [_verify_record(r) for r in results]
    else:
        records = [_speed_record(r, env["threads"]) for r in results]
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": kind, "environment": env,
            **(extra or {}), "records": records}


def bundle(kind: str, env: dict, parts: list[dict]) -> dict:
    """Several documents in one file (a gate baseline, a gate candidate)."""
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": kind, "environment": env, "parts": parts}


def save(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=_jsonable) + os.linesep)


def write_json(path: Path, kind: str, env: dict, results: list, extra: dict | None = None) -> None:
    save(path, document(kind, env, results, extra))


def _jsonable(value):
    if isinstance(value, float) and value != value:
        return None
    return str(value)


def expand(docs: list[dict]) -> list[dict]:
    """Result documents with any bundle (a baseline, a gate candidate) unpacked into its parts."""
    out = []
    for doc in docs:
        out += doc["parts"] if "parts" in doc else [doc]
    return out


def load_many(paths: list[Path]) -> list[dict]:
    """Several results files (e.g. the shards of one CI matrix), each validated."""
    if not paths:
        raise ResultsFileError("no results files given", hint="pass the .json files that verify/speed wrote")
    return [load_json(p) for p in paths]


def load_json(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsFileError(f"cannot read results file '{path}': {exc}", hint="give a JSON file written by dcnbench") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultsFileError(f"'{path}' is not a dcnbench results file", hint="give a JSON file written by dcnbench --json")
    if doc.get("schema_version") not in READABLE_VERSIONS:
        raise ResultsFileError(f"'{path}' has schema version {doc.get('schema_version')}, this dcnbench reads "
                               f"{', '.join(map(str, READABLE_VERSIONS))}",
                               hint="re-run the measurement with this version of dcnbench")
    return _upgrade(doc)


def _upgrade(doc: dict) -> dict:
    """A document of an older schema version in the current shape (bundles part by part)."""
    if doc.get("schema_version") == 1:
        for part in doc.get("parts", [doc]):
            for r in part.get("records", []) if part.get("kind") == "speed" else []:
                # Version 1 told the ops apart by the geometry: only RoI pooling geometries had `op`.
                r.setdefault("op", r["case"]["geometry"].get("op", "deform_conv2d"))
            part["schema_version"] = SCHEMA_VERSION
        doc["schema_version"] = SCHEMA_VERSION
    return doc
