import csv
import json

import pytest

from dcnbench.errors import ResultsFileError
from dcnbench.backends import get
from dcnbench.results import SCHEMA_VERSION, environment, load_json, write_csv, write_json
from dcnbench.timing.speed import SpeedCase, run_speed
from dcnbench.checking.verify import default_suite
from dcnbench.checking.verify import run_verify
from dcnbench.ops.deform_conv2d.contract import parse_shape
from tests.conftest import invoke

ENV_KEYS = {"dcnbench_version", "git_commit", "timestamp", "torch_version", "torchvision_version",
            "backend_versions", "device", "device_name", "cpu_model", "threads", "seed"}


@pytest.fixture(scope="module")
def verified():
    cases = [c for c in default_suite() if c.case_id in ("v2/float64", "v2/bfloat16")]
    backends = [get("pytorch"), get("torchvision")]
    return run_verify(backends=backends, cases=cases), environment(device="cpu", seed=0, backends=backends)


def test_environment_metadata(verified):
    _, env = verified
    assert ENV_KEYS <= set(env)
    assert env["backend_versions"]["torchvision"]


def test_verify_csv_has_a_row_per_case_backend_quantity(verified, tmp_path):
    results, env = verified
    path = tmp_path / "v.csv"
    write_csv(path, "verify", results, env)
    rows = list(csv.DictReader(path.open()))
    expected = sum(max(1, len(r.quantities)) for r in results)
    assert len(rows) == expected
    assert {r["schema_version"] for r in rows} == {str(SCHEMA_VERSION)}
    assert {"case_id", "backend", "quantity", "status", "rel_err", "max_abs_err", "tolerance", "env_git_commit",
            "env_cpu_model", "env_threads"} <= set(rows[0])
    unsupported = [r for r in rows if r["status"] == "unsupported"]
    assert len(unsupported) == 1 and unsupported[0]["quantity"] == ""


def test_verify_json_round_trips(verified, tmp_path):
    results, env = verified
    path = tmp_path / "v.json"
    write_json(path, "verify", env, results)
    doc = load_json(path)
    assert doc["kind"] == "verify" and ENV_KEYS <= set(doc["environment"])
    assert len(doc["records"]) == len(results)
    assert doc["records"][0]["quantities"][0]["quantity"] == "output"


def test_speed_json_keeps_raw_samples(tmp_path):
    backends = [get("pytorch"), get("conv2d")]
    results = run_speed(backends=backends, cases=[SpeedCase(parse_shape("1,4,8,8:4,3,3"))], repeat=3, warmup_s=0,
                        measure_memory=False)
    env = environment(device="cpu", seed=0, backends=backends)
    write_json(tmp_path / "s.json", "speed", env, results)
    doc = load_json(tmp_path / "s.json")
    assert [len(r["samples_ms"]) for r in doc["records"]] == [3, 3]
    write_csv(tmp_path / "s.csv", "speed", results, env)
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["backend"] for r in rows] == ["pytorch", "conv2d"] and rows[1]["ratio_to_baseline"] == "1.0"


def test_unknown_schema_is_a_clear_error(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"schema": "dcnbench-results", "schema_version": 999, "records": []}))
    with pytest.raises(ResultsFileError, match="schema version 999"):
        load_json(path)
    path.write_text("{}")
    with pytest.raises(ResultsFileError, match="not a dcnbench results file"):
        load_json(path)
    with pytest.raises(ResultsFileError, match="cannot read"):
        load_json(tmp_path / "missing.json")


def test_malformed_numbers_are_a_damaged_file_not_a_report(tmp_path):
    # Readers compute with the samples: a bare NaN token (not JSON), a string or a negative time is a
    # damaged file (exit 2 from `report`), where it used to be accepted.
    backends = [get("pytorch"), get("conv2d")]
    results = run_speed(backends=backends, cases=[SpeedCase(parse_shape("1,4,8,8:4,3,3"))], repeat=3, warmup_s=0,
                        measure_memory=False)
    write_json(tmp_path / "s.json", "speed", environment(device="cpu", seed=0, backends=backends), results)
    good = (tmp_path / "s.json").read_text()
    assert load_json(tmp_path / "s.json")
    sample = json.loads(good)["records"][0]["samples_ms"][0]
    for bad, match in (("NaN", "bare NaN"), ('"fast"', "samples_ms"), ("-1.5", "samples_ms")):
        path = tmp_path / "bad.json"
        path.write_text(good.replace(f"{sample!r}", bad, 1))
        with pytest.raises(ResultsFileError, match=match):
            load_json(path)
        out = invoke("report", str(path), "-o", str(tmp_path / "r"))
        assert out.returncode == 2 and "is damaged" in out.stderr and "Traceback" not in out.stderr, out.stderr
