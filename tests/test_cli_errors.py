"""Bad input as a careless user gives it: one `error:` line naming the culprit, one `hint:` line, exit 2,
no traceback and no box. (Replays of the probes in issue 20; benchmarks/replay_probes.sh has the rest.)"""

import os
import sys

import pytest

from dcnbench.backends import get
from tests.conftest import invoke, run_cli

NULL = ("--json", os.devnull, "--csv", os.devnull)


def _usage(out, *words):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert [ln.split(":")[0] for ln in lines] == ["error", "hint"], out.stderr
    assert all(w in out.stderr for w in words), (words, out.stderr)
    assert "Traceback" not in out.stderr and "╭" not in out.stderr


@pytest.mark.parametrize("args,words", [
    (("verify", "--fuz", "3"), ("no such option", "--fuz", "did you mean --fuzz")),
    (("speed", "--repeat", "abc"), ("--repeat 'abc' is not an integer", "give --repeat an integer")),
    (("gate", "--factor", "x"), ("--factor 'x' is not a number",)),
    (("speed", "--warmup"), ("--warmup needs a value",)),
    (("report",), ("report needs FILES",)),
    (("verfy",), ("no such command 'verfy'", "did you mean 'verify'")),
])
def test_clicks_own_usage_errors_read_like_every_other(args, words):
    _usage(invoke(*args), *words)


def test_the_entry_point_prints_them_the_same_way():
    _usage(run_cli("speed", "--repeat", "abc"), "--repeat 'abc' is not an integer")


def test_an_ext_build_dir_that_cannot_be_used_makes_ext_unavailable_with_the_reason(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    for where, why in ((tmp_path / "file", "is a file, not a folder"), ("/proc/none/ext", "cannot be created")):
        monkeypatch.setenv("DCNBENCH_EXT_BUILD_DIR", str(where))
        assert get("ext").check().startswith(f"DCNBENCH_EXT_BUILD_DIR={where} {why}")
        listed = invoke("backends")  # lists it (no traceback, no build), as unavailable
        assert listed.returncode == 0 and "unavailable" in listed.stdout and "DCNBENCH_EXT_BUILD_DIR" in listed.stdout
        _usage(invoke("verify", "--backend", "ext", "--case", "v2/float64", *NULL), "DCNBENCH_EXT_BUILD_DIR", why)
        # Not skipped when it is a default backend either: the user's own setting is broken.
        _usage(invoke("verify", "--case", "v2/float64", "--op", "deform_conv2d", *NULL), "DCNBENCH_EXT_BUILD_DIR")


@pytest.mark.parametrize("value", ["0", "-4096", "lots"])
def test_a_column_budget_that_is_not_positive_is_refused(monkeypatch, value):
    monkeypatch.setenv("DCNBENCH_EXT_COLUMN_BUDGET", value)
    _usage(invoke("verify", "--backend", "ext", "--case", "v2/float64", *NULL), f"DCNBENCH_EXT_COLUMN_BUDGET='{value}'")


def test_an_interpreter_variable_pointing_nowhere_is_named(monkeypatch):
    monkeypatch.setenv("DCNBENCH_MXNET_PYTHON", "/nonexistent")
    _usage(invoke("verify", "--case", "v2/float64", *NULL), "DCNBENCH_MXNET_PYTHON=/nonexistent", "unset it")
    monkeypatch.setenv("DCNBENCH_MXNET_PYTHON", sys.executable)  # a python, without mxnet
    _usage(invoke("verify", "--backend", "mxnet", *NULL), "DCNBENCH_MXNET_PYTHON", "has no mxnet")
    assert "DCNBENCH_MXNET_PYTHON" in invoke("backends").stdout


def test_a_worker_start_up_timeout_hints_at_the_limit_to_raise(monkeypatch):
    import dcnbench.backends.paddle as pdb

    def fresh():  # no worker started (or checked) by an earlier test in this process
        pdb.check.cache_clear()
        if pdb._worker._client is not None:
            pdb._worker._client.close()
        pdb._worker._client, pdb._worker._checked = None, None

    monkeypatch.setenv("DCNBENCH_PADDLE_TIMEOUT", "0.001")
    fresh()
    try:
        _usage(invoke("verify", "--backend", "paddle", *NULL), "timed out", "DCNBENCH_PADDLE_TIMEOUT")
    finally:
        fresh()


def test_the_summary_is_readable_at_any_width(tmp_path):
    out = run_cli("verify", "--backend", "pytorch", "--case", "v2/float64", *NULL, env_extra={"COLUMNS": "10"})
    lines = [ln for ln in out.stdout.splitlines() if "covering-array cases" not in ln]  # the suite's own lines first
    assert out.returncode == 0 and lines[0] == "summary"
    assert lines[1].startswith("backend: pytorch, pass: ") and lines[1].endswith(", unsupported: 0, error: 0")
