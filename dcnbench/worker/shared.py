"""What a framework backend (MXNet, paddle) shares: one worker per run, started on first use.

`FrameworkWorker(env, python_of)` holds the run's client (restarted after a failure), the
availability check that starts it once, the one-line environment description, the torch-op call
and the self-timed samples, so a framework backend module holds only its own mapping of parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from dcnbench.worker.bridge import WorkerCall, plain
from dcnbench.worker.client import SelfTimed, WorkerClient, WorkerEnv, WorkerError


class FrameworkWorker:
    def __init__(self, env: WorkerEnv, python_of: Callable[[], Path] | None = None):
        self.env = env
        self.python_of = python_of or env.python
        self._client: WorkerClient | None = None
        self._checked: tuple[str | None] | None = None

    def client(self) -> WorkerClient:
        """The worker shared by this run (started on first request, restarted after a failure)."""
        if self._client is None:
            self._client = WorkerClient(self.env, torch.get_num_threads(), python=self.python_of())
        return self._client

    def check(self) -> str | None:
        """Start the worker once; None when it says hello, else why it cannot run."""
        if self._checked is None:
            try:
                c = self.client()
                if c.proc is None:
                    c.start()
                self._checked = (None,)
            except WorkerError as exc:  # its hint (e.g. the limit to raise) travels with the reason
                from dcnbench.backends import Reason

                self._checked = (Reason(str(exc), exc.hint),)
        return self._checked[0]

    def environment(self) -> str:
        hello = self.client().hello or {}
        versions = ", ".join(f"{k} {v}" for k, v in hello.get("versions", {}).items())
        return f"worker {self.python_of()}: {versions}, {hello.get('gpus')} GPUs, protocol {hello.get('protocol')}"

    def call(self, params: dict, device: str, refused: str | None, names: tuple[str, ...], *tensors):
        """One framework call as a torch op (tensors sent as plain contiguous arrays)."""
        return WorkerCall.apply(self.client, params, device, torch.is_grad_enabled(), refused, False, names, *tensors)

    def self_timed(self, header: dict, arrays: dict) -> SelfTimed:
        return SelfTimed(self.client, header, {k: plain(v) if isinstance(v, torch.Tensor) else v
                                               for k, v in arrays.items()})
