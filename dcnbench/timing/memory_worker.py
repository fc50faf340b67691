"""The peak-memory worker: `python -m dcnbench.timing.memory_worker SPEC_JSON` (memory.measure_cpu starts it).

In a fresh interpreter it rebuilds one call of one backend on one case, resets the kernel's
peak-RSS counter (Linux `clear_refs`) once the inputs exist, makes the call and prints the growth
as JSON on its last line.
"""

from __future__ import annotations

import json
import sys


def main(spec: dict) -> None:
    import torch

    from dcnbench import ops
    from dcnbench.backends import get
    from dcnbench.timing.memory import measure_cpu_in_this_process
    from dcnbench.plugins import load_plugin
    from dcnbench.timing.speed import make_call

    torch.set_num_threads(spec["threads"])
    case = ops.get(spec["op"]).case_from_dict(spec["case"])
    backend = load_plugin(spec["impl"], probe=False, op=case.op) if spec["impl"] else get(spec["backend"])
    setup, call = make_call(backend, case, spec["direction"], "cpu")
    setup()
    peak = measure_cpu_in_this_process(call)
    print(json.dumps({"peak_bytes": peak}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
