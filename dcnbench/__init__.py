"""dcnbench: verify and benchmark deformable convolution implementations.

Importing the package costs nothing: torch, scipy and matplotlib load inside the commands that
need them, so `dcnbench --help` answers at once.
"""

import os
import sys

__version__ = "0.1.0"

# OpenMP reads OMP_WAIT_POLICY once, when its runtime loads (with torch). Set it first, so the idle
# threads of dcnbench's own process sleep instead of spinning: on a busy machine a spinning thread
# takes the core from the process that has work, and `speed` measured that (68 ms instead of 1.3 ms,
# README "Timing on a busy machine"). A policy the user set is kept; contention.py records it.
TORCH_BEFORE_DCNBENCH = "torch" in sys.modules
if not TORCH_BEFORE_DCNBENCH:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
