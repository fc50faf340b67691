"""`dcnbench backends`: every backend, its version, devices and dtypes, or why it is unavailable."""

from __future__ import annotations

from dcnbench.cli.common import console, user_errors


@user_errors
def command() -> None:
    """List every backend with its version, devices and dtypes, or why it is unavailable."""
    from dcnbench import backends, render

    console.print(render.backends_table(backends.all_backends()))
