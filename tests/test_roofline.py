"""The roofline: each op's least work per call (worked out by hand here), the machine probe and its
cache, and `speed --roofline`'s column."""

import json
from dataclasses import asdict

import pytest

from dcnbench.timing import roofline
from dcnbench.ops.dcnv3.contract import parse_shape as dcnv3_shape
from dcnbench.ops.dcnv4.contract import parse_shape as dcnv4_shape
from dcnbench.ops.deform_conv2d.contract import ConvGeometry
from tests.conftest import invoke

MACHINE = roofline.Machine(cpu=roofline.cpu_model(), threads=1, bandwidth_gb_s=10.0, peak_gflop_s=100.0,
                           load_average=0.0, probed_at="2026-01-01 00:00")


def test_deform_conv2d_work_by_hand():
    # N=2, C=4, 5x5 map, O=6, 3x3 kernel, pad 1 (Ho=Wo=5, L=25, K=9), groups 2, offset groups 2.
    geo = ConvGeometry(n=2, c=4, h=5, w=5, o=6, kh=3, kw=3, padding=(1, 1), groups=2, offset_groups=2)
    gemm = 2 * 2 * 6 * 2 * 9 * 25  # 2 N O (C/groups) K L
    sample = 8 * 2 * 4 * 9 * 25  # four multiply-adds per sampled value, N C K L of them
    x, y, weight, bias = 2 * 4 * 25, 2 * 6 * 25, 6 * 2 * 9, 6
    offsets, mask = 2 * 2 * 2 * 9 * 25, 2 * 2 * 9 * 25
    assert geo.work("fwd", 4) == (gemm + sample, 4 * (x + offsets + mask + weight + bias + y))
    assert geo.work("fwd", 4, mask=False) == (gemm + sample, 4 * (x + offsets + weight + bias + y))
    assert geo.work("bwd", 8) == (2 * gemm + 4 * sample, 8 * (y + 2 * (x + offsets + mask + weight) + bias))
    fwd, bwd = geo.work("fwd", 4), geo.work("bwd", 4)
    assert geo.work("fwdbwd", 4) == (fwd[0] + bwd[0], fwd[1] + bwd[1])


def test_dcnv3_and_dcnv4_work_by_hand():
    # N=1, 4x4 map, G=2 groups of D=8 channels, 3x3 kernel "same": Q = 16 positions, P = 9 points.
    v3 = dcnv3_shape("1,4,4,2,8:3,3")
    q, c, p = 16, 16, 9
    assert v3.work("fwd", 4) == (8 * q * c * p, 4 * (16 * c + q * 2 * p * 3 + q * c))
    assert v3.work("bwd", 2) == (16 * q * c * p, 2 * (q * c + 2 * (16 * c + q * 2 * p * 3)))
    # DCNv4 reads the same values (its padding lanes are never read): the same least work.
    assert dcnv4_shape("1,4,4,2,8:3,3").work("fwdbwd", 4) == v3.work("fwdbwd", 4)


def test_the_bound_is_the_higher_roof():
    assert MACHINE.bound_ms(100e9, 1) == pytest.approx(1000.0)  # 100 GFLOP at 100 GFLOP/s
    assert MACHINE.bound_ms(1, 10e9) == pytest.approx(1000.0)  # 10 GB at 10 GB/s
    assert MACHINE.bound_by(1, 10e9) == "memory" and MACHINE.bound_by(100e9, 1) == "compute"
    # dcnv4-bench's first shape moves ~0.3 GB for ~2 GFLOP: memory-bound; dcn-56 is compute-bound.
    assert MACHINE.bound_by(*dcnv4_shape("64,56,56,4,32:3,3").work("fwd", 4)) == "memory"
    assert MACHINE.bound_by(*ConvGeometry(8, 64, 56, 56, 64, 3, 3, padding=(1, 1)).work("fwd", 4)) == "compute"


def test_the_probe_is_cached_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("DCNBENCH_ROOFLINE_DIR", str(tmp_path))
    monkeypatch.setattr(roofline, "STREAM_BYTES", 1 << 20)  # a small probe: the rates are not the point here
    monkeypatch.setattr(roofline, "GEMM_N", 64)
    calls = []
    real = roofline.probe
    monkeypatch.setattr(roofline, "probe", lambda threads: calls.append(threads) or real(threads, runs=2))
    first = roofline.machine(1)
    assert calls == [1] and first.bandwidth_gb_s > 0 and first.peak_gflop_s > 0 and first.threads == 1
    assert roofline.machine(1) == first and calls == [1]  # read back, not probed again
    roofline.machine(2)
    assert calls == [1, 2]  # another thread count is another probe
    assert [m.threads for m in roofline.cached()] == [1, 2]
    roofline.cache_path(1).write_text("{broken")
    roofline.machine(1)
    assert calls == [1, 2, 1]  # a damaged file is probed again, not trusted


def test_speed_shows_the_percent_of_the_bound(tmp_path, monkeypatch):
    monkeypatch.setenv("DCNBENCH_ROOFLINE_DIR", str(tmp_path))
    roofline.cache_path(1).parent.mkdir(parents=True, exist_ok=True)
    roofline.cache_path(1).write_text(json.dumps(asdict(MACHINE)))  # a cached probe: none runs
    out = tmp_path / "s.json"
    import torch

    threads = torch.get_num_threads()  # speed --threads sets torch's count in this process
    try:
        r = invoke("speed", "--shape", "1,4,8,8:4,3,3", "--backend", "pytorch", "--direction", "fwd", "--threads", "1",
                   "--repeat", "2", "--warmup", "0", "--no-memory", "--roofline", "--json", str(out), "--csv",
                   str(tmp_path / "s.csv"))
    finally:
        torch.set_num_threads(threads)
    assert r.returncode == 0, r.stdout
    assert "% bound" in r.stdout and "roofline: 10.0 GB/s memory, 100 GFLOP/s" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["roofline"]["bandwidth_gb_s"] == 10.0
    rows = {rec["backend"]: rec for rec in doc["records"]}
    flops, nbytes = ConvGeometry(1, 4, 8, 8, 4, 3, 3, padding=(1, 1)).work("fwd", 4)
    shown = 100 * MACHINE.bound_ms(flops, nbytes) / rows["pytorch"]["median_ms"]
    assert f"{shown:.0f}%" in r.stdout


def test_the_peak_is_the_faster_of_torchs_two_gemms(monkeypatch):
    # MKL's GEMM made 10 ms slower: the peak must come from oneDNN's (AMD CPUs with AVX-512 run MKL's
    # AVX2 path at half oneDNN's rate, and a bound from MKL alone put conv2d at 190 % of it).
    import time

    import torch

    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.setattr(roofline, "STREAM_BYTES", 1 << 20)
    monkeypatch.setattr(roofline, "GEMM_N", 64)
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: time.sleep(0.01) or real_mm(*a, **k))
    slow_mkl_gflop_s = 2 * 64 ** 3 / 0.01 / 1e9
    assert roofline.probe(1, runs=2).peak_gflop_s > 10 * slow_mkl_gflop_s
