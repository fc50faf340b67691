"""`dcnbench backends`: every backend, its version, devices and dtypes, or why it is unavailable."""

from __future__ import annotations

from dcnbench import registry, render
from dcnbench.cli.common import console, user_errors


@user_errors
def command() -> None:
    """List every backend with its version, devices and dtypes, or why it is unavailable."""
    console.print(render.backends_table(registry.all_backends()))
