"""The ext backend (C++ kernels) on the CPU: the whole suite against the oracle, chunking,
determinism, argument checks and the build's error paths. Speed is measured by `dcnbench speed`."""

from pathlib import Path

import pytest
import torch

from dcnbench.backends import ext
from dcnbench.backends.ext import build
from dcnbench.ops.deform_conv2d.contract import ConvGeometry
from dcnbench.backends import get
from dcnbench.checking.verify import default_suite
from dcnbench.checking.verify import failed, run_verify
from dcnbench.ops.deform_conv2d.workloads import ConvCase
from tests.conftest import invoke, run_cli


@pytest.fixture(scope="module")
def backend():
    b = get("ext")
    assert b.check() is None, b.check()
    return b


@pytest.fixture(scope="module")
def results(backend):
    return run_verify(backends=[backend], cases=default_suite())


def test_ext_passes_the_whole_suite_in_every_dtype_it_claims(results, backend):
    bad = [(r.case.case_id, r.status, r.message) for r in results if r.status not in ("pass", "unsupported")]
    assert not bad and not failed(results)
    ran = {r.case.dtype for r in results if r.status == "pass"}
    assert ran == set(backend.dtypes["cpu"]) == {"float64", "float32", "bfloat16"}
    assert all(r.status == "pass" for r in results if r.case.check == "compile")  # opcheck-clean ops trace
    unsupported = [r for r in results if r.status == "unsupported"]
    # float16 (CPU), and ms_deform_attn's export: no ONNX translation of ext's op (a GridSample graph would be one).
    assert unsupported and all((r.case.dtype == "float16" and "CUDA only" in r.message) or
                               (r.case.op == "ms_deform_attn" and r.case.check == "export" and "not exportable" in r.message)
                               for r in unsupported)


def test_suite_rows_cover_what_the_issue_lists(results):
    passed = {r.case.case_id for r in results if r.status == "pass"}
    for case_id in ("groups2/float32", "offset-groups2/float32", "groups2-offset-groups4/bfloat16", "stride2/float64",
                    "dilation2/float64", "batch0/float32", "batch37/float32", "non-contiguous/float64",
                    "gradcheck-v2/float64", "gradcheck-v1-border/float64", "roi-many-3-images/float32",
                    "psroi-many-3-images-2-classes/float64", "gradcheck-roi/float64", "gradcheck-psroi/float64"):
        assert case_id in passed, case_id
    # The export check runs onnxruntime on the exported graph, not ext's kernels: no mode to state.
    assert all("mode: deterministic" in r.message for r in results if r.status == "pass" and r.case.check != "export")


def test_batches_larger_than_one_column_chunk_match_the_oracle(backend):
    # 64 channels x 9 taps x 64x64 positions: three images fill the CPU column budget, so N=7
    # runs as chunks of 3, 3 and 1.
    geo = ConvGeometry(n=7, c=64, h=64, w=64, o=8, kh=3, kw=3, padding=(1, 1))
    case = ConvCase(name="chunks", geometry=geo, dtype="float32", offset_scale=2.0)
    (r,) = run_verify(backends=[backend], cases=[case])
    assert r.status == "pass", [(q.quantity, q.rel_err) for q in r.quantities]


@pytest.mark.any_cpu
def test_forward_and_backward_are_bitwise_deterministic_and_the_same_on_one_and_two_threads(backend):
    # float32: the forward's GEMM is oneDNN's there (MKL's in float64), run inside each task.
    case = next(c for c in default_suite() if c.case_id == "batch37/float32")
    t = case.inputs()

    def grads():
        leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}
        out = case.call(backend.ops["deform_conv2d"], leaves)
        out.backward(torch.ones_like(out).cos())
        return [out.detach()] + [leaves[k].grad for k in sorted(leaves)]

    # The README's claim for ext's CPU kernels (its own property, not a cross-library one).
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, second = grads(), grads()
        torch.set_num_threads(1)
        one = grads()
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(first, second, one))


def test_arguments_are_checked_before_any_kernel_runs(backend):
    x = torch.zeros(1, 4, 5, 5)
    with pytest.raises(RuntimeError, match=r"offset has shape \(1, 18, 5, 5\), expected \(1, 18, 3, 3\)"):
        ext.deform_conv2d(x, torch.zeros(1, 18, 5, 5), torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match="weight is torch.float64 on cpu, expected torch.float32"):
        ext.deform_conv2d(x, torch.zeros(1, 18, 3, 3), torch.zeros(2, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"rois must have shape \(K, 5\)"):
        ext.deform_roi_pool(x, torch.zeros(2, 4), None, 2)


def test_a_missing_compiler_is_one_clear_line_and_exit_2(tmp_path):
    res = run_cli("build", env_extra={"CXX": "no-such-compiler", "DCNBENCH_EXT_BUILD_DIR": str(tmp_path)})
    assert res.returncode == 2
    assert "error: no C++ compiler: 'no-such-compiler' is not on the PATH" in res.stderr
    assert "apt-get install g++" in res.stderr and "Traceback" not in res.stderr


def test_missing_ninja_and_nvcc_are_named_with_their_fix(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    problem = build.problems(cuda=False)
    assert "ninja is not available" in str(problem) and "make env" in problem.hint
    monkeypatch.undo()
    monkeypatch.setattr(build, "nvcc", lambda: None)
    res = invoke("build", "--cuda-objects", str(tmp_path / "cuda"))
    assert res.returncode == 2
    assert "error: nvcc is not found (CUDA_HOME unset and no nvcc on the PATH)" in res.stderr
    assert "hint: install the CUDA toolkit" in res.stderr


def test_the_cuda_build_takes_only_the_headers_its_toolkit_lacks_from_the_wheel(tmp_path):
    toolkit = build.toolkit_root()
    if toolkit is None or not build.wheel_cuda_includes():
        pytest.skip("no CUDA toolkit or no CUDA wheel headers here")
    includes, ldflags = build._cuda_arguments(tmp_path)
    (folder,) = includes
    names = {p.name for p in Path(folder).iterdir()}
    # The wheel's runtime headers (another CUDA version, maybe) must not shadow nvcc's own ...
    assert (toolkit / "include" / "cuda_runtime_api.h").exists() and "cuda_runtime_api.h" not in names
    # ... while the library headers ATen's CUDA headers include, which this toolkit may lack, come from the wheel.
    assert all((toolkit / "include" / n).exists() or n in names for n in ("cublas_v2.h", "cusparse.h", "cusolverDn.h"))
    # cudart is linked from the toolkit of that nvcc, not from torch's guess of CUDA_HOME.
    assert ldflags and (Path(ldflags[0][2:]) / "libcudart.so").exists()


def test_build_command_reports_the_cached_library(backend):
    res = invoke("build")
    assert res.returncode == 0 and "ext backend ready" in res.stdout and "CPU" in res.stdout


def test_build_is_keyed_by_the_sources():
    assert build.build_dir(False) != build.build_dir(True)
    assert build.build_dir(False).name.startswith(f"torch-{torch.__version__}-cpu-")


def test_the_cpu_library_targets_this_machine_and_its_instruction_set_keys_the_cache(monkeypatch):
    # ext is built where it runs: -march=native, and what that resolves to here is part of the cache
    # key, so a cache shared with a machine of another CPU never loads a build it cannot run.
    if not build.native_isa():
        pytest.skip("this compiler does not take -march=native")
    here = build.native(False)
    assert build.NATIVE_ISA in here.cflags and build.NATIVE_ISA not in build.emulated().cflags
    key = build.target_dir(here)
    monkeypatch.setattr(build, "native_isa", lambda: "x86-64 baseline, another CPU")
    assert build.target_dir(build.native(False)) != key


def test_depthwise_weight_trains_when_its_tiles_run_on_other_threads():
    """One channel per group: the weight's GEMM layout is a view of the weight itself, which requires
    grad. The forward's tiles run on at::parallel_for's threads, where autograd's dispatch state is
    not the caller's: an out= GEMM on it raised there (the seeded fuzz found it; 20 of 20 calls)."""
    from torchvision.ops import deform_conv2d as tv

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        args = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((2, 4, 64, 64), (2, 18, 64, 64), (4, 1, 3, 3))]
        grads = []
        for fn in (ext.deform_conv2d, tv):
            leaves = [a.clone().requires_grad_() for a in args]
            x, off, w = leaves
            fn(x, off, w, padding=(1, 1)).square().sum().backward()
            grads.append([t.grad for t in leaves])
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(*grads):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-9)


def test_a_channels_last_input_past_2_31_elements_is_read_in_place():
    """Failure class "32-bit index overflow" on ext's CPU deform_conv2d: a channels-last input of more than
    2^31 elements whose last image alone is written (the rest is address space that reads as zeros,
    backends/ext/overflow.py); that image's output against the oracle on it alone. The input is not copied:
    copied (as it was, to NCHW in Python and back to channels-last in C++) it took 17 GB."""
    import resource

    from dcnbench.backends.ext.overflow import CONV_CPU_BOUND, INT32_MAX, conv_cpu_past_int32
    from dcnbench.checking.compare import compare

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got, want, start = conv_cpu_past_int32(get("ext").ops["deform_conv2d"])
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # the peak's growth, bytes
    assert start > INT32_MAX and float(want.norm()) > 0
    err = compare("output", got, want, "float32")
    assert err.rel_err < CONV_CPU_BOUND, err
    # Well below one copy of the input (8.6 GB): the kernel read it where it was (measured: 1 GB in all).
    assert grown < 4 * 2**30, f"the peak grew by {grown / 2**30:.1f} GiB"
