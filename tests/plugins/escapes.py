"""A plugin that starts a process in a session of its own (setsid), which would outlive its worker,
then behaves (torchvision) or crashes: for the containment test (tests/test_worker.py). The child's
pid goes (once per process) to the file named by $DCNBENCH_TEST_ESCAPE_PIDS."""

import os
import signal
import subprocess
import sys

from torchvision.ops import deform_conv2d as tv


_started = []


def _escape():
    """Once per worker process: a child in a session of its own (setsid), sleeping 10 minutes."""
    if _started:
        return
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    _started.append(child.pid)
    with open(os.environ["DCNBENCH_TEST_ESCAPE_PIDS"], "a") as fh:
        fh.write(f"{child.pid}\n")


def escapes(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    _escape()
    return tv(input, offset, weight, bias, stride, padding, dilation, mask)


def escapes_and_crashes(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    _escape()
    if input.dtype.is_floating_point and input.dtype.itemsize == 8:  # after the float32 probe: in a case
        os.kill(os.getpid(), signal.SIGSEGV)
    return tv(input, offset, weight, bias, stride, padding, dilation, mask)
