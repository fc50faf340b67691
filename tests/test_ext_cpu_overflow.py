"""The CPU index-overflow checks (failure class "32-bit index overflow", backends/ext/overflow.py), proven
by a planted copy of ext's CPU kernels: each kernel's input index cut to a 32-bit int, right below 2^31
elements and wrapped past it. Every check run on the copy fails; the same checks pass on ext's own
kernels in the op's test file (test_ext.py, test_ext_dcnv34.py, test_msda_verify.py, test_roi_verify.py)."""

import re
import shutil
import subprocess
import sys

from dcnbench.backends.ext import build
from dcnbench.backends.ext.library import OpLibrary
from dcnbench.backends.ext.overflow import CPU_CHECKS
from tests.planted_copies import assert_matches_ext_below_2_31

# (file in csrc/cpu, the line as it is, how many times, the line with the index in an int). The cast is
# how an int index behaves past 2^31 - 1 (it wraps to a negative offset); int arithmetic instead
# would be undefined behaviour that -O3 may widen back to 64 bits, planting nothing.
CPU_INT32_PLANTS = (
    # the channels-last image's start in the forward's gather (and the backward's)
    ("deform_conv2d.cpp", "const T* xn = x + n * g.h * g.w * g.c;", 2,
     "const T* xn = x + static_cast<int>(n * g.h * g.w * g.c);"),
    ("dcnv34.cpp", "const T* xn = x + n * g.h * g.w * g.c;", 1,
     "const T* xn = x + static_cast<int>(n * g.h * g.w * g.c);"),
    # the value row (Deformable-DETR's data_value_ptr_init_offset), in the forward and both gradients
    ("ms_deform_attn.cpp", "value + msda_value_row(g, n, lv.start[l], 0, m);", 3,
     "value + static_cast<int>(msda_value_row(g, n, lv.start[l], 0, m));"),
    # the channel plane (mmcv's offset_bottom_data), forward and backward of each pooling
    ("roi_pool.cpp", "const T* pl = plane0 + ch * h * w;", 2,
     "const T* pl = in + static_cast<int>((box.batch * c + ch) * h * w);"),
    ("roi_pool.cpp", "const T* pl = in + (box.batch * p.c + (d * group + gh) * group + gw) * p.h * p.w;", 2,
     "const T* pl = in + static_cast<int>((box.batch * p.c + (d * group + gh) * group + gw) * p.h * p.w);"),
)
NAME = "dcnbench_ext_cpu_int32"


def with_cpu_int32_indices(dest):
    shutil.copytree(build.CSRC, dest)
    for name, old, count, new in CPU_INT32_PLANTS:
        path = dest / "cpu" / name
        text = path.read_text()
        assert text.count(old) == count, f"{name} changed: {old!r}"
        path.write_text(text.replace(old, new))
    return dest


def test_every_cpu_index_overflow_check_fails_on_a_copy_with_32_bit_indices(tmp_path):
    csrc = with_cpu_int32_indices(tmp_path / "csrc")
    run = subprocess.run([sys.executable, "-m", "dcnbench.backends.ext.overflow", "--cpu", str(csrc), NAME, *CPU_CHECKS],
                         capture_output=True, text=True, timeout=1200, cwd=build.ROOT)
    assert run.returncode != 0 and not run.stdout, run.stdout
    assert set(CPU_CHECKS) == {"deform_conv2d", "dcnv3", "msda-batch", "msda-level", "roi-batch", "roi-channels",
                               "psroi-batch", "psroi-channels"}
    for check in CPU_CHECKS:
        found = re.search(rf"^--- {check}\n(.*?)^--- {check}: exit (-?\d+)$", run.stderr, re.S | re.M)
        assert found, run.stderr[-3000:]
        said, code = found.group(1), int(found.group(2))
        # The wrapped index reads 8 GB before the input (a fault, its signal) or memory that is not the
        # image (the comparison with the oracle fails, naming the check); anything else is the harness's.
        assert code < 0 or (code == 1 and re.search(r"past 2\^31 by the \w+: ", said)), (check, said)
    # Below 2^31 the planted indices are right: the copy matches ext on small inputs (a bug only past 2^31).
    assert_matches_ext_below_2_31(OpLibrary(lambda: build.native_copy(NAME, csrc)), dcnv3=True)
