"""ext's CUDA kernels emulated on the CPU (`ext-cuda-emu`): the whole default suite under grid
settings a GPU could run them in, both backward modes; the emulator itself (coverage, order, the
launch configurations a GPU refuses, what it refuses to compile); and its knobs' validation.
The race check is tests/test_race.py."""

import contextlib
import os
import re
import shutil
import subprocess
from dataclasses import replace

import pytest
import torch

from dcnbench.backends import get
from dcnbench.backends.ext import build, emu
from dcnbench.backends.ext.library import OpLibrary
from dcnbench.errors import UsageError
from dcnbench.checking.verify import default_suite, run_verify, verify_case
from tests.conftest import invoke
from tests.planted_copies import assert_matches_ext_below_2_31

# Two settings in the words: the grid capped at 1 block with blocks and threads shuffled,
# and an odd number of blocks spread over several OS threads (threads of a block split too).
SETTINGS = {
    "max_blocks=1, shuffled": {"DCNBENCH_EMU_MAX_BLOCKS": "1", "DCNBENCH_EMU_ORDER": "shuffle", "DCNBENCH_EMU_SEED": "7"},
    # 7 blocks in reverse, and each block's threads spread over 3 OS threads (the concurrency TSan checks).
    "max_blocks=7, reversed, a block's threads on 3 OS threads": {
        "DCNBENCH_EMU_MAX_BLOCKS": "7", "DCNBENCH_EMU_ORDER": "reverse", "DCNBENCH_EMU_THREADS": "3",
        "DCNBENCH_EMU_SPLIT": "thread"},
}
MODES = {"atomic": "0", "deterministic": "1"}


@contextlib.contextmanager
def environment(**values):
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def backend():
    b = get("ext-cuda-emu")
    assert b.check() is None
    return b


# The ops with CUDA kernels (DCNv3/DCNv4 have CPU kernels only, so nothing to emulate).
EMULATED_OPS = ["deform_conv2d", "deform_roi_pool", "deform_psroi_pool", "ms_deform_attn"]
# The export check exports the op and runs onnxruntime, not the kernels: once is enough (test_export.py).
# The second case past ext's CPU column chunk targets the CPU kernel (the CUDA chunk is 2^27 elements);
# the grid-limit cases run once below, against a planted launch.
SUITE = [c for c in default_suite(op_names=EMULATED_OPS) if c.check != "export" and "past-column-chunk-2x3" not in c.name
         and "grid-" not in c.name]
# Each case runs once in each mode and once under each setting, the pairing alternating from case to
# case: (first setting, atomic) + (second, deterministic), then (second, atomic) + (first,
# deterministic). Each of the four setting x mode runs thus holds half the suite, every operator in
# it; the whole suite under all four took 3.5 minutes of test time (test_race runs every kernel's
# concurrency under ThreadSanitizer besides).
def _runs(index: int) -> set[tuple[str, str]]:
    first, second = SETTINGS
    return {(first, "atomic"), (second, "deterministic")} if index % 2 == 0 else {(second, "atomic"), (first, "deterministic")}


@pytest.fixture(scope="module")
def suite_runs(backend):
    """Every default case in both modes and under both settings, case-major so each reference is computed once."""
    results = {}
    for index, case in enumerate(SUITE):
        cache = {}
        for setting, knobs in SETTINGS.items():
            for mode, flag in MODES.items():
                if (setting, mode) not in _runs(index):
                    continue
                with environment(**knobs, DCNBENCH_EXT_DETERMINISTIC=flag):
                    results.setdefault((setting, mode), []).append(verify_case(backend, case, "cpu", cache))
    return results


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_the_emulated_cuda_kernels_pass_the_whole_suite(suite_runs, setting, mode):
    runs = suite_runs[(setting, mode)]
    expected = [c for i, c in enumerate(SUITE) if (setting, mode) in _runs(i)]
    assert [r.case.case_id for r in runs] == [c.case_id for c in expected]
    assert {r.case.op for r in runs} == set(EMULATED_OPS)  # every emulated op under every setting in every mode
    # atomicAdd from several OS threads adds in a varying order, as on a GPU: `nondeterministic` is
    # reached only when every quantity passed. Everything else must pass, in every dtype.
    # gradcheck then fails only as "not reentrant" (two backwards differ, both match the numerical
    # gradient): verify's gradcheck allows no nondeterminism, so ext's atomic mode fails it on a GPU too.
    concurrent = mode == "atomic" and "OS threads" in setting
    allowed = {"pass", "nondeterministic"} if concurrent else {"pass"}

    def reentrancy_only(r):
        return concurrent and r.case.check == "gradcheck" and all(
            "not reentrant" in q.note and "analytical gradient matches numerical gradient" in q.note for q in r.failing)

    bad = [(r.case.case_id, r.status, r.message) for r in runs if r.status not in allowed and not reentrancy_only(r)]
    assert not bad, bad
    assert all(f"mode: {'deterministic' if mode == 'deterministic' else 'atomicAdd'}" in r.message
               for r in runs if r.status == "pass" and r.case.check != "gradcheck")


def test_deterministic_mode_is_bitwise_the_same_under_every_setting(backend):
    case = next(c for c in default_suite() if c.case_id == "groups2-offset-groups4/float64")
    inputs = case.inputs()

    def grads():
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        out = case.call(backend.ops["deform_conv2d"], leaves)
        out.backward(torch.ones_like(out).cos())
        return [out.detach()] + [leaves[k].grad for k in sorted(leaves)]

    with environment(DCNBENCH_EXT_DETERMINISTIC="1"):
        first = grads()
        for knobs in SETTINGS.values():
            with environment(**knobs):
                assert all(torch.equal(a, b) for a, b in zip(first, grads()))


# ---- the emulator itself -------------------------------------------------------------------------


def visit(n, grid, block, shmem=0, check=True):
    count, order = torch.zeros(n, dtype=torch.float64), torch.full((n,), -1.0, dtype=torch.float64)
    torch.ops.dcnbench_ext_emu.emu_visit(count, order, *grid, *block, shmem, check)
    return count, order


@pytest.mark.parametrize("knobs", [{}, *SETTINGS.values()], ids=["default", *SETTINGS])
def test_every_element_is_visited_exactly_once(backend, knobs):
    with environment(**knobs):
        for grid, block, n in (((5, 1, 1), (256, 1, 1), 10_000), ((3, 2, 2), (8, 4, 2), 5_000)):
            count, order = visit(n, grid, block)
            assert bool((count == 1).all()), (grid, block, count.min(), count.max())
            assert sorted(order.long().tolist()) == list(range(n))


def test_the_order_knob_orders_blocks_and_threads(backend):
    firsts = {}
    for order in emu.ORDERS:
        with environment(DCNBENCH_EMU_ORDER=order, DCNBENCH_EMU_SEED="3"):
            firsts[order] = visit(8, (2, 1, 1), (4, 1, 1))[1].long().tolist()  # no grid stride: 8 threads, 8 elements
    assert firsts["forward"] == list(range(8)) and firsts["reverse"] == list(range(7, -1, -1))
    assert sorted(firsts["shuffle"]) == list(range(8)) and firsts["shuffle"] not in (firsts["forward"], firsts["reverse"])


@pytest.mark.parametrize("grid, block, shmem", [
    ((1, 1, 1), (1025, 1, 1), 0), ((1, 1, 1), (32, 32, 2), 0), ((1, 1, 1), (1, 1, 65), 0), ((2 ** 31, 1, 1), (1, 1, 1), 0),
    ((1, 65536, 1), (1, 1, 1), 0), ((1, 1, 65536), (1, 1, 1), 0), ((0, 1, 1), (1, 1, 1), 0), ((1, 1, 1), (1, 1, 1), 16)])
def test_a_launch_a_gpu_refuses_is_refused(backend, grid, block, shmem):
    with pytest.raises(RuntimeError, match="CUDA error: invalid configuration argument"):
        visit(10, grid, block, shmem)


def test_the_limits_themselves_launch_and_an_unchecked_error_is_reported_by_the_next_launch(backend):
    with environment(DCNBENCH_EMU_MAX_BLOCKS="4"):  # 2^31-1 blocks would take hours
        for grid, block in (((2 ** 31 - 1, 1, 1), (1024, 1, 1)), ((1, 65535, 1), (1, 1, 1)), ((1, 1, 65535), (1, 1, 1)),
                            ((1, 1, 1), (16, 1, 64)), ((1, 1, 1), (1, 1024, 1))):
            visit(10, grid, block)
    visit(10, (1, 1, 1), (2048, 1, 1), check=False)
    with pytest.raises(RuntimeError, match="went unchecked before launching visit_kernel"):
        visit(10, (1, 1, 1), (32, 1, 1))
    visit(10, (1, 1, 1), (32, 1, 1))  # reported once, like cudaGetLastError


REFUSED_SOURCE = """
#include "emu/cuda_emu.h"
template <typename T> __global__ void barrier(T* p) { p[threadIdx.x] = 1; __syncthreads(); }
template <typename T> __global__ void shared(T* p) { __shared__ T s[32]; s[threadIdx.x] = p[0]; }
template <typename T> __global__ void shuffle(T* p) { p[0] += __shfl_down_sync(0xffffffff, p[0], 1); }
"""


def test_what_a_block_run_thread_after_thread_cannot_honour_does_not_compile(tmp_path):
    from torch.utils import cpp_extension

    src = tmp_path / "refused.cpp"
    src.write_text(REFUSED_SOURCE)
    p = subprocess.run(["c++", "-std=c++20", "-fsyntax-only", f"-I{build.CSRC}",
                        *[f"-isystem{d}" for d in cpp_extension.include_paths()], str(src)], capture_output=True, text=True)
    assert p.returncode != 0
    errors = [ln for ln in p.stderr.splitlines() if "static assertion failed: cuda_emu:" in ln]
    assert len(errors) == 3 and all(w in p.stderr for w in ("__syncthreads is not", "__shared__ is not",
                                                           "__shfl_down_sync is not")), p.stderr[-2000:]


# ---- knobs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variable, value", [("DCNBENCH_EMU_MAX_BLOCKS", "0"), ("DCNBENCH_EMU_MAX_BLOCKS", "many"),
                                             ("DCNBENCH_EMU_THREADS", "-2"), ("DCNBENCH_EMU_ORDER", "sideways"),
                                             ("DCNBENCH_EMU_SPLIT", "warp"), ("DCNBENCH_EMU_SEED", "1.5")])
def test_a_bad_knob_is_a_usage_error_naming_it(variable, value):
    with pytest.raises(UsageError, match=variable) as err:
        emu.settings({variable: value})
    assert variable in err.value.hint


def test_a_bad_knob_on_the_command_line_is_one_error_line_and_exit_2(monkeypatch):
    monkeypatch.setenv("DCNBENCH_EMU_ORDER", "sideways")
    res = invoke("verify", "--backend", "ext-cuda-emu", "--case", "v2/float64")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["error", "hint"], lines
    assert "DCNBENCH_EMU_ORDER='sideways'" in lines[0]


def test_the_kernels_check_their_knobs_too(backend):
    x = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    with environment(DCNBENCH_EMU_THREADS="zero"), pytest.raises(RuntimeError, match="DCNBENCH_EMU_THREADS=zero"):
        backend.ops["deform_conv2d"](x, torch.zeros(1, 18, 2, 2, dtype=torch.float64), torch.zeros(3, 2, 3, 3, dtype=torch.float64))


# ---- the knobs catch what a GPU with more blocks would hide ----------------------------------------


def without_grid_stride(csrc, dest):
    """A copy of csrc/ whose deform_conv2d kernels handle one element per thread (no grid-stride loop):
    correct while the host launches enough blocks, wrong when the grid is capped (65535 blocks on a
    GPU for a large enough input; 1 block here)."""
    shutil.copytree(csrc, dest)
    path = dest / "cuda" / "deform_conv2d.cu"
    loop = "for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x)"
    text = path.read_text()
    assert text.count(loop) == 4, "the planted bug no longer matches deform_conv2d.cu's grid-stride loops"
    path.write_text(text.replace(loop, "if (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total)"))
    return dest


def test_capping_the_grid_catches_a_kernel_without_grid_stride_loops(tmp_path_factory):
    csrc = without_grid_stride(build.CSRC, tmp_path_factory.mktemp("nostride") / "csrc")
    target = build.emulated_copy("dcnbench_ext_emu_nostride", csrc, ("deform_conv2d.cu",))
    library = OpLibrary(lambda: target)
    planted = replace(get("ext-cuda-emu"), name="nostride", ops=library.op_table())
    cases = [c for c in default_suite() if c.case_id in ("v2/float64", "groups2-offset-groups4/float32")]
    for knobs, expected in (({}, "pass"), ({"DCNBENCH_EMU_MAX_BLOCKS": "1"}, "fail")):
        with environment(**knobs, DCNBENCH_EXT_DETERMINISTIC="1"):
            assert [verify_case(planted, c, "cpu", {}).status for c in cases] == [expected] * len(cases), knobs


# ---- failure classes the emulator shows (issue 21): grid limits, determinism across block orders ----


def with_planted_launches(csrc, dest):
    """A copy of csrc/ with launch bugs the default settings here do not show:
    - im2col launched with one grid row per output row (blockIdx.y, images x rows of blocks) and the
      forward RoI pooling kernel with one per RoI: right until an image has more than 65535 output
      rows, or a call more than 65535 RoIs, where a GPU refuses the launch;
    - deform_conv2d's deterministic mode scattering the input gradient with atomicAdd: the same bits
      on every run under one block order, other bits under another."""
    shutil.copytree(csrc, dest)
    conv, pool = dest / "cuda" / "deform_conv2d.cu", dest / "cuda" / "roi_pool.cu"
    loop = "for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x)"
    rows = ("for (int64_t e = (int64_t(blockIdx.y) * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x; e < total; "
            "e += int64_t(gridDim.x) * gridDim.y * blockDim.x)")
    text = conv.read_text()
    launches = text.count("DCN_LAUNCH(im2col_kernel<scalar_t>, blocks_for(")
    assert text.count(loop) == 4 and launches == 2 and text.count("if (deterministic) {") == 1, "deform_conv2d.cu changed"
    text = text.replace(loop, rows, 1)  # im2col_kernel's loop comes first
    text = re.sub(r"DCN_LAUNCH\(im2col_kernel<scalar_t>, blocks_for\([^;]*?\), kThreads",
                  "DCN_LAUNCH(im2col_kernel<scalar_t>, dim3(1, unsigned(b * g.ho)), kThreads", text)
    conv.write_text(text.replace("if (deterministic) {", "if (false && deterministic) {"))
    text = pool.read_text()
    assert text.count("GRID_STRIDE(e, a.k * a.c * bins) {") == 2, "roi_pool.cu changed"
    text = text.replace("GRID_STRIDE(e, a.k * a.c * bins) {",
                        "for (int64_t e = (int64_t(blockIdx.y) * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x; "
                        "e < a.k * a.c * bins; e += int64_t(gridDim.x) * gridDim.y * blockDim.x) {", 1)
    pool.write_text(text.replace("DCN_LAUNCH(roi_forward_kernel<scalar_t>, blocks_for(out.numel()), kThreads",
                                 "DCN_LAUNCH(roi_forward_kernel<scalar_t>, dim3(1, unsigned(a.k)), kThreads"))
    return dest


@pytest.fixture(scope="module")
def planted_launches(tmp_path_factory):
    csrc = with_planted_launches(build.CSRC, tmp_path_factory.mktemp("launches") / "csrc")
    # The two files whose launches are planted (ms_deform_attn's grid does not grow with its input).
    target = build.emulated_copy("dcnbench_ext_emu_launches", csrc, ("deform_conv2d.cu", "roi_pool.cu"))
    return replace(get("ext-cuda-emu"), name="planted-launches", ops=OpLibrary(lambda: target).op_table())


# The grid-limit cases (grid-tall-image-..., roi-grid-...-rois): not ms_deform_attn's grid_sample identities.
GRID_CASES = [c for c in default_suite() if re.match(r"(\w+-)?grid-(tall|\d)", c.name)]


def test_the_grid_cases_drive_past_every_grid_dimension_a_row_or_roi_launch_would_use():
    # ms_deform_attn's launches are one-dimensional and capped (blocks_for), whatever its size: no grid
    # dimension of it grows with the input (test_msda_verify runs one past the cap).
    assert {c.op for c in GRID_CASES} == set(EMULATED_OPS) - {"ms_deform_attn"}
    for c in GRID_CASES:
        assert (c.geometry.ho if c.op == "deform_conv2d" else c.geometry.rois) > 65535


def test_a_launch_past_the_grid_limits_fails_only_on_the_grid_cases(backend, planted_launches):
    small = [c for c in SUITE if c.case_id in ("v2/float64", "asymmetric-2x3-s21-p10-d12/float32", "roi-inside/float64")]
    chosen = [c for c in GRID_CASES if c.op != "deform_psroi_pool"]  # the planted RoI launch is deform_roi_pool's
    results = run_verify(backends=[planted_launches, backend], cases=small + chosen)
    status = {(r.backend, r.case.case_id): r for r in results}
    for c in small:
        assert status[("planted-launches", c.case_id)].status == "pass"
    for c in chosen:
        r = status[("planted-launches", c.case_id)]
        assert r.status == "error" and "invalid configuration argument" in r.message and "gridDim.x > 2^31-1 or " \
            "gridDim.y/z > 65535" in r.message, r.message
        assert status[("ext-cuda-emu", c.case_id)].status == "pass", status[("ext-cuda-emu", c.case_id)].message


def test_deterministic_mode_must_give_the_same_bits_under_every_block_order(backend, planted_launches):
    chosen = [c for c in SUITE if c.case_id in ("v2/float64", "groups2-offset-groups4/float32")]
    with environment(DCNBENCH_EXT_DETERMINISTIC="1"):
        planted = run_verify(backends=[planted_launches], cases=chosen)
        assert [r.status for r in planted] == ["pass", "pass"]  # two runs in one order agree bitwise
        planted = run_verify(backends=[planted_launches], cases=chosen, knobs=True)
        right = run_verify(backends=[backend], cases=chosen, knobs=True)
    for r in planted:
        assert r.status == "fail", r.case.case_id
        assert {q.quantity for q in r.failing} >= {"grad_input~block_order=reverse", "grad_input~block_order=shuffle"}
        assert all("not bitwise equal" in q.note for q in r.failing)
    assert [r.status for r in right] == ["pass", "pass"], [(q.quantity, q.note) for r in right for q in r.failing]


# ---- failure class: 32-bit index overflow (dcnbench/backends/ext/overflow.py) ----------------------


# A grid-stride loop's element index in an int (a CUDA classic, the official msda kernels' CUDA_KERNEL_LOOP).
INT64_LOOP = "for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x)"
INT32_LOOP = "const int stride = gridDim.x * blockDim.x;\n  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride)"
ROI_PLANE = "const T* pl = input + (box.batch * a.c + ch) * a.h * a.w;"
INT32_PLANE = "const T* pl = input + (int(box.batch) * int(a.c) + int(ch)) * int(a.h) * int(a.w);"
# (check, file, the kernel's text and how many times the file holds it, the planted text)
INT32_PLANTS = (
    ("deform_conv2d", "deform_conv2d.cu", INT64_LOOP, 4, INT32_LOOP),  # im2col's, the first of four
    ("msda-output", "ms_deform_attn.cu", INT64_LOOP, 3, INT32_LOOP),  # the forward's, the first of three
    # The value row the forward reads, as Deformable-DETR's kernel computes it (`data_value_ptr_init_offset`
    # = b_col * spatial_size * qid_stride in an int: Deformable-DETR#66, mmcv#1724).
    ("msda-value", "ms_deform_attn.cu", "const T* plane = value + msda_value_row(g, n, t.starts[l], 0, m) + d;", 1,
     "const T* plane = value + ((int(n) * int(g.s) + int(t.starts[l])) * int(g.m) + int(m)) * int(g.d) + d;"),
    # The channel plane the RoI poolings' forwards read, in an int (mmcv's `offset_bottom_data`).
    ("roi", "roi_pool.cu", "const T* off = offset ? offset + n * 2 * bins : nullptr;\n    " + ROI_PLANE, 1,
     "const T* off = offset ? offset + n * 2 * bins : nullptr;\n    " + INT32_PLANE),
    ("psroi", "roi_pool.cu", "group_of(j, a.group, a.pooled);\n    " + ROI_PLANE, 1,
     "group_of(j, a.group, a.pooled);\n    " + INT32_PLANE),
)


def with_int32_indices(csrc, dest):
    """A copy of csrc/ with five indices in an int, each right until it passes 2^31 - 1, and the
    file:line of each by check. Each check calls one kernel and passes 2^31 in one index only."""
    shutil.copytree(csrc, dest)
    for _, name, old, count, new in INT32_PLANTS:
        path = dest / "cuda" / name
        text = path.read_text()
        assert text.count(old) == count, f"{name} changed"
        path.write_text(text.replace(old, new, 1))
    lines = {}
    for check, name, _, _, new in INT32_PLANTS:
        text = (dest / "cuda" / name).read_text()
        last = text.index(new) + len(new) - len(new.splitlines()[-1])  # where the planted line starts
        lines[check] = f"{name}:{text[:last].count(chr(10)) + 1}"
    lines["msda-batch"] = lines["msda-level"] = lines.pop("msda-value")
    lines["msda-output-queries"] = lines["msda-output-batch"] = lines.pop("msda-output")
    for op in ("roi", "psroi"):
        lines[f"{op}-batch"] = lines[f"{op}-channels"] = lines.pop(op)
    return dest, lines


def overflow_check(*args, timeout=900):
    import sys

    return subprocess.run([sys.executable, "-m", "dcnbench.backends.ext.overflow", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=build.ROOT)


def test_the_cuda_kernels_index_past_2_31_cleanly():
    clean = overflow_check()
    assert clean.returncode == 0, clean.stdout + clean.stderr[-2000:]
    # ms_deform_attn's output past element 2^31 of value is compared with the oracle (overflow.py's bound).
    assert [line.split(" (")[0].split(":")[0] for line in clean.stdout.splitlines()] == [
        "deform_conv2d forward", "ms_deform_attn forward, value past 2^31 by the batch",
        "ms_deform_attn forward, value past 2^31 by the level",
        "ms_deform_attn forward and backward, output past 2^31 by the queries",
        "ms_deform_attn forward and backward, output past 2^31 by the batch",
        "deform_roi_pool forward, input past 2^31 by the batch", "deform_roi_pool forward, input past 2^31 by the channels",
        "deform_psroi_pool forward, input past 2^31 by the batch",
        "deform_psroi_pool forward, input past 2^31 by the channels"], clean.stdout
    assert "index arithmetic clean" in clean.stdout


# The copy builds the three .cu files the checks call; the checks run in one process, each in a child of
# its own (overflow.main). Each of ms_deform_attn's planted indices is reached two ways past 2^31: its
# value row by the batch and by a level, its forward's loop index by the queries and by the batch and heads;
# each RoI pooling's channel plane by the batch and by the channels.
def test_an_int32_index_is_stopped_at_its_line(tmp_path):
    csrc, planted = with_int32_indices(build.CSRC, tmp_path / "csrc")
    assert set(planted) == {"deform_conv2d", "msda-batch", "msda-level", "msda-output-queries", "msda-output-batch",
                            "roi-batch", "roi-channels", "psroi-batch", "psroi-channels"}
    run = overflow_check(csrc, "dcnbench_ext_emu_int32", *planted)
    assert run.returncode != 0 and not run.stdout, run.stdout
    for check, line in planted.items():
        found = re.search(rf"^--- {check}\n(.*?)^--- {check}: exit (-?\d+)$", run.stderr, re.S | re.M)
        assert found and found.group(2) != "0", run.stderr[-3000:]
        assert re.search(rf"{re.escape(line)}:\d+: runtime error: signed integer overflow", found.group(1)), \
            (check, found.group(1)[-2000:])
    # Below 2^31 the planted indices are right: the copy matches ext's CPU kernels (a bug only past 2^31).
    from dcnbench.backends.ext.overflow import copy_target

    assert_matches_ext_below_2_31(OpLibrary(lambda: copy_target(csrc, "dcnbench_ext_emu_int32")), conv_rtol=1e-4)
