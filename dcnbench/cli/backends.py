"""`dcnbench backends`: every backend, its version, devices and dtypes, or why it is unavailable."""

from __future__ import annotations

from dcnbench.cli.common import console, user_errors


@user_errors
def command() -> None:
    """List every backend with its version, devices and dtypes, or why it is unavailable."""
    from dcnbench import backends
    from dcnbench.results import render
    from dcnbench.timing import roofline
    console.print(render.backends_table(backends.all_backends()))
    probes = roofline.cached()
    for m in probes:  # the machine's roofline, where `speed --roofline` has probed it
        console.print(m.line(), highlight=False)
    if not probes:
        console.print("roofline: not probed on this machine yet (`dcnbench speed --roofline` probes and caches it)",
                      highlight=False)
