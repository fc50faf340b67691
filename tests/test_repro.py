"""Repro bundles: `verify --save-failures` writes them, `dcnbench repro` re-fails them, and plain torch reads them."""

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import PLANTED, invoke

SWAPPED = f"{PLANTED}:swapped_offsets"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A planted bug's failures on a contiguous and a non-contiguous case, saved as bundles."""
    out = tmp_path_factory.mktemp("repro")
    r = invoke("verify", "--impl", SWAPPED, "--dtype", "float64", "--case", "v2/", "--case", "noncontiguous",
               "--save-failures", str(out / "bundles"), "--json", str(out / "v.json"), "--csv", str(out / "v.csv"))
    assert r.returncode == 1
    return out, r.stdout


def test_one_bundle_per_failing_case_and_a_command_for_each(bundles):
    out, stdout = bundles
    records = json.loads((out / "v.json").read_text())["records"]
    failing = [rec for rec in records if rec["status"] == "fail"]
    pts = sorted((out / "bundles").glob("*.pt"))
    assert len(failing) >= 2 and len(pts) == len(failing) == len(list((out / "bundles").glob("*.json")))
    for pt in pts:
        assert f"dcnbench repro {pt}" in stdout
    meta = json.loads(pts[0].with_suffix(".json").read_text())
    assert meta["backend"] == "swapped_offsets" and meta["impl"].endswith("planted_bugs.py:swapped_offsets")
    assert {"op", "signature", "call", "case", "seed", "dtype", "tolerances", "failing", "environment", "command"} <= set(meta)
    assert meta["failing"] and all(q["rel_err"] > q["tolerance"] for q in meta["failing"] if q["rel_err"] is not None)


def test_a_bundle_loads_and_replays_by_hand_without_dcnbench(bundles):
    out, _ = bundles
    pt = next(p for p in (out / "bundles").glob("*.pt") if "noncontiguous" not in p.name)
    # What a kernel maintainer would write: plain torch, the documented layout, their own kernel.
    script = textwrap.dedent(f"""
        import sys, torch
        from torchvision.ops import deform_conv2d
        b = torch.load({str(pt)!r}, weights_only=True)
        t, call = b["inputs"], b["meta"]["call"]
        arg = lambda v: t[v["tensor"]] if isinstance(v, dict) else (tuple(v) if isinstance(v, list) else v)
        out = deform_conv2d(*[arg(a) for a in call["args"]], **{{k: arg(v) for k, v in call["kwargs"].items()}})
        exp = b["expected"]["output"]
        err = float((out.double() - exp).norm() / exp.norm())
        assert err <= b["meta"]["tolerances"]["output"], err
        assert not any(m.startswith("dcnbench") for m in sys.modules)
        print("ok", err)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_repro_re_fails_with_the_recorded_errors(bundles):
    out, _ = bundles
    for pt in sorted((out / "bundles").glob("*.pt")):
        meta = json.loads(pt.with_suffix(".json").read_text())
        r = invoke("repro", str(pt), "--in-process")
        assert r.returncode == 1, r.stdout
        assert "inputs: the bundle's tensors" in r.stdout and "now: fail" in r.stdout
        for q in meta["failing"]:
            line = next(x for x in r.stdout.splitlines() if x.strip().startswith(q["quantity"] + " "))
            # A non-finite mismatch has no relative error (rel_err None): its line still fails.
            assert q["rel_err"] is None or f"{q['rel_err']:.2e}" in line
            assert "FAIL" in line


def test_repro_with_a_fixed_kernel_passes_and_json_works_too(bundles, tmp_path):
    out, _ = bundles
    fixed = tmp_path / "fixed.py"
    fixed.write_text("from torchvision.ops import deform_conv2d\n")
    for pt in sorted((out / "bundles").glob("*.pt")):
        r = invoke("repro", str(pt.with_suffix(".json")), "--impl", f"{fixed}:deform_conv2d", "--in-process")
        assert r.returncode == 0, r.stdout
        assert "now: pass" in r.stdout and "FAIL" not in r.stdout


def test_bad_bundles_are_usage_errors(tmp_path):
    r = invoke("repro", str(tmp_path / "missing.pt"))
    assert r.returncode == 2 and "error: repro bundle" in r.stderr and "hint:" in r.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a bundle")
    r = invoke("repro", str(junk))
    assert r.returncode == 2 and "cannot read repro bundle" in r.stderr
    r = invoke("verify", "--save-failures", str(junk), "--case", "v2/float64", "--backend", "pytorch")
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr


def test_no_failure_no_bundle(tmp_path):
    r = invoke("verify", "--backend", "pytorch", "--case", "v2/float64", "--save-failures", str(tmp_path / "b"),
               "--json", str(tmp_path / "v.json"), "--csv", str(tmp_path / "v.csv"))
    assert r.returncode == 0 and "no failing result" in r.stdout and not list(tmp_path.glob("b/*"))


FAULTS = PLANTED.with_name("faults.py")


def test_a_kernel_that_exits_or_hangs_is_a_failure_never_a_fix(bundles):
    # It used to exit 0 (the kernel's sys.exit(0), or dcnbench's process taken over by sys.exit/os._exit):
    # a still-failing kernel reported as fixed. Now the plugin runs in a worker, with a time limit.
    out, _ = bundles
    pt = next(p for p in sorted((out / "bundles").glob("*.pt")) if "float64" in p.name)
    r = invoke("repro", str(pt), "--impl", f"{FAULTS}:sys_exits")
    assert r.returncode == 1 and "now: error" in r.stdout and "died (exit status 3)" in r.stdout, (r.stdout, r.stderr)
    assert "a fresh one" not in r.stdout  # nothing comes next: the message says what happened only
    # A hang is bounded by --timeout, as in verify (benchmarks/replay_probes.sh replays one: it takes the limit).
    r = invoke("repro", str(pt), "--timeout", "0")
    assert r.returncode == 2 and "--timeout=0" in r.stderr
    r = invoke("repro", str(pt), "--impl", f"{FAULTS}:sys_exits", "--in-process")  # its exit is not dcnbench's
    assert r.returncode == 1 and "the kernel called sys.exit(3)" in r.stdout, r.stdout


def test_a_kernel_that_now_declines_the_case_is_not_a_fix(bundles, tmp_path):
    out, _ = bundles
    pt = next(p for p in sorted((out / "bundles").glob("*.pt")) if "float64" in p.name)
    fixed = tmp_path / "declines.py"
    fixed.write_text("from torchvision.ops import deform_conv2d as tv\n"
                     "def kernel(*args, **kwargs):\n    return tv(*args, **kwargs)\n"
                     "kernel.dcnbench_dtypes = ('float32',)\n")
    r = invoke("repro", str(pt), "--impl", f"{fixed}:kernel", "--in-process")
    assert r.returncode == 1 and "now: unsupported" in r.stdout, r.stdout


def test_a_bundle_of_an_unknown_operator_is_blamed_on_the_bundle(bundles, tmp_path):
    import torch

    out, _ = bundles
    bundle = torch.load(next((out / "bundles").glob("*.pt")), weights_only=True)
    bundle["meta"]["op"] = "deform_conv3d"
    torch.save(bundle, tmp_path / "other.pt")
    r = invoke("repro", str(tmp_path / "other.pt"))
    assert r.returncode == 2 and "of operator 'deform_conv3d', which this dcnbench does not know" in r.stderr, r.stderr
    assert "plugin" not in r.stderr.splitlines()[0]
