"""The operators' own float64 oracles run as a backend: pure PyTorch, vectorised, autograd backward.

Every registered operator's oracle is here, so a new operator is verified and timed in pure
PyTorch without touching this file. Half types are computed in float32 and rounded once.
"""

from __future__ import annotations

import torch

from dcnbench import ops
from dcnbench.backends import ALL_DTYPES, Backend, local_devices
from dcnbench.ops.spec import resolved


def backend() -> Backend:
    return Backend(
        name="pytorch",
        description="pure PyTorch, vectorised, autograd backward; float64 on the CPU is the oracle",
        ops={spec.name: resolved(spec.oracle) for spec in ops.all_ops()},
        dtypes=local_devices(ALL_DTYPES),
        version=torch.__version__,
    )
