"""The CPU memory figure is the growth of peak RSS in a fresh process, so it sees real allocations."""

import textwrap

from dcnbench.timing import memory
from dcnbench.timing.speed import SpeedCase
from dcnbench.ops.deform_conv2d.contract import parse_shape


def test_fresh_process_sees_a_large_temporary(tmp_path):
    plugin = tmp_path / "hog.py"
    plugin.write_text(textwrap.dedent("""
        import torch
        import torch.nn.functional as F

        def hog(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
            scratch = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
            out = F.conv2d(input, weight, bias, stride, padding, dilation)
            return out + scratch[0] * 0
    """))
    case = SpeedCase(parse_shape("1,4,8,8:4,3,3")).bench_case()
    spec = memory.worker_spec(backend=None, impl=f"{plugin}:hog", case=case, direction="fwd", threads=1)
    hog, note = memory.measure_cpu(spec)
    plain, _ = memory.measure_cpu(memory.worker_spec(backend="conv2d", impl=None, case=case, direction="fwd", threads=1))
    assert note == ""
    assert hog >= 64 * 2**20
    assert plain < 16 * 2**20
