"""A client for the MXNet worker by hand (tests, debugging): the generic WorkerClient bound to
MXNet's environment, with the interpreter given explicitly."""

from __future__ import annotations

from pathlib import Path

from dcnbench.backends.mxnet import ENV
from dcnbench.worker.client import WorkerClient as _WorkerClient
from dcnbench.worker.client import WorkerError  # noqa: F401 - part of this module's interface


class WorkerClient(_WorkerClient):
    def __init__(self, python: Path, timeout_s: float, threads: int | None = None):
        super().__init__(ENV, threads=threads, timeout_s=timeout_s, python=python)
