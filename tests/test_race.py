"""The race check (backends/ext/race.py): ThreadSanitizer over ext's CUDA kernels emulated on several
OS threads finds no race, in either backward mode; and it does find one planted in a copy of the
kernels made here (one atomicAdd turned into `+=`), so a clean run means something.

Both builds are cached by a hash of their sources (first build about two minutes)."""

import re
import shutil

import pytest

from dcnbench.backends.ext import build, race


@pytest.fixture(scope="module")
def clean_runs():
    return race.check(build.ensure(race.target()))


def test_the_emulated_kernels_have_no_data_race(clean_runs):
    assert len(clean_runs) == len(race.MODES) * len(race.SETTINGS)
    for r in clean_runs:
        assert r.returncode == 0 and r.reports == 0, r.log[-3000:]
        # every kernel ran, on 4 OS threads
        assert set(r.ran) == {f"{op}_{d}" for op in ("deform_conv2d", "roi_pool", "psroi_pool", "ms_deform_attn")
                              for d in ("forward", "backward")}


def plant_race(csrc, dest):
    """A copy of csrc/ whose col2im_atomic_kernel adds with `+=` instead of atomicAdd."""
    shutil.copytree(csrc, dest)
    path = dest / "cuda" / "deform_conv2d.cu"
    text, n = re.subn(r"atomicAdd\(gin \+ q\.idx\[j\], (q\.w\[j\] \* gv)\);", r"gin[q.idx[j]] += \1;  // planted race",
                      path.read_text())
    assert n == 1, "the planted race no longer matches deform_conv2d.cu's col2im_atomic_kernel"
    path.write_text(text)
    return dest


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    csrc = plant_race(build.CSRC, tmp_path_factory.mktemp("planted") / "csrc")
    # Only the kernel file with the plant: the build is then a minute shorter.
    return build.ensure(race.target(csrc, cuda_files=("deform_conv2d.cu",), name="dcnbench_race_planted"))


def test_a_planted_race_is_reported_with_the_kernel_and_line(planted):
    r = race.run(planted, "atomic", {"DCNBENCH_EMU_THREADS": "4"})
    assert r.returncode == race.TSAN_EXIT and r.reports >= 1, r.log[-3000:]
    assert any("data race" in s and "deform_conv2d.cu" in s and "col2im_atomic_kernel" in s for s in r.summaries), r.summaries


def test_the_planted_race_needs_concurrency_and_the_atomic_kernel(planted):
    # One OS thread runs the blocks one after another: nothing to report. Deterministic mode does
    # not launch the planted kernel. So the reports above come from the concurrent `+=`.
    for mode, knobs in (("atomic", {"DCNBENCH_EMU_THREADS": "1"}), ("deterministic", {"DCNBENCH_EMU_THREADS": "4"})):
        r = race.run(planted, mode, knobs)
        assert r.returncode == 0 and r.reports == 0 and "deform_conv2d_backward" in r.ran, r.log[-3000:]
