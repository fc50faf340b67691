"""`dcnbench.results.read`: every results kind as one pandas DataFrame (hand-written documents)."""

import csv
import math

import pytest

from dcnbench import results
from dcnbench.errors import ResultsFileError


def _env(cpu: str) -> dict:
    return {"dcnbench_version": "0.1.0", "git_commit": "abc", "timestamp": "2026-01-01T00:00:00+00:00",
            "torch_version": "2.9", "torchvision_version": "0.24", "backend_versions": {"torchvision": "0.24"},
            "device": "cpu", "device_name": cpu, "cpu_model": cpu, "threads": 2, "seed": 0}


def _q(name, rel_err, ok=True):
    return {"quantity": name, "rel_err": rel_err, "max_abs_err": rel_err, "tolerance": 1e-6, "ok": ok, "note": "",
            "reference": "Z", "unsupported": ""}


def _verify(cpu="AMD", partial=None) -> dict:
    records = [{"case_id": "v2/float32", "case": {"dtype": "float32"}, "case_digest": "d1", "backend": "torchvision",
                "status": "fail", "message": "", "quantities": [_q("output", 1e-8), _q("grad_input", math.nan, False)]},
               {"case_id": "v2/bfloat16", "case": {"dtype": "bfloat16"}, "case_digest": "d2", "backend": "torchvision",
                "status": "unsupported", "message": "no bfloat16 kernel", "quantities": []}]
    extra = {} if partial is None else {"partial": partial, "expected_results": 4, "completed_results": 2}
    return {"schema": results.SCHEMA, "schema_version": 2, "kind": "verify", "environment": _env(cpu), **extra,
            "records": records}


def _speed(cpu="AMD") -> dict:
    records = [{"case_id": f"w/{b}", "op": "deform_conv2d", "case": {"direction": "fwd"}, "case_digest": "s1", "backend": b,
                "status": "ok", "samples_ms": [3.0, 1.0, 2.0], "median_ms": 2.0, "iqr_ms": 1.0, "baseline": "conv2d",
                "ratio_to_baseline": r} for b, r in (("torchvision", 2.5), ("conv2d", 1.0))]
    return {"schema": results.SCHEMA, "schema_version": 2, "kind": "speed", "environment": _env(cpu), "baseline": "conv2d",
            "records": records}


@pytest.fixture
def files(tmp_path):
    paths = {"verify": tmp_path / "v.json", "speed": tmp_path / "s.json", "partial": tmp_path / "p.json",
             "baseline": tmp_path / "b.json"}
    results.save(paths["verify"], _verify())
    results.save(paths["speed"], _speed(cpu="Intel"))
    results.save(paths["partial"], _verify(partial=True))
    results.save(paths["baseline"], results.bundle("baseline", _env("AMD"), [_verify(), _speed()]))
    return paths


def test_verify_a_row_per_case_backend_quantity(files):
    df = results.read(files["verify"])
    assert list(zip(df.case_id, df.quantity.fillna("-"))) == [("v2/float32", "output"), ("v2/float32", "grad_input"),
                                                               ("v2/bfloat16", "-")]
    assert set(df.kind) == {"verify"} and df.record.tolist() == [0, 0, 1]
    # A NaN error is compared (and NaN); a record without quantities has nothing compared.
    assert df.compared.tolist() == [True, True, False]
    assert df.rel_err[0] == 1e-8 and math.isnan(df.rel_err[1]) and df["case.dtype"].tolist()[-1] == "bfloat16"


def test_speed_a_row_per_case_backend(files):
    df = results.read(files["speed"])
    assert df.backend.tolist() == ["torchvision", "conv2d"] and set(df.kind) == {"speed"}
    assert df.ratio_to_baseline.tolist() == [2.5, 1.0] and df.min_ms.tolist() == [1.0, 1.0]
    assert df.samples.tolist() == [3, 3] and df.samples_ms[0] == [3.0, 1.0, 2.0]
    assert df.run_baseline.tolist() == ["conv2d", "conv2d"] and df["case.direction"].tolist() == ["fwd", "fwd"]


def test_bundles_unpack_into_both_kinds(files):
    df = results.read(files["baseline"])
    assert df.groupby("kind").size().to_dict() == {"speed": 2, "verify": 3}
    assert set(df.bundle) == {"baseline"} and set(df.file) == {str(files["baseline"])}


def test_partial_files_are_flagged(files):
    df = results.read(files["verify"], files["partial"])
    assert df.groupby("file").partial.all().to_dict() == {str(files["verify"]): False, str(files["partial"]): True}
    assert df[df.partial].completed_results.unique().tolist() == [2]


def test_each_row_carries_its_own_run_environment(files):
    df = results.read(files["verify"], files["speed"])
    assert df.groupby("kind").env_cpu_model.unique().map(list).to_dict() == {"speed": ["Intel"], "verify": ["AMD"]}
    assert {"env_git_commit", "env_threads", "env_torch_version", "env_backend_versions.torchvision"} <= set(df.columns)
    assert set(df["env_backend_versions.torchvision"]) == {"0.24"}


def test_read_refuses_what_load_json_refuses(tmp_path):
    with pytest.raises(ResultsFileError, match="no results files"):
        results.read()
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ResultsFileError, match="not a dcnbench results file"):
        results.read(tmp_path / "x.json")


def test_csv_of_results_without_any_quantity(tmp_path):
    # Every case unsupported: the quantity columns exist all the same, empty.
    from dcnbench.status import Status
    from dcnbench.checking.verify import VerifyResult, default_suite

    case = default_suite()[0]
    env = _env("AMD") | {"python_version": "3.11"}
    results.write_csv(tmp_path / "v.csv", "verify", [VerifyResult(case, "onnxruntime", Status.UNSUPPORTED, message="no")], env)
    (fields,) = csv.DictReader((tmp_path / "v.csv").open())
    assert fields["status"] == "unsupported" and fields["message"] == "no"
    assert [fields[k] for k in ("quantity", "ok", "rel_err", "tolerance")] == ["", "", "", ""]


def test_report_and_gate_of_a_run_without_any_quantity(tmp_path):
    # Every case unsupported (e.g. the export cases of a backend that cannot export): no error columns at all.
    from dcnbench.results import gate
    from dcnbench.results import report
    doc = _verify()
    doc["records"] = [dict(r, status="unsupported", quantities=[]) for r in doc["records"]]
    md = report.to_markdown(report.build([doc]), "t")
    assert "| torchvision | not verified |" not in md and "| torchvision | correct | 0 | 0 | 0 | 0 | 2 | 0 | – |" in md
    assert gate.compare_correctness([_verify()], [doc]) == ([], [], 0)


def _train() -> dict:
    run = {"backend": "ext", "status": "fail", "message": "diverged", "rule": "Z", "dtype": "float32", "role": "backend",
           "losses": [2.3, 2.2, 2.5], "reference_losses": [2.3, 2.2, 2.1], "loss_diff": [0.0, 1e-7, 0.4],
           "loss_bound": [1e-6, 1e-6, 1e-6], "weight_diff": [1e-8, 2e-8], "weight_bound": [1e-6, 1e-6],
           "first_failing_step": 3, "settings": {"dcn": "v1"}, "step_ms": 4.0}
    crashed = run | {"status": "error", "losses": [], "reference_losses": [], "loss_diff": [], "loss_bound": [],
                     "weight_diff": [], "weight_bound": [], "first_failing_step": None}
    return {"schema": results.SCHEMA, "schema_version": 2, "kind": "train", "environment": _env("AMD"),
            "records": [run, crashed]}


def test_train_a_row_per_backend_step(tmp_path):
    results.save(tmp_path / "t.json", _train())
    df = results.read(tmp_path / "t.json")
    assert df.record.tolist() == [0, 0, 0, 1]  # three steps, and one row for the run that took none
    assert df.step.tolist()[:3] == [1, 2, 3] and math.isnan(df.step.tolist()[3])
    assert df.loss.tolist()[:3] == [2.3, 2.2, 2.5] and df.loss_diff[2] == 0.4
    # A list shorter than the losses (weights compared at fewer steps) leaves the later steps empty.
    assert df.weight_diff[1] == 2e-8 and math.isnan(df.weight_diff[2])
    assert df["settings.dcn"].tolist() == ["v1"] * 4 and set(df.env_cpu_model) == {"AMD"}


def test_the_writer_rewrites_less_often_as_its_files_grow(tmp_path, monkeypatch):
    # Every rewrite holds all the results so far: rewriting every 2 s whatever a rewrite costs made a
    # 3872-row verify spend ~40 % of its time writing. A rewrite that takes `cost` seconds is followed
    # by at least cost_factor * cost seconds of running; each result's record is made once.
    from dcnbench.results import files
    from dcnbench.status import Status
    from dcnbench.checking.verify import VerifyResult, default_suite

    now = [0.0]
    real_write, made = files.write_text, []
    real_record = files.record

    def slow_write(path, text):  # a rewrite costs 0.01 s per result in it
        now[0] += 0.01 * (text.count("\n") if str(path).endswith(".csv") else 0)
        real_write(path, text)

    monkeypatch.setattr(files, "write_text", slow_write)
    monkeypatch.setattr(files, "record", lambda *a: made.append(a[2]) or real_record(*a))
    case = default_suite()[0]
    writer = files.ResultsWriter(kind="verify", env=_env("AMD") | {"python_version": "3.11"}, csv_path=tmp_path / "v.csv",
                                 json_path=tmp_path / "v.json", expected=400, every_s=2.0, cost_factor=20.0,
                                 clock=lambda: now[0])
    flushes = []
    for i in range(400):
        now[0] += 0.5  # each result takes half a second
        before = now[0]
        writer.add(VerifyResult(case, f"b{i}", Status.UNSUPPORTED, message="no"))
        if now[0] != before:
            flushes.append((before, now[0]))
    writer.flush(partial=False)
    for (start, end), (nxt, _) in zip(flushes, flushes[1:]):
        assert nxt - end >= 20.0 * (end - start) - 0.5, flushes  # the wait follows the last rewrite's cost
    assert 3 <= len(flushes) <= 12  # a fixed 2 s interval: ~100 rewrites; growing costs: ~log-many
    assert len(made) == 400 and len(results.load_json(tmp_path / "v.json")["records"]) == 400
