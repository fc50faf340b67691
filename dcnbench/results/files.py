"""Results files: CSV (one row per case x backend x quantity) and JSON (with raw samples).

Both carry the schema version and the environment, so a file read months later says what produced
it; `load_json` refuses a schema it does not know rather than misreading it, and brings files of
an older version it does know up to date (`_upgrade`), so every reader sees one shape of record.

JSON files are strict JSON: a non-finite number (a NaN error, an infinite ratio) is written as
`{"nonfinite": "nan" | "inf" | "-inf"}` and read back as the float. `ResultsWriter` writes a
command's files as its results arrive (atomically, at most every few seconds), so an interrupted
or crashed run leaves valid files marked `"partial": true` with how many results they hold.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from typing import TYPE_CHECKING

from dcnbench import __version__
from dcnbench.errors import ResultsFileError

if TYPE_CHECKING:
    from dcnbench.backends import Backend
    from dcnbench.timing.speed import SpeedResult
    from dcnbench.train.parity import TrainResult
    from dcnbench.checking.verify import VerifyResult

SCHEMA = "dcnbench-results"
# 2: speed records name their operator (`op`); non-finite numbers are tagged objects; documents
# say whether they are `partial`. Version 1 files are still read (see _upgrade).
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
KINDS = ("verify", "speed", "train")
BUNDLE_KINDS = ("baseline", "gate-candidate")
# Fields every record of a kind must have for the readers (report, gate) to use it.
REQUIRED = {"verify": ("case_id", "case_digest", "backend", "status", "quantities"),
            "speed": ("case_id", "case_digest", "backend", "status"),
            "train": ("backend", "role", "status", "losses")}
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


# The CSV's columns, in order: a frame's columns (see `read`), some renamed for the CSV.
CSV_ENV = ("env_dcnbench_version", "env_git_commit", "env_timestamp", "env_torch_version", "env_torchvision_version",
           "env_device", "env_device_name", "env_cpu_model", "env_threads", "env_seed")
CSV_COLUMNS = {
    "verify": ("schema_version", "kind", "case_id", "case_digest", "case.check", "op", "shape", "dcn", "case.dtype",
               "backend", "status", "message", "quantity", "ok", "rel_err", "max_abs_err", "tolerance", "note") + CSV_ENV,
    "speed": ("schema_version", "kind", "case_id", "op", "shape", "dcn", "case.dtype", "case.device", "backend",
              "case.direction", "status", "median_ms", "iqr_ms", "min_ms", "samples", "ratio_to_baseline", "gflops",
              "peak_bytes", "memory_method", "message") + CSV_ENV,
    "train": ("schema_version", "kind", "backend", "role", "settings.dcn", "dtype", "rule", "status", "message",
              "first_failing_step", "step", "loss", "reference_loss", "loss_diff", "loss_bound", "weight_diff",
              "weight_bound", "step_ms") + CSV_ENV}
CSV_NAMES = {"case.check": "check", "case.dtype": "dtype", "case.device": "device", "case.direction": "quantity",
             "settings.dcn": "dcn"}


def _flat(prefix: str, d: dict) -> dict:
    """Nested objects as dotted columns: {"case": {"dtype": ..}} -> {"case.dtype": ..}."""
    out = {}
    for k, v in d.items():
        out |= _flat(f"{prefix}{k}.", v) if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def _rows(docs: list[dict], files: list[str]) -> list[dict]:
    """One flat row per verify record x quantity and per speed record, with the document's own
    columns (file, bundle, kind, partial, run_*) and the environment's (env_*)."""
    rows, records = [], 0
    for doc, file in zip(docs, files):
        for part in doc.get("parts", [doc]):
            head = {"file": file, "bundle": doc["kind"] if "parts" in doc else "", "kind": part["kind"],
                    "schema_version": part["schema_version"], "partial": bool(part.get("partial")),
                    "expected_results": part.get("expected_results"), "completed_results": part.get("completed_results")}
            head |= {f"run_{k}": v for k, v in part.items() if k not in head and k not in ("schema", "environment", "records")}
            env = _flat("env_", part["environment"])
            for r in part["records"]:
                record = _flat("", {k: v for k, v in r.items() if k != "quantities"}) | {"record": records}
                if part["kind"] == "speed":
                    samples = r.get("samples_ms") or []
                    record |= {"min_ms": min(samples, default=None), "samples": len(samples) or None}
                if part["kind"] == "train":
                    rows += [head | _without(record, TRAIN_STEP) | step | env for step in _train_steps(r)]
                else:
                    for q in r.get("quantities") or [{"quantity": None}] if part["kind"] == "verify" else [{}]:
                        rows.append(head | record | _flat("", q) | {"compared": q.get("rel_err") is not None} | env)
                records += 1
    return rows


# A train record's per-step lists, one value per step in a frame's rows (named in the singular).
TRAIN_STEP = {"losses": "loss", "reference_losses": "reference_loss", "loss_diff": "loss_diff",
              "loss_bound": "loss_bound", "weight_diff": "weight_diff", "weight_bound": "weight_bound"}


def _without(record: dict, keys) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def _train_steps(r: dict) -> list[dict]:
    """A train record's steps, one dict each (step, loss, the reference's, each drift and its bound);
    a run without a step keeps one row, its step empty."""
    losses = r.get("losses") or []
    steps = [{"step": i + 1} | {one: (r.get(many) or [])[i] if i < len(r.get(many) or []) else None
                                for many, one in TRAIN_STEP.items()} for i in range(len(losses))]
    return steps or [{"step": None}]


def frame(docs: list[dict], files: list[str] | None = None, exact: bool = False):
    """Loaded documents (bundles unpacked) as one DataFrame: see `read`. `exact` keeps the JSON's
    values as they are (object columns, None apart from a NaN error) for writers that show both."""
    import pandas as pd

    rows = _rows(docs, files or [""] * len(docs))
    if exact:
        absent = dict.fromkeys(k for row in rows for k in row)  # a record without quantities lacks their fields
        rows = [absent | row for row in rows]
    df = pd.DataFrame(rows or None, columns=None if rows else ["kind", "record", "case_id", "backend", "status"],
                      dtype=object if exact else None)
    return df[sorted(df.columns, key=lambda c: (c.startswith("case."), c.startswith("env_")))]  # stable: the case, then the run


def read(*paths):
    """Results files (verify, speed, train, and the baseline and gate-candidate bundles) as one pandas
    DataFrame: a row per verify case x backend x quantity, per speed case x backend and per train
    backend x step (`step`, `loss`, `reference_loss`, `loss_diff`, `loss_bound`, `weight_diff`, `weight_bound`).

    Columns: the record's fields (`case_id`, `backend`, `status`, `rel_err`, `median_ms`, `samples_ms`
    ...), its case definition as `case.*`, the run's environment as `env_*` (`env_backend_versions.NAME`,
    `env_contention.*`), the file's name (`file`, `bundle`), whether its run was interrupted
    (`partial`, `expected_results`, `completed_results`) and the run's options (`run_*`). `compared`
    is False where a quantity was not compared (its `rel_err` is then NaN, as a NaN error also is).
    """
    docs = load_many([Path(p) for p in paths])
    return frame(docs, [str(p) for p in paths])


def csv_text(kind: str, results: list, env: dict, doc: dict | None = None) -> str:
    """The CSV of a command's results: one frame row per record (x quantity), the JSON's values
    (of `doc`, their document, when the caller has it already)."""
    import pandas as pd

    doc = document(kind, env, results) if doc is None else doc
    labels = [{"op": r.case.op, "shape": c.shape_text, "dcn": c.variant}
              for r in results if kind != "train" for c in [r.case if kind == "verify" else r.case.bench_case()]]
    rows = frame([doc], exact=True)  # None stays empty, a NaN error prints nan
    if rows.empty:
        return "schema_version\n"
    if labels:
        rows = rows.drop(columns=["op"], errors="ignore").join(pd.DataFrame(labels), on="record")
    if kind == "speed":  # the CSV has one message column: the record's, else its measurement warnings
        rows["message"] = [m or "; ".join(w) for m, w in zip(rows.message, rows.warnings)]
    rows = rows.reindex(columns=CSV_COLUMNS[kind], fill_value="").rename(columns=CSV_NAMES)  # no quantity at all: empty
    return rows.map(lambda v: "" if v is None else v).to_csv(index=False, na_rep="nan", lineterminator="\r\n")


def write_csv(path: Path, kind: str, results: list, env: dict) -> None:
    write_text(path, csv_text(kind, results, env))


def verify_digest(r: VerifyResult) -> str:
    """A verify workload: the case and the tolerances it is judged by."""
    from dcnbench.checking.compare import TOLERANCES

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


def _train_record(r: TrainResult) -> dict:
    return asdict(r) | {"step_ms": r.step_ms}


def record(kind: str, env: dict, result) -> dict:
    """One verify, speed or train result as its document's record."""
    if kind == "verify":
        return _verify_record(result)
    if kind == "train":
        return _train_record(result)
    return _speed_record(result, env["threads"])


def document(kind: str, env: dict, results: list, extra: dict | None = None) -> dict:
    """A results document: verify, speed or train records with the schema and the environment."""
    return assemble(kind, env, [record(kind, env, r) for r in results], extra)


def assemble(kind: str, env: dict, records: list[dict], extra: dict | None = None) -> dict:
    """A results document from records already made (`record`)."""
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": kind, "environment": env,
            **(extra or {}), "records": records}


def bundle(kind: str, env: dict, parts: list[dict]) -> dict:
    """Several documents in one file (a gate baseline, a gate candidate)."""
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": kind, "environment": env, "parts": parts}


def save(path: Path, doc: dict) -> None:
    write_text(path, dumps(doc))


def write_json(path: Path, kind: str, env: dict, results: list, extra: dict | None = None) -> None:
    save(path, document(kind, env, results, extra))


def dumps(doc) -> str:
    """Strict JSON (no NaN/Infinity tokens): non-finite floats become {"nonfinite": ...}."""
    return json.dumps(_tag_nonfinite(doc), indent=1, default=str, allow_nan=False) + os.linesep


def load_text(text: str):
    """JSON text written by `dumps`, tagged non-finite floats read back as floats."""
    return json.loads(text, object_hook=_untag_nonfinite)


def _tag_nonfinite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return {"nonfinite": "nan" if value != value else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        return {k: _tag_nonfinite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tag_nonfinite(v) for v in value]
    return value


class _BareConstant(ValueError):
    """A NaN/Infinity token: not JSON, and never written by dcnbench."""


def _bare_constant(token: str):
    raise _BareConstant(token)


def _untag_nonfinite(obj: dict):
    if len(obj) == 1 and obj.get("nonfinite") in ("nan", "inf", "-inf"):
        return float(obj["nonfinite"])
    return obj


def write_text(path: Path, text: str) -> None:
    """Replace `path` atomically (a reader or a crash never sees half a file); a special file
    such as /dev/null is written as it is."""
    path = Path(path)
    if path.exists() and not path.is_file():
        with path.open("w") as fh:
            fh.write(text)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: Path, option: str) -> Path:
    """Before any work: `path` can be written (its folder exists and takes a file, it is not a folder)."""
    path = Path(path)
    hint = f"give {option} a file path in an existing, writable folder"
    if path.is_dir():
        raise ResultsFileError(f"{option} {path} is a directory, expected a file path", hint=hint)
    if not path.parent.is_dir():
        raise ResultsFileError(f"{option} {path}: the folder {path.parent} does not exist", hint=f"create it first, or {hint}")
    try:
        if path.exists() and not path.is_file():
            with path.open("a"):
                pass
        else:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise ResultsFileError(f"{option} {path} cannot be written: {exc.strerror or exc}", hint=hint) from None
    return path


class ResultsWriter:
    """A command's CSV and JSON files, rewritten as results arrive (and at the end), so Ctrl-C, a
    crash or a kill leaves valid files marked partial.

    Each rewrite holds every result so far, so it grows with the run: rewriting every `every_s`
    seconds made a 3872-row verify spend about 40 % of its time writing (profiled). So the next
    rewrite waits at least `cost_factor` times as long as the last one took, which keeps the writing
    to about 1/cost_factor of the run whatever its length; each result's record is made once."""

    def __init__(self, *, kind: str, env: dict, csv_path: Path, json_path: Path, expected: int,
                 extra: dict | None = None, every_s: float = 2.0, cost_factor: float = 20.0, clock=time.monotonic):
        self.kind, self.env, self.extra = kind, env, dict(extra or {})
        self.csv_path, self.json_path = csv_path, json_path
        self.expected, self.every_s, self.cost_factor, self.clock = expected, every_s, cost_factor, clock
        self.results: list = []
        self.records: list[dict] = []
        self._last = clock()
        self._wait = every_s

    def add(self, result) -> None:
        self.results.append(result)
        if self.clock() - self._last >= self._wait:
            self.flush(partial=True)

    def flush(self, partial: bool) -> None:
        start = self.clock()
        # The records of the results added (or assigned to `results`) since the last rewrite.
        self.records += [record(self.kind, self.env, r) for r in self.results[len(self.records):]]
        progress = {"partial": partial, "expected_results": self.expected, "completed_results": len(self.results)}
        write_text(self.csv_path, csv_text(self.kind, self.results, self.env, assemble(self.kind, self.env, self.records)))
        save(self.json_path, assemble(self.kind, self.env, self.records, self.extra | progress))
        self._last = self.clock()
        self._wait = max(self.every_s, self.cost_factor * (self._last - start))


def expand(docs: list[dict]) -> list[dict]:
    """Result documents with any bundle (a baseline, a gate candidate) unpacked into its parts."""
    out = []
    for doc in docs:
        out += doc["parts"] if "parts" in doc else [doc]
    return out


def load_many(paths: list[Path], kinds: tuple[str, ...] = KINDS + BUNDLE_KINDS) -> list[dict]:
    """Several results files (e.g. the shards of one CI matrix), each validated."""
    if not paths:
        raise ResultsFileError("no results files given", hint="pass the .json files that verify/speed wrote")
    return [load_json(p, kinds) for p in paths]


def load_json(path: Path, kinds: tuple[str, ...] = KINDS + BUNDLE_KINDS) -> dict:
    """A results file, validated down to the fields readers use; `kinds` are those the caller takes."""
    hint = "give a JSON file written by dcnbench (verify/speed --json, gate --write-baseline)"
    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8"), object_hook=_untag_nonfinite,
                         parse_constant=_bare_constant)
    except OSError as exc:
        raise ResultsFileError(f"cannot read results file '{path}': {exc.strerror or exc}", hint=hint) from None
    except UnicodeDecodeError:
        raise ResultsFileError(f"'{path}' is not a text file (not UTF-8)", hint=hint) from None
    except json.JSONDecodeError as exc:
        what = "is empty" if not exc.doc.strip() else f"is not valid JSON (truncated?): {exc.msg} at line {exc.lineno}"
        raise ResultsFileError(f"'{path}' {what}", hint=hint) from None
    except _BareConstant as exc:
        raise ResultsFileError(f"'{path}' is damaged: it holds a bare {exc} (dcnbench writes a non-finite number as "
                               '{"nonfinite": ...}, strict JSON)', hint=hint) from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultsFileError(f"'{path}' is not a dcnbench results file", hint=hint)
    if doc.get("schema_version") not in READABLE_VERSIONS:
        raise ResultsFileError(f"'{path}' has schema version {doc.get('schema_version')}, this dcnbench reads "
                               f"{', '.join(map(str, READABLE_VERSIONS))}",
                               hint="re-run the measurement with this version of dcnbench")
    problem = _shape_problem(doc)
    if problem:
        raise ResultsFileError(f"'{path}' is damaged: {problem}", hint=hint)
    if doc["kind"] not in kinds:
        raise ResultsFileError(f"'{path}' holds {doc['kind']} results, expected {' or '.join(kinds)}",
                               hint=f"give a {' or '.join(kinds)} file here")
    return _upgrade(doc)


def _shape_problem(doc: dict, nested: bool = False) -> str:
    """What is wrong with a document's structure ('' when it is usable)."""
    kind = doc.get("kind")
    if kind in BUNDLE_KINDS and not nested:
        parts = doc.get("parts")
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            return f"a {kind} file without a list of parts"
        return next((p for p in (_shape_problem(part, True) for part in parts) if p), "")
    if kind not in KINDS:
        return f"unknown kind {kind!r} (dcnbench writes {', '.join(KINDS + BUNDLE_KINDS)})"
    if not isinstance(doc.get("environment"), dict):
        return f"a {kind} document without its environment"
    records = doc.get("records")
    if not isinstance(records, list):
        return f"a {kind} document without a list of records"
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED[kind] if not isinstance(r, dict) or k not in r]
        if missing:
            return f"{kind} record {i} has no {', '.join(missing)}"
        bad = _bad_numbers(kind, r)
        if bad:
            return f"{kind} record {i} ({r.get('case_id', r.get('role'))}, {r['backend']}): {bad}"
    return ""


def _number(value, nan: bool = False) -> bool:
    """A JSON number (not a bool, not a string), non-negative; NaN only where `nan` (an error may be NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value >= 0 or (nan and value != value)


def _bad_numbers(kind: str, r: dict) -> str:
    """What is wrong with a record's numbers ('' when nothing): readers compute with them."""
    if kind == "speed":
        samples = r.get("samples_ms", [])
        if not isinstance(samples, list) or not all(_number(v) and math.isfinite(v) for v in samples):
            return f"samples_ms holds something other than finite times >= 0: {samples!r:.80}"
        fields = ("median_ms", "iqr_ms", "min_ms", "ratio_to_baseline", "gflops", "peak_bytes")
    elif kind == "train":
        # A diverging run's loss (and so its drift) may be NaN or infinite; a damaged one is not a number.
        for key in ("losses", "loss_diff", "loss_bound", "weight_diff", "weight_bound"):
            values = r.get(key, [])
            if not isinstance(values, list) or not all(_number(v, nan=True) for v in values):
                return f"{key} holds something other than numbers >= 0: {values!r:.80}"
        fields = ("forward_ms", "backward_ms", "optimizer_ms", "step_ms")
    else:
        quantities = r.get("quantities")
        if not isinstance(quantities, list) or not all(isinstance(q, dict) for q in quantities):
            return "quantities is not a list of objects"
        for q in quantities:
            for key in ("rel_err", "max_abs_err", "tolerance"):
                if q.get(key) is not None and not _number(q[key], nan=key != "tolerance"):
                    return f"{q.get('quantity')}'s {key} is not a number >= 0: {q[key]!r:.40}"
        fields = ("elapsed_s",)
    for key in fields:
        if r.get(key) is not None and not _number(r[key], nan=key == "ratio_to_baseline"):
            return f"{key} is not a number >= 0: {r[key]!r:.40}"
    return ""


def partial_note(docs: list[dict]) -> str:
    """One line naming the documents that hold only part of their run ('' when none)."""
    parts = [d for d in expand(docs) if d.get("partial")]
    return "; ".join(f"partial {d['kind']} run: {d.get('completed_results', len(d['records']))} of "
                     f"{d.get('expected_results', '?')} results" for d in parts)


def worst(values) -> float | None:
    """The largest of some errors, a NaN counting as the worst of all (max() would drop it)."""
    found = None
    for v in values:
        if v is None:
            continue
        if v != v:
            return math.nan
        found = v if found is None else max(found, v)
    return found


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
